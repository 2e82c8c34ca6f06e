//! The software key store: keys in files under one directory. Development and tests only.
//!
//! Layout of the directory (mode 0700; every file 0600, written atomically):
//! - `index.json` — which key ids exist per purpose and which one is current, and the id of
//!   the signing key;
//! - `<purpose>-<key id>.key` — 32 raw key bytes, one file per data key, never deleted;
//! - `signing.ed25519.pk8` — the Ed25519 signing key as a PKCS#8 v2 document;
//! - `.lock` — the `flock(2)` lock taken while creating or rotating keys.
//!
//! Every data-key lookup reads the files afresh, so a key rotated by another process (the
//! CLI) is visible to a running gateway immediately. Each key file is checked against the id
//! it is stored under, so a swapped or damaged file is an error rather than a wrong key.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fsutil::{self, DirLock};
use crate::keys::DATA_KEY_LEN;
use crate::{Backend, DataKey, KeyId, KeyPurpose, KeyStore, KeyStoreError};

const INDEX_FILE: &str = "index.json";
const SIGNING_FILE: &str = "signing.ed25519.pk8";
const INDEX_FORMAT: u32 = 1;
/// Upper bound on the index size; a real index is a few hundred bytes per rotation.
const MAX_INDEX_LEN: usize = 1 << 20;
/// Upper bound on the PKCS#8 document (an Ed25519 v2 document is 83 bytes).
const MAX_PKCS8_LEN: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    format: u32,
    signing_key: KeyId,
    purposes: BTreeMap<KeyPurpose, PurposeKeys>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeKeys {
    current: KeyId,
    /// Every key of the purpose, oldest first; includes `current`.
    keys: Vec<KeyId>,
}

/// Key store backed by files in a directory. **Development only**: the keys are protected by
/// file permissions alone. Opening it logs a warning saying so.
pub struct SoftwareKeyStore {
    dir: PathBuf,
    rng: SystemRandom,
    signing: Ed25519KeyPair,
    signing_id: KeyId,
    /// Serialises rotation within this process; [`DirLock`] does so across processes.
    rotate_lock: Mutex<()>,
}

impl fmt::Debug for SoftwareKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKeyStore")
            .field("dir", &self.dir)
            .field("signing_key_id", &self.signing_id.as_str())
            .finish_non_exhaustive()
    }
}

impl SoftwareKeyStore {
    /// Opens the key store in `dir`, creating the directory (0700), a signing key and one
    /// data key per [`KeyPurpose`] where missing.
    ///
    /// Refuses to open when the directory or any key file is accessible to group or others,
    /// is a symlink, or when a key file does not match the id it is recorded under.
    pub fn open_or_create(dir: &Path) -> Result<SoftwareKeyStore, KeyStoreError> {
        tracing::warn!(
            dir = %dir.display(),
            "using the SOFTWARE key store: keys are plain files protected only by file \
             permissions; development and testing only, never in production"
        );
        fsutil::ensure_private_dir(dir)?;
        let _lock = DirLock::acquire(dir)?;
        let rng = SystemRandom::new();
        let index_path = dir.join(INDEX_FILE);

        let mut index = read_index(&index_path)?;
        let mut changed = false;

        let signing = match load_signing_key(dir)? {
            Some(pair) => pair,
            None => {
                if index.is_some() {
                    return Err(KeyStoreError::CorruptIndex {
                        path: index_path,
                        reason: format!("the index exists but {SIGNING_FILE} is missing"),
                    });
                }
                let doc =
                    Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyStoreError::Random)?;
                let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
                fsutil::write_atomic(dir, SIGNING_FILE, &pkcs8)?;
                Ed25519KeyPair::from_pkcs8(&pkcs8)
                    .map_err(|e| KeyStoreError::InvalidSigningKey(e.to_string()))?
            }
        };
        let signing_id = KeyId::for_signing_key(signing.public_key().as_ref());

