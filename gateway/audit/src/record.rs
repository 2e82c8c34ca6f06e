//! The audit record model and its JSON rendering.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Seq;

/// What happened. Serialized (JSON, SQLite) as the dotted names below.
///
/// The canonical hash encoding (postcard) uses the *variant index*, so variants are only ever
/// appended at the end, never reordered or removed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The gateway process started.
    #[serde(rename = "gateway.start")]
    GatewayStart,
    /// The gateway process is stopping.
    #[serde(rename = "gateway.stop")]
    GatewayStop,
    /// A configuration was validated and loaded (`config_hash` set).
    #[serde(rename = "config.loaded")]
    ConfigLoaded,
    /// A client authenticated.
    #[serde(rename = "login.success")]
    LoginSuccess,
    /// A client failed to authenticate (`reason` set).
    #[serde(rename = "login.failure")]
    LoginFailure,
    /// A statement is about to be forwarded (or was denied).
    #[serde(rename = "statement")]
    Statement,
    /// The outcome of a statement (`ref_seq` points at the statement record).
    #[serde(rename = "statement.result")]
    StatementResult,
    /// A client session ended.
    #[serde(rename = "session.end")]
    SessionEnd,
    /// A client sent a cancel request.
    #[serde(rename = "cancel")]
    Cancel,
    /// Vaulted credentials were found in a response and masked: a leak that was stopped
    /// (`ref_seq` = the statement, `rows` = occurrences). Never carries the value.
    #[serde(rename = "secret.masked")]
    SecretMasked,
    /// A statement needed approval and a request was created (`reason`: id, rule, approvers).
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// An approval request reached its quorum.
    #[serde(rename = "approval.approved")]
    ApprovalApproved,
    /// An approver denied a request.
    #[serde(rename = "approval.denied")]
    ApprovalDenied,
    /// A request was not decided in time, or its approval window passed unused.
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    /// The approved statement ran (hold released or ticket used).
    #[serde(rename = "approval.executed")]
    ApprovalExecuted,
    /// A time-boxed grant was issued (`reason`: id, scope, issuer, expiry).
    #[serde(rename = "grant.issued")]
    GrantIssued,
    /// A grant ended: expired or revoked.
    #[serde(rename = "grant.ended")]
    GrantEnded,
    /// An auditor opened an evidence file over SFTP (`statement`: `open <path>`, `rows`: size
    /// in bytes). Recorded before the file handle is returned.
    #[serde(rename = "sftp.open")]
    SftpOpen,
    /// An auditor closed an evidence file over SFTP (`bytes_out`: bytes sent, `duration_us`).
    #[serde(rename = "sftp.download")]
    SftpDownload,
    /// An SFTP/SSH operation was refused: a write, remove, rename, path escape, symlink, shell,
    /// exec, forwarding (`statement`: operation and target, `reason`: why).
    #[serde(rename = "sftp.denied")]
    SftpDenied,
    /// Part of a session recording: the bytes the client received (after masking), in
    /// `payload`; `ref_seq` = the newest statement of the session, `duration_us` = offset
    /// from the session start; `reason` notes a truncation.
    #[serde(rename = "session.output")]
    SessionOutput,
    /// An operator changed a connection with the CLI (`connection add`, `update`,
    /// `set-credential`, `remove`): `connection`, `reason` = what changed (field names and
    /// new values, tags; for a credential only that it was set and for which upstream user,
    /// never the secret), `username` = the local account that ran the command.
    #[serde(rename = "connection.changed")]
    ConnectionChanged,
}

impl EventKind {
    /// Every variant, in declaration order.
    pub const ALL: [EventKind; 22] = [
        EventKind::GatewayStart,
        EventKind::GatewayStop,
        EventKind::ConfigLoaded,
        EventKind::LoginSuccess,
        EventKind::LoginFailure,
        EventKind::Statement,
        EventKind::StatementResult,
        EventKind::SessionEnd,
        EventKind::Cancel,
        EventKind::SecretMasked,
        EventKind::ApprovalRequested,
        EventKind::ApprovalApproved,
        EventKind::ApprovalDenied,
        EventKind::ApprovalExpired,
        EventKind::ApprovalExecuted,
        EventKind::GrantIssued,
        EventKind::GrantEnded,
        EventKind::SftpOpen,
        EventKind::SftpDownload,
        EventKind::SftpDenied,
        EventKind::SessionOutput,
        EventKind::ConnectionChanged,
    ];

