//! Messages a server sends: the ones Gatehouse reads from upstream (authentication requests,
//! command completion, errors, key data) and the ones it writes to clients itself.

use bytes::{BufMut, BytesMut};

use crate::{put_cstr, put_typed, CancelKey, Frame, ProtocolError, Reader};

/// An authentication request (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// 0: authenticated.
    Ok,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send md5(md5(password + user) + salt).
    Md5Password { salt: [u8; 4] },
    /// 10: SASL, with the mechanisms offered.
    Sasl { mechanisms: Vec<&'a str> },
    /// 11: SASL challenge data.
    SaslContinue { data: &'a [u8] },
    /// 12: SASL final data.
    SaslFinal { data: &'a [u8] },
    /// Anything else (Kerberos, GSS, SSPI): not supported by Gatehouse.
    Other(i32),
}

impl<'a> Authentication<'a> {
    /// Decodes an `R` frame.
    pub fn decode(frame: Frame<'a>) -> Result<Self, ProtocolError> {
        if frame.tag != b'R' {
            return Err(ProtocolError::UnexpectedTag(frame.tag as char));
        }
        let mut r = Reader::new(frame.body, "Authentication");
        let code = r.i32()?;
        Ok(match code {
            0 => Authentication::Ok,
            3 => Authentication::CleartextPassword,
            5 => {
                let s = r.bytes(4)?;
                Authentication::Md5Password {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                Authentication::Sasl { mechanisms }
            }
            11 => Authentication::SaslContinue {
                data: r.remaining(),
            },
            12 => Authentication::SaslFinal {
                data: r.remaining(),
            },
            other => Authentication::Other(other),
        })
    }
}

/// Transaction status in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Decodes a ReadyForQuery (`Z`) body.
pub fn decode_ready_for_query(body: &[u8]) -> Result<TransactionStatus, ProtocolError> {
    match body {
        [b'I'] => Ok(TransactionStatus::Idle),
        [b'T'] => Ok(TransactionStatus::InTransaction),
        [b'E'] => Ok(TransactionStatus::Failed),
        _ => Err(ProtocolError::Malformed("ReadyForQuery")),
    }
}

/// Decodes a BackendKeyData (`K`) body (protocol 3.0: two `i32`s).
pub fn decode_backend_key_data(body: &[u8]) -> Result<CancelKey, ProtocolError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let process_id = r.i32()?;
    let secret = r.i32()?;
    r.finish()?;
    Ok(CancelKey { process_id, secret })
}

/// Decodes a ParameterStatus (`S`) body.
pub fn decode_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let k = r.cstr()?;
    let v = r.cstr()?;
    r.finish()?;
    Ok((k, v))
}

/// Decodes a FunctionCallResponse (`V`) body: the result value, `None` for NULL.
pub fn decode_function_call_response(body: &[u8]) -> Result<Option<&[u8]>, ProtocolError> {
    let mut r = Reader::new(body, "FunctionCallResponse");
    let len = r.i32()?;
    let v = match len {
        -1 => None,
        n if n < -1 => return Err(ProtocolError::Malformed("FunctionCallResponse")),
        n => Some(r.bytes(n as usize)?),
    };
    r.finish()?;
    Ok(v)
}

/// Encodes a FunctionCallResponse (`V`).
pub fn encode_function_call_response(out: &mut BytesMut, value: Option<&[u8]>) {
    put_typed(out, b'V', |o| match value {
        Some(v) => {
            o.put_i32(v.len() as i32);
            o.extend_from_slice(v);
        }
        None => o.put_i32(-1),
    });
}

/// Decodes a CommandComplete (`C`) body: the command tag, e.g. `SELECT 5`, `INSERT 0 1`.
pub fn decode_command_complete(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body, "CommandComplete");
    let tag = r.cstr()?;
    r.finish()?;
    Ok(tag)
}

/// The row count a command tag reports, if any (`SELECT 5` → 5, `INSERT 0 1` → 1, `BEGIN` → none).
pub fn command_tag_rows(tag: &str) -> Option<u64> {
    let (verb, rest) = tag.split_once(' ')?;
    let last = rest.rsplit(' ').next()?;
    match verb {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY" => {
            last.parse().ok()
        }
        _ => None,
    }
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// `S`/`V`: severity.
    pub severity: Option<&'a str>,
    /// `C`: SQLSTATE.
    pub code: Option<&'a str>,
    /// `M`: primary message.
    pub message: Option<&'a str>,
    /// Every field, in order, as (type byte, value).
    pub all: Vec<(u8, &'a str)>,
}

