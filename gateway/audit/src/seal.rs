//! Encryption at rest (SC-28): each record's canonical encoding, AES-256-GCM sealed under the
//! key store's audit key. See the crate README for the threat model.
//!
//! ```text
//! sealed = nonce (12 random bytes) || AES-256-GCM(key, nonce, aad, postcard(record))
//! aad    = "gatehouse-audit-record/v1" || seq (8 bytes, big-endian) || key id (16 ASCII hex)
//! ```
//!
//! The AAD binds the ciphertext to its seq (a sealed blob moved to another row fails to open)
//! and to its key id column.

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_board::{KeyId, KeyPurpose, KeyStore, KeyStoreError};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{AuditError, Seq};

const AAD_DOMAIN: &[u8] = b"gatehouse-audit-record/v1";

/// Seals and opens records; caches keys by id (current and rotated-out ones).
pub(crate) struct Sealer {
    keys: Arc<dyn KeyStore>,
    current: (KeyId, LessSafeKey),
    old: HashMap<KeyId, LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.current.0.as_str())
            .finish_non_exhaustive()
    }
}

fn aead_key(bytes: &[u8; 32]) -> Result<LessSafeKey, AuditError> {
    let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| AuditError::Crypto)?;
    Ok(LessSafeKey::new(unbound))
}

fn aad(seq: Seq, key_id: &KeyId) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_DOMAIN.len() + 8 + 16);
    a.extend_from_slice(AAD_DOMAIN);
    a.extend_from_slice(&seq.to_be_bytes());
    a.extend_from_slice(key_id.as_str().as_bytes());
    a
}

impl Sealer {
    pub(crate) fn new(keys: Arc<dyn KeyStore>) -> Result<Sealer, AuditError> {
        let key = keys.data_key(KeyPurpose::Audit).map_err(AuditError::keys)?;
        let current = (key.id(), aead_key(key.bytes())?);
        Ok(Sealer {
            keys,
            current,
            old: HashMap::new(),
            rng: SystemRandom::new(),
        })
    }

    /// The id of the key new records are sealed with.
    pub(crate) fn key_id(&self) -> &KeyId {
        &self.current.0
    }

    /// Encrypts `plain` (the record's canonical encoding) for row `seq`.
    pub(crate) fn seal(&self, seq: Seq, plain: &[u8]) -> Result<Vec<u8>, AuditError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| AuditError::Crypto)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(NONCE_LEN);
        let tag = self
            .current
            .1
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(seq, &self.current.0)),
                body,
            )
            .map_err(|_| AuditError::Crypto)?;
        let _ = head;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts a sealed blob of row `seq` into `out`. `Ok(false)` if it does not
    /// authenticate (tampered, moved, or the wrong key).
    pub(crate) fn open(
        &mut self,
        seq: Seq,
        key_id: &str,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, AuditError> {
        let Ok(id) = KeyId::parse(key_id) else {
            return Ok(false);
        };
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Ok(false);
        }
        let key = if id == self.current.0 {
            &self.current.1
        } else {
            if !self.old.contains_key(&id) {
                let k = match self.keys.data_key_by_id(KeyPurpose::Audit, &id) {
                    Ok(k) => k,
                    // Sealed under a key this store never had: cannot authenticate.
                    Err(KeyStoreError::UnknownKey { .. }) => return Ok(false),
                    Err(e) => return Err(AuditError::keys(e)),
                };
                self.old.insert(id.clone(), aead_key(k.bytes())?);
            }
            match self.old.get(&id) {
                Some(k) => k,
                None => return Ok(false),
            }
        };
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let Ok(nonce) = Nonce::try_assume_unique_for_key(nonce) else {
            return Ok(false);
        };
        out.clear();
        out.extend_from_slice(body);
        match key.open_in_place(nonce, Aad::from(aad(seq, &id)), out) {
            Ok(plain) => {
                let n = plain.len();
                out.truncate(n);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }
}
