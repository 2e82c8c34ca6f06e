//! [`TpmKeyStore`]: provisioning, opening, unsealing, rotation and signing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use gatehouse_board::{KeyId, KeyPurpose, DATA_KEY_LEN};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use crate::error::TpmError;
use crate::state::{self, DirLock, Index, PurposeKeys};
use crate::tpm::{self, Blob, Primary, Tpm};
use crate::{der, TpmInfo};

/// Name of the signature scheme of [`TpmKeyStore::sign_der`]: ECDSA over NIST P-256 with
/// SHA-256, signature as a DER `Ecdsa-Sig-Value` (RFC 3279), public key as an uncompressed
/// SEC1 point (65 bytes).
pub const SIGNATURE_SCHEME: &str = "ecdsa-p256-sha256";

/// Highest PCR index of a PC-client TPM.
const MAX_PCR: u8 = 23;

/// How to open the store. The default binds nothing to PCRs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TpmOptions {
    /// PCRs of the SHA-256 bank that the sealed data keys and the signing key are bound to
    /// (TPM2_PolicyPCR with the values at provisioning time). Empty: no PCR binding.
    ///
    /// Recorded at provisioning; opening an existing store with a different selection is
    /// an error ([`TpmError::PolicyMismatch`]). When the PCR values change (another boot
    /// chain, firmware update, Secure Boot keys), unsealing and signing fail with
    /// [`TpmError::PcrPolicyFailed`] until the measured state is back.
    pub pcr_policy: Vec<u8>,
}

impl TpmOptions {
    /// Options binding the keys to `pcrs` (SHA-256 bank), for example `[7]` (Secure Boot
    /// state) or `[0, 2, 4, 7]`.
    pub fn with_pcr_policy(pcrs: &[u8]) -> TpmOptions {
        TpmOptions {
            pcr_policy: pcrs.to_vec(),
        }
    }

    /// The PCR selection sorted, checked for range and duplicates.
    fn validated_pcrs(&self) -> Result<Vec<u8>, TpmError> {
        let mut pcrs = self.pcr_policy.clone();
        pcrs.sort_unstable();
        let distinct = pcrs.windows(2).all(|w| w[0] != w[1]);
        if !distinct || pcrs.iter().any(|&p| p > MAX_PCR) {
            return Err(TpmError::InvalidPcrSelection(self.pcr_policy.clone()));
        }
        Ok(pcrs)
    }
}

/// A 256-bit data key unsealed by the TPM. The bytes are zeroized on drop and never
/// printed: `Debug` shows the purpose and id only.
pub struct UnsealedKey {
    purpose: KeyPurpose,
    id: KeyId,
    bytes: Zeroizing<[u8; DATA_KEY_LEN]>,
}

impl UnsealedKey {
    /// The raw key. Hand it straight to the cipher.
    pub fn bytes(&self) -> &[u8; DATA_KEY_LEN] {
        &self.bytes
    }

    /// The key's id ([`KeyId::for_data_key`]).
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// What the key is for.
    pub fn purpose(&self) -> KeyPurpose {
        self.purpose
    }

    /// Consumes the key, giving up the zeroizing bytes (for wrapping into another type).
    pub fn into_bytes(self) -> Zeroizing<[u8; DATA_KEY_LEN]> {
        self.bytes
    }
}

impl fmt::Debug for UnsealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsealedKey")
            .field("purpose", &self.purpose)
            .field("id", &self.id.as_str())
            .finish_non_exhaustive()
    }
}

/// The TPM 2.0 key store. See the crate documentation for the key hierarchy.
///
/// Every operation opens its own TPM connection, re-creates the primary key, checks that
/// it is the one the state directory was made with, does its work, and flushes every
/// handle before returning. Operations of one store are serialised by a mutex; rotation is
/// also serialised across processes by a lock file.
pub struct TpmKeyStore {
    tcti: String,
    dir: PathBuf,
    pcrs: Vec<u8>,
    primary_name: String,
    signing_public: Vec<u8>,
    signing_id: KeyId,
    info: TpmInfo,
    /// One TPM operation at a time from this store: without a resource manager the TPM has
    /// a handful of slots and the TCP simulator serves one connection at a time.
    tpm_lock: Mutex<()>,
}