/// Decodes an ErrorResponse (`E`) or NoticeResponse (`N`) body.
pub fn decode_error_fields(body: &[u8]) -> Result<ErrorFields<'_>, ProtocolError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut f = ErrorFields::default();
    loop {
        let t = r.u8()?;
        if t == 0 {
            break;
        }
        let v = r.cstr()?;
        match t {
            b'V' => f.severity = Some(v),
            b'S' if f.severity.is_none() => f.severity = Some(v),
            b'C' => f.code = Some(v),
            b'M' => f.message = Some(v),
            _ => {}
        }
        f.all.push((t, v));
    }
    r.finish()?;
    Ok(f)
}

/// Severity of an error Gatehouse reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Encodes an ErrorResponse with severity, SQLSTATE, message and an optional detail/hint.
pub fn encode_error(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    put_typed(out, b'E', |o| {
        for t in [b'S', b'V'] {
            o.put_u8(t);
            put_cstr(o, severity.as_str());
        }
        o.put_u8(b'C');
        put_cstr(o, code);
        o.put_u8(b'M');
        put_cstr(o, message);
        if let Some(d) = detail {
            o.put_u8(b'D');
            put_cstr(o, d);
        }
        if let Some(h) = hint {
            o.put_u8(b'H');
            put_cstr(o, h);
        }
        o.put_u8(0);
    });
}

/// Encodes an ErrorResponse (`E`) or NoticeResponse (`N`) from raw fields.
pub fn encode_error_fields(out: &mut BytesMut, tag: u8, fields: &[(u8, &str)]) {
    put_typed(out, tag, |o| {
        for (t, v) in fields {
            o.put_u8(*t);
            put_cstr(o, v);
        }
        o.put_u8(0);
    });
}

/// Encodes AuthenticationOk.
pub fn encode_auth_ok(out: &mut BytesMut) {
    put_typed(out, b'R', |o| o.put_i32(0));
}

/// Encodes AuthenticationCleartextPassword.
pub fn encode_auth_cleartext(out: &mut BytesMut) {
    put_typed(out, b'R', |o| o.put_i32(3));
}

/// Encodes AuthenticationMD5Password.
pub fn encode_auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    put_typed(out, b'R', |o| {
        o.put_i32(5);
        o.extend_from_slice(&salt);
    });
}

/// Encodes AuthenticationSASL with the given mechanisms.
pub fn encode_auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    put_typed(out, b'R', |o| {
        o.put_i32(10);
        for m in mechanisms {
            put_cstr(o, m);
        }
        o.put_u8(0);
    });
}

/// Encodes a ParameterStatus.
pub fn encode_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put_typed(out, b'S', |o| {
        put_cstr(o, name);
        put_cstr(o, value);
    });
}

/// Encodes a BackendKeyData.
pub fn encode_backend_key_data(out: &mut BytesMut, key: CancelKey) {
    put_typed(out, b'K', |o| {
        o.put_i32(key.process_id);
        o.put_i32(key.secret);
    });
}

/// Encodes a ReadyForQuery.
pub fn encode_ready_for_query(out: &mut BytesMut, status: TransactionStatus) {
    put_typed(out, b'Z', |o| o.put_u8(status.byte()));
}

/// Encodes a CommandComplete.
pub fn encode_command_complete(out: &mut BytesMut, tag: &str) {
    put_typed(out, b'C', |o| put_cstr(o, tag));
}

