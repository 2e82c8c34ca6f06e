//! The state directory: the index and the TPM-wrapped blobs, as private files.
//!
//! Layout (directory 0700, every file 0600, written atomically: temp file, fsync, rename,
//! fsync of the directory):
//! - `index.json` — the name of the primary key the blobs were made under, the PCR policy,
//!   the signing key id, and per purpose the current data-key id and every id ever created;
//! - `signing.pub` / `signing.priv` — the ECDSA P-256 signing key, wrapped by the TPM;
//! - `<purpose>-<key id>.pub` / `.priv` — one sealed data object per data key, never deleted;
//! - `.lock` — the `flock(2)` lock held while provisioning or rotating.
//!
//! The `.priv` files are encrypted and integrity-protected by the TPM under the primary
//! key; they are useless without that TPM. They are still kept private.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gatehouse_board::{KeyId, KeyPurpose};
use serde::{Deserialize, Serialize};

use crate::error::TpmError;

/// The index file name.
pub(crate) const INDEX_FILE: &str = "index.json";
/// Current index format.
pub(crate) const INDEX_FORMAT: u32 = 1;
/// Upper bound on the index size; a real index is a few hundred bytes per rotation.
const MAX_INDEX_LEN: usize = 1 << 20;
/// Upper bound on a blob file. A marshalled `TPM2B_PUBLIC` or `TPM2B_PRIVATE` is at most
/// a few hundred bytes (TPM 2.0 Part 2, `TPMT_PUBLIC` / `_PRIVATE`); 4 KiB is generous.
pub(crate) const MAX_BLOB_LEN: usize = 4096;
/// Permission bits that must be clear on the directory and on every file.
const GROUP_OTHER_BITS: u32 = 0o077;

/// What the index records. Unknown fields are errors: a newer format must not be half-read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Index {
    pub(crate) format: u32,
    /// Hex of the TPM name (nameAlg || digest of the public area) of the primary storage
    /// key the blobs were created under. A different name means a different TPM or a
    /// cleared owner hierarchy.
    pub(crate) primary_name: String,
    /// PCRs (SHA-256 bank) the objects are bound to; empty when no PCR policy is used.
    pub(crate) pcr_policy: Vec<u8>,
    pub(crate) signing_key: KeyId,
    pub(crate) purposes: BTreeMap<KeyPurpose, PurposeKeys>,
}

/// The keys of one purpose.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurposeKeys {
    pub(crate) current: KeyId,
    /// Every key of the purpose, oldest first; includes `current`.
    pub(crate) keys: Vec<KeyId>,
}

/// Base name (without `.pub`/`.priv`) of the blob pair for a data key.
pub(crate) fn data_key_stem(purpose: KeyPurpose, id: &KeyId) -> String {
    format!("{purpose}-{id}")
}

/// Base name of the signing key's blob pair.
pub(crate) const SIGNING_STEM: &str = "signing";

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TpmError + 'a {
    move |source| TpmError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn check_mode(path: &Path, meta: &fs::Metadata) -> Result<(), TpmError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(TpmError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (0700) if missing and checks it is a real directory closed to group and
/// others.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), TpmError> {
    match fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("create directory", dir))?;
        }
        Err(e) => return Err(io_err("inspect", dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
    if !meta.is_dir() {
        return Err(TpmError::UnexpectedFileType {
            path: dir.to_owned(),
            expected: "directory",
        });
    }
    check_mode(dir, &meta)
}

/// Reads a private file of at most `max_len` bytes, refusing symlinks, non-regular files
/// and group/other access (checked on the open descriptor). `Ok(None)` if it is missing.
pub(crate) fn read_private(path: &Path, max_len: usize) -> Result<Option<Vec<u8>>, TpmError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(TpmError::UnexpectedFileType {
                path: path.to_owned(),
                expected: "regular file (not a symlink)",
            })
        }
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    if !meta.is_file() {
        return Err(TpmError::UnexpectedFileType {
            path: path.to_owned(),
            expected: "regular file",
        });
    }
    check_mode(path, &meta)?;
    let mut buf = Vec::new();
    let limit = u64::try_from(max_len + 1).unwrap_or(u64::MAX);
    file.take(limit)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    if buf.len() > max_len {
        return Err(TpmError::CorruptState {
            path: path.to_owned(),
            reason: format!("file larger than {max_len} bytes"),
        });
    }
    Ok(Some(buf))
}