impl fmt::Debug for TpmKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmKeyStore")
            .field("tcti", &self.tcti)
            .field("dir", &self.dir)
            .field("pcr_policy", &self.pcrs)
            .field("signing_key_id", &self.signing_id.as_str())
            .finish_non_exhaustive()
    }
}

impl TpmKeyStore {
    /// Opens the store in `state_dir` with default options (no PCR binding), provisioning
    /// a signing key and one sealed data key per [`KeyPurpose`] where missing.
    pub fn open_or_provision(tcti: &str, state_dir: &Path) -> Result<TpmKeyStore, TpmError> {
        TpmKeyStore::open_or_provision_with(tcti, state_dir, &TpmOptions::default())
    }

    /// Opens the store in `state_dir` through `tcti` (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`, ...), provisioning what is missing.
    ///
    /// On an existing directory it refuses, without changing any file, when the primary
    /// key differs from the recorded one ([`TpmError::ForeignTpm`]), when the PCR policy
    /// differs ([`TpmError::PolicyMismatch`]), or when any recorded key fails to load or
    /// does not match its id. Every recorded data key is unsealed once here, so a damaged
    /// store fails at startup rather than at the first decryption.
    pub fn open_or_provision_with(
        tcti: &str,
        state_dir: &Path,
        options: &TpmOptions,
    ) -> Result<TpmKeyStore, TpmError> {
        let pcrs = options.validated_pcrs()?;
        state::ensure_private_dir(state_dir)?;
        let _lock = DirLock::acquire(state_dir)?;
        let mut tpm = Tpm::connect(tcti)?;
        let info = tpm.info()?;

        let existing = state::read_index(state_dir)?;
        if existing.is_none() && state::has_blobs(state_dir)? {
            return Err(TpmError::IndexMissing {
                dir: state_dir.to_owned(),
            });
        }
        let index = tpm.with_primary(|tpm, primary, name| {
            let name = hex::encode(name);
            match existing {
                Some(index) => {
                    if index.primary_name != name {
                        return Err(TpmError::ForeignTpm {
                            dir: state_dir.to_owned(),
                        });
                    }
                    if index.pcr_policy != pcrs {
                        return Err(TpmError::PolicyMismatch {
                            dir: state_dir.to_owned(),
                            recorded: index.pcr_policy,
                            requested: pcrs.clone(),
                        });
                    }
                    complete(tpm, primary, state_dir, index)
                }
                None => provision(tpm, primary, state_dir, name, &pcrs),
            }
        })?;

        let signing_blob = read_blob(state_dir, state::SIGNING_STEM)?;
        let signing_public = tpm::ecc_public_sec1(&signing_blob.public)?;
        let signing_id = KeyId::for_signing_key(&signing_public);
        if signing_id != index.signing_key {
            return Err(TpmError::CorruptState {
                path: state_dir.join(state::INDEX_FILE),
                reason: format!(
                    "it records signing key {} but signing.pub holds key {signing_id}",
                    index.signing_key
                ),
            });
        }
        let store = TpmKeyStore {
            tcti: tcti.to_owned(),
            dir: state_dir.to_owned(),
            pcrs,
            primary_name: index.primary_name.clone(),
            signing_public,
            signing_id,
            info,
            tpm_lock: Mutex::new(()),
        };
        // Check every recorded key (and the TPM's willingness to release it) now.
        drop(tpm);
        for (purpose, keys) in &index.purposes {
            for id in &keys.keys {
                store.unseal(*purpose, id)?;
            }
        }
        tracing::info!(
            dir = %state_dir.display(),
            manufacturer = %store.info.manufacturer,
            signing_key_id = %store.signing_id,
            pcr_policy = ?store.pcrs,
            "TPM key store opened"
        );
        Ok(store)
    }

    /// Manufacturer, vendor strings and firmware version of the TPM, read at open.
    pub fn info(&self) -> TpmInfo {
        self.info.clone()
    }

