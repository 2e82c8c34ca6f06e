//! `gatehouse-sftp-codec`: a sans-IO codec for the SFTP version 3 protocol (draft-ietf-secsh-filexfer-02), server
//! side: requests in, replies out. No I/O, no tokio, never panics on input.
//!
//! A packet is `uint32 length || byte type || payload`. [`frame_len`] says whether a whole
//! packet is in the buffer (and refuses lengths above [`MAX_PACKET`] before anything is
//! allocated); [`parse_request`] turns one packet body into a [`Request`]; the `encode_*`
//! functions append replies to a buffer.
//!
//! Only what a read-only server needs is decoded in full. Requests that would change
//! something (write, remove, rename, setstat, mkdir, symlink, …) are decoded far enough to
//! name the operation and its path, for the refusal and its audit record.

#![forbid(unsafe_code)]

use std::fmt;

/// The largest packet accepted from a client: OpenSSH's `sftp-server` uses the same bound
/// (`SFTP_MAX_MSG_LENGTH`, 256 KiB, in `sftp-common.h`).
pub const MAX_PACKET: usize = 256 * 1024;

/// The protocol version this server speaks.
pub const VERSION: u32 = 3;

/// Longest path or handle string accepted inside a packet (PATH_MAX on Linux).
pub const MAX_STRING: usize = 4096;

// Packet types (draft-ietf-secsh-filexfer-02 §3).
const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_READLINK: u8 = 19;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_NAME: u8 = 104;
const FXP_ATTRS: u8 = 105;
const FXP_EXTENDED: u8 = 200;

/// `SSH_FXF_*` open flags.
pub mod open_flags {
    /// Open for reading.
    pub const READ: u32 = 0x01;
    /// Open for writing.
    pub const WRITE: u32 = 0x02;
    /// Append.
    pub const APPEND: u32 = 0x04;
    /// Create.
    pub const CREAT: u32 = 0x08;
    /// Truncate.
    pub const TRUNC: u32 = 0x10;
    /// Fail if it exists.
    pub const EXCL: u32 = 0x20;
}

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// `SSH_FX_*` status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// End of file or of a directory listing.
    Eof = 1,
    /// No such file or directory.
    NoSuchFile = 2,
    /// Refused.
    PermissionDenied = 3,
    /// Anything else.
    Failure = 4,
    /// A malformed request.
    BadMessage = 5,
    /// Not supported by this server.
    OpUnsupported = 8,
}

impl Status {
    /// The default message sent with the code.
    pub fn message(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Eof => "end of file",
            Status::NoSuchFile => "no such file",
            Status::PermissionDenied => "permission denied",
            Status::Failure => "failure",
            Status::BadMessage => "bad message",
            Status::OpUnsupported => "operation unsupported",
        }
    }
}

/// An operation that would change something. This server refuses every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modify {
    /// `SSH_FXP_OPEN` with write, create, truncate or append flags.
    OpenForWrite,
    /// `SSH_FXP_WRITE`.
    Write,
    /// `SSH_FXP_SETSTAT`.
    SetStat,
    /// `SSH_FXP_FSETSTAT`.
    FSetStat,
    /// `SSH_FXP_REMOVE`.
    Remove,
    /// `SSH_FXP_MKDIR`.
    MkDir,
    /// `SSH_FXP_RMDIR`.
    RmDir,
    /// `SSH_FXP_RENAME` (or `posix-rename@openssh.com`).
    Rename,
    /// `SSH_FXP_SYMLINK`.
    Symlink,
    /// An extension that changes files (`hardlink@openssh.com`, `fsync@openssh.com`,
    /// `lsetstat@openssh.com`, `copy-data`, …).
    Extension,
}

impl Modify {
    /// A short name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Modify::OpenForWrite => "open-for-write",
            Modify::Write => "write",
            Modify::SetStat => "setstat",
            Modify::FSetStat => "fsetstat",
            Modify::Remove => "remove",
            Modify::MkDir => "mkdir",
            Modify::RmDir => "rmdir",
            Modify::Rename => "rename",
            Modify::Symlink => "symlink",
            Modify::Extension => "extension",
        }
    }
}

