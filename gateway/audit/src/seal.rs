//! Encryption at rest (SC-28): each record's canonical encoding, AES-256-GCM sealed under the
//! key store's audit key. See the crate README for the threat model.
//!
//! ```text
//! sealed = nonce (12 bytes) || AES-256-GCM(key, nonce, aad, postcard(record))
//! nonce  = prefix (8 random bytes, new per sealer and whenever the counter wraps)
//!          || counter (4 bytes, big-endian, +1 per record)
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
///
/// Nonces are a 64-bit random prefix drawn when the sealer is made (and again whenever the
/// 32-bit counter behind it wraps) followed by that counter: unique within a sealer without
/// a `getrandom` call per record, and across sealers (restarts of the gateway under the same
/// key) unless two draws of the 64-bit prefix collide (birthday bound: 2^-33 after 2^16
/// restarts, each good for 2^32 records).
pub(crate) struct Sealer {
    keys: Arc<dyn KeyStore>,
    current: (KeyId, LessSafeKey),
    old: HashMap<KeyId, LessSafeKey>,
    rng: SystemRandom,
    prefix: [u8; 8],
    counter: u32,
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
        let rng = SystemRandom::new();
        let mut prefix = [0u8; 8];
        rng.fill(&mut prefix).map_err(|_| AuditError::Crypto)?;
        Ok(Sealer {
            keys,
            current,
            old: HashMap::new(),
            rng,
            prefix,
            counter: 0,
        })
    }

    /// The id of the key new records are sealed with.
    pub(crate) fn key_id(&self) -> &KeyId {
        &self.current.0
    }

    /// Encrypts `plain` (the record's canonical encoding) for row `seq`.
    pub(crate) fn seal(&mut self, seq: Seq, plain: &[u8]) -> Result<Vec<u8>, AuditError> {
        let nonce = self.next_nonce()?;
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

    /// The next nonce: prefix || counter; a fresh random prefix once the counter wraps.
    fn next_nonce(&mut self) -> Result<[u8; NONCE_LEN], AuditError> {
        if self.counter == u32::MAX {
            self.rng
                .fill(&mut self.prefix)
                .map_err(|_| AuditError::Crypto)?;
            self.counter = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.prefix);
        nonce[8..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Ok(nonce)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use gatehouse_board::SoftwareKeyStore;

    fn sealer(dir: &tempfile::TempDir) -> Sealer {
        let keys = SoftwareKeyStore::open_or_create(&dir.path().join("keys")).unwrap();
        Sealer::new(Arc::new(keys)).unwrap()
    }

    /// Nonces never repeat within a sealer: a counter under a random prefix, and a fresh
    /// prefix when the counter wraps; every sealed record still opens.
    #[test]
    fn nonces_count_up_and_the_prefix_changes_when_the_counter_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sealer(&dir);
        let a = s.seal(1, b"first").unwrap();
        let b = s.seal(2, b"second").unwrap();
        assert_eq!(a[..8], b[..8], "one prefix per sealer");
        assert_eq!(a[8..12], 0u32.to_be_bytes());
        assert_eq!(b[8..12], 1u32.to_be_bytes());
        s.counter = u32::MAX;
        let c = s.seal(3, b"third").unwrap();
        assert_ne!(c[..8], a[..8], "a new prefix after the counter wrapped");
        assert_eq!(c[8..12], 0u32.to_be_bytes());
        let id = s.key_id().as_str().to_owned();
        let mut out = Vec::new();
        for (seq, sealed, plain) in [
            (1, &a, &b"first"[..]),
            (2, &b, b"second"),
            (3, &c, b"third"),
        ] {
            assert!(s.open(seq, &id, sealed, &mut out).unwrap());
            assert_eq!(out, plain);
        }
        // A second sealer (a restart) draws another prefix.
        let mut again = sealer(&dir);
        assert_ne!(again.seal(1, b"x").unwrap()[..8], a[..8]);
    }
}
