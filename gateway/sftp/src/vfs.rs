//! The auditor's view of the file system: a virtual root (chroot-like) over one directory.
//!
//! Client paths are resolved lexically against the virtual root `/` (relative paths too: the
//! auditor's home is `/`). A `..` that would climb above the root is refused as an escape
//! attempt, never clamped silently; NUL bytes are refused. Symbolic links are never
//! followed: every component of the real path is checked with `lstat`, and files are opened
//! with `O_NOFOLLOW`. Names starting with `.` are hidden (exports being written live in
//! `.partial-*` directories) and cannot be opened.

use std::fs::{File, Metadata};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::codec::{Attrs, NameEntry};

/// Most entries one directory listing returns; an export directory holds five files.
pub const MAX_DIR_ENTRIES: usize = 10_000;

/// Why a path cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `..` above the virtual root.
    #[error("path escapes the root")]
    Escape,
    /// A NUL byte or an over-long path.
    #[error("invalid path")]
    Invalid,
    /// A component is a symbolic link.
    #[error("symbolic links are not followed")]
    Symlink,
    /// Not there, hidden, or neither a regular file nor a directory.
    #[error("no such file")]
    NotFound,
    /// A directory where a file is needed or the other way round.
    #[error("wrong file type")]
    WrongType,
    /// The file system refused (permissions on the appliance, I/O error).
    #[error("cannot be read")]
    Io,
}

impl PathError {
    /// Whether the attempt is worth an audit record (an attempt to leave the evidence tree).
    pub fn is_violation(self) -> bool {
        matches!(self, PathError::Escape | PathError::Symlink)
    }
}

/// A normalized path below the virtual root: its components, none empty, `.`, `..` or hidden.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VPath(Vec<String>);

impl VPath {
    /// Resolves a client path against the virtual root.
    pub fn parse(path: &str) -> Result<VPath, PathError> {
        if path.contains('\0') || path.len() > crate::codec::MAX_STRING {
            return Err(PathError::Invalid);
        }
        let mut parts: Vec<String> = Vec::new();
        for c in path.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(PathError::Escape);
                    }
                }
                other => parts.push(other.to_owned()),
            }
        }
        Ok(VPath(parts))
    }

    /// The absolute virtual path, e.g. `/evidence-…/records.csv`.
    pub fn display(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    /// Whether any component is hidden (starts with `.`).
    fn hidden(&self) -> bool {
        self.0.iter().any(|c| c.starts_with('.'))
    }
}