impl fmt::Display for Modify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `SSH_FXP_INIT`.
    Init {
        /// The client's highest version.
        version: u32,
    },
    /// `SSH_FXP_OPEN` for reading only.
    Open {
        /// Request id.
        id: u32,
        /// Path as sent.
        path: String,
    },
    /// `SSH_FXP_CLOSE`.
    Close {
        /// Request id.
        id: u32,
        /// Handle.
        handle: Vec<u8>,
    },
    /// `SSH_FXP_READ`.
    Read {
        /// Request id.
        id: u32,
        /// Handle.
        handle: Vec<u8>,
        /// Offset in the file.
        offset: u64,
        /// Bytes asked for.
        len: u32,
    },
    /// `SSH_FXP_STAT` (follows links; this server never does) or `SSH_FXP_LSTAT`.
    Stat {
        /// Request id.
        id: u32,
        /// Path as sent.
        path: String,
    },
    /// `SSH_FXP_FSTAT`.
    FStat {
        /// Request id.
        id: u32,
        /// Handle.
        handle: Vec<u8>,
    },
    /// `SSH_FXP_OPENDIR`.
    OpenDir {
        /// Request id.
        id: u32,
        /// Path as sent.
        path: String,
    },
    /// `SSH_FXP_READDIR`.
    ReadDir {
        /// Request id.
        id: u32,
        /// Handle.
        handle: Vec<u8>,
    },
    /// `SSH_FXP_REALPATH`.
    RealPath {
        /// Request id.
        id: u32,
        /// Path as sent.
        path: String,
    },
    /// `SSH_FXP_READLINK`.
    ReadLink {
        /// Request id.
        id: u32,
        /// Path as sent.
        path: String,
    },
    /// Anything that would change a file or directory.
    Modify {
        /// Request id.
        id: u32,
        /// Which operation.
        op: Modify,
        /// The path(s) or extension name it names, for the audit record (lossy UTF-8,
        /// bounded).
        target: String,
    },
    /// `SSH_FXP_EXTENDED` that changes nothing (answered "unsupported").
    Extended {
        /// Request id.
        id: u32,
        /// Extension name.
        name: String,
    },
    /// A packet type this server does not know (answered "unsupported").
    Unknown {
        /// Request id.
        id: u32,
        /// The packet type.
        kind: u8,
    },
}

/// A packet whose body is malformed. The session carries on; the request is answered with
/// `SSH_FX_BAD_MESSAGE` when its id could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed SFTP request")]
pub struct Malformed {
    /// The request id, when the packet got that far.
    pub id: Option<u32>,
}

/// A framing error: the stream cannot be read further and the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A packet longer than [`MAX_PACKET`] (or empty).
    #[error("SFTP packet length {0} out of bounds")]
    Length(u32),
}

/// The total length (4-byte prefix included) of the first packet in `buf` when all of it is
/// there, `None` when more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let body = len as usize;
    if body == 0 || body > MAX_PACKET {
        return Err(FrameError::Length(len));
    }
    Ok((buf.len() >= 4 + body).then_some(4 + body))
}

