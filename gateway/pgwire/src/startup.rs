//! The untyped packets a client sends first: StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest.

use bytes::{BufMut, BytesMut};

use crate::{put_cstr, ProtocolError, Reader};

/// PostgreSQL's bound on a startup packet (`MAX_STARTUP_PACKET_LENGTH`,
/// src/include/libpq/pqcomm.h).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// Protocol 3.0, the only version spoken.
pub const PROTOCOL_3_0: i32 = 196_608;
/// `SSLRequest` code (1234.5679).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// `GSSENCRequest` code (1234.5680).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// `CancelRequest` code (1234.5678).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// One startup-phase packet.
#[derive(Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on the session with this key.
    Cancel(CancelKey),
    /// The real start of a session.
    Startup(StartupMessage),
}

impl std::fmt::Debug for StartupPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupPacket::SslRequest => f.write_str("SslRequest"),
            StartupPacket::GssEncRequest => f.write_str("GssEncRequest"),
            // The secret half of a cancel key is a credential.
            StartupPacket::Cancel(k) => write!(f, "Cancel(pid={})", k.process_id),
            StartupPacket::Startup(m) => m.fmt(f),
        }
    }
}

/// A session's cancellation key (BackendKeyData / CancelRequest), protocol 3.0: two `i32`s.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Process id as the client sees it.
    pub process_id: i32,
    /// Secret key as the client sees it.
    pub secret: i32,
}

impl std::fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelKey(pid={}, secret=..)", self.process_id)
    }
}

/// StartupMessage: protocol version and parameters (user, database, application_name, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested major version (always 3 once decoded).
    pub major: u16,
    /// Requested minor version; a server answering 3.0 to a higher minor must send
    /// NegotiateProtocolVersion.
    pub minor: u16,
    /// Parameters in the order sent.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes one startup-phase packet from the start of `buf`.
pub fn decode_startup(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::InvalidLength(len.into()));
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET_LEN {
        return Err(ProtocolError::TooLong {
            len,
            max: MAX_STARTUP_PACKET_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut r = Reader::new(&buf[4..len], "startup");
    let code = r.i32()?;
    let packet = match code {
        SSL_REQUEST_CODE => {
            r.finish()?;
            StartupPacket::SslRequest
        }
        GSSENC_REQUEST_CODE => {
            r.finish()?;
            StartupPacket::GssEncRequest
        }
        CANCEL_REQUEST_CODE => {
            let process_id = r.i32()?;
            let secret = r.i32()?;
            r.finish()?;
            StartupPacket::Cancel(CancelKey { process_id, secret })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let k = r.cstr()?;
                if k.is_empty() {
                    break;
                }
                let v = r.cstr()?;
                params.push((k.to_owned(), v.to_owned()));
            }
            r.finish()?;
            StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params,
            })
        }
    };
    Ok(Some((packet, len)))
}

/// Encodes a StartupMessage for protocol 3.0 with these parameters.
pub fn encode_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Encodes an SSLRequest.
pub fn encode_ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST_CODE);
}

/// Encodes a CancelRequest.
pub fn encode_cancel_request(out: &mut BytesMut, key: CancelKey) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST_CODE);
    out.put_i32(key.process_id);
    out.put_i32(key.secret);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn startup_round_trip() {
        let mut b = BytesMut::new();
        encode_startup(&mut b, &[("user", "alice"), ("database", "orders")]);
        let (p, n) = decode_startup(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        let StartupPacket::Startup(m) = p else {
            panic!("not a startup message")
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.param("user"), Some("alice"));
        assert_eq!(m.param("database"), Some("orders"));
        assert_eq!(m.param("nope"), None);
    }

    #[test]
    fn partial_packets_need_more() {
        let mut b = BytesMut::new();
        encode_startup(&mut b, &[("user", "alice")]);
        for i in 0..b.len() {
            assert_eq!(decode_startup(&b[..i]).unwrap(), None, "prefix {i}");
        }
    }

    #[test]
    fn special_codes() {
        let mut b = BytesMut::new();
        encode_ssl_request(&mut b);
        assert_eq!(
            decode_startup(&b).unwrap().unwrap(),
            (StartupPacket::SslRequest, 8)
        );
        let mut b = BytesMut::new();
        let key = CancelKey {
            process_id: 42,
            secret: -7,
        };
        encode_cancel_request(&mut b, key);
        assert_eq!(
            decode_startup(&b).unwrap().unwrap(),
            (StartupPacket::Cancel(key), 16)
        );
        assert!(!format!("{key:?}").contains("-7"));
    }

    #[test]
    fn bounds() {
        assert_eq!(
            decode_startup(&[0, 0, 0, 4, 0, 0, 0, 0]),
            Err(ProtocolError::InvalidLength(4))
        );
        assert!(matches!(
            decode_startup(&[0, 1, 0, 0]),
            Err(ProtocolError::TooLong { .. })
        ));
        // Version 2.0 is refused.
        assert_eq!(
            decode_startup(&[0, 0, 0, 9, 0, 2, 0, 0, 0]),
            Err(ProtocolError::UnsupportedVersion { major: 2, minor: 0 })
        );
        // Missing terminator.
        assert!(decode_startup(&[0, 0, 0, 10, 0, 3, 0, 0, b'u', 0]).is_err());
    }
}