/// The served directory.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// Serves `dir` (created if missing; its own symlinks are resolved once, here).
    pub fn new(dir: &Path) -> std::io::Result<Root> {
        std::fs::create_dir_all(dir)?;
        Ok(Root {
            dir: dir.canonicalize()?,
        })
    }

    /// The real directory served.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `lstat` of every component; the last one's metadata. Refuses symlinks and hidden names.
    fn walk(&self, p: &VPath) -> Result<Metadata, PathError> {
        if p.hidden() {
            return Err(PathError::NotFound);
        }
        let mut real = self.dir.clone();
        let mut meta = std::fs::symlink_metadata(&real).map_err(io_error)?;
        for c in &p.0 {
            real.push(c);
            meta = std::fs::symlink_metadata(&real).map_err(io_error)?;
            if meta.file_type().is_symlink() {
                return Err(PathError::Symlink);
            }
        }
        if !(meta.is_file() || meta.is_dir()) {
            return Err(PathError::NotFound);
        }
        Ok(meta)
    }

    fn real(&self, p: &VPath) -> PathBuf {
        let mut real = self.dir.clone();
        real.extend(&p.0);
        real
    }

    /// Attributes of a file or directory.
    pub fn stat(&self, p: &VPath) -> Result<Attrs, PathError> {
        self.walk(p).map(|m| attrs(&m))
    }

    /// Opens a regular file for reading; returns it with its size.
    pub fn open(&self, p: &VPath) -> Result<(File, u64), PathError> {
        let meta = self.walk(p)?;
        if !meta.is_file() {
            return Err(PathError::WrongType);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(self.real(p))
            .map_err(io_error)?;
        let opened = file.metadata().map_err(io_error)?;
        // The same inode that was checked (a swap between lstat and open is refused).
        if !opened.is_file() || opened.ino() != meta.ino() || opened.dev() != meta.dev() {
            return Err(PathError::Symlink);
        }
        Ok((file, opened.len()))
    }

    /// The visible entries of a directory (regular files and directories, not hidden, no
    /// symlinks), sorted by name.
    pub fn list(&self, p: &VPath) -> Result<Vec<NameEntry>, PathError> {
        let meta = self.walk(p)?;
        if !meta.is_dir() {
            return Err(PathError::WrongType);
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.real(p)).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Ok(m) = entry.metadata() else { continue };
            if !(m.is_file() || m.is_dir()) {
                continue;
            }
            if out.len() >= MAX_DIR_ENTRIES {
                break;
            }
            let a = attrs(&m);
            out.push(NameEntry {
                long_name: long_name(&name, &a),
                name,
                attrs: a,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn io_error(e: std::io::Error) -> PathError {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => PathError::NotFound,
        _ => PathError::Io,
    }
}

/// Read-only attributes: files `r--r-----`, directories `r-xr-x---`, as the auditor sees them.
pub fn attrs(m: &Metadata) -> Attrs {
    let permissions = if m.is_dir() { 0o040550 } else { 0o100440 };
    Attrs {
        size: if m.is_dir() { 0 } else { m.len() },
        permissions,
        mtime: u32::try_from(m.mtime().max(0)).unwrap_or(u32::MAX),
    }
}

/// An `ls -l` line: `-r--r----- 1 gatehouse gatehouse 1234 2026-12-04 16:00 name`.
pub fn long_name(name: &str, a: &Attrs) -> String {
    let kind = if a.permissions & 0o040000 != 0 {
        "dr-xr-x---"
    } else {
        "-r--r-----"
    };
    let when = gatehouse_audit::format_rfc3339_us(i64::from(a.mtime) * 1_000_000);
    // "2026-12-04T16:00:00.000000Z" -> "2026-12-04 16:00"
    let short = format!("{} {}", &when[..10], &when[11..16]);
    format!("{kind} 1 gatehouse gatehouse {:>10} {short} {name}", a.size)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parse_normalizes_and_refuses_escapes() {
        assert_eq!(VPath::parse("/").unwrap().display(), "/");
        assert_eq!(VPath::parse(".").unwrap().display(), "/");
        assert_eq!(VPath::parse("").unwrap().display(), "/");
        assert_eq!(VPath::parse("a/./b//c/").unwrap().display(), "/a/b/c");
        assert_eq!(VPath::parse("/a/b/../c").unwrap().display(), "/a/c");
        assert_eq!(VPath::parse("a/..").unwrap().display(), "/");
        for bad in [
            "..",
            "/..",
            "../etc/passwd",
            "/a/../../b",
            "a/b/../../..",
            "/../../../../etc",
        ] {
            assert_eq!(VPath::parse(bad), Err(PathError::Escape), "{bad}");
        }
        assert_eq!(VPath::parse("a\0b"), Err(PathError::Invalid));
    }

    #[test]
    fn root_serves_files_and_refuses_symlinks_and_hidden() {
        let tmp = tempfile::tempdir().unwrap();
        let root_dir = tmp.path().join("exports");
        std::fs::create_dir_all(root_dir.join("e1")).unwrap();
        std::fs::create_dir_all(root_dir.join(".partial-e2")).unwrap();
        std::fs::write(root_dir.join("e1/records.csv"), b"a,b\n").unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root_dir.join("e1/link")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root_dir.join("dirlink")).unwrap();
        let root = Root::new(&root_dir).unwrap();

        let p = VPath::parse("/e1/records.csv").unwrap();
        let (_, size) = root.open(&p).unwrap();
        assert_eq!(size, 4);
        assert_eq!(root.stat(&p).unwrap().permissions, 0o100440);

        assert_eq!(
            root.open(&VPath::parse("/e1/link").unwrap()).unwrap_err(),
            PathError::Symlink
        );
        assert_eq!(
            root.open(&VPath::parse("/dirlink/secret").unwrap())
                .unwrap_err(),
            PathError::Symlink
        );
        assert_eq!(
            root.list(&VPath::parse("/dirlink").unwrap()).unwrap_err(),
            PathError::Symlink
        );
        assert_eq!(
            root.list(&VPath::parse("/.partial-e2").unwrap())
                .unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(
            root.open(&VPath::parse("/e1").unwrap()).unwrap_err(),
            PathError::WrongType
        );
        assert_eq!(
            root.open(&VPath::parse("/nope").unwrap()).unwrap_err(),
            PathError::NotFound
        );
        let top: Vec<String> = root
            .list(&VPath::default())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(top, vec!["e1"]);
        let e1: Vec<String> = root
            .list(&VPath::parse("e1").unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(e1, vec!["records.csv"]);
    }

    #[test]
    fn long_name_looks_like_ls() {
        let a = Attrs {
            size: 1234,
            permissions: 0o100440,
            mtime: 1_796_400_000,
        };
        assert_eq!(
            long_name("records.csv", &a),
            "-r--r----- 1 gatehouse gatehouse       1234 2026-12-04 16:00 records.csv"
        );
    }
}
