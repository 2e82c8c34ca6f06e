//! The SQLite schema, the row <-> record mapping and the chain hash. The only module that
//! knows column names.

use std::time::Duration;

use ring::digest;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::checkpoint::{Checkpoint, CheckpointKind, PublicKey};
use crate::journal::Row as JournalRow;
use crate::merkle::{leaf_hash, CompactRange, Hash, CHUNK};
use crate::seal::Sealer;
use crate::{AuditError, Decision, EventKind, Record, Seq, StoredRecord};

/// `PRAGMA user_version` of the schema below.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// How long a connection waits for another connection's lock before failing.
pub(crate) const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Genesis `prev_hash`.
pub(crate) const GENESIS: [u8; 32] = [0u8; 32];

// `rows` and `groups` are SQLite keywords (window frames), hence quoted everywhere.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS records (
    seq            INTEGER PRIMARY KEY,
    time_us        INTEGER NOT NULL,
    event          TEXT NOT NULL,
    gateway        TEXT NOT NULL,
    listener       TEXT,
    session_id     TEXT,
    source         TEXT,
    subject        TEXT,
    username       TEXT,
    email          TEXT,
    "groups"       TEXT NOT NULL,
    token_id       TEXT,
    issuer         TEXT,
    connection     TEXT,
    protocol       TEXT,
    statement      TEXT,
    statement_name TEXT,
    param_count    INTEGER,
    decision       TEXT,
    reason         TEXT,
    sqlstate       TEXT,
    "rows"         INTEGER,
    bytes_in       INTEGER,
    bytes_out      INTEGER,
    duration_us    INTEGER,
    ref_seq        INTEGER,
    config_hash    TEXT,
    prev_hash      BLOB NOT NULL,
    hash           BLOB NOT NULL
) STRICT;
"#;

/// Version 3: the extension fields of [`Record`]: the policy hash of decision records (in
/// the clear, like the config hash) and session-recording payloads (NULL in sealed rows).
const SCHEMA_V3: &str = "ALTER TABLE records ADD COLUMN policy_hash TEXT;
ALTER TABLE records ADD COLUMN payload BLOB;";

/// Version 2: sealed records, the Merkle chunk hashes, signed checkpoints, pruning state.
/// For a sealed row, `key_id` names the audit key and `sealed` holds the AES-256-GCM sealed
/// canonical encoding of the whole record; the sensitive columns are NULL
/// (`groups` is `[]`; see [`clear_view`]) and the others stay in the clear for searching.
const SCHEMA_V2: &str = r#"
ALTER TABLE records ADD COLUMN key_id TEXT;
ALTER TABLE records ADD COLUMN sealed BLOB;
CREATE TABLE merkle_chunks (
    chunk INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL
) STRICT;
CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY,
    size        INTEGER NOT NULL,
    root        BLOB NOT NULL,
    time_us     INTEGER NOT NULL,
    last_hash   BLOB NOT NULL,
    config_hash TEXT,
    policy_hash TEXT,
    kind        TEXT NOT NULL,
    signer      TEXT NOT NULL,
    next_key    TEXT,
    signature   BLOB NOT NULL
) STRICT;
CREATE TABLE pruned_leaves (
    leaf INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
) STRICT;
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
"#;

/// Every column, in the order `row_to_stored` reads them.
pub(crate) const COLUMNS: &str = r#"seq, time_us, event, gateway, listener, session_id, source,
    subject, username, email, "groups", token_id, issuer, connection, protocol, statement,
    statement_name, param_count, decision, reason, sqlstate, "rows", bytes_in, bytes_out,
    duration_us, ref_seq, config_hash, prev_hash, hash, key_id, sealed, policy_hash, payload"#;

const INSERT: &str = r#"INSERT INTO records (seq, time_us, event, gateway, listener, session_id,
    source, subject, username, email, "groups", token_id, issuer, connection, protocol, statement,
    statement_name, param_count, decision, reason, sqlstate, "rows", bytes_in, bytes_out,
    duration_us, ref_seq, config_hash, prev_hash, hash, key_id, sealed, policy_hash, payload)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33)"#;

