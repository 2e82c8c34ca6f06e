//! One SFTP session: requests in, replies and audit events out. Read-only.
//!
//! The state machine does blocking file-system calls (the caller runs it off the async
//! runtime) but no network I/O: [`SftpSession::handle`] takes a parsed request, appends the
//! reply to a buffer and reports what the audit trail must record.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{self, Modify, NameEntry, Request, Status};
use crate::vfs::{PathError, Root, VPath};

/// Per-session bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Open file and directory handles at once.
    pub max_handles: usize,
    /// Bytes one READ returns at most (a client asking for more gets a short read, which
    /// SFTP allows).
    pub max_read: u32,
}

/// Entries per READDIR reply.
const DIR_BATCH: usize = 100;

/// Something the audit trail must record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    /// A file was opened for reading (recorded before its handle is returned).
    Opened {
        /// Virtual path.
        path: String,
        /// Size when opened.
        size: u64,
    },
    /// A file handle was closed (or the session ended with it open).
    Downloaded {
        /// Virtual path.
        path: String,
        /// Bytes sent.
        bytes: u64,
        /// Size of the file.
        size: u64,
        /// From open to close.
        duration: Duration,
    },
    /// A refused operation.
    Denied {
        /// What was asked (`remove`, `rename`, `open`, `stat`, …).
        op: String,
        /// Its target as sent (bounded, printable).
        target: String,
        /// Why.
        reason: &'static str,
    },
}

enum Handle {
    File {
        file: Arc<File>,
        path: String,
        size: u64,
        served: u64,
        opened: Instant,
    },
    Dir {
        entries: Vec<NameEntry>,
        pos: usize,
    },
}

/// The state of one SFTP session.
pub struct SftpSession {
    root: Arc<Root>,
    limits: SessionLimits,
    handles: HashMap<u32, Handle>,
    next_handle: u32,
    initialized: bool,
    /// Bytes of file data sent.
    pub bytes_served: u64,
}

impl std::fmt::Debug for SftpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpSession")
            .field("root", &self.root)
            .field("handles", &self.handles.len())
            .finish()
    }
}

fn parse_handle(h: &[u8]) -> Option<u32> {
    std::str::from_utf8(h).ok()?.strip_prefix('h')?.parse().ok()
}

fn status_of(e: PathError) -> Status {
    match e {
        PathError::Escape | PathError::Symlink => Status::PermissionDenied,
        PathError::NotFound | PathError::Invalid => Status::NoSuchFile,
        PathError::WrongType | PathError::Io => Status::Failure,
    }
}

impl SftpSession {
    /// A session serving `root`.
    pub fn new(root: Arc<Root>, limits: SessionLimits) -> SftpSession {
        SftpSession {
            root,
            limits,
            handles: HashMap::new(),
            next_handle: 1,
            initialized: false,
            bytes_served: 0,
        }
    }