/// Encodes NegotiateProtocolVersion: the newest minor version supported for the requested
/// major version, and the protocol options (`_pq_.*`) not recognised.
pub fn encode_negotiate_protocol_version(out: &mut BytesMut, minor: i32, unrecognised: &[&str]) {
    put_typed(out, b'v', |o| {
        o.put_i32(minor);
        o.put_i32(unrecognised.len() as i32);
        for u in unrecognised {
            put_cstr(o, u);
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::next_frame;
    use proptest::prelude::*;

    #[test]
    fn error_round_trip() {
        let mut b = BytesMut::new();
        encode_error(
            &mut b,
            Severity::Fatal,
            "28000",
            "token rejected",
            Some("d"),
            None,
        );
        let f = next_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let e = decode_error_fields(f.body).unwrap();
        assert_eq!(e.code, Some("28000"));
        assert_eq!(e.severity, Some("FATAL"));
        assert_eq!(e.message, Some("token rejected"));
        assert!(e.all.contains(&(b'D', "d")));
        let mut b2 = BytesMut::new();
        encode_error_fields(&mut b2, b'E', &e.all);
        assert_eq!(b, b2);
    }

    #[test]
    fn auth_requests() {
        let mut b = BytesMut::new();
        encode_auth_sasl(&mut b, &["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]);
        let f = next_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(
            Authentication::decode(f).unwrap(),
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
            }
        );
        let mut b = BytesMut::new();
        encode_auth_md5(&mut b, [1, 2, 3, 4]);
        let f = next_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(
            Authentication::decode(f).unwrap(),
            Authentication::Md5Password { salt: [1, 2, 3, 4] }
        );
    }

    #[test]
    fn command_tags() {
        assert_eq!(command_tag_rows("SELECT 5"), Some(5));
        assert_eq!(command_tag_rows("INSERT 0 12"), Some(12));
        assert_eq!(command_tag_rows("COPY 1000000"), Some(1_000_000));
        assert_eq!(command_tag_rows("BEGIN"), None);
        assert_eq!(command_tag_rows("CREATE TABLE"), None);
    }

    #[test]
    fn key_and_status() {
        let mut b = BytesMut::new();
        let k = CancelKey {
            process_id: 7,
            secret: 99,
        };
        encode_backend_key_data(&mut b, k);
        let f = next_frame(&b, 100).unwrap().unwrap();
        assert_eq!(decode_backend_key_data(f.body).unwrap(), k);
        let mut b = BytesMut::new();
        encode_ready_for_query(&mut b, TransactionStatus::Failed);
        let f = next_frame(&b, 100).unwrap().unwrap();
        assert_eq!(
            decode_ready_for_query(f.body).unwrap(),
            TransactionStatus::Failed
        );
    }

    proptest! {
        #[test]
        fn parameter_status_round_trips(k in "[a-zA-Z_]{1,30}", v in "[^\u{0}]{0,60}") {
            let mut b = BytesMut::new();
            encode_parameter_status(&mut b, &k, &v);
            let f = next_frame(&b, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(decode_parameter_status(f.body).unwrap(), (k.as_str(), v.as_str()));
        }

        #[test]
        fn backend_decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Authentication::decode(Frame { tag: b'R', body: &body });
            let _ = decode_error_fields(&body);
            let _ = decode_command_complete(&body);
            let _ = decode_backend_key_data(&body);
            let _ = decode_parameter_status(&body);
        }
    }
}

/// One column of a RowDescription (`T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    pub name: &'a str,
    pub table_oid: i32,
    pub column: i16,
    pub type_oid: i32,
    pub type_len: i16,
    pub type_mod: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// Decodes a RowDescription (`T`) body. The column count is bounded by the body length
/// (each column takes at least 19 bytes), so nothing is allocated beyond the message.
pub fn decode_row_description(body: &[u8]) -> Result<Vec<FieldDescription<'_>>, ProtocolError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.i16()?;
    if n < 0 || (n as usize) * 19 > r.remaining().len() {
        return Err(ProtocolError::Malformed("RowDescription"));
    }
    let mut cols = Vec::with_capacity(n as usize);
    for _ in 0..n {
        cols.push(FieldDescription {
            name: r.cstr()?,
            table_oid: r.i32()?,
            column: r.i16()?,
            type_oid: r.i32()?,
            type_len: r.i16()?,
            type_mod: r.i32()?,
            format: r.i16()?,
        });
    }
    r.finish()?;
    Ok(cols)
}

/// Encodes a RowDescription.
pub fn encode_row_description(out: &mut BytesMut, cols: &[FieldDescription<'_>]) {
    put_typed(out, b'T', |o| {
        o.put_i16(cols.len() as i16);
        for c in cols {
            put_cstr(o, c.name);
            o.put_i32(c.table_oid);
            o.put_i16(c.column);
            o.put_i32(c.type_oid);
            o.put_i16(c.type_len);
            o.put_i32(c.type_mod);
            o.put_i16(c.format);
        }
    });
}

/// Decodes a DataRow (`D`) body into its values (`None` = SQL NULL). Every length is
/// checked against the body before it is used.
pub fn decode_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    if n < 0 || (n as usize) * 4 > r.remaining().len() {
        return Err(ProtocolError::Malformed("DataRow"));
    }
    let mut values = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.i32()?;
        if len == -1 {
            values.push(None);
        } else if len < 0 {
            return Err(ProtocolError::Malformed("DataRow"));
        } else {
            values.push(Some(r.bytes(len as usize)?));
        }
    }
    r.finish()?;
    Ok(values)
}

/// Encodes a DataRow.
pub fn encode_data_row(out: &mut BytesMut, values: &[Option<&[u8]>]) {
    put_typed(out, b'D', |o| {
        o.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => o.put_i32(-1),
                Some(b) => {
                    o.put_i32(b.len() as i32);
                    o.extend_from_slice(b);
                }
            }
        }
    });
}