/// [`INSERT`] for a sealed row: the columns [`clear_view`] empties (and `payload`, which is
/// only ever inside the seal) are left to their defaults (NULL, `groups` `[]`) instead of
/// being bound one by one: a third fewer binds on the ingestion path.
const INSERT_SEALED: &str = r#"INSERT INTO records (seq, time_us, event, gateway, listener,
    session_id, "groups", connection, protocol, param_count, decision, sqlstate, "rows",
    bytes_in, bytes_out, duration_us, ref_seq, config_hash, prev_hash, hash, key_id, sealed,
    policy_hash)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, '[]', ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
    ?18, ?19, ?20, ?21, ?22)"#;

/// Creates the table if missing and checks the schema version.
pub(crate) fn ensure_schema(conn: &mut Connection) -> Result<(), AuditError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(AuditError::SchemaVersion {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    tx.execute_batch(SCHEMA)?;
    if found < 2 {
        tx.execute_batch(SCHEMA_V2)?;
    }
    if found < 3 {
        tx.execute_batch(SCHEMA_V3)?;
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// The last row's `(seq, hash)`, or `(0, GENESIS)` for an empty store.
pub(crate) fn chain_tail(conn: &Connection) -> Result<(Seq, [u8; 32]), AuditError> {
    // Cached: the writer reads the tail in every group commit.
    let row: Option<(Seq, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        None => Ok((0, GENESIS)),
        Some((seq, hash)) => Ok((seq, hash32(seq, "hash", &hash)?)),
    }
}

/// `SHA-256(prev_hash || postcard((seq, record)))`. `buf` is scratch space reused across calls.
pub(crate) fn chain_hash(
    prev: &[u8; 32],
    seq: Seq,
    record: &Record,
    buf: &mut Vec<u8>,
) -> Result<[u8; 32], AuditError> {
    buf.clear();
    let encoded = postcard::to_extend(&seq, std::mem::take(buf))?;
    let encoded = record.encode_canonical(encoded)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(&encoded);
    *buf = encoded;
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// `SHA-256(prev_hash || postcard(seq) || record_bytes)` where `record_bytes` is
/// `postcard(record)`: the same bytes as [`chain_hash`] (a postcard tuple is the
/// concatenation of its elements), for callers that already hold the record's encoding.
pub(crate) fn chain_hash_encoded(prev: &[u8; 32], seq: Seq, record_bytes: &[u8]) -> [u8; 32] {
    let mut seq_buf = [0u8; 10];
    let seq_bytes: &[u8] = match postcard::to_slice(&seq, &mut seq_buf) {
        Ok(b) => b,
        Err(_) => &[],
    };
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(seq_bytes);
    ctx.update(record_bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Builds the stored row of `record` at `seq` after `prev`: its chain hash, and with a
/// `sealer` its sealed encoding and clear view. `buf` is scratch space reused across calls.
pub(crate) fn seal_row(
    prev: &[u8; 32],
    seq: Seq,
    record: &Record,
    buf: &mut Vec<u8>,
    sealer: Option<&mut Sealer>,
) -> Result<JournalRow, AuditError> {
    buf.clear();
    let encoded = record.encode_canonical(std::mem::take(buf))?;
    let hash = chain_hash_encoded(prev, seq, &encoded);
    let sealed = match sealer {
        Some(s) => Some((s.key_id().as_str().to_owned(), s.seal(seq, &encoded)?)),
        None => None,
    };
    *buf = encoded;
    let (key_id, sealed, clear) = match sealed {
        Some((k, b)) => (Some(k), Some(b), clear_view(record)),
        None => (None, None, record.clone()),
    };
    Ok(JournalRow {
        seq,
        prev_hash: *prev,
        hash,
        key_id,
        sealed,
        clear,
    })
}

/// Inserts rows, already sealed and chained, inside a transaction.
pub(crate) fn insert_rows<'a>(
    tx: &Connection,
    rows: impl IntoIterator<Item = &'a JournalRow>,
) -> Result<(), AuditError> {
    let mut stmt = tx.prepare_cached(INSERT)?;
    let mut sealed_stmt = tx.prepare_cached(INSERT_SEALED)?;
    for row in rows {
        let r = &row.clear;
        let seq = row.seq;
        if let (Some(key_id), Some(sealed)) = (&row.key_id, &row.sealed) {
            debug_assert!(
                *r == clear_view(r),
                "a sealed row's clear record is its clear view"
            );
            sealed_stmt.execute(params![
                seq,
                r.time_us,
                r.event.as_str(),
                r.gateway,
                r.listener,
                r.session_id,
                r.connection,
                r.protocol,
                r.param_count,
                r.decision.map(Decision::as_str),
                r.sqlstate,
                r.rows,
                r.bytes_in,
                r.bytes_out,
                r.duration_us,
                r.ref_seq,
                r.config_hash,
                &row.prev_hash[..],
                &row.hash[..],
                key_id,
                sealed,
                r.policy_hash,
            ])?;
            continue;
        }
        let groups = serde_json::to_string(&r.groups).map_err(|_| AuditError::Corrupt {
            seq,
            reason: "groups cannot be encoded as JSON".into(),
        })?;
        stmt.execute(params![
            seq,
            r.time_us,
            r.event.as_str(),
            r.gateway,
            r.listener,
            r.session_id,
            r.source,
            r.subject,
            r.username,
            r.email,
            groups,
            r.token_id,
            r.issuer,
            r.connection,
            r.protocol,
            r.statement,
            r.statement_name,
            r.param_count,
            r.decision.map(Decision::as_str),
            r.reason,
            r.sqlstate,
            r.rows,
            r.bytes_in,
            r.bytes_out,
            r.duration_us,
            r.ref_seq,
            r.config_hash,
            &row.prev_hash[..],
            &row.hash[..],
            row.key_id,
            row.sealed,
            r.policy_hash,
            r.payload,
        ])?;
    }
    Ok(())
}

/// Inserts the rows of `rows` that follow the table's tail (a journal replayed after a crash
/// may repeat rows already ingested), checking that they continue the chain. Returns how
/// many were inserted. Inside a transaction.
pub(crate) fn replay_rows(tx: &Connection, rows: &[JournalRow]) -> Result<usize, AuditError> {
    let (tail, tail_hash) = chain_tail(tx)?;
    let mut expect = (tail, tail_hash);
    let mut fresh = Vec::new();
    for row in rows {
        if row.seq <= tail {
            continue;
        }
        if row.seq != expect.0 + 1 || row.prev_hash != expect.1 {
            return Err(AuditError::Corrupt {
                seq: row.seq,
                reason: "the audit journal does not continue the stored chain".into(),
            });
        }
        expect = (row.seq, row.hash);
        fresh.push(row);
    }
    let n = fresh.len();
    insert_rows(tx, fresh)?;
    Ok(n)
}

/// The record as its clear columns show it when sealed: the sensitive fields (source,
/// subject, username, email, groups, token id, issuer, statement, statement name, reason)
/// empty.
pub(crate) fn clear_view(r: &Record) -> Record {
    Record {
        time_us: r.time_us,
        event: r.event,
        gateway: r.gateway.clone(),
        listener: r.listener.clone(),
        session_id: r.session_id.clone(),
        connection: r.connection.clone(),
        protocol: r.protocol.clone(),
        param_count: r.param_count,
        decision: r.decision,
        sqlstate: r.sqlstate.clone(),
        rows: r.rows,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_us: r.duration_us,
        ref_seq: r.ref_seq,
        config_hash: r.config_hash.clone(),
        policy_hash: r.policy_hash.clone(),
        // Sensitive: inside the seal only. Listed, not `..r.clone()`, so that a recording's
        // payload is never copied just to be dropped.
        source: None,
        subject: None,
        username: None,
        email: None,
        groups: Vec::new(),
        token_id: None,
        issuer: None,
        statement: None,
        statement_name: None,
        reason: None,
        payload: None,
    }
}

/// How a row decoded.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per row and matched at once; boxing would allocate per row"
)]
pub(crate) enum Decoded {
    /// The record and its chain hashes.
    Ok(StoredRecord),
    /// The sealed blob does not authenticate (edited, moved or wrong key).
    SealBroken,
    /// The clear columns of a sealed row disagree with the sealed record.
    ClearMismatch,
}

/// Decodes a row selected with [`COLUMNS`], opening sealed rows with `sealer`. Errors name
/// the seq and column, never the value. A sealed row without a sealer is
/// [`AuditError::KeysRequired`].
pub(crate) fn decode_row(
    row: &Row<'_>,
    sealer: Option<&mut Sealer>,
    plain: &mut Vec<u8>,
) -> Result<Decoded, AuditError> {
    let stored = row_to_stored(row)?;
    let seq = stored.seq;
    let key_id: Option<String> = row.get(29)?;
    let Some(key_id) = key_id else {
        return Ok(Decoded::Ok(stored));
    };
    let sealed: Vec<u8> = row
        .get::<_, Option<Vec<u8>>>(30)
        .map_err(|e| AuditError::Corrupt {
            seq,
            reason: format!("unreadable column: {}", column_error(&e)),
        })?
        .unwrap_or_default();
    let Some(sealer) = sealer else {
        return Err(AuditError::KeysRequired);
    };
    if !sealer.open(seq, &key_id, &sealed, plain)? {
        return Ok(Decoded::SealBroken);
    }
    let record = Record::decode_canonical(plain).map_err(|_| AuditError::Corrupt {
        seq,
        reason: "sealed record does not decode".into(),
    })?;
    if clear_view(&record) != stored.record {
        return Ok(Decoded::ClearMismatch);
    }
    Ok(Decoded::Ok(StoredRecord { record, ..stored }))
}

/// As [`decode_row`] for readers: a broken seal or mismatch is [`AuditError::Corrupt`].
pub(crate) fn read_row(
    row: &Row<'_>,
    sealer: Option<&mut Sealer>,
    plain: &mut Vec<u8>,
) -> Result<StoredRecord, AuditError> {
    match decode_row(row, sealer, plain)? {
        Decoded::Ok(s) => Ok(s),
        Decoded::SealBroken => Err(AuditError::Corrupt {
            seq: row.get(0)?,
            reason: "sealed record does not authenticate".into(),
        }),
        Decoded::ClearMismatch => Err(AuditError::Corrupt {
            seq: row.get(0)?,
            reason: "clear columns disagree with the sealed record".into(),
        }),
    }
}

/// Decodes the clear columns of a row selected with [`COLUMNS`]. Errors name the seq and
/// column, never the value.
pub(crate) fn row_to_stored(row: &Row<'_>) -> Result<StoredRecord, AuditError> {
    let seq: Seq = row.get(0)?;
    let corrupt = |reason: String| AuditError::Corrupt { seq, reason };
    let col = |e: rusqlite::Error| corrupt(format!("unreadable column: {}", column_error(&e)));
    let event: String = row.get(2).map_err(col)?;
    let event = EventKind::from_name(&event).ok_or_else(|| corrupt("unknown event".into()))?;
    let groups: String = row.get(10).map_err(col)?;
    let groups: Vec<String> = serde_json::from_str(&groups)
        .map_err(|_| corrupt("groups is not a JSON string array".into()))?;
    let decision: Option<String> = row.get(18).map_err(col)?;
    let decision = match decision {
        None => None,
        Some(d) => Some(Decision::from_name(&d).ok_or_else(|| corrupt("unknown decision".into()))?),
    };
    let record = Record {
        time_us: row.get(1).map_err(col)?,
        event,
        gateway: row.get(3).map_err(col)?,
        listener: row.get(4).map_err(col)?,
        session_id: row.get(5).map_err(col)?,
        source: row.get(6).map_err(col)?,
        subject: row.get(7).map_err(col)?,
        username: row.get(8).map_err(col)?,
        email: row.get(9).map_err(col)?,
        groups,
        token_id: row.get(11).map_err(col)?,
        issuer: row.get(12).map_err(col)?,
        connection: row.get(13).map_err(col)?,
        protocol: row.get(14).map_err(col)?,
        statement: row.get(15).map_err(col)?,
        statement_name: row.get(16).map_err(col)?,
        param_count: row.get(17).map_err(col)?,
        decision,
        reason: row.get(19).map_err(col)?,
        sqlstate: row.get(20).map_err(col)?,
        rows: row.get(21).map_err(col)?,
        bytes_in: row.get(22).map_err(col)?,
        bytes_out: row.get(23).map_err(col)?,
        duration_us: row.get(24).map_err(col)?,
        ref_seq: row.get(25).map_err(col)?,
        config_hash: row.get(26).map_err(col)?,
        policy_hash: row.get(31).map_err(col)?,
        payload: row.get(32).map_err(col)?,
    };
    let prev_hash: Vec<u8> = row.get(27).map_err(col)?;
    let hash: Vec<u8> = row.get(28).map_err(col)?;
    Ok(StoredRecord {
        seq,
        record,
        prev_hash: hash32(seq, "prev_hash", &prev_hash)?,
        hash: hash32(seq, "hash", &hash)?,
    })
}

pub(crate) fn hash32(seq: Seq, column: &str, bytes: &[u8]) -> Result<[u8; 32], AuditError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| AuditError::Corrupt {
        seq,
        reason: format!("{column} is {} bytes, not 32", bytes.len()),
    })
}

/// Describes a column decoding error without the value (rusqlite's conversion errors can
/// embed it).
fn column_error(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::InvalidColumnType(idx, name, ty) => {
            format!("column {idx} ({name}) has type {ty}")
        }
        rusqlite::Error::FromSqlConversionFailure(idx, ty, _) => {
            format!("column {idx} cannot be converted from {ty}")
        }
        rusqlite::Error::IntegralValueOutOfRange(idx, _) => {
            format!("column {idx} is out of range")
        }
        rusqlite::Error::Utf8Error(..) => "text is not UTF-8".into(),
        _ => "unexpected error".into(),
    }
}

