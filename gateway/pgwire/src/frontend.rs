//! Messages a client sends after startup, decoded from a [`Frame`], and encoders for the few
//! that Gatehouse itself sends upstream (authentication answers, Terminate).

use bytes::{BufMut, BytesMut};

use crate::{put_cstr, put_typed, Frame, ProtocolError, Reader};

/// A decoded frontend message. Bodies that Gatehouse only forwards (CopyData, Bind values)
/// are not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// `Q`: simple query. The text is raw bytes in the session's `client_encoding`: only the
    /// server's settings say how to read it (see `gatehouse_sql::decode_statement`).
    Query { sql: &'a [u8] },
    /// `P`: Parse (statement text as raw bytes, like `Query`).
    Parse {
        statement: &'a str,
        sql: &'a [u8],
        param_types: Vec<i32>,
    },
    /// `B`: Bind (parameter values are not decoded).
    Bind {
        portal: &'a str,
        statement: &'a str,
        param_count: u16,
    },
    /// `E`: Execute.
    Execute { portal: &'a str, max_rows: i32 },
    /// `D`: Describe a statement (`S`) or portal (`P`).
    Describe { kind: u8, name: &'a str },
    /// `C`: Close a statement (`S`) or portal (`P`).
    Close { kind: u8, name: &'a str },
    /// `S`: Sync.
    Sync,
    /// `H`: Flush.
    Flush,
    /// `X`: Terminate.
    Terminate,
    /// `d`: CopyData.
    CopyData,
    /// `c`: CopyDone.
    CopyDone,
    /// `f`: CopyFail.
    CopyFail { message: &'a str },
    /// `F`: FunctionCall (fast-path function call by OID); arguments are not decoded.
    FunctionCall { oid: u32, result_format: i16 },
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse; the meaning depends on state.
    Password { body: &'a [u8] },
}

impl<'a> FrontendMessage<'a> {
    /// Decodes a frontend frame.
    pub fn decode(frame: Frame<'a>) -> Result<Self, ProtocolError> {
        let body = frame.body;
        Ok(match frame.tag {
            b'Q' => {
                let mut r = Reader::new(body, "Query");
                let sql = r.cbytes()?;
                r.finish()?;
                FrontendMessage::Query { sql }
            }
            b'P' => {
                let mut r = Reader::new(body, "Parse");
                let statement = r.cstr()?;
                let sql = r.cbytes()?;
                let n = r.i16()?;
                if n < 0 {
                    return Err(ProtocolError::Malformed("Parse"));
                }
                let mut param_types = Vec::with_capacity((n as usize).min(r.remaining().len() / 4));
                for _ in 0..n {
                    param_types.push(r.i32()?);
                }
                r.finish()?;
                FrontendMessage::Parse {
                    statement,
                    sql,
                    param_types,
                }
            }
            b'B' => {
                let mut r = Reader::new(body, "Bind");
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                let nformats = r.i16()?;
                if nformats < 0 {
                    return Err(ProtocolError::Malformed("Bind"));
                }
                r.bytes(nformats as usize * 2)?;
                let nparams = r.i16()?;
                if nparams < 0 {
                    return Err(ProtocolError::Malformed("Bind"));
                }
                for _ in 0..nparams {
                    let len = r.i32()?;
                    if len > 0 {
                        r.bytes(len as usize)?;
                    } else if len < -1 {
                        return Err(ProtocolError::Malformed("Bind"));
                    }
                }
                let nresult = r.i16()?;
                if nresult < 0 {
                    return Err(ProtocolError::Malformed("Bind"));
                }
                r.bytes(nresult as usize * 2)?;
                r.finish()?;
                FrontendMessage::Bind {
                    portal,
                    statement,
                    param_count: nparams as u16,
                }
            }
            b'E' => {
                let mut r = Reader::new(body, "Execute");
                let portal = r.cstr()?;
                let max_rows = r.i32()?;
                r.finish()?;
                FrontendMessage::Execute { portal, max_rows }
            }
            b'D' | b'C' => {
                let what = if frame.tag == b'D' {
                    "Describe"
                } else {
                    "Close"
                };
                let mut r = Reader::new(body, what);
                let kind = r.u8()?;
                if kind != b'S' && kind != b'P' {
                    return Err(ProtocolError::Malformed(what));
                }
                let name = r.cstr()?;
                r.finish()?;
                if frame.tag == b'D' {
                    FrontendMessage::Describe { kind, name }
                } else {
                    FrontendMessage::Close { kind, name }
                }
            }
            b'S' => empty(body, "Sync", FrontendMessage::Sync)?,
            b'H' => empty(body, "Flush", FrontendMessage::Flush)?,
            b'X' => empty(body, "Terminate", FrontendMessage::Terminate)?,
            b'c' => empty(body, "CopyDone", FrontendMessage::CopyDone)?,
            b'd' => FrontendMessage::CopyData,
            b'f' => {
                let mut r = Reader::new(body, "CopyFail");
                let message = r.cstr()?;
                r.finish()?;
                FrontendMessage::CopyFail { message }
            }
            b'F' => {
                let mut r = Reader::new(body, "FunctionCall");
                let oid = r.i32()? as u32;
                let nformats = r.i16()?;
                if nformats < 0 {
                    return Err(ProtocolError::Malformed("FunctionCall"));
                }
                r.bytes(nformats as usize * 2)?;
                let nargs = r.i16()?;
                if nargs < 0 {
                    return Err(ProtocolError::Malformed("FunctionCall"));
                }
                for _ in 0..nargs {
                    let len = r.i32()?;
                    if len > 0 {
                        r.bytes(len as usize)?;
                    } else if len < -1 {
                        return Err(ProtocolError::Malformed("FunctionCall"));
                    }
                }
                let result_format = r.i16()?;
                r.finish()?;
                FrontendMessage::FunctionCall { oid, result_format }
            }
            b'p' => FrontendMessage::Password { body },
            other => return Err(ProtocolError::UnexpectedTag(other as char)),
        })
    }
}

fn empty<'a>(
    body: &[u8],
    what: &'static str,
    m: FrontendMessage<'a>,
) -> Result<FrontendMessage<'a>, ProtocolError> {
    if body.is_empty() {
        Ok(m)
    } else {
        Err(ProtocolError::Malformed(what))
    }
}

/// Reads a PasswordMessage body as a NUL-terminated string (cleartext password or, for
/// Gatehouse, the OIDC token).
pub fn decode_password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body, "PasswordMessage");
    let s = r.cstr()?;
    r.finish()?;
    Ok(s)
}

/// Encodes a PasswordMessage (cleartext or md5 answer).
pub fn encode_password(out: &mut BytesMut, password: &str) {
    put_typed(out, b'p', |o| put_cstr(o, password));
}

/// Encodes a SASLInitialResponse.
pub fn encode_sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_typed(out, b'p', |o| {
        put_cstr(o, mechanism);
        o.put_i32(data.len() as i32);
        o.extend_from_slice(data);
    });
}