    /// The signature scheme of [`TpmKeyStore::sign_der`]: [`SIGNATURE_SCHEME`]. The TPM 2.0
    /// specification has no Ed25519 and few TPMs implement EdDSA, so the TPM store signs
    /// with ECDSA P-256 where the software store uses Ed25519.
    pub fn signature_scheme(&self) -> &'static str {
        SIGNATURE_SCHEME
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The PCRs (SHA-256 bank) the keys are bound to; empty when there is no PCR policy.
    pub fn pcr_policy(&self) -> &[u8] {
        &self.pcrs
    }

    /// The current data key for `purpose`, unsealed by the TPM.
    pub fn current_key(&self, purpose: KeyPurpose) -> Result<UnsealedKey, TpmError> {
        let index = self.index()?;
        let current = purpose_keys(&index, purpose, &self.dir)?.current.clone();
        self.unseal(purpose, &current)
    }

    /// A data key for `purpose` by id, current or older.
    pub fn key_by_id(&self, purpose: KeyPurpose, id: &KeyId) -> Result<UnsealedKey, TpmError> {
        let index = self.index()?;
        if !purpose_keys(&index, purpose, &self.dir)?.keys.contains(id) {
            return Err(TpmError::UnknownKey {
                purpose,
                id: id.clone(),
            });
        }
        self.unseal(purpose, id)
    }

    /// Ids of every key for `purpose`, oldest first (the last one is current).
    pub fn data_key_ids(&self, purpose: KeyPurpose) -> Result<Vec<KeyId>, TpmError> {
        let index = self.index()?;
        Ok(purpose_keys(&index, purpose, &self.dir)?.keys.clone())
    }

    /// Seals a new random data key for `purpose`, makes it current and returns its id.
    /// Older keys stay on disk and retrievable by id.
    pub fn rotate(&self, purpose: KeyPurpose) -> Result<KeyId, TpmError> {
        let _tpm = self.lock();
        let _dir = DirLock::acquire(&self.dir)?;
        let mut index = self.index()?;
        let previous = purpose_keys(&index, purpose, &self.dir)?.current.clone();
        let mut tpm = Tpm::connect(&self.tcti)?;
        // Blob files first, index second: a crash in between leaves unused files only.
        let id = tpm.with_primary(|tpm, primary, name| {
            self.check_primary(name)?;
            create_data_key(tpm, primary, &self.dir, purpose, &self.pcrs)
        })?;
        let entry = index
            .purposes
            .entry(purpose)
            .or_insert_with(|| PurposeKeys {
                current: id.clone(),
                keys: Vec::new(),
            });
        entry.current = id.clone();
        entry.keys.push(id.clone());
        state::write_index(&self.dir, &index)?;
        tracing::info!(%purpose, new_key_id = %id, previous_key_id = %previous, "TPM data key rotated");
        Ok(id)
    }