/// Leaves and chunk hashes read from the database (records, pruned leaves, chunks).
pub(crate) struct DbNodes<'c> {
    pub(crate) conn: &'c Connection,
}

impl crate::merkle::NodeSource for DbNodes<'_> {
    type Error = AuditError;

    fn leaf(&mut self, index: u64) -> Result<Hash, AuditError> {
        let seq = Seq::try_from(index).unwrap_or(Seq::MAX - 1) + 1;
        let hash: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT hash FROM records WHERE seq = ?1")?
            .query_row([seq], |r| r.get(0))
            .optional()?;
        if let Some(h) = hash {
            return Ok(leaf_hash(&hash32(seq, "hash", &h)?));
        }
        let kept: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT hash FROM pruned_leaves WHERE leaf = ?1")?
            .query_row([seq - 1], |r| r.get(0))
            .optional()?;
        match kept {
            Some(h) => hash32(seq, "pruned leaf", &h),
            None => Err(AuditError::Corrupt {
                seq,
                reason: "the leaf is neither stored nor kept after pruning".into(),
            }),
        }
    }

    fn chunk(&mut self, k: u64) -> Result<Option<Hash>, AuditError> {
        let k = i64::try_from(k).unwrap_or(i64::MAX);
        let h: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT hash FROM merkle_chunks WHERE chunk = ?1")?
            .query_row([k], |r| r.get(0))
            .optional()?;
        h.map(|h| hash32(k, "chunk", &h)).transpose()
    }
}

