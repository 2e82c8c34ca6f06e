//! The credential vault: upstream credentials (user and password per connection), write-only
//! from the operator's side and encrypted at rest.
//!
//! Credentials go in through [`Vault::put`] (the CLI or the console) and come out only to the
//! gateway itself ([`Vault::get`] when it logs in upstream, [`Vault::all_secrets`] for the leak
//! detector). Nothing here returns a credential to a client.
//!
//! # File format
//! One file: the magic `GHVAULT\0`, then a postcard-encoded list of entries. Each entry holds
//! the connection name in clear, the id of the [`KeyPurpose::Vault`] data key that sealed it,
//! a random 96-bit nonce, and the AES-256-GCM ciphertext of the postcard-encoded
//! `(user, password)`. The additional authenticated data is `"gatehouse-vault-v1\0"` followed by
//! the connection name, so an entry moved to another connection name fails to open.
//! Recording the key id per entry keeps entries readable after the key is rotated;
//! [`Vault::rekey`] re-seals them all under the current key.
//!
//! # Invariants
//! - Secrets never appear in `Debug`/`Display` output, logs or error messages; errors name
//!   the connection only. Plaintext buffers are zeroized.
//! - Every read decodes the file afresh, so a change made by another process is seen at once.
//! - Writes are atomic (temp file, fsync, rename, fsync of the directory; mode 0600).
//!
//! # Concurrent use (gateway and CLI on one vault file)
//! Every read-modify-write ([`Vault::put`], [`Vault::remove`], [`Vault::rekey`]) holds a
//! process-local mutex and an exclusive `flock(2)` on the sidecar file `<vault>.lock`, and
//! re-reads the file under that lock, so concurrent writers in any process serialise and no
//! update is lost. Readers take no lock: the rename makes each write appear whole, so a
//! reader sees either the old or the new file, never a mix. A reader that must agree with a
//! subsequent write should not assume the file unchanged in between.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use gatehouse_board::{KeyId, KeyPurpose, KeyStore, KeyStoreError};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// First bytes of every vault file.
const MAGIC: &[u8; 8] = b"GHVAULT\0";
/// Version of the encoding after the magic.
const FORMAT_VERSION: u32 = 1;
/// Prefix of the AEAD additional data; the connection name follows.
const AAD_PREFIX: &[u8] = b"gatehouse-vault-v1\0";
/// Largest vault file accepted; thousands of entries fit in far less.
const MAX_FILE_LEN: u64 = 16 << 20;
/// Longest connection name accepted (bytes).
pub const MAX_CONNECTION_NAME_LEN: usize = 255;
/// Longest upstream user or password accepted (bytes).
const MAX_FIELD_LEN: usize = 4096;

/// A secret string (an upstream password). Zeroized on drop; `Debug` and `Display` print
/// `[redacted]`. Deliberately not `PartialEq` (no accidental variable-time comparison).
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(secret.into()))
    }

    /// The secret itself. Pass it straight to where it is needed; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Secret {
        Secret::new(secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Credentials for logging in to an upstream target.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Upstream user name (not secret).
    pub user: String,
    /// Upstream password.
    pub password: Secret,
}

impl Credential {
    /// Builds a credential.
    pub fn new(user: impl Into<String>, password: Secret) -> Credential {
        Credential {
            user: user.into(),
            password,
        }
    }
}