    /// Signs SHA-256(`message`) with the TPM-resident ECDSA P-256 key; returns the DER
    /// `Ecdsa-Sig-Value` ([`SIGNATURE_SCHEME`]).
    pub fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, TpmError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let blob = read_blob(&self.dir, state::SIGNING_STEM)?;
        let _tpm = self.lock();
        let mut tpm = Tpm::connect(&self.tcti)?;
        tpm.with_primary(|tpm, primary, name| {
            self.check_primary(name)?;
            tpm.sign(primary, &blob, &self.pcrs, digest.as_ref())
                .map_err(|e| self.classify(e, || "the signing key".to_owned()))
        })
    }

    /// The signing key's public key as an uncompressed SEC1 point (`0x04 || X || Y`, 65
    /// bytes); this is what [`KeyId::for_signing_key`] hashes.
    pub fn signing_public_key_sec1(&self) -> &[u8] {
        &self.signing_public
    }

    /// The signing key's public key as a DER `SubjectPublicKeyInfo` (for OpenSSL and
    /// other offline verifiers).
    pub fn signing_public_key_spki_der(&self) -> Vec<u8> {
        der::p256_spki(&self.signing_public)
    }

    /// The signing key's id.
    pub fn signing_id(&self) -> &KeyId {
        &self.signing_id
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.tpm_lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn index(&self) -> Result<Index, TpmError> {
        state::read_index(&self.dir)?.ok_or_else(|| TpmError::CorruptState {
            path: self.dir.join(state::INDEX_FILE),
            reason: "the index file has disappeared".to_owned(),
        })
    }

    fn check_primary(&self, name: &[u8]) -> Result<(), TpmError> {
        if hex::encode(name) == self.primary_name {
            Ok(())
        } else {
            Err(TpmError::ForeignTpm {
                dir: self.dir.clone(),
            })
        }
    }

    fn unseal(&self, purpose: KeyPurpose, id: &KeyId) -> Result<UnsealedKey, TpmError> {
        let stem = state::data_key_stem(purpose, id);
        let blob = read_blob(&self.dir, &stem)?;
        let _tpm = self.lock();
        let mut tpm = Tpm::connect(&self.tcti)?;
        let data = tpm.with_primary(|tpm, primary, name| {
            self.check_primary(name)?;
            tpm.unseal(primary, &blob, &self.pcrs)
                .map_err(|e| self.classify(e, || format!("the {purpose} key {id}")))
        })?;
        let path = self.dir.join(format!("{stem}.priv"));
        let bytes: [u8; DATA_KEY_LEN] =
            data.as_slice()
                .try_into()
                .map_err(|_| TpmError::CorruptState {
                    path: path.clone(),
                    reason: "the sealed object does not hold a 32-byte key".to_owned(),
                })?;
        let bytes = Zeroizing::new(bytes);
        if KeyId::for_data_key(purpose, &bytes) != *id {
            return Err(TpmError::CorruptState {
                path,
                reason: format!("the sealed key does not match id {id}"),
            });
        }
        Ok(UnsealedKey {
            purpose,
            id: id.clone(),
            bytes,
        })
    }

    /// Turns the TPM's response codes for a foreign blob or a failed PCR policy into the
    /// errors that say what happened.
    fn classify(&self, err: TpmError, what: impl FnOnce() -> String) -> TpmError {
        match err.response_kind() {
            Some(Tss2ResponseCodeKind::Integrity) => TpmError::ForeignTpm {
                dir: self.dir.clone(),
            },
            Some(Tss2ResponseCodeKind::PolicyFail) if !self.pcrs.is_empty() => {
                TpmError::PcrPolicyFailed {
                    what: what(),
                    pcrs: self.pcrs.clone(),
                }
            }
            _ => err,
        }
    }
}

/// First provisioning of an empty directory: signing key, one data key per purpose, and
/// the index last (its presence means "provisioned").
fn provision(
    tpm: &mut Tpm,
    primary: Primary,
    dir: &Path,
    primary_name: String,
    pcrs: &[u8],
) -> Result<Index, TpmError> {
    let policy = if pcrs.is_empty() {
        None
    } else {
        Some(tpm.pcr_policy_digest(pcrs)?)
    };
    let signing = tpm.create_signing_key(primary, policy.as_ref())?;
    let signing_public = tpm::ecc_public_sec1(&signing.public)?;
    write_blob(dir, state::SIGNING_STEM, &signing)?;
    let mut index = Index {
        format: state::INDEX_FORMAT,
        primary_name,
        pcr_policy: pcrs.to_vec(),
        signing_key: KeyId::for_signing_key(&signing_public),
        purposes: BTreeMap::new(),
    };
    for purpose in KeyPurpose::ALL {
        let id = create_data_key(tpm, primary, dir, purpose, pcrs)?;
        index.purposes.insert(
            purpose,
            PurposeKeys {
                current: id.clone(),
                keys: vec![id],
            },
        );
    }
    state::write_index(dir, &index)?;
    tracing::info!(dir = %dir.display(), "TPM key store provisioned");
    Ok(index)
}

