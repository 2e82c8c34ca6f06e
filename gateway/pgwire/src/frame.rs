//! Framing of typed messages: one tag byte, then a big-endian `i32` length that counts itself.

use crate::ProtocolError;

/// Size of a typed message header (tag + length).
pub const HEADER_LEN: usize = 5;

/// PostgreSQL's own ceiling for any message (`PQ_LARGE_MESSAGE_LIMIT`, src/include/libpq/libpq.h:
/// `MaxAllocSize - 1`, i.e. 1 GiB - 1).
pub const PQ_LARGE_MESSAGE_LIMIT: usize = 0x3fff_ffff - 1;

/// PostgreSQL's limit for messages a server accepts before authentication completes
/// (`PQ_SMALL_MESSAGE_LIMIT`, src/include/libpq/libpq.h).
pub const PQ_SMALL_MESSAGE_LIMIT: usize = 10_000;

/// The header of one typed message found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type byte.
    pub tag: u8,
    /// Whole message length on the wire: tag byte + 4 length bytes + body.
    pub total_len: usize,
}

impl FrameHeader {
    /// Length of the body alone.
    pub fn body_len(&self) -> usize {
        self.total_len - HEADER_LEN
    }
}

/// Reads the header of the typed message at the start of `buf`.
///
/// `Ok(None)`: fewer than [`HEADER_LEN`] bytes. The body need not be present yet: callers that
/// stream large messages (DataRow, CopyData) forward partial bodies.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<FrameHeader>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::InvalidLength(len.into()));
    }
    let len = len as usize;
    if len > max_len {
        return Err(ProtocolError::TooLong { len, max: max_len });
    }
    Ok(Some(FrameHeader {
        tag: buf[0],
        total_len: len + 1,
    }))
}

/// A complete typed message borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Message type byte.
    pub tag: u8,
    /// The body, after the length field.
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Whole length on the wire.
    pub fn wire_len(&self) -> usize {
        self.body.len() + HEADER_LEN
    }
}

/// Splits one complete typed message off the start of `buf`.
pub fn next_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame<'_>>, ProtocolError> {
    let Some(h) = peek_header(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < h.total_len {
        return Ok(None);
    }
    Ok(Some(Frame {
        tag: h.tag,
        body: &buf[HEADER_LEN..h.total_len],
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", 100).unwrap(), None);
        let h = peek_header(b"Q\0\0\0\x05x", 100).unwrap().unwrap();
        assert_eq!(h.tag, b'Q');
        assert_eq!(h.total_len, 6);
    }

    #[test]
    fn impossible_and_oversized_lengths_are_errors() {
        assert_eq!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(ProtocolError::InvalidLength(3))
        );
        assert!(matches!(
            peek_header(b"Q\xff\xff\xff\xff", 100),
            Err(ProtocolError::InvalidLength(-1))
        ));
        assert_eq!(
            peek_header(b"Q\0\0\x01\0", 100),
            Err(ProtocolError::TooLong { len: 256, max: 100 })
        );
    }

    #[test]
    fn frame_waits_for_body() {
        assert_eq!(next_frame(b"Q\0\0\0\x06a", 100).unwrap(), None);
        let f = next_frame(b"Q\0\0\0\x06ab", 100).unwrap().unwrap();
        assert_eq!(f.body, b"ab");
        assert_eq!(f.wire_len(), 7);
    }
}