/// Encodes a SASLResponse.
pub fn encode_sasl_response(out: &mut BytesMut, data: &[u8]) {
    put_typed(out, b'p', |o| o.extend_from_slice(data));
}

/// Encodes a simple Query.
pub fn encode_query(out: &mut BytesMut, sql: &str) {
    put_typed(out, b'Q', |o| put_cstr(o, sql));
}

/// Encodes a Parse.
pub fn encode_parse(out: &mut BytesMut, statement: &str, sql: &str, param_types: &[i32]) {
    put_typed(out, b'P', |o| {
        put_cstr(o, statement);
        put_cstr(o, sql);
        o.put_i16(param_types.len() as i16);
        for t in param_types {
            o.put_i32(*t);
        }
    });
}

/// Encodes a Bind with text parameters (`None` is NULL) and text results.
pub fn encode_bind(out: &mut BytesMut, portal: &str, statement: &str, params: &[Option<&[u8]>]) {
    put_typed(out, b'B', |o| {
        put_cstr(o, portal);
        put_cstr(o, statement);
        o.put_i16(0);
        o.put_i16(params.len() as i16);
        for p in params {
            match p {
                Some(v) => {
                    o.put_i32(v.len() as i32);
                    o.extend_from_slice(v);
                }
                None => o.put_i32(-1),
            }
        }
        o.put_i16(0);
    });
}