    /// Handles one request: appends the reply to `out` and the audit events to `events`.
    pub fn handle(&mut self, req: Request, out: &mut Vec<u8>, events: &mut Vec<AuditEvent>) {
        if !self.initialized {
            match req {
                Request::Init { .. } => {
                    self.initialized = true;
                    codec::encode_version(out);
                }
                // Anything before INIT: answer BAD_MESSAGE to its id.
                other => {
                    if let Some(id) = request_id(&other) {
                        codec::encode_status(out, id, Status::BadMessage, "INIT first");
                    }
                }
            }
            return;
        }
        match req {
            Request::Init { .. } => {}
            Request::Open { id, path } => self.open(id, &path, out, events),
            Request::Close { id, handle } => {
                match parse_handle(&handle).and_then(|h| self.handles.remove(&h)) {
                    Some(h) => {
                        if let Some(e) = closed(h) {
                            events.push(e);
                        }
                        codec::encode_status(out, id, Status::Ok, "ok");
                    }
                    None => codec::encode_status(out, id, Status::Failure, "invalid handle"),
                }
            }
            Request::Read {
                id,
                handle,
                offset,
                len,
            } => self.read(id, &handle, offset, len, out),
            Request::Stat { id, path } => match self.resolve(&path, "stat", events) {
                Ok(p) => match self.root.stat(&p) {
                    Ok(a) => codec::encode_attrs(out, id, &a),
                    Err(e) => self.refuse(id, e, "stat", &path, out, events),
                },
                Err(e) => codec::encode_status(out, id, status_of(e), e.to_string().as_str()),
            },
            Request::FStat { id, handle } => {
                match parse_handle(&handle).and_then(|h| self.handles.get(&h)) {
                    Some(Handle::File { file, .. }) => match file.metadata() {
                        Ok(m) => codec::encode_attrs(out, id, &crate::vfs::attrs(&m)),
                        Err(_) => codec::encode_status(out, id, Status::Failure, "failure"),
                    },
                    Some(Handle::Dir { .. }) => {
                        codec::encode_status(out, id, Status::Failure, "not a file handle")
                    }
                    None => codec::encode_status(out, id, Status::Failure, "invalid handle"),
                }
            }
            Request::OpenDir { id, path } => self.open_dir(id, &path, out, events),
            Request::ReadDir { id, handle } => {
                match parse_handle(&handle).and_then(|h| self.handles.get_mut(&h)) {
                    Some(Handle::Dir { entries, pos }) => {
                        if *pos >= entries.len() {
                            codec::encode_status(out, id, Status::Eof, "end of directory");
                        } else {
                            let end = (*pos + DIR_BATCH).min(entries.len());
                            codec::encode_name(out, id, &entries[*pos..end]);
                            *pos = end;
                        }
                    }
                    Some(Handle::File { .. }) => {
                        codec::encode_status(out, id, Status::Failure, "not a directory handle")
                    }
                    None => codec::encode_status(out, id, Status::Failure, "invalid handle"),
                }
            }
            Request::RealPath { id, path } => match self.resolve(&path, "realpath", events) {
                Ok(p) => {
                    let name = p.display();
                    let attrs = self.root.stat(&p).unwrap_or_default();
                    codec::encode_name(
                        out,
                        id,
                        &[NameEntry {
                            long_name: name.clone(),
                            name,
                            attrs,
                        }],
                    );
                }
                Err(e) => codec::encode_status(out, id, status_of(e), e.to_string().as_str()),
            },
            Request::ReadLink { id, path } => {
                events.push(AuditEvent::Denied {
                    op: "readlink".into(),
                    target: bounded(&path),
                    reason: "symbolic links are not served",
                });
                codec::encode_status(
                    out,
                    id,
                    Status::PermissionDenied,
                    "symbolic links are not served",
                );
            }
            Request::Modify { id, op, target } => {
                events.push(AuditEvent::Denied {
                    op: op.as_str().into(),
                    target,
                    reason: "read-only: evidence cannot be changed",
                });
                let msg = match op {
                    Modify::OpenForWrite => "read-only: files can only be opened for reading",
                    _ => "read-only: evidence cannot be changed",
                };
                codec::encode_status(out, id, Status::PermissionDenied, msg);
            }
            Request::Extended { id, name: _ } => {
                codec::encode_status(out, id, Status::OpUnsupported, "unsupported extension")
            }
            Request::Unknown { id, kind: _ } => {
                codec::encode_status(out, id, Status::OpUnsupported, "unsupported request")
            }
        }
    }

    /// A malformed request: `BAD_MESSAGE` to its id when it had one.
    pub fn malformed(&mut self, m: codec::Malformed, out: &mut Vec<u8>) {
        if let Some(id) = m.id {
            codec::encode_status(out, id, Status::BadMessage, "malformed request");
        }
    }