/// Stores a checkpoint; returns its id.
pub(crate) fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<i64, AuditError> {
    conn.prepare_cached(
        "INSERT INTO checkpoints (size, root, time_us, last_hash, config_hash, policy_hash, kind,
         signer, next_key, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        i64::try_from(cp.size).unwrap_or(i64::MAX),
        &cp.root[..],
        cp.time_us,
        &cp.last_hash[..],
        cp.config_hash,
        cp.policy_hash,
        cp.kind.as_str(),
        cp.signer.to_text(),
        cp.next_key.as_ref().map(PublicKey::to_text),
        cp.signature,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Every checkpoint in id order. A row that does not decode is `Corrupt` with seq = its id.
pub(crate) fn checkpoints(conn: &Connection) -> Result<Vec<Checkpoint>, AuditError> {
    let mut stmt = conn.prepare(
        "SELECT id, size, root, time_us, last_hash, config_hash, policy_hash, kind, signer,
         next_key, signature FROM checkpoints ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let bad = |reason: &str| AuditError::Corrupt {
            seq: id,
            reason: format!("checkpoint: {reason}"),
        };
        let size: i64 = row.get(1)?;
        let root: Vec<u8> = row.get(2)?;
        let last_hash: Vec<u8> = row.get(4)?;
        let kind: String = row.get(7)?;
        let signer: String = row.get(8)?;
        let next_key: Option<String> = row.get(9)?;
        out.push(Checkpoint {
            id,
            size: u64::try_from(size).map_err(|_| bad("negative size"))?,
            root: hash32(id, "root", &root)?,
            time_us: row.get(3)?,
            last_hash: hash32(id, "last_hash", &last_hash)?,
            config_hash: row.get(5)?,
            policy_hash: row.get(6)?,
            kind: CheckpointKind::from_name(&kind).ok_or_else(|| bad("unknown kind"))?,
            signer: PublicKey::from_text(&signer).ok_or_else(|| bad("bad signer"))?,
            next_key: match next_key {
                None => None,
                Some(t) => Some(PublicKey::from_text(&t).ok_or_else(|| bad("bad next key"))?),
            },
            signature: row.get(10)?,
        });
    }
    Ok(out)
}

/// The newest checkpoint, if any.
pub(crate) fn last_checkpoint(conn: &Connection) -> Result<Option<Checkpoint>, AuditError> {
    // Few rows (one per interval); reading them all keeps one decoder.
    Ok(checkpoints(conn)?.pop())
}

/// A `meta` value.
pub(crate) fn meta_get(conn: &Connection, name: &str) -> Result<Option<String>, AuditError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// Sets a `meta` value.
pub(crate) fn meta_set(conn: &Connection, name: &str, value: &str) -> Result<(), AuditError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?
        .execute([name, value])?;
    Ok(())
}

/// The first seq still stored after pruning (1 when nothing was pruned).
pub(crate) fn pruned_before(conn: &Connection) -> Result<Seq, AuditError> {
    Ok(meta_get(conn, META_PRUNED_BEFORE)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1))
}