/// Adds keys for purposes this version knows but the index does not (a newer release
/// added a purpose).
fn complete(
    tpm: &mut Tpm,
    primary: Primary,
    dir: &Path,
    mut index: Index,
) -> Result<Index, TpmError> {
    let mut changed = false;
    for purpose in KeyPurpose::ALL {
        if index.purposes.contains_key(&purpose) {
            continue;
        }
        let pcrs = index.pcr_policy.clone();
        let id = create_data_key(tpm, primary, dir, purpose, &pcrs)?;
        index.purposes.insert(
            purpose,
            PurposeKeys {
                current: id.clone(),
                keys: vec![id],
            },
        );
        changed = true;
    }
    if changed {
        state::write_index(dir, &index)?;
    }
    Ok(index)
}

/// Generates and seals a new data key, writes its blobs, returns its id.
fn create_data_key(
    tpm: &mut Tpm,
    primary: Primary,
    dir: &Path,
    purpose: KeyPurpose,
    pcrs: &[u8],
) -> Result<KeyId, TpmError> {
    let policy = if pcrs.is_empty() {
        None
    } else {
        Some(tpm.pcr_policy_digest(pcrs)?)
    };
    let key = tpm.random_key()?;
    let blob = tpm.seal(primary, &key, policy.as_ref())?;
    let id = KeyId::for_data_key(purpose, &key);
    write_blob(dir, &state::data_key_stem(purpose, &id), &blob)?;
    Ok(id)
}

fn purpose_keys<'a>(
    index: &'a Index,
    purpose: KeyPurpose,
    dir: &Path,
) -> Result<&'a PurposeKeys, TpmError> {
    index
        .purposes
        .get(&purpose)
        .ok_or_else(|| TpmError::CorruptState {
            path: dir.join(state::INDEX_FILE),
            reason: format!("no {purpose} key recorded"),
        })
}

fn write_blob(dir: &Path, stem: &str, blob: &Blob) -> Result<(), TpmError> {
    let public = blob
        .public
        .marshall()
        .map_err(TpmError::tpm("marshal public area"))?;
    state::write_atomic(dir, &format!("{stem}.pub"), &public)?;
    state::write_atomic(dir, &format!("{stem}.priv"), blob.private.value())
}

fn read_blob(dir: &Path, stem: &str) -> Result<Blob, TpmError> {
    let pub_path = dir.join(format!("{stem}.pub"));
    let priv_path = dir.join(format!("{stem}.priv"));
    let public = state::read_required(&pub_path, state::MAX_BLOB_LEN)?;
    let private = state::read_required(&priv_path, state::MAX_BLOB_LEN)?;
    let public = Public::unmarshall(&public).map_err(|e| TpmError::CorruptState {
        path: pub_path,
        reason: format!("not a TPM public area: {e}"),
    })?;
    let private = Private::try_from(private).map_err(|e| TpmError::CorruptState {
        path: priv_path,
        reason: format!("not a TPM private area: {e}"),
    })?;
    Ok(Blob { public, private })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn pcr_selection_is_sorted_and_checked() {
        assert_eq!(
            TpmOptions::with_pcr_policy(&[7, 0, 4])
                .validated_pcrs()
                .unwrap(),
            vec![0, 4, 7]
        );
        assert!(TpmOptions::default().validated_pcrs().unwrap().is_empty());
        for bad in [&[7u8, 7][..], &[24], &[0, 255]] {
            assert!(matches!(
                TpmOptions::with_pcr_policy(bad).validated_pcrs(),
                Err(TpmError::InvalidPcrSelection(_))
            ));
        }
    }

    #[test]
    fn unsealed_key_debug_shows_id_not_bytes() {
        let bytes = Zeroizing::new([0xab; DATA_KEY_LEN]);
        let id = KeyId::for_data_key(KeyPurpose::Vault, &bytes);
        let key = UnsealedKey {
            purpose: KeyPurpose::Vault,
            id: id.clone(),
            bytes,
        };
        let debug = format!("{key:?}");
        assert!(debug.contains(id.as_str()), "{debug}");
        assert!(!debug.contains("171") && !debug.contains("abab"), "{debug}");
    }
}