/// A cursor over a packet body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(..4)?;
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.buf = &self.buf[4..];
        Some(v)
    }

    fn u64(&mut self) -> Option<u64> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Some(hi << 32 | lo)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let b = self.buf.get(..n)?;
        self.buf = &self.buf[n..];
        Some(b)
    }

    /// A string bounded by [`MAX_STRING`].
    fn short(&mut self) -> Option<&'a [u8]> {
        self.bytes().filter(|b| b.len() <= MAX_STRING)
    }

    fn path(&mut self) -> Option<String> {
        String::from_utf8(self.short()?.to_vec()).ok()
    }

    /// Skips an ATTRS structure.
    fn attrs(&mut self) -> Option<()> {
        let flags = self.u32()?;
        if flags & ATTR_SIZE != 0 {
            self.u64()?;
        }
        if flags & ATTR_UIDGID != 0 {
            self.u32()?;
            self.u32()?;
        }
        if flags & ATTR_PERMISSIONS != 0 {
            self.u32()?;
        }
        if flags & ATTR_ACMODTIME != 0 {
            self.u32()?;
            self.u32()?;
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = self.u32()?;
            for _ in 0..n {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Some(())
    }
}

/// A path for an audit record: lossy UTF-8, control characters replaced, at most 256 chars.
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(256)
        .collect()
}

/// Extensions that change files; refused as writes. Everything else is "unsupported".
const WRITING_EXTENSIONS: &[&str] = &[
    "posix-rename@openssh.com",
    "hardlink@openssh.com",
    "fsync@openssh.com",
    "lsetstat@openssh.com",
    "copy-data",
    "expand-path@openssh.com",
];

/// Parses one packet body (the bytes after the length prefix).
pub fn parse_request(body: &[u8]) -> Result<Request, Malformed> {
    let mut r = Reader { buf: body };
    let kind = r.u8().ok_or(Malformed { id: None })?;
    if kind == FXP_INIT {
        let version = r.u32().ok_or(Malformed { id: None })?;
        // Extension pairs may follow; a v3 server ignores them.
        return Ok(Request::Init { version });
    }
    let id = r.u32().ok_or(Malformed { id: None })?;
    let bad = Malformed { id: Some(id) };
    let modify = |op: Modify, target: String| Request::Modify { id, op, target };
    let req = match kind {
        FXP_OPEN => {
            let raw = r.short().ok_or(bad)?;
            let pflags = r.u32().ok_or(bad)?;
            r.attrs().ok_or(bad)?;
            use open_flags::*;
            if pflags & (WRITE | APPEND | CREAT | TRUNC | EXCL) != 0 || pflags & READ == 0 {
                modify(Modify::OpenForWrite, printable(raw))
            } else {
                Request::Open {
                    id,
                    path: String::from_utf8(raw.to_vec()).map_err(|_| bad)?,
                }
            }
        }
        FXP_CLOSE => Request::Close {
            id,
            handle: r.short().ok_or(bad)?.to_vec(),
        },
        FXP_READ => Request::Read {
            id,
            handle: r.short().ok_or(bad)?.to_vec(),
            offset: r.u64().ok_or(bad)?,
            len: r.u32().ok_or(bad)?,
        },
        FXP_LSTAT | FXP_STAT => Request::Stat {
            id,
            path: r.path().ok_or(bad)?,
        },
        FXP_FSTAT => Request::FStat {
            id,
            handle: r.short().ok_or(bad)?.to_vec(),
        },
        FXP_OPENDIR => Request::OpenDir {
            id,
            path: r.path().ok_or(bad)?,
        },
        FXP_READDIR => Request::ReadDir {
            id,
            handle: r.short().ok_or(bad)?.to_vec(),
        },
        FXP_REALPATH => Request::RealPath {
            id,
            path: r.path().ok_or(bad)?,
        },
        FXP_READLINK => Request::ReadLink {
            id,
            path: r.path().ok_or(bad)?,
        },
        FXP_WRITE => {
            let h = r.short().ok_or(bad)?;
            modify(Modify::Write, format!("handle {}", printable(h)))
        }
        FXP_SETSTAT => modify(Modify::SetStat, printable(r.short().ok_or(bad)?)),
        FXP_FSETSTAT => {
            let h = r.short().ok_or(bad)?;
            modify(Modify::FSetStat, format!("handle {}", printable(h)))
        }
        FXP_REMOVE => modify(Modify::Remove, printable(r.short().ok_or(bad)?)),
        FXP_MKDIR => modify(Modify::MkDir, printable(r.short().ok_or(bad)?)),
        FXP_RMDIR => modify(Modify::RmDir, printable(r.short().ok_or(bad)?)),
        FXP_RENAME | FXP_SYMLINK => {
            let a = printable(r.short().ok_or(bad)?);
            let b = printable(r.short().ok_or(bad)?);
            let op = if kind == FXP_RENAME {
                Modify::Rename
            } else {
                Modify::Symlink
            };
            modify(op, format!("{a} -> {b}"))
        }
        FXP_EXTENDED => {
            let name = printable(r.short().ok_or(bad)?);
            if name == "posix-rename@openssh.com" {
                let a = printable(r.short().ok_or(bad)?);
                let b = printable(r.short().ok_or(bad)?);
                modify(Modify::Rename, format!("{a} -> {b}"))
            } else if WRITING_EXTENSIONS.contains(&name.as_str()) {
                let target = r.short().map(printable).unwrap_or_default();
                modify(Modify::Extension, format!("{name} {target}"))
            } else {
                Request::Extended { id, name }
            }
        }
        other => Request::Unknown { id, kind: other },
    };
    Ok(req)
}