/// Errors from the vault. They name connections and files, never a user's secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// A file-system operation failed.
    #[error("vault: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The vault file is accessible to group or others.
    #[error("vault: refusing {}: mode {mode:04o} gives group or others access (must be 0600)", path.display())]
    InsecurePermissions {
        /// The vault file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The vault file cannot be decoded.
    #[error("vault file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The vault file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An entry failed authentication: it was altered, moved from another connection name,
    /// or sealed with a different key than the one recorded.
    #[error(
        "vault entry for connection {connection:?} cannot be decrypted: it was tampered with, \
         moved from another connection, or the key does not match"
    )]
    EntryUnreadable {
        /// The connection whose entry failed.
        connection: String,
    },
    /// The key an entry needs could not be obtained from the key store.
    #[error("vault entry for connection {connection:?}: key {key_id} unavailable: {source}")]
    Key {
        /// The connection whose entry needs the key.
        connection: String,
        /// The key recorded on the entry.
        key_id: String,
        /// The key store's error.
        #[source]
        source: KeyStoreError,
    },
    /// The current vault key could not be obtained from the key store.
    #[error("vault: current vault key unavailable: {0}")]
    CurrentKey(#[source] KeyStoreError),
    /// A connection name that cannot be stored.
    #[error("invalid connection name {0:?}: must be 1 to 255 bytes without control characters")]
    InvalidConnectionName(String),
    /// A credential that cannot be stored (the message never includes the password).
    #[error("invalid credential for connection {connection:?}: {reason}")]
    InvalidCredential {
        /// The connection.
        connection: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Sealing an entry failed in the cipher.
    #[error("vault entry for connection {connection:?}: encryption failed")]
    Encryption {
        /// The connection being stored.
        connection: String,
    },
    /// The system random number generator failed.
    #[error("vault: the system random number generator failed")]
    Random,
}

/// One sealed entry as stored on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEntry {
    connection: String,
    key_id: KeyId,
    nonce: [u8; NONCE_LEN],
    /// AES-256-GCM ciphertext with the tag appended.
    ciphertext: Vec<u8>,
}

/// The file body after the magic.
#[derive(Debug, Default, Serialize, Deserialize)]
struct VaultFile {
    version: u32,
    entries: Vec<StoredEntry>,
}

/// Plaintext of an entry, borrowed while encoding.
#[derive(Serialize)]
struct PlainOut<'a> {
    user: &'a str,
    password: &'a str,
}

/// Plaintext of an entry, borrowed from the decrypted buffer while decoding.
#[derive(Deserialize)]
struct PlainIn<'a> {
    user: &'a str,
    password: &'a str,
}