    /// The stored/serialized name, e.g. `"login.success"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::GatewayStart => "gateway.start",
            EventKind::GatewayStop => "gateway.stop",
            EventKind::ConfigLoaded => "config.loaded",
            EventKind::LoginSuccess => "login.success",
            EventKind::LoginFailure => "login.failure",
            EventKind::Statement => "statement",
            EventKind::StatementResult => "statement.result",
            EventKind::SessionEnd => "session.end",
            EventKind::Cancel => "cancel",
            EventKind::SecretMasked => "secret.masked",
            EventKind::ApprovalRequested => "approval.requested",
            EventKind::ApprovalApproved => "approval.approved",
            EventKind::ApprovalDenied => "approval.denied",
            EventKind::ApprovalExpired => "approval.expired",
            EventKind::ApprovalExecuted => "approval.executed",
            EventKind::GrantIssued => "grant.issued",
            EventKind::GrantEnded => "grant.ended",
            EventKind::SftpOpen => "sftp.open",
            EventKind::SftpDownload => "sftp.download",
            EventKind::SftpDenied => "sftp.denied",
            EventKind::SessionOutput => "session.output",
            EventKind::ConnectionChanged => "connection.changed",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy decision a record carries. Serialized as `"allow"` / `"deny"`.
///
/// As with [`EventKind`], variants are only ever appended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The request was forwarded.
    Allow,
    /// The request was refused.
    Deny,
}

impl Decision {
    /// The stored/serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Decision> {
        match name {
            "allow" => Some(Decision::Allow),
            "deny" => Some(Decision::Deny),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit record as the gateway writes it. The store assigns the sequence number.
///
/// Field order is part of the canonical hash encoding (see the crate docs): fields are only
/// ever appended at the end, never reordered or removed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// UTC microseconds since the Unix epoch, set by the caller.
    pub time_us: i64,
    /// What happened.
    pub event: EventKind,
    /// Gateway name (`gateway.name`).
    pub gateway: String,
    /// Listener name.
    pub listener: Option<String>,
    /// Client session identifier.
    pub session_id: Option<String>,
    /// Client address, `ip:port`.
    pub source: Option<String>,
    /// Token subject.
    pub subject: Option<String>,
    /// User name (from the configured claim).
    pub username: Option<String>,
    /// E-mail address claim.
    pub email: Option<String>,
    /// Group claims.
    pub groups: Vec<String>,
    /// Token identifier (`jti`).
    pub token_id: Option<String>,
    /// Token issuer.
    pub issuer: Option<String>,
    /// Target connection name.
    pub connection: Option<String>,
    /// `"simple"` or `"extended"` query protocol.
    pub protocol: Option<String>,
    /// SQL text.
    pub statement: Option<String>,
    /// Prepared statement name (extended protocol).
    pub statement_name: Option<String>,
    /// Number of bound parameters.
    pub param_count: Option<i64>,
    /// Policy decision.
    pub decision: Option<Decision>,
    /// Why (e.g. the login failure reason or the denying rule).
    pub reason: Option<String>,
    /// SQLSTATE of an error outcome.
    pub sqlstate: Option<String>,
    /// Rows returned or affected.
    pub rows: Option<i64>,
    /// Bytes from client to target.
    pub bytes_in: Option<i64>,
    /// Bytes from target to client.
    pub bytes_out: Option<i64>,
    /// Duration of the statement or session.
    pub duration_us: Option<i64>,
    /// For `statement.result`: the sequence number of the statement record.
    pub ref_seq: Option<i64>,
    /// SHA-256 (hex) of the loaded configuration.
    pub config_hash: Option<String>,
    /// SHA-256 (hex) of the policy in force when the decision was made (statement and
    /// approval/grant records). An *extension* field: not part of the serde derive, encoded
    /// after the fields above only when set (see [`Record::encode_canonical`]), so records
    /// written before it existed keep their exact bytes and hashes.
    #[serde(skip)]
    pub policy_hash: Option<String>,
    /// Recorded session bytes (`session.output`). Extension field, like `policy_hash`;
    /// sensitive (sealed, never in a clear column of a sealed store).
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
}

impl Record {
    /// A record with only the required fields set; everything else is `None` or empty.
    pub fn new(event: EventKind, gateway: &str, time_us: i64) -> Record {
        Record {
            time_us,
            event,
            gateway: gateway.to_owned(),
            listener: None,
            session_id: None,
            source: None,
            subject: None,
            username: None,
            email: None,
            groups: Vec::new(),
            token_id: None,
            issuer: None,
            connection: None,
            protocol: None,
            statement: None,
            statement_name: None,
            param_count: None,
            decision: None,
            reason: None,
            sqlstate: None,
            rows: None,
            bytes_in: None,
            bytes_out: None,
            duration_us: None,
            ref_seq: None,
            config_hash: None,
            policy_hash: None,
            payload: None,
        }
    }

