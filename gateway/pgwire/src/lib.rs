//! Sans-IO codec for the PostgreSQL frontend/backend protocol, version 3.0, in both directions.
//!
//! Gatehouse sits in the middle of a PostgreSQL conversation: it parses what clients send
//! (startup packets, queries, extended-protocol messages) and what servers answer (authentication
//! requests, command tags, errors), and it encodes messages of its own toward both sides.
//!
//! Invariants:
//! - This crate never does I/O. Decoders take a byte slice and answer `Ok(None)` when more bytes
//!   are needed, `Err(_)` when the bytes can never become a valid message, and `Ok(Some(_))`
//!   with the number of bytes consumed otherwise. Encoders append to a [`bytes::BytesMut`].
//! - Every length read off the wire is bounded before anything is allocated
//!   ([`MAX_STARTUP_PACKET_LEN`], the caller-provided frame limit).
//! - Decoded text borrows from the input where it can; nothing here panics on any input
//!   (checked by property tests and the fuzz targets in `fuzz/`).
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.
#![forbid(unsafe_code)]

mod backend;
pub mod binary;
mod frame;
mod frontend;
mod startup;

pub mod fuzzing;

pub use backend::*;
pub use frame::*;
pub use frontend::*;
pub use startup::*;

/// What went wrong while decoding. Carries no message contents (they may hold secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A length field is smaller than its own size or otherwise impossible.
    #[error("invalid message length {0}")]
    InvalidLength(i64),
    /// A length field exceeds the limit in force.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    /// The protocol version in a startup packet is not one we speak.
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    /// A message body does not match its declared structure.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// A string is not valid UTF-8.
    #[error("invalid UTF-8 in {0} message")]
    InvalidUtf8(&'static str),
    /// A message tag that is not valid in this direction/phase.
    #[error("unexpected message type {0:?}")]
    UnexpectedTag(char),
}

/// A cursor over a message body; all reads are bounds-checked.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(ProtocolError::Malformed(self.what))?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Malformed(self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated UTF-8 string.
    /// A NUL-terminated byte string (without the NUL), not required to be UTF-8.
    pub(crate) fn cbytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::Malformed(self.what))?;
        let (s, rest) = self.buf.split_at(nul);
        self.buf = &rest[1..];
        Ok(s)
    }

    pub(crate) fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let s = self.cbytes()?;
        std::str::from_utf8(s).map_err(|_| ProtocolError::InvalidUtf8(self.what))
    }

    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed(self.what))
        }
    }
}

pub(crate) fn put_cstr(out: &mut bytes::BytesMut, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(&[0]);
}

/// Appends a typed message: tag, then a length that counts itself and the body written by `body`.
pub(crate) fn put_typed(
    out: &mut bytes::BytesMut,
    tag: u8,
    body: impl FnOnce(&mut bytes::BytesMut),
) {
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let start = out.len() - 4;
    body(out);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}