/// The credential vault. See the crate documentation for format and concurrency.
pub struct Vault {
    path: PathBuf,
    lock_path: PathBuf,
    keys: Arc<dyn KeyStore>,
    rng: SystemRandom,
    write_lock: Mutex<()>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens the vault at `path`. The file need not exist yet (an empty vault); it is created
    /// on the first [`Vault::put`]. An existing file is decoded (not decrypted) now, so a
    /// corrupt or exposed file is reported at startup.
    pub fn open(path: &Path, keys: Arc<dyn KeyStore>) -> Result<Vault, VaultError> {
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".lock");
        let vault = Vault {
            path: path.to_owned(),
            lock_path: PathBuf::from(lock_name),
            keys,
            rng: SystemRandom::new(),
            write_lock: Mutex::new(()),
        };
        let file = vault.load()?;
        tracing::info!(
            path = %path.display(),
            entries = file.entries.len(),
            backend = %vault.keys.backend(),
            "vault opened"
        );
        Ok(vault)
    }

    /// The vault file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores (or replaces) the credential for `connection`, sealed with the current vault
    /// key.
    pub fn put(&self, connection: &str, cred: &Credential) -> Result<(), VaultError> {
        validate_connection(connection)?;
        validate_credential(connection, cred)?;
        let key = self
            .keys
            .data_key(KeyPurpose::Vault)
            .map_err(VaultError::CurrentKey)?;
        let entry = self.seal(connection, cred.user.as_str(), cred.password.expose(), &key)?;
        let replaced = self.modify(|entries| {
            let replaced = entries.insert(connection.to_owned(), entry).is_some();
            Ok((replaced, true))
        })?;
        tracing::info!(connection, replaced, key_id = %key.id(), "vault credential stored");
        Ok(())
    }

    /// The credential for `connection`, or `None` if there is none. Reads the file afresh.
    pub fn get(&self, connection: &str) -> Result<Option<Credential>, VaultError> {
        let file = self.load()?;
        file.entries
            .iter()
            .find(|e| e.connection == connection)
            .map(|e| self.open_entry(e))
            .transpose()
    }

    /// Removes the credential for `connection`; `false` if there was none.
    pub fn remove(&self, connection: &str) -> Result<bool, VaultError> {
        let removed = self.modify(|entries| {
            let removed = entries.remove(connection).is_some();
            Ok((removed, removed))
        })?;
        if removed {
            tracing::info!(connection, "vault credential removed");
        }
        Ok(removed)
    }

    /// Connection names with a stored credential, sorted.
    pub fn names(&self) -> Result<Vec<String>, VaultError> {
        let file = self.load()?;
        let mut names: Vec<String> = file.entries.into_iter().map(|e| e.connection).collect();
        names.sort();
        Ok(names)
    }

    /// `(connection, upstream user)` for every entry, sorted by connection. Decrypts every
    /// entry, so it also verifies the whole vault.
    pub fn entries(&self) -> Result<Vec<(String, String)>, VaultError> {
        let file = self.load()?;
        let mut out = file
            .entries
            .iter()
            .map(|e| Ok((e.connection.clone(), self.open_entry(e)?.user)))
            .collect::<Result<Vec<_>, VaultError>>()?;
        out.sort();
        Ok(out)
    }

    /// Every stored password, for the leak detector (responses are checked for them).
    pub fn all_secrets(&self) -> Result<Vec<Secret>, VaultError> {
        let file = self.load()?;
        file.entries
            .iter()
            .map(|e| Ok(self.open_entry(e)?.password))
            .collect()
    }

    /// Re-seals every entry not already under the current vault key (after
    /// [`KeyStore::rotate_data_key`]). Returns how many entries were re-sealed. Fails without
    /// writing anything if any entry cannot be opened.
    pub fn rekey(&self) -> Result<usize, VaultError> {
        let key = self
            .keys
            .data_key(KeyPurpose::Vault)
            .map_err(VaultError::CurrentKey)?;
        let current = key.id();
        let count = self.modify(|entries| {
            let mut count = 0;
            for entry in entries.values_mut() {
                if entry.key_id == current {
                    continue;
                }
                let cred = self.open_entry(entry)?;
                *entry = self.seal(&entry.connection, &cred.user, cred.password.expose(), &key)?;
                count += 1;
            }
            Ok((count, count > 0))
        })?;
        tracing::info!(rekeyed = count, key_id = %current, "vault re-sealed under the current key");
        Ok(count)
    }

    fn seal(
        &self,
        connection: &str,
        user: &str,
        password: &str,
        key: &gatehouse_board::DataKey,
    ) -> Result<StoredEntry, VaultError> {
        let plain = PlainOut { user, password };
        let mut buf = Zeroizing::new(Vec::with_capacity(
            user.len() + password.len() + 16 + AES_256_GCM.tag_len(),
        ));
        // Encoding into a pre-sized zeroizing buffer: no unzeroized copies of the plaintext.
        postcard::to_io(&plain, &mut *buf).map_err(|_| VaultError::Encryption {
            connection: connection.to_owned(),
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
        aead_key(key.bytes())
            .and_then(|sealing| {
                sealing.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(connection)),
                    &mut *buf,
                )
            })
            .map_err(|_| VaultError::Encryption {
                connection: connection.to_owned(),
            })?;
        Ok(StoredEntry {
            connection: connection.to_owned(),
            key_id: key.id(),
            nonce,
            ciphertext: buf.to_vec(),
        })
    }

    fn open_entry(&self, entry: &StoredEntry) -> Result<Credential, VaultError> {
        let key = self
            .keys
            .data_key_by_id(KeyPurpose::Vault, &entry.key_id)
            .map_err(|source| VaultError::Key {
                connection: entry.connection.clone(),
                key_id: entry.key_id.to_string(),
                source,
            })?;
        let unreadable = || VaultError::EntryUnreadable {
            connection: entry.connection.clone(),
        };
        let mut buf = Zeroizing::new(entry.ciphertext.clone());
        let plain = aead_key(key.bytes())
            .and_then(|opening| {
                opening.open_in_place(
                    Nonce::assume_unique_for_key(entry.nonce),
                    Aad::from(aad(&entry.connection)),
                    &mut buf,
                )
            })
            .map_err(|_| unreadable())?;
        // Authenticated, so a decoding failure means a bug or a key misuse, not tampering;
        // report it the same way and without the content.
        let decoded: PlainIn<'_> = postcard::from_bytes(plain).map_err(|_| unreadable())?;
        Ok(Credential {
            user: decoded.user.to_owned(),
            password: Secret::new(decoded.password),
        })
    }

    /// Reads and decodes the file; a missing file is an empty vault.
    fn load(&self) -> Result<VaultFile, VaultError> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(VaultFile {
                    version: FORMAT_VERSION,
                    entries: Vec::new(),
                })
            }
            Err(e) => return Err(self.io("open", e)),
        };
        let meta = file.metadata().map_err(|e| self.io("inspect", e))?;
        if !meta.is_file() {
            return Err(self.corrupt("not a regular file".to_owned()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(VaultError::InsecurePermissions {
                path: self.path.clone(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io("read", e))?;
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(self.corrupt(format!("larger than {MAX_FILE_LEN} bytes")));
        }
        self.decode(&bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<VaultFile, VaultError> {
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| self.corrupt("not a Gatehouse vault file (bad magic)".to_owned()))?;
        let (file, rest): (VaultFile, &[u8]) = postcard::take_from_bytes(body)
            .map_err(|e| self.corrupt(format!("cannot decode: {e}")))?;
        if !rest.is_empty() {
            return Err(self.corrupt(format!("{} trailing bytes", rest.len())));
        }
        if file.version != FORMAT_VERSION {
            return Err(self.corrupt(format!(
                "unsupported format version {} (expected {FORMAT_VERSION})",
                file.version
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for entry in &file.entries {
            if validate_connection(&entry.connection).is_err() {
                return Err(self.corrupt("an entry has an invalid connection name".to_owned()));
            }
            if !seen.insert(entry.connection.as_str()) {
                return Err(self.corrupt(format!(
                    "connection {:?} appears more than once",
                    entry.connection
                )));
            }
        }
        Ok(file)
    }

    /// Runs a read-modify-write of the entries under the process mutex and the file lock.
    /// `change` returns its result and whether the file must be rewritten; nothing is
    /// written if it fails.
    fn modify<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, StoredEntry>) -> Result<(T, bool), VaultError>,
    ) -> Result<T, VaultError> {
        let _local = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _file_lock = self.lock_file()?;
        let file = self.load()?;
        let mut entries: BTreeMap<String, StoredEntry> = file
            .entries
            .into_iter()
            .map(|e| (e.connection.clone(), e))
            .collect();
        let (result, write) = change(&mut entries)?;
        if write {
            let file = VaultFile {
                version: FORMAT_VERSION,
                entries: entries.into_values().collect(),
            };
            let mut bytes = MAGIC.to_vec();
            postcard::to_io(&file, &mut bytes)
                .map_err(|e| self.corrupt(format!("cannot encode: {e}")))?;
            self.write_atomic(&bytes)?;
        }
        Ok(result)
    }

    fn lock_file(&self) -> Result<File, VaultError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.lock_path)
            .map_err(|source| VaultError::Io {
                action: "open lock file",
                path: self.lock_path.clone(),
                source,
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            VaultError::Io {
                action: "lock",
                path: self.lock_path.clone(),
                source: e.into(),
            }
        })?;
        Ok(file)
    }

    /// Temp file next to the vault (fixed name: callers hold the file lock), fsync, rename,
    /// fsync of the directory.
    fn write_atomic(&self, bytes: &[u8]) -> Result<(), VaultError> {
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let err = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| VaultError::Io {
                action,
                path,
                source,
            }
        };
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("remove stale temp file", &tmp)(e)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(err("write", &tmp));
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &self.path).map_err(err("rename into place", &self.path))?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("sync directory", dir))
    }

    fn io(&self, action: &'static str, source: io::Error) -> VaultError {
        VaultError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: String) -> VaultError {
        VaultError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

fn aead_key(bytes: &[u8; 32]) -> Result<LessSafeKey, ring::error::Unspecified> {
    UnboundKey::new(&AES_256_GCM, bytes).map(LessSafeKey::new)
}

fn aad(connection: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + connection.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(connection.as_bytes());
    aad
}

fn validate_connection(connection: &str) -> Result<(), VaultError> {
    let ok = !connection.is_empty()
        && connection.len() <= MAX_CONNECTION_NAME_LEN
        && !connection.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidConnectionName(connection.to_owned()))
    }
}

fn validate_credential(connection: &str, cred: &Credential) -> Result<(), VaultError> {
    let invalid = |reason| VaultError::InvalidCredential {
        connection: connection.to_owned(),
        reason,
    };
    if cred.user.is_empty() {
        return Err(invalid("the user is empty"));
    }
    if cred.user.len() > MAX_FIELD_LEN || cred.password.expose().len() > MAX_FIELD_LEN {
        return Err(invalid("user or password longer than 4096 bytes"));
    }
    if cred.user.contains('\0') || cred.password.expose().contains('\0') {
        // The PostgreSQL wire protocol cannot carry a NUL inside either.
        return Err(invalid("user or password contains a NUL character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