/// `meta` name: set once a store has been opened with a key store (rows are sealed).
pub(crate) const META_SEALED: &str = "sealed";
/// `meta` name: records with a smaller seq were pruned.
pub(crate) const META_PRUNED_BEFORE: &str = "pruned_before";

/// Brings `merkle_chunks` up to date with the records (needed once for a store written by
/// schema version 1; afterwards chunks are written in the same transaction as their
/// records) and returns the compact range of the whole tree.
pub(crate) fn rebuild_merkle(conn: &mut Connection) -> Result<CompactRange, AuditError> {
    let (last_seq, _) = chain_tail(conn)?;
    let size = u64::try_from(last_seq).unwrap_or(0);
    let stored: i64 = conn.query_row("SELECT count(*) FROM merkle_chunks", [], |r| r.get(0))?;
    let stored = u64::try_from(stored).unwrap_or(0);
    let full = size / CHUNK;
    if stored < full {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut nodes = DbNodes { conn: &tx };
            for k in stored..full {
                let h = crate::merkle::subtree(&mut nodes, k * CHUNK, CHUNK)?;
                tx.prepare_cached("INSERT INTO merkle_chunks (chunk, hash) VALUES (?1, ?2)")?
                    .execute(params![i64::try_from(k).unwrap_or(i64::MAX), &h[..]])?;
            }
        }
        tx.commit()?;
    }
    CompactRange::from_source(&mut DbNodes { conn }, size)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Pins the canonical encoding and the chain formula. The expected bytes were written by
    /// hand from the postcard v1 wire format and the hashes computed independently (Python
    /// `hashlib`); if this fails, existing audit logs would no longer verify.
    /// The policy-hash extension: absent, a record encodes exactly as before the field
    /// existed (old records keep their hashes); present, it follows as `Some(text)`.
    #[test]
    fn policy_hash_extension_is_trailing_and_optional() {
        let old = Record::new(EventKind::Statement, "gw", 0);
        let v1 = old.encode_canonical(Vec::new()).unwrap();
        assert_eq!(v1, postcard::to_allocvec(&old).unwrap());
        assert_eq!(Record::decode_canonical(&v1).unwrap(), old);
        let new = Record {
            policy_hash: Some("ab".into()),
            ..old.clone()
        };
        let v2 = new.encode_canonical(Vec::new()).unwrap();
        let mut want = v1.clone();
        want.extend([0x01, 0x02, b'a', b'b']);
        assert_eq!(v2, want);
        assert_eq!(Record::decode_canonical(&v2).unwrap(), new);
        // One encoding per record: an explicit None or trailing garbage is refused.
        let mut none = v1.clone();
        none.push(0x00);
        assert!(Record::decode_canonical(&none).is_err());
        let mut trailing = v2.clone();
        trailing.push(0x00);
        assert!(Record::decode_canonical(&trailing).is_err());
        let mut buf = Vec::new();
        assert_ne!(
            chain_hash(&GENESIS, 1, &old, &mut buf).unwrap(),
            chain_hash(&GENESIS, 1, &new, &mut buf).unwrap()
        );
        // A payload without a policy hash: the policy slot is an explicit None before it.
        let rec = Record {
            payload: Some(vec![7, 8]),
            ..old.clone()
        };
        let v3 = rec.encode_canonical(Vec::new()).unwrap();
        let mut want = v1.clone();
        want.extend([0x00, 0x01, 0x02, 7, 8]);
        assert_eq!(v3, want);
        assert_eq!(Record::decode_canonical(&v3).unwrap(), rec);
        let both = Record {
            policy_hash: Some("ab".into()),
            ..rec
        };
        let v4 = both.encode_canonical(Vec::new()).unwrap();
        assert_eq!(Record::decode_canonical(&v4).unwrap(), both);
        // A trailing explicit None payload is not canonical.
        let mut bad = v2.clone();
        bad.push(0x00);
        assert!(Record::decode_canonical(&bad).is_err());
    }

    #[test]
    fn canonical_encoding_is_pinned() {
        let mut buf = Vec::new();
        let minimal = Record::new(EventKind::Statement, "gw", 0);
        let hash = chain_hash(&GENESIS, 1, &minimal, &mut buf).unwrap();
        let mut want = vec![0x02, 0x00, 0x05, 0x02, b'g', b'w'];
        want.extend([0u8; 23]);
        assert_eq!(buf, want);
        assert_eq!(
            hex::encode(hash),
            "376ce6b66cb3b8423c966d4362d32f739e093424657c947666565f8b8f85719a"
        );

        let mut r = Record::new(EventKind::Cancel, "g", -1);
        r.username = Some("a".into());
        r.groups = vec!["x".into()];
        r.decision = Some(Decision::Deny);
        r.rows = Some(-2);
        let prev: [u8; 32] = std::array::from_fn(|i| i as u8);
        let hash = chain_hash(&prev, 300, &r, &mut buf).unwrap();
        let rec_bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(chain_hash_encoded(&prev, 300, &rec_bytes), hash);
        assert_eq!(
            hex::encode(&buf),
            "d804010801670000000001016100010178000000000000000101000001030000000000"
        );
        assert_eq!(
            hex::encode(hash),
            "dc6cd15add6dbe67845d4bf975dd0945c51ae76d0219b978a361a8b18aa8b696"
        );
    }

    #[test]
    fn every_field_changes_the_hash() {
        let mut buf = Vec::new();
        let base = Record::new(EventKind::Statement, "gw", 0);
        let h0 = chain_hash(&GENESIS, 1, &base, &mut buf).unwrap();
        assert_ne!(h0, chain_hash(&GENESIS, 2, &base, &mut buf).unwrap());
        assert_ne!(h0, chain_hash(&[1u8; 32], 1, &base, &mut buf).unwrap());
        let edits: Vec<fn(&mut Record)> = vec![
            |r| r.time_us = 1,
            |r| r.event = EventKind::Cancel,
            |r| r.gateway.push('x'),
            |r| r.listener = Some(String::new()),
            |r| r.groups.push(String::new()),
            |r| r.param_count = Some(0),
            |r| r.decision = Some(Decision::Allow),
            |r| r.config_hash = Some(String::new()),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut r = base.clone();
            edit(&mut r);
            assert_ne!(
                h0,
                chain_hash(&GENESIS, 1, &r, &mut buf).unwrap(),
                "edit {i}"
            );
        }
    }
}