    /// The canonical encoding: postcard of the derived fields (`time_us` … `config_hash`,
    /// the v1 layout), then the extension fields (`policy_hash`, `payload`) as postcard
    /// `Option`s, up to the last one that is set and no further. A record without extensions
    /// encodes exactly as before the extensions existed. Appends to `out`.
    pub fn encode_canonical(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        let mut out = postcard::to_extend(self, out)?;
        if self.payload.is_some() {
            out = postcard::to_extend(&self.policy_hash, out)?;
            out = postcard::to_extend(&self.payload, out)?;
        } else if self.policy_hash.is_some() {
            out = postcard::to_extend(&self.policy_hash, out)?;
        }
        Ok(out)
    }

    /// Inverse of [`Record::encode_canonical`]; rejects trailing bytes and a trailing `None`
    /// extension (each record has exactly one encoding).
    pub fn decode_canonical(bytes: &[u8]) -> Result<Record, postcard::Error> {
        let (mut record, rest): (Record, &[u8]) = postcard::take_from_bytes(bytes)?;
        if rest.is_empty() {
            return Ok(record);
        }
        let (hash, rest): (Option<String>, &[u8]) = postcard::take_from_bytes(rest)?;
        record.policy_hash = hash;
        if rest.is_empty() {
            if record.policy_hash.is_none() {
                return Err(postcard::Error::DeserializeBadEncoding);
            }
            return Ok(record);
        }
        let (payload, rest): (Option<Vec<u8>>, &[u8]) = postcard::take_from_bytes(rest)?;
        if payload.is_none() || !rest.is_empty() {
            return Err(postcard::Error::DeserializeBadEncoding);
        }
        record.payload = payload;
        Ok(record)
    }
}

/// A record as read back from the store, with its place in the hash chain.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    /// Sequence number assigned by the store (1, 2, 3, … without gaps).
    pub seq: Seq,
    /// The record.
    pub record: Record,
    /// The previous record's `hash` (32 zero bytes for seq 1).
    pub prev_hash: [u8; 32],
    /// `SHA-256(prev_hash || postcard((seq, record)))`.
    pub hash: [u8; 32],
}

impl StoredRecord {
    /// The record's Merkle leaf hash, `SHA-256(0x00 || hash)`.
    pub fn leaf_hash(&self) -> [u8; 32] {
        crate::merkle::leaf_hash(&self.hash)
    }