    /// Closes every handle left open (end of session); the downloads they were.
    pub fn close_all(&mut self) -> Vec<AuditEvent> {
        let mut keys: Vec<u32> = self.handles.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|k| self.handles.remove(&k).and_then(closed))
            .collect()
    }

    fn resolve(
        &self,
        path: &str,
        op: &str,
        events: &mut Vec<AuditEvent>,
    ) -> Result<VPath, PathError> {
        VPath::parse(path).inspect_err(|e| {
            if e.is_violation() {
                events.push(AuditEvent::Denied {
                    op: op.into(),
                    target: bounded(path),
                    reason: "path escapes the evidence root",
                });
            }
        })
    }

    fn refuse(
        &self,
        id: u32,
        e: PathError,
        op: &str,
        path: &str,
        out: &mut Vec<u8>,
        events: &mut Vec<AuditEvent>,
    ) {
        if e.is_violation() {
            events.push(AuditEvent::Denied {
                op: op.into(),
                target: bounded(path),
                reason: "symbolic links are not followed",
            });
        }
        codec::encode_status(out, id, status_of(e), e.to_string().as_str());
    }

    fn new_handle(&mut self, h: Handle) -> Option<u32> {
        if self.handles.len() >= self.limits.max_handles {
            return None;
        }
        let n = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        self.handles.insert(n, h);
        Some(n)
    }

    fn open(&mut self, id: u32, path: &str, out: &mut Vec<u8>, events: &mut Vec<AuditEvent>) {
        let p = match self.resolve(path, "open", events) {
            Ok(p) => p,
            Err(e) => return codec::encode_status(out, id, status_of(e), &e.to_string()),
        };
        if self.handles.len() >= self.limits.max_handles {
            return codec::encode_status(out, id, Status::Failure, "too many open handles");
        }
        match self.root.open(&p) {
            Ok((file, size)) => {
                let path = p.display();
                let h = Handle::File {
                    file: Arc::new(file),
                    path: path.clone(),
                    size,
                    served: 0,
                    opened: Instant::now(),
                };
                match self.new_handle(h) {
                    Some(n) => {
                        events.push(AuditEvent::Opened { path, size });
                        codec::encode_handle(out, id, format!("h{n}").as_bytes());
                    }
                    None => codec::encode_status(out, id, Status::Failure, "too many open handles"),
                }
            }
            Err(e) => self.refuse(id, e, "open", path, out, events),
        }
    }

    fn open_dir(&mut self, id: u32, path: &str, out: &mut Vec<u8>, events: &mut Vec<AuditEvent>) {
        let p = match self.resolve(path, "opendir", events) {
            Ok(p) => p,
            Err(e) => return codec::encode_status(out, id, status_of(e), &e.to_string()),
        };
        if self.handles.len() >= self.limits.max_handles {
            return codec::encode_status(out, id, Status::Failure, "too many open handles");
        }
        match self.root.list(&p) {
            Ok(entries) => match self.new_handle(Handle::Dir { entries, pos: 0 }) {
                Some(n) => codec::encode_handle(out, id, format!("h{n}").as_bytes()),
                None => codec::encode_status(out, id, Status::Failure, "too many open handles"),
            },
            Err(e) => self.refuse(id, e, "opendir", path, out, events),
        }
    }

    fn read(&mut self, id: u32, handle: &[u8], offset: u64, len: u32, out: &mut Vec<u8>) {
        let Some(Handle::File { file, served, .. }) =
            parse_handle(handle).and_then(|h| self.handles.get_mut(&h))
        else {
            return codec::encode_status(out, id, Status::Failure, "invalid handle");
        };
        let want = len.min(self.limits.max_read) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        // pread until the request is filled or the end of the file.
        while got < want {
            match file.read_at(&mut buf[got..], offset.saturating_add(got as u64)) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return codec::encode_status(out, id, Status::Failure, "read failed"),
            }
        }
        if got == 0 && want > 0 {
            return codec::encode_status(out, id, Status::Eof, "end of file");
        }
        *served += got as u64;
        self.bytes_served += got as u64;
        codec::encode_data(out, id, &buf[..got]);
    }
}

fn closed(h: Handle) -> Option<AuditEvent> {
    match h {
        Handle::File {
            path,
            size,
            served,
            opened,
            ..
        } => Some(AuditEvent::Downloaded {
            path,
            bytes: served,
            size,
            duration: opened.elapsed(),
        }),
        Handle::Dir { .. } => None,
    }
}

fn bounded(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(256)
        .collect()
}