/// Encodes a CopyData (`d`) message (either direction).
pub fn encode_copy_data(out: &mut BytesMut, data: &[u8]) {
    put_typed(out, b'd', |o| o.extend_from_slice(data));
}

/// Decodes a NotificationResponse (`A`) body: (process id, channel, payload).
pub fn decode_notification(body: &[u8]) -> Result<(i32, &str, &str), ProtocolError> {
    let mut r = Reader::new(body, "NotificationResponse");
    let pid = r.i32()?;
    let channel = r.cstr()?;
    let payload = r.cstr()?;
    r.finish()?;
    Ok((pid, channel, payload))
}

/// Encodes a NotificationResponse.
pub fn encode_notification(out: &mut BytesMut, pid: i32, channel: &str, payload: &str) {
    put_typed(out, b'A', |o| {
        o.put_i32(pid);
        put_cstr(o, channel);
        put_cstr(o, payload);
    });
}

#[cfg(test)]
mod row_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::HEADER_LEN;

    #[test]
    fn rows_round_trip() {
        let cols = vec![
            FieldDescription {
                name: "id",
                table_oid: 1,
                column: 1,
                type_oid: 23,
                type_len: 4,
                type_mod: -1,
                format: 1,
            },
            FieldDescription {
                name: "email",
                table_oid: 1,
                column: 2,
                type_oid: 25,
                type_len: -1,
                type_mod: -1,
                format: 0,
            },
        ];
        let mut b = BytesMut::new();
        encode_row_description(&mut b, &cols);
        assert_eq!(decode_row_description(&b[HEADER_LEN..]).unwrap(), cols);
        let vals: Vec<Option<&[u8]>> = vec![Some(b"\x00\x00\x00\x07"), None, Some(b"")];
        let mut b = BytesMut::new();
        encode_data_row(&mut b, &vals);
        assert_eq!(decode_data_row(&b[HEADER_LEN..]).unwrap(), vals);
        let mut b = BytesMut::new();
        encode_copy_data(&mut b, b"1\tx\n");
        assert_eq!(&b[..], b"d\x00\x00\x00\x081\tx\n");
        let mut b = BytesMut::new();
        encode_notification(&mut b, 42, "ch", "payload");
        assert_eq!(
            decode_notification(&b[HEADER_LEN..]).unwrap(),
            (42, "ch", "payload")
        );
    }

    #[test]
    fn lying_lengths_are_malformed() {
        // 1000 columns announced in a 2-byte body; a value longer than the body; -2.
        assert!(decode_data_row(&[0x03, 0xe8]).is_err());
        assert!(decode_data_row(&[0, 1, 0, 0, 0, 9, 1, 2]).is_err());
        assert!(decode_data_row(&[0, 1, 0xff, 0xff, 0xff, 0xfe]).is_err());
        assert!(decode_row_description(&[0x7f, 0xff]).is_err());
        assert!(decode_data_row(&[0, 0, 9]).is_err());
    }
}