        let index = match index.as_mut() {
            Some(existing) => {
                if existing.signing_key != signing_id {
                    return Err(KeyStoreError::CorruptIndex {
                        path: index_path,
                        reason: format!(
                            "it records signing key {} but {SIGNING_FILE} holds key {signing_id}",
                            existing.signing_key
                        ),
                    });
                }
                existing
            }
            None => {
                changed = true;
                index.insert(Index {
                    format: INDEX_FORMAT,
                    signing_key: signing_id.clone(),
                    purposes: BTreeMap::new(),
                })
            }
        };

        for purpose in KeyPurpose::ALL {
            if let Entry::Vacant(slot) = index.purposes.entry(purpose) {
                let id = create_data_key(dir, &rng, purpose)?;
                slot.insert(PurposeKeys {
                    current: id.clone(),
                    keys: vec![id],
                });
                changed = true;
            }
        }

        // Check every recorded key now, so a damaged store fails at startup rather than at
        // the first decryption.
        for (purpose, keys) in &index.purposes {
            for id in &keys.keys {
                load_data_key(dir, *purpose, id)?;
            }
        }
        if changed {
            write_index(dir, index)?;
        } else {
            fsutil::check_private_file(&index_path)?;
        }
        tracing::info!(dir = %dir.display(), signing_key_id = %signing_id, "software key store opened");

        Ok(SoftwareKeyStore {
            dir: dir.to_owned(),
            rng,
            signing,
            signing_id,
            rotate_lock: Mutex::new(()),
        })
    }

    /// The directory holding the keys.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ids of every key for `purpose`, oldest first (the last one is current).
    pub fn data_key_ids(&self, purpose: KeyPurpose) -> Result<Vec<KeyId>, KeyStoreError> {
        let index = self.index()?;
        Ok(purpose_keys(&index, purpose, &self.index_path())?
            .keys
            .clone())
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }

    fn index(&self) -> Result<Index, KeyStoreError> {
        let path = self.index_path();
        read_index(&path)?.ok_or_else(|| KeyStoreError::CorruptIndex {
            path,
            reason: "the index file has disappeared".to_owned(),
        })
    }
}

impl KeyStore for SoftwareKeyStore {
    fn backend(&self) -> Backend {
        Backend::Software
    }

    fn data_key(&self, purpose: KeyPurpose) -> Result<DataKey, KeyStoreError> {
        let index = self.index()?;
        let current = &purpose_keys(&index, purpose, &self.index_path())?.current;
        load_data_key(&self.dir, purpose, current)
    }

    fn data_key_by_id(&self, purpose: KeyPurpose, id: &KeyId) -> Result<DataKey, KeyStoreError> {
        load_data_key(&self.dir, purpose, id)
    }

    fn rotate_data_key(&self, purpose: KeyPurpose) -> Result<KeyId, KeyStoreError> {
        let _local = self
            .rotate_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _lock = DirLock::acquire(&self.dir)?;
        let mut index = self.index()?;
        let previous = purpose_keys(&index, purpose, &self.index_path())?
            .current
            .clone();
        // Key file first, index second: a crash in between leaves an unused key file only.
        let id = create_data_key(&self.dir, &self.rng, purpose)?;
        let entry = index
            .purposes
            .entry(purpose)
            .or_insert_with(|| PurposeKeys {
                current: id.clone(),
                keys: Vec::new(),
            });
        entry.current = id.clone();
        entry.keys.push(id.clone());
        write_index(&self.dir, &index)?;
        tracing::info!(%purpose, new_key_id = %id, previous_key_id = %previous, "data key rotated");
        Ok(id)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.signing.sign(message).as_ref().to_vec())
    }

    fn signing_public_key(&self) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.signing.public_key().as_ref().to_vec())
    }

    fn signing_key_id(&self) -> Result<KeyId, KeyStoreError> {
        Ok(self.signing_id.clone())
    }
}

fn key_file_name(purpose: KeyPurpose, id: &KeyId) -> String {
    format!("{purpose}-{id}.key")
}

fn purpose_keys<'a>(
    index: &'a Index,
    purpose: KeyPurpose,
    path: &Path,
) -> Result<&'a PurposeKeys, KeyStoreError> {
    index
        .purposes
        .get(&purpose)
        .ok_or_else(|| KeyStoreError::CorruptIndex {
            path: path.to_owned(),
            reason: format!("no {purpose} keys recorded"),
        })
}