fn request_id(r: &Request) -> Option<u32> {
    Some(match r {
        Request::Init { .. } => return None,
        Request::Open { id, .. }
        | Request::Close { id, .. }
        | Request::Read { id, .. }
        | Request::Stat { id, .. }
        | Request::FStat { id, .. }
        | Request::OpenDir { id, .. }
        | Request::ReadDir { id, .. }
        | Request::RealPath { id, .. }
        | Request::ReadLink { id, .. }
        | Request::Modify { id, .. }
        | Request::Extended { id, .. }
        | Request::Unknown { id, .. } => *id,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn status_code(out: &[u8]) -> u32 {
        assert_eq!(out[4], 101, "not a STATUS reply");
        u32::from_be_bytes(out[9..13].try_into().unwrap())
    }

    fn session(dir: &std::path::Path) -> SftpSession {
        let root = Arc::new(Root::new(dir).unwrap());
        let mut s = SftpSession::new(
            root,
            SessionLimits {
                max_handles: 2,
                max_read: 4,
            },
        );
        let mut out = Vec::new();
        s.handle(Request::Init { version: 3 }, &mut out, &mut Vec::new());
        s
    }

    #[test]
    fn download_is_audited_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("e1")).unwrap();
        std::fs::write(tmp.path().join("e1/f"), b"0123456789").unwrap();
        let mut s = session(tmp.path());
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        s.handle(
            Request::Open {
                id: 1,
                path: "e1/f".into(),
            },
            &mut out,
            &mut ev,
        );
        assert_eq!(out[4], 102, "HANDLE");
        assert_eq!(
            ev,
            vec![AuditEvent::Opened {
                path: "/e1/f".into(),
                size: 10
            }]
        );
        let mut data = Vec::new();
        let mut offset = 0;
        loop {
            let mut out = Vec::new();
            s.handle(
                Request::Read {
                    id: 2,
                    handle: b"h1".to_vec(),
                    offset,
                    len: 1000,
                },
                &mut out,
                &mut Vec::new(),
            );
            if out[4] == 101 {
                assert_eq!(status_code(&out), Status::Eof as u32);
                break;
            }
            // max_read bounds every reply.
            let n = u32::from_be_bytes(out[9..13].try_into().unwrap()) as usize;
            assert!(n <= 4);
            data.extend_from_slice(&out[13..13 + n]);
            offset += n as u64;
        }
        assert_eq!(data, b"0123456789");
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        s.handle(
            Request::Close {
                id: 3,
                handle: b"h1".to_vec(),
            },
            &mut out,
            &mut ev,
        );
        assert_eq!(status_code(&out), 0);
        assert!(matches!(
            &ev[..],
            [AuditEvent::Downloaded {
                bytes: 10,
                size: 10,
                ..
            }]
        ));
    }

    #[test]
    fn writes_escapes_and_handle_limits_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let mut s = session(tmp.path());
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        s.handle(
            Request::Modify {
                id: 1,
                op: Modify::Remove,
                target: "/f".into(),
            },
            &mut out,
            &mut ev,
        );
        assert_eq!(status_code(&out), Status::PermissionDenied as u32);
        assert!(matches!(&ev[..], [AuditEvent::Denied { op, .. }] if op == "remove"));
        assert!(tmp.path().join("f").exists());

        let (mut out, mut ev) = (Vec::new(), Vec::new());
        s.handle(
            Request::Open {
                id: 2,
                path: "../../etc/passwd".into(),
            },
            &mut out,
            &mut ev,
        );
        assert_eq!(status_code(&out), Status::PermissionDenied as u32);
        assert!(
            matches!(&ev[..], [AuditEvent::Denied { reason, .. }] if reason.contains("escapes"))
        );

        for id in 3..5 {
            let mut out = Vec::new();
            s.handle(
                Request::Open {
                    id,
                    path: "/f".into(),
                },
                &mut out,
                &mut Vec::new(),
            );
            assert_eq!(out[4], 102);
        }
        let mut out = Vec::new();
        s.handle(
            Request::Open {
                id: 5,
                path: "/f".into(),
            },
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(status_code(&out), Status::Failure as u32);
        assert_eq!(s.close_all().len(), 2);
    }

    #[test]
    fn requests_before_init_are_bad_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Arc::new(Root::new(tmp.path()).unwrap());
        let mut s = SftpSession::new(
            root,
            SessionLimits {
                max_handles: 2,
                max_read: 4,
            },
        );
        let mut out = Vec::new();
        s.handle(
            Request::Stat {
                id: 9,
                path: "/".into(),
            },
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(status_code(&out), Status::BadMessage as u32);
    }
}