    /// A flat JSON object: `seq`, `time` (RFC 3339 UTC, microseconds, `Z`), `time_us`, `event`,
    /// every other field that is set (absent options are omitted; `groups` is always present),
    /// then `prev_hash` and `hash` in lower-case hex.
    pub fn to_json(&self) -> Value {
        let r = &self.record;
        let mut m = Map::new();
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("time".into(), Value::from(format_rfc3339_us(r.time_us)));
        m.insert("time_us".into(), Value::from(r.time_us));
        m.insert("event".into(), Value::from(r.event.as_str()));
        m.insert("gateway".into(), Value::from(r.gateway.as_str()));
        for (key, v) in [
            ("listener", &r.listener),
            ("session_id", &r.session_id),
            ("source", &r.source),
            ("subject", &r.subject),
            ("username", &r.username),
            ("email", &r.email),
        ] {
            put_text(&mut m, key, v);
        }
        m.insert(
            "groups".into(),
            Value::Array(r.groups.iter().map(|g| Value::from(g.as_str())).collect()),
        );
        for (key, v) in [
            ("token_id", &r.token_id),
            ("issuer", &r.issuer),
            ("connection", &r.connection),
            ("protocol", &r.protocol),
            ("statement", &r.statement),
            ("statement_name", &r.statement_name),
        ] {
            put_text(&mut m, key, v);
        }
        put_int(&mut m, "param_count", r.param_count);
        if let Some(d) = r.decision {
            m.insert("decision".into(), Value::from(d.as_str()));
        }
        put_text(&mut m, "reason", &r.reason);
        put_text(&mut m, "sqlstate", &r.sqlstate);
        for (key, v) in [
            ("rows", r.rows),
            ("bytes_in", r.bytes_in),
            ("bytes_out", r.bytes_out),
            ("duration_us", r.duration_us),
            ("ref_seq", r.ref_seq),
        ] {
            put_int(&mut m, key, v);
        }
        put_text(&mut m, "config_hash", &r.config_hash);
        put_text(&mut m, "policy_hash", &r.policy_hash);
        if let Some(p) = &r.payload {
            m.insert("payload_len".into(), Value::from(p.len()));
            m.insert("payload_hex".into(), Value::from(hex::encode(p)));
        }
        m.insert("prev_hash".into(), Value::from(hex::encode(self.prev_hash)));
        m.insert("hash".into(), Value::from(hex::encode(self.hash)));
        Value::Object(m)
    }
}

fn put_text(m: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        m.insert(key.into(), Value::from(v.as_str()));
    }
}

fn put_int(m: &mut Map<String, Value>, key: &str, v: Option<i64>) {
    if let Some(v) = v {
        m.insert(key.into(), Value::from(v));
    }
}

const US_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Formats UTC microseconds since the epoch as RFC 3339 with six fractional digits and `Z`,
/// e.g. `2024-02-29T13:45:07.000123Z`. Negative times (before 1970) are handled.
pub fn format_rfc3339_us(time_us: i64) -> String {
    let secs = time_us.div_euclid(US_PER_SEC);
    let micros = time_us.rem_euclid(US_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY);
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parses a UTC RFC 3339 time `YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z` (the form
/// [`format_rfc3339_us`] writes; a date alone means midnight) into microseconds.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date.splitn(3, '-');
    let y: i64 = dp.next()?.parse().ok()?;
    let mo: i64 = dp.next()?.parse().ok()?;
    let d: i64 = dp.next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = 0i64;
    let mut micros = 0i64;
    if let Some(t) = time {
        let t = t.strip_suffix(['Z', 'z'])?;
        let (hms, frac) = match t.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let mut tp = hms.splitn(3, ':');
        let h: i64 = tp.next()?.parse().ok()?;
        let mi: i64 = tp.next()?.parse().ok()?;
        let se: i64 = tp.next()?.parse().ok()?;
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs = h * 3600 + mi * 60 + se;
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            micros = f.parse::<i64>().ok()? * 10i64.pow(6 - f.len() as u32);
        }
    }
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * SECS_PER_DAY + secs)
        .checked_mul(US_PER_SEC)?
        .checked_add(micros)
}

