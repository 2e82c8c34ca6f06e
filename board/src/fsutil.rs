//! Private-file helpers for the software key store: permission checks, bounded reads,
//! atomic writes and the cross-process lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::KeyStoreError;

/// Permission bits that must be clear on every key-store file and on the directory.
const GROUP_OTHER_BITS: u32 = 0o077;

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> KeyStoreError + 'a {
    move |source| KeyStoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn check_mode(path: &Path, meta: &fs::Metadata) -> Result<(), KeyStoreError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(KeyStoreError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (mode 0700) if missing, then checks it is a real directory closed to group
/// and others.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), KeyStoreError> {
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
        return Err(KeyStoreError::UnexpectedFileType {
            path: dir.to_owned(),
            expected: "directory",
        });
    }
    check_mode(dir, &meta)
}

/// Opens a key-store file without following symlinks and checks type and mode on the open
/// descriptor (no window between check and read). `Ok(None)` if it does not exist.
fn open_private(path: &Path) -> Result<Option<File>, KeyStoreError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // ELOOP: the final component is a symlink.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(KeyStoreError::UnexpectedFileType {
                path: path.to_owned(),
                expected: "regular file (not a symlink)",
            })
        }
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    if !meta.is_file() {
        return Err(KeyStoreError::UnexpectedFileType {
            path: path.to_owned(),
            expected: "regular file",
        });
    }
    check_mode(path, &meta)?;
    Ok(Some(file))
}

/// Reads a private file of at most `max_len` bytes into zeroizing memory.
/// `Ok(None)` if it does not exist.
pub(crate) fn read_private(
    path: &Path,
    max_len: usize,
) -> Result<Option<Zeroizing<Vec<u8>>>, KeyStoreError> {
    let Some(file) = open_private(path)? else {
        return Ok(None);
    };
    // Capacity fixed up front so the buffer never reallocates (which would leave copies).
    let mut buf = Zeroizing::new(Vec::with_capacity(max_len + 1));
    let limit = u64::try_from(max_len + 1).unwrap_or(u64::MAX);
    file.take(limit)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    if buf.len() > max_len {
        return Err(KeyStoreError::Io {
            action: "read",
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file larger than {max_len} bytes"),
            ),
        });
    }
    Ok(Some(buf))
}

/// Checks the mode and type of an existing private file without reading it.
pub(crate) fn check_private_file(path: &Path) -> Result<bool, KeyStoreError> {
    Ok(open_private(path)?.is_some())
}

/// Writes `dir/name` atomically with mode 0600: a temp file in the same directory, fsync,
/// rename over the target, fsync of the directory. Callers hold the [`DirLock`], so the
/// fixed temp name cannot collide with another writer.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyStoreError> {
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

/// An exclusive `flock(2)` on `dir/.lock`, held until dropped. Serialises key creation and
/// rotation between processes (the gateway and the CLI) sharing one key directory.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, KeyStoreError> {
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