/// Encodes an Execute.
pub fn encode_execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    put_typed(out, b'E', |o| {
        put_cstr(o, portal);
        o.put_i32(max_rows);
    });
}

/// Encodes a Describe of a statement (`S`) or portal (`P`).
pub fn encode_describe(out: &mut BytesMut, kind: u8, name: &str) {
    put_typed(out, b'D', |o| {
        o.put_u8(kind);
        put_cstr(o, name);
    });
}

/// Encodes a Sync.
pub fn encode_sync(out: &mut BytesMut) {
    put_typed(out, b'S', |_| {});
}

/// Encodes a Terminate.
pub fn encode_terminate(out: &mut BytesMut) {
    put_typed(out, b'X', |_| {});
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::next_frame;
    use proptest::prelude::*;

    fn decode_one(b: &[u8]) -> FrontendMessage<'_> {
        let f = next_frame(b, 1 << 20).unwrap().unwrap();
        assert_eq!(f.wire_len(), b.len());
        FrontendMessage::decode(f).unwrap()
    }

    #[test]
    fn extended_round_trip() {
        let mut b = BytesMut::new();
        encode_parse(&mut b, "s1", "select $1", &[23]);
        assert_eq!(
            decode_one(&b),
            FrontendMessage::Parse {
                statement: "s1",
                sql: b"select $1",
                param_types: vec![23]
            }
        );
        let mut b = BytesMut::new();
        encode_bind(&mut b, "p", "s1", &[Some(b"42"), None]);
        assert_eq!(
            decode_one(&b),
            FrontendMessage::Bind {
                portal: "p",
                statement: "s1",
                param_count: 2
            }
        );
        let mut b = BytesMut::new();
        encode_execute(&mut b, "p", 0);
        assert_eq!(
            decode_one(&b),
            FrontendMessage::Execute {
                portal: "p",
                max_rows: 0
            }
        );
        let mut b = BytesMut::new();
        encode_sync(&mut b);
        assert_eq!(decode_one(&b), FrontendMessage::Sync);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        // Bind claiming one parameter of 100 bytes with none present.
        let body = b"\0\0\0\0\0\x01\0\0\0\x64";
        let f = Frame { tag: b'B', body };
        assert_eq!(
            FrontendMessage::decode(f),
            Err(ProtocolError::Malformed("Bind"))
        );
        let f = Frame {
            tag: b'Q',
            body: b"select 1",
        };
        assert!(FrontendMessage::decode(f).is_err());
        let f = Frame {
            tag: b'Z',
            body: b"",
        };
        assert_eq!(
            FrontendMessage::decode(f),
            Err(ProtocolError::UnexpectedTag('Z'))
        );
    }

    proptest! {
        #[test]
        fn query_round_trips(sql in "[^\u{0}]{0,200}") {
            let mut b = BytesMut::new();
            encode_query(&mut b, &sql);
            prop_assert_eq!(decode_one(&b), FrontendMessage::Query { sql: sql.as_bytes() });
        }

        #[test]
        fn parse_round_trips(name in "[a-z0-9_]{0,20}", sql in "[^\u{0}]{0,100}", types in proptest::collection::vec(any::<i32>(), 0..8)) {
            let mut b = BytesMut::new();
            encode_parse(&mut b, &name, &sql, &types);
            prop_assert_eq!(decode_one(&b), FrontendMessage::Parse { statement: &name, sql: sql.as_bytes(), param_types: types.clone() });
        }

        #[test]
        fn decode_never_panics(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FrontendMessage::decode(Frame { tag, body: &body });
        }
    }
}