/// Proleptic Gregorian (year, month 1-12, day 1-31) of a day count relative to 1970-01-01.
/// Howard Hinnant's `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>),
/// exact for every day an `i64` of microseconds can name.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    // Both values are range-limited by construction above.
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn is_leap(y: i64) -> bool {
        (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
    }

    fn days_in_month(y: i64, m: u32) -> u32 {
        match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if is_leap(y) => 29,
            _ => 28,
        }
    }

    /// Walks day by day from the epoch in both directions (about 550 years each way) and
    /// compares with the closed-form routine.
    #[test]
    fn civil_from_days_matches_day_by_day_walk() {
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for z in 0..200_000i64 {
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for z in (-200_000i64..=0).rev() {
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
            d -= 1;
            if d == 0 {
                if m == 1 {
                    m = 12;
                    y -= 1;
                } else {
                    m -= 1;
                }
                d = days_in_month(y, m);
            }
        }
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(format_rfc3339_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_rfc3339_us(-1), "1969-12-31T23:59:59.999999Z");
        // date -u -d @951825907 => Tue Feb 29 12:05:07 UTC 2000
        assert_eq!(
            format_rfc3339_us(951_825_907_000_123),
            "2000-02-29T12:05:07.000123Z"
        );
        // date -u -d @1700000000 => Tue Nov 14 22:13:20 UTC 2023
        assert_eq!(
            format_rfc3339_us(1_700_000_000_999_999),
            "2023-11-14T22:13:20.999999Z"
        );
        // date -u -d @4102444799 => Thu Dec 31 23:59:59 UTC 2099
        assert_eq!(
            format_rfc3339_us(4_102_444_799_000_000),
            "2099-12-31T23:59:59.000000Z"
        );
        // Extremes do not panic.
        let _ = format_rfc3339_us(i64::MIN);
        let _ = format_rfc3339_us(i64::MAX);
    }

    #[test]
    fn event_and_decision_names_match_serde() {
        for e in EventKind::ALL {
            let json = serde_json::to_value(e).unwrap();
            assert_eq!(json, Value::from(e.as_str()));
            assert_eq!(EventKind::from_name(e.as_str()), Some(e));
            let back: EventKind = serde_json::from_value(json).unwrap();
            assert_eq!(back, e);
        }
        assert_eq!(EventKind::from_name("statement.results"), None);
        for d in [Decision::Allow, Decision::Deny] {
            assert_eq!(serde_json::to_value(d).unwrap(), Value::from(d.as_str()));
            assert_eq!(Decision::from_name(d.as_str()), Some(d));
        }
        assert_eq!(Decision::from_name("Allow"), None);
    }

    #[test]
    fn to_json_omits_absent_fields() {
        let mut record = Record::new(EventKind::Statement, "gw", 1_700_000_000_000_001);
        record.username = Some("alice".into());
        record.rows = Some(0);
        record.decision = Some(Decision::Deny);
        let stored = StoredRecord {
            seq: 7,
            record,
            prev_hash: [0u8; 32],
            hash: [0xab; 32],
        };
        let v = stored.to_json();
        let o = v.as_object().unwrap();
        assert_eq!(o["seq"], 7);
        assert_eq!(o["time"], "2023-11-14T22:13:20.000001Z");
        assert_eq!(o["event"], "statement");
        assert_eq!(o["username"], "alice");
        assert_eq!(o["rows"], 0);
        assert_eq!(o["decision"], "deny");
        assert_eq!(o["groups"], Value::Array(vec![]));
        assert_eq!(o["hash"], "ab".repeat(32));
        assert_eq!(o["prev_hash"], "00".repeat(32));
        assert!(!o.contains_key("email"));
        assert!(!o.contains_key("statement"));
        assert!(!o.contains_key("ref_seq"));
        assert!(o.values().all(|v| !v.is_null()));
    }
}

#[cfg(test)]
mod rfc3339_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parse_inverts_format() {
        for t in [
            0i64,
            1,
            1_700_000_000_123_456,
            951_782_400_000_000, // 2000-02-29
            -86_400_000_000,
            4_102_444_800_000_000,
        ] {
            assert_eq!(parse_rfc3339_us(&format_rfc3339_us(t)), Some(t), "{t}");
        }
        assert_eq!(parse_rfc3339_us("1970-01-02"), Some(86_400_000_000));
        assert_eq!(
            parse_rfc3339_us("2026-12-04T13:00:00Z"),
            Some(1_796_389_200_000_000)
        );
        for bad in [
            "",
            "2026-13-01",
            "2026-12-04T13:00:00",
            "2026-12-04T25:00:00Z",
            "x",
            "2026-12-04T13:00:00.1234567Z",
        ] {
            assert_eq!(parse_rfc3339_us(bad), None, "{bad}");
        }
    }
}