/// File attributes sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Size in bytes.
    pub size: u64,
    /// POSIX mode (type and permission bits).
    pub permissions: u32,
    /// Modification time (Unix seconds).
    pub mtime: u32,
}

impl Attrs {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(
            out,
            ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME,
        );
        put_u64(out, self.size);
        put_u32(out, 0);
        put_u32(out, 0);
        put_u32(out, self.permissions);
        put_u32(out, self.mtime);
        put_u32(out, self.mtime);
    }
}

/// One entry of an `SSH_FXP_NAME` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// The file name (or, for REALPATH, the absolute path).
    pub name: String,
    /// The `ls -l` style line.
    pub long_name: String,
    /// Attributes.
    pub attrs: Attrs,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Every string we send is bounded far below 4 GiB (paths, handles, reads ≤ MAX_PACKET).
    put_u32(out, u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(b);
}

/// Writes a packet: reserves the length prefix, lets `body` append, fills the prefix in.
fn packet(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    put_u32(out, 0);
    out.push(kind);
    body(out);
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// `SSH_FXP_VERSION 3`, no extensions.
pub fn encode_version(out: &mut Vec<u8>) {
    packet(out, FXP_VERSION, |o| put_u32(o, VERSION));
}

/// `SSH_FXP_STATUS`.
pub fn encode_status(out: &mut Vec<u8>, id: u32, status: Status, message: &str) {
    packet(out, FXP_STATUS, |o| {
        put_u32(o, id);
        put_u32(o, status as u32);
        put_bytes(o, message.as_bytes());
        put_bytes(o, b"en");
    });
}

/// `SSH_FXP_HANDLE`.
pub fn encode_handle(out: &mut Vec<u8>, id: u32, handle: &[u8]) {
    packet(out, FXP_HANDLE, |o| {
        put_u32(o, id);
        put_bytes(o, handle);
    });
}

/// `SSH_FXP_DATA`.
pub fn encode_data(out: &mut Vec<u8>, id: u32, data: &[u8]) {
    packet(out, FXP_DATA, |o| {
        put_u32(o, id);
        put_bytes(o, data);
    });
}

/// `SSH_FXP_NAME`.
pub fn encode_name(out: &mut Vec<u8>, id: u32, entries: &[NameEntry]) {
    packet(out, FXP_NAME, |o| {
        put_u32(o, id);
        put_u32(o, u32::try_from(entries.len()).unwrap_or(u32::MAX));
        for e in entries {
            put_bytes(o, e.name.as_bytes());
            put_bytes(o, e.long_name.as_bytes());
            e.attrs.encode(o);
        }
    });
}

/// `SSH_FXP_ATTRS`.
pub fn encode_attrs(out: &mut Vec<u8>, id: u32, attrs: &Attrs) {
    packet(out, FXP_ATTRS, |o| {
        put_u32(o, id);
        attrs.encode(o);
    });
}

/// Fuzzing entry points (one-line forwarders in `fuzz/`).
pub mod fuzzing {
    /// Frames and parses every packet in `data`; a parsed `Stat` path must re-encode to the
    /// start of the same body.
    pub fn requests(data: &[u8]) {
        let mut rest = data;
        while let Ok(Some(n)) = super::frame_len(rest) {
            let body = &rest[4..n];
            if let Ok(super::Request::Stat { id, path }) = super::parse_request(body) {
                if body.first() == Some(&super::FXP_STAT) {
                    let mut again = vec![super::FXP_STAT];
                    super::put_u32(&mut again, id);
                    super::put_bytes(&mut again, path.as_bytes());
                    // Trailing bytes after the path are ignored, as OpenSSH's server does.
                    assert_eq!(&again[..], &body[..again.len()], "STAT round trip");
                }
            }
            rest = &rest[n..];
        }
        let _ = super::parse_request(data);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn req(kind: u8, id: u32, fields: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut body = vec![kind];
        put_u32(&mut body, id);
        fields(&mut body);
        body
    }

    #[test]
    fn frame_len_bounds_before_allocating() {
        assert_eq!(frame_len(&[0, 0]), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 5, 1]), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 1, 1]), Ok(Some(5)));
        assert_eq!(frame_len(&[0, 0, 0, 0]), Err(FrameError::Length(0)));
        let too_long = (MAX_PACKET as u32 + 1).to_be_bytes();
        assert_eq!(
            frame_len(&too_long),
            Err(FrameError::Length(MAX_PACKET as u32 + 1))
        );
        assert_eq!(
            frame_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Length(u32::MAX))
        );
    }

    #[test]
    fn parses_reads_and_refuses_writes() {
        let open_read = req(FXP_OPEN, 7, |b| {
            put_bytes(b, b"/x/records.csv");
            put_u32(b, open_flags::READ);
            put_u32(b, 0);
        });
        assert_eq!(
            parse_request(&open_read),
            Ok(Request::Open {
                id: 7,
                path: "/x/records.csv".into()
            })
        );
        let open_write = req(FXP_OPEN, 8, |b| {
            put_bytes(b, b"/x/new");
            put_u32(b, open_flags::WRITE | open_flags::CREAT | open_flags::TRUNC);
            put_u32(b, ATTR_PERMISSIONS);
            put_u32(b, 0o644);
        });
        assert_eq!(
            parse_request(&open_write),
            Ok(Request::Modify {
                id: 8,
                op: Modify::OpenForWrite,
                target: "/x/new".into()
            })
        );
        let rename = req(FXP_RENAME, 9, |b| {
            put_bytes(b, b"a");
            put_bytes(b, b"b\n");
        });
        assert_eq!(
            parse_request(&rename),
            Ok(Request::Modify {
                id: 9,
                op: Modify::Rename,
                target: "a -> b?".into()
            })
        );
        let posix_rename = req(FXP_EXTENDED, 10, |b| {
            put_bytes(b, b"posix-rename@openssh.com");
            put_bytes(b, b"a");
            put_bytes(b, b"b");
        });
        assert!(matches!(
            parse_request(&posix_rename),
            Ok(Request::Modify {
                op: Modify::Rename,
                ..
            })
        ));
        let statvfs = req(FXP_EXTENDED, 11, |b| {
            put_bytes(b, b"statvfs@openssh.com");
            put_bytes(b, b"/");
        });
        assert_eq!(
            parse_request(&statvfs),
            Ok(Request::Extended {
                id: 11,
                name: "statvfs@openssh.com".into()
            })
        );
        let read = req(FXP_READ, 12, |b| {
            put_bytes(b, b"h1");
            put_u64(b, 1 << 40);
            put_u32(b, 32768);
        });
        assert_eq!(
            parse_request(&read),
            Ok(Request::Read {
                id: 12,
                handle: b"h1".to_vec(),
                offset: 1 << 40,
                len: 32768
            })
        );
        assert_eq!(
            parse_request(&req(99, 13, |_| {})),
            Ok(Request::Unknown { id: 13, kind: 99 })
        );
    }

    #[test]
    fn malformed_bodies_keep_their_id() {
        assert_eq!(parse_request(&[]), Err(Malformed { id: None }));
        assert_eq!(
            parse_request(&[FXP_STAT, 0, 0]),
            Err(Malformed { id: None })
        );
        // A string length past the end.
        let truncated = req(FXP_STAT, 5, |b| put_u32(b, 100));
        assert_eq!(parse_request(&truncated), Err(Malformed { id: Some(5) }));
        // A path longer than MAX_STRING.
        let long = req(FXP_STAT, 6, |b| put_bytes(b, &vec![b'a'; MAX_STRING + 1]));
        assert_eq!(parse_request(&long), Err(Malformed { id: Some(6) }));
        // Not UTF-8.
        let bad_utf8 = req(FXP_OPENDIR, 7, |b| put_bytes(b, &[0xff, 0xfe]));
        assert_eq!(parse_request(&bad_utf8), Err(Malformed { id: Some(7) }));
    }

    /// Decodes a reply packet back into its type, id and the rest (test helper).
    fn split_reply(out: &[u8]) -> (u8, u32, &[u8]) {
        let n = frame_len(out).unwrap().unwrap();
        assert_eq!(n, out.len());
        (
            out[4],
            u32::from_be_bytes(out[5..9].try_into().unwrap()),
            &out[9..],
        )
    }

    #[test]
    fn replies_are_framed() {
        let mut out = Vec::new();
        encode_status(&mut out, 3, Status::PermissionDenied, "read-only");
        let (kind, id, rest) = split_reply(&out);
        assert_eq!((kind, id), (FXP_STATUS, 3));
        assert_eq!(&rest[..4], &3u32.to_be_bytes());
        let mut out = Vec::new();
        encode_data(&mut out, 4, b"abc");
        assert_eq!(
            split_reply(&out),
            (FXP_DATA, 4, &[0, 0, 0, 3, b'a', b'b', b'c'][..])
        );
        let mut out = Vec::new();
        encode_name(
            &mut out,
            5,
            &[NameEntry {
                name: "a".into(),
                long_name: "-r-- a".into(),
                attrs: Attrs {
                    size: 1,
                    permissions: 0o100440,
                    mtime: 2,
                },
            }],
        );
        let (kind, id, rest) = split_reply(&out);
        assert_eq!((kind, id), (FXP_NAME, 5));
        assert_eq!(&rest[..4], &1u32.to_be_bytes());
        let mut out = Vec::new();
        encode_version(&mut out);
        assert_eq!(out, vec![0, 0, 0, 5, FXP_VERSION, 0, 0, 0, 3]);
    }

    #[test]
    fn fuzz_entry_accepts_the_seed_corpus() {
        let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
            .join("fuzz/corpus/requests");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            // Every seed is a sequence of whole, well-formed packets.
            let mut rest = &data[..];
            while let Some(len) = frame_len(rest).unwrap() {
                assert!(parse_request(&rest[4..len]).is_ok());
                rest = &rest[len..];
            }
            assert!(rest.is_empty());
            fuzzing::requests(&data);
            n += 1;
        }
        assert!(n >= 4);
    }

    proptest! {
        /// Arbitrary bytes never panic the parser, and a parsed path request re-encodes to the
        /// same body.
        #[test]
        fn parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&body);
            let _ = frame_len(&body);
        }

        #[test]
        fn stat_round_trips(id in any::<u32>(), path in "[a-zA-Z0-9/._-]{0,200}") {
            let body = req(FXP_STAT, id, |b| put_bytes(b, path.as_bytes()));
            prop_assert_eq!(parse_request(&body), Ok(Request::Stat { id, path }));
        }
    }
}