fn read_index(path: &Path) -> Result<Option<Index>, KeyStoreError> {
    let Some(bytes) = fsutil::read_private(path, MAX_INDEX_LEN)? else {
        return Ok(None);
    };
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| KeyStoreError::CorruptIndex {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if index.format != INDEX_FORMAT {
        return Err(KeyStoreError::CorruptIndex {
            path: path.to_owned(),
            reason: format!(
                "unsupported format {} (expected {INDEX_FORMAT})",
                index.format
            ),
        });
    }
    for (purpose, keys) in &index.purposes {
        if !keys.keys.contains(&keys.current) {
            return Err(KeyStoreError::CorruptIndex {
                path: path.to_owned(),
                reason: format!(
                    "current {purpose} key {} is not in its key list",
                    keys.current
                ),
            });
        }
    }
    Ok(Some(index))
}

fn write_index(dir: &Path, index: &Index) -> Result<(), KeyStoreError> {
    let path = dir.join(INDEX_FILE);
    let json = serde_json::to_vec_pretty(index).map_err(|e| KeyStoreError::CorruptIndex {
        path,
        reason: format!("cannot serialise: {e}"),
    })?;
    fsutil::write_atomic(dir, INDEX_FILE, &json)
}

fn create_data_key(
    dir: &Path,
    rng: &SystemRandom,
    purpose: KeyPurpose,
) -> Result<KeyId, KeyStoreError> {
    let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
    rng.fill(bytes.as_mut())
        .map_err(|_| KeyStoreError::Random)?;
    let id = KeyId::for_data_key(purpose, &bytes);
    fsutil::write_atomic(dir, &key_file_name(purpose, &id), bytes.as_ref())?;
    Ok(id)
}

fn load_data_key(dir: &Path, purpose: KeyPurpose, id: &KeyId) -> Result<DataKey, KeyStoreError> {
    let path = dir.join(key_file_name(purpose, id));
    let Some(raw) = fsutil::read_private(&path, DATA_KEY_LEN)? else {
        return Err(KeyStoreError::UnknownKey {
            purpose,
            id: id.clone(),
        });
    };
    let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
    if raw.len() != DATA_KEY_LEN {
        return Err(KeyStoreError::CorruptKey {
            path,
            reason: "wrong length (expected 32 bytes)",
        });
    }
    bytes.copy_from_slice(&raw);
    let key = DataKey::new(purpose, bytes);
    if key.id() != *id {
        return Err(KeyStoreError::CorruptKey {
            path,
            reason: "contents do not match the key id in its name",
        });
    }
    Ok(key)
}

fn load_signing_key(dir: &Path) -> Result<Option<Ed25519KeyPair>, KeyStoreError> {
    let path = dir.join(SIGNING_FILE);
    let Some(pkcs8) = fsutil::read_private(&path, MAX_PKCS8_LEN)? else {
        return Ok(None);
    };
    Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map(Some)
        .map_err(|e| KeyStoreError::InvalidSigningKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use ring::signature::{UnparsedPublicKey, ED25519};

    use super::*;

    fn store_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        (tmp, dir)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_sets_private_modes_and_one_key_per_purpose() {
        let (_tmp, dir) = store_dir();
        let store = SoftwareKeyStore::open_or_create(&dir).unwrap();
        assert_eq!(store.backend(), Backend::Software);
        assert_eq!(mode(&dir), 0o700);
        let mut files = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            assert_eq!(mode(&entry.path()), 0o600, "{:?}", entry.file_name());
            files += 1;
        }
        // index, signing key, lock, one key per purpose
        assert_eq!(files, 3 + KeyPurpose::ALL.len());
        for purpose in KeyPurpose::ALL {
            let key = store.data_key(purpose).unwrap();
            assert_eq!(key.purpose(), purpose);
            assert_eq!(store.data_key_ids(purpose).unwrap(), vec![key.id()]);
        }
        assert_ne!(
            store.data_key(KeyPurpose::Vault).unwrap().bytes(),
            store.data_key(KeyPurpose::Audit).unwrap().bytes()
        );
    }

    #[test]
    fn reopen_gives_same_keys_and_ids() {
        let (_tmp, dir) = store_dir();
        let first = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let vault = first.data_key(KeyPurpose::Vault).unwrap();
        let audit = first.data_key(KeyPurpose::Audit).unwrap();
        let public = first.signing_public_key().unwrap();
        let signing_id = first.signing_key_id().unwrap();
        drop(first);

        let second = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let vault2 = second.data_key(KeyPurpose::Vault).unwrap();
        assert_eq!(vault2.id(), vault.id());
        assert_eq!(vault2.bytes(), vault.bytes());
        assert_eq!(
            second.data_key(KeyPurpose::Audit).unwrap().bytes(),
            audit.bytes()
        );
        assert_eq!(second.signing_public_key().unwrap(), public);
        assert_eq!(second.signing_key_id().unwrap(), signing_id);
        assert_eq!(signing_id, KeyId::for_signing_key(&public));
    }

    #[test]
    fn rotation_keeps_old_key_retrievable_by_id() {
        let (_tmp, dir) = store_dir();
        let store = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let old = store.data_key(KeyPurpose::Vault).unwrap();
        let audit_before = store.data_key(KeyPurpose::Audit).unwrap().id();

        let new_id = store.rotate_data_key(KeyPurpose::Vault).unwrap();
        assert_ne!(new_id, old.id());
        let current = store.data_key(KeyPurpose::Vault).unwrap();
        assert_eq!(current.id(), new_id);
        assert_ne!(current.bytes(), old.bytes());

        let fetched = store.data_key_by_id(KeyPurpose::Vault, &old.id()).unwrap();
        assert_eq!(fetched.bytes(), old.bytes());
        assert_eq!(
            store.data_key_ids(KeyPurpose::Vault).unwrap(),
            vec![old.id(), new_id.clone()]
        );
        assert_eq!(
            store.data_key(KeyPurpose::Audit).unwrap().id(),
            audit_before
        );

        // A key id of another purpose is not found under this one.
        let err = store
            .data_key_by_id(KeyPurpose::Audit, &old.id())
            .unwrap_err();
        assert!(matches!(err, KeyStoreError::UnknownKey { .. }), "{err}");

        // Survives reopen, and another handle on the same directory sees the rotation.
        let other = SoftwareKeyStore::open_or_create(&dir).unwrap();
        assert_eq!(other.data_key(KeyPurpose::Vault).unwrap().id(), new_id);
        assert_eq!(
            other
                .data_key_by_id(KeyPurpose::Vault, &old.id())
                .unwrap()
                .bytes(),
            old.bytes()
        );
    }

    #[test]
    fn concurrent_rotations_lose_no_key() {
        let (_tmp, dir) = store_dir();
        let a = Arc::new(SoftwareKeyStore::open_or_create(&dir).unwrap());
        let b = Arc::new(SoftwareKeyStore::open_or_create(&dir).unwrap());
        let mut handles = Vec::new();
        for store in [a.clone(), b.clone(), a.clone(), b] {
            handles.push(std::thread::spawn(move || {
                (0..5)
                    .map(|_| store.rotate_data_key(KeyPurpose::Audit).unwrap())
                    .collect::<Vec<_>>()
            }));
        }
        let mut created: Vec<KeyId> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        created.sort();
        let mut recorded = a.data_key_ids(KeyPurpose::Audit).unwrap();
        assert_eq!(recorded.len(), 21);
        recorded.remove(0);
        recorded.sort();
        assert_eq!(recorded, created);
    }

    #[test]
    fn sign_verifies_with_public_key() {
        let (_tmp, dir) = store_dir();
        let store = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let public = store.signing_public_key().unwrap();
        assert_eq!(public.len(), 32);
        let message = b"audit chain head 42";
        let signature = store.sign(message).unwrap();
        assert_eq!(signature.len(), 64);
        let verifier = UnparsedPublicKey::new(&ED25519, &public);
        verifier.verify(message, &signature).unwrap();
        assert!(verifier.verify(b"audit chain head 43", &signature).is_err());
    }

    #[test]
    fn refuses_group_readable_key_file() {
        let (_tmp, dir) = store_dir();
        let store = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let id = store.data_key(KeyPurpose::Vault).unwrap().id();
        drop(store);
        let key_path = dir.join(key_file_name(KeyPurpose::Vault, &id));
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();

        let err = SoftwareKeyStore::open_or_create(&dir).unwrap_err();
        match &err {
            KeyStoreError::InsecurePermissions { path, mode } => {
                assert_eq!(path, &key_path);
                assert_eq!(*mode, 0o644);
            }
            other => panic!("unexpected error {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("0644") && message.contains("group or others"),
            "{message}"
        );
    }

    #[test]
    fn refuses_open_directory_and_readable_signing_key() {
        let (_tmp, dir) = store_dir();
        drop(SoftwareKeyStore::open_or_create(&dir).unwrap());

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = SoftwareKeyStore::open_or_create(&dir).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::InsecurePermissions { mode: 0o755, .. }),
            "{err}"
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();

        let signing = dir.join(SIGNING_FILE);
        fs::set_permissions(&signing, fs::Permissions::from_mode(0o640)).unwrap();
        let err = SoftwareKeyStore::open_or_create(&dir).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::InsecurePermissions { mode: 0o640, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_symlinked_key_file() {
        let (tmp, dir) = store_dir();
        let store = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let id = store.data_key(KeyPurpose::Audit).unwrap().id();
        let key_path = dir.join(key_file_name(KeyPurpose::Audit, &id));
        let elsewhere = tmp.path().join("moved.key");
        fs::rename(&key_path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &key_path).unwrap();
        let err = store.data_key(KeyPurpose::Audit).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::UnexpectedFileType { .. }),
            "{err}"
        );
    }

    #[test]
    fn detects_damaged_or_swapped_key_file_without_printing_key() {
        let (_tmp, dir) = store_dir();
        let store = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let old = store.data_key(KeyPurpose::Vault).unwrap();
        let new_id = store.rotate_data_key(KeyPurpose::Vault).unwrap();
        let old_path = dir.join(key_file_name(KeyPurpose::Vault, &old.id()));
        let new_path = dir.join(key_file_name(KeyPurpose::Vault, &new_id));
        fs::copy(&new_path, &old_path).unwrap();

        let err = store
            .data_key_by_id(KeyPurpose::Vault, &old.id())
            .unwrap_err();
        assert!(matches!(err, KeyStoreError::CorruptKey { .. }), "{err}");
        let new_key = store.data_key(KeyPurpose::Vault).unwrap();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&hex::encode(new_key.bytes())), "{shown}");
        assert!(SoftwareKeyStore::open_or_create(&dir).is_err());

        fs::write(&old_path, [1u8; 31]).unwrap();
        let err = store
            .data_key_by_id(KeyPurpose::Vault, &old.id())
            .unwrap_err();
        assert!(matches!(err, KeyStoreError::CorruptKey { .. }), "{err}");
    }

    #[test]
    fn corrupt_index_is_a_clear_error() {
        let (_tmp, dir) = store_dir();
        drop(SoftwareKeyStore::open_or_create(&dir).unwrap());
        fs::write(dir.join(INDEX_FILE), b"{ not json").unwrap();
        let err = SoftwareKeyStore::open_or_create(&dir).unwrap_err();
        assert!(matches!(err, KeyStoreError::CorruptIndex { .. }), "{err}");
    }

    #[test]
    fn debug_does_not_show_key_material() {
        let (_tmp, dir) = store_dir();
        let store = SoftwareKeyStore::open_or_create(&dir).unwrap();
        let shown = format!("{store:?}");
        let key = store.data_key(KeyPurpose::Vault).unwrap();
        assert!(!shown.contains(&hex::encode(key.bytes())));
        let pkcs8 = fs::read(dir.join(SIGNING_FILE)).unwrap();
        // The Ed25519 seed sits at bytes 16..48 of the PKCS#8 v2 document.
        assert!(!shown.contains(&hex::encode(&pkcs8[16..48])));
        assert!(
            shown.contains(store.signing_key_id().unwrap().as_str()),
            "{shown}"
        );
    }
}