/// Reads a file that must exist.
pub(crate) fn read_required(path: &Path, max_len: usize) -> Result<Vec<u8>, TpmError> {
    read_private(path, max_len)?.ok_or_else(|| TpmError::CorruptState {
        path: path.to_owned(),
        reason: "the file is missing".to_owned(),
    })
}

/// Writes `dir/name` atomically with mode 0600. Callers hold the [`DirLock`].
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TpmError> {
    let target = dir.join(name);
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale temp file", &tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp));
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Reads and parses the index; `Ok(None)` if there is none yet.
pub(crate) fn read_index(dir: &Path) -> Result<Option<Index>, TpmError> {
    let path = dir.join(INDEX_FILE);
    let Some(bytes) = read_private(&path, MAX_INDEX_LEN)? else {
        return Ok(None);
    };
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| TpmError::CorruptState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if index.format != INDEX_FORMAT {
        return Err(TpmError::CorruptState {
            path,
            reason: format!(
                "index format {} is not supported (expected {INDEX_FORMAT})",
                index.format
            ),
        });
    }
    for (purpose, keys) in &index.purposes {
        if !keys.keys.contains(&keys.current) {
            return Err(TpmError::CorruptState {
                path,
                reason: format!("the current {purpose} key is not among its keys"),
            });
        }
    }
    Ok(Some(index))
}

/// Writes the index atomically.
pub(crate) fn write_index(dir: &Path, index: &Index) -> Result<(), TpmError> {
    let json = serde_json::to_vec_pretty(index).map_err(|e| TpmError::CorruptState {
        path: dir.join(INDEX_FILE),
        reason: e.to_string(),
    })?;
    write_atomic(dir, INDEX_FILE, &json)
}

/// Whether the directory holds any blob file (`*.pub` / `*.priv`).
pub(crate) fn has_blobs(dir: &Path) -> Result<bool, TpmError> {
    let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && (name.ends_with(".pub") || name.ends_with(".priv")) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An exclusive `flock(2)` on `dir/.lock`, held until dropped. Serialises provisioning and
/// rotation between processes (the gateway and the CLI) sharing one state directory.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, TpmError> {
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", &path)(e.into()))?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sample() -> Index {
        let id = KeyId::parse("0011223344556677").unwrap();
        Index {
            format: INDEX_FORMAT,
            primary_name: "000b00".to_owned(),
            pcr_policy: vec![7],
            signing_key: KeyId::parse("8899aabbccddeeff").unwrap(),
            purposes: BTreeMap::from([(
                KeyPurpose::Vault,
                PurposeKeys {
                    current: id.clone(),
                    keys: vec![id],
                },
            )]),
        }
    }

    #[test]
    fn index_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_private_dir(&state).unwrap();
        assert!(read_index(&state).unwrap().is_none());
        write_index(&state, &sample()).unwrap();
        assert_eq!(read_index(&state).unwrap(), Some(sample()));
        let mode = fs::metadata(state.join(INDEX_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn index_with_unknown_field_or_bad_current_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut json = serde_json::to_value(sample()).unwrap();
        json["extra"] = serde_json::Value::Bool(true);
        write_atomic(dir.path(), INDEX_FILE, json.to_string().as_bytes()).unwrap();
        assert!(matches!(
            read_index(dir.path()),
            Err(TpmError::CorruptState { .. })
        ));

        let mut bad = sample();
        if let Some(keys) = bad.purposes.get_mut(&KeyPurpose::Vault) {
            keys.current = KeyId::parse("ffffffffffffffff").unwrap();
        }
        write_index(dir.path(), &bad).unwrap();
        let err = read_index(dir.path()).unwrap_err();
        assert!(err.to_string().contains("current vault key"), "{err}");
    }

    #[test]
    fn open_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_index(dir.path(), &sample()).unwrap();
        let path = dir.path().join(INDEX_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_index(dir.path()),
            Err(TpmError::InsecurePermissions { mode: 0o644, .. })
        ));
        let link = dir.path().join("link.pub");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            read_private(&link, 10),
            Err(TpmError::UnexpectedFileType { .. })
        ));
        assert!(has_blobs(dir.path()).unwrap());
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "x.pub", &[0u8; 11]).unwrap();
        assert!(read_private(&dir.path().join("x.pub"), 11)
            .unwrap()
            .is_some());
        assert!(matches!(
            read_private(&dir.path().join("x.pub"), 10),
            Err(TpmError::CorruptState { .. })
        ));
    }
}
