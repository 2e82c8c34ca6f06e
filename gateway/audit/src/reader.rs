//! The read side: a read-only connection that works while the writer runs (WAL readers do not
//! block the writer and see a consistent snapshot per query).

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use gatehouse_board::KeyStore;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection, OpenFlags};

use crate::checkpoint::Checkpoint;
use crate::merkle::{self, Hash};
use crate::schema::{self, DbNodes, Decoded, COLUMNS, DEFAULT_BUSY_TIMEOUT, GENESIS};
use crate::seal::Sealer;
use crate::{AuditError, Decision, EventKind, Seq, StoredRecord};

/// Search criteria; every `Some` field must match. Results are in ascending seq order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// Exact user name.
    pub username: Option<String>,
    /// Exact target connection name.
    pub connection: Option<String>,
    /// Exact client session id.
    pub session_id: Option<String>,
    /// Event kind.
    pub event: Option<EventKind>,
    /// Decision.
    pub decision: Option<Decision>,
    /// Inclusive lower bound on `time_us`.
    pub from_us: Option<i64>,
    /// Exclusive upper bound on `time_us`.
    pub to_us: Option<i64>,
    /// Only records with a seq greater than this (for paging).
    pub after_seq: Option<Seq>,
    /// At most this many records (`None`: all).
    pub limit: Option<usize>,
}

/// Why [`AuditReader::verify_chain`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// No row has this seq although later rows exist (a row was deleted).
    Missing,
    /// A row has a seq the store never assigns (zero or negative).
    UnexpectedSeq,
    /// The row's columns cannot be decoded into a record.
    Undecodable,
    /// The row's `prev_hash` is not the previous row's `hash` (rows moved or replaced).
    PrevHashMismatch,
    /// The recomputed hash differs from the stored one (the row was edited).
    HashMismatch,
    /// The sealed (encrypted) record does not authenticate: edited, moved to another seq,
    /// or sealed with a key the key store does not have.
    SealBroken,
    /// The clear (searchable) columns of a sealed row disagree with the sealed record.
    ClearColumnsMismatch,
}

/// The first row at which the chain does not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// The sequence number where verification failed.
    pub seq: Seq,
    /// What is wrong there.
    pub reason: ChainBreak,
}

/// Result of [`AuditReader::verify_chain`].
///
/// The chain proves order and content of the rows present up to `last_seq`; it cannot by
/// itself show that rows were cut off the end. Compare `last_seq` and `last_hash` with a
/// signed checkpoint for that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows checked and found good.
    pub verified: u64,
    /// Seq of the last good row (0 when none).
    pub last_seq: Seq,
    /// Hash of the last good row (genesis zeros when none).
    pub last_hash: [u8; 32],
    /// The first failure, if any; verification stops there.
    pub first_bad: Option<BadRecord>,
}

impl VerifyReport {
    /// True when every row verified.
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// A read-only view of the audit store.
#[derive(Debug)]
pub struct AuditReader {
    conn: Connection,
    sealer: Option<RefCell<Sealer>>,
}

impl AuditReader {
    /// Opens an existing store read-only, without keys: sealed records cannot be read
    /// ([`AuditError::KeysRequired`]). Fails if the file does not exist.
    pub fn open(path: &Path) -> Result<AuditReader, AuditError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(DEFAULT_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(AuditReader { conn, sealer: None })
    }

    /// Opens an existing store read-only with the key store that opens sealed records.
    pub fn open_with(path: &Path, keys: Arc<dyn KeyStore>) -> Result<AuditReader, AuditError> {
        let mut reader = AuditReader::open(path)?;
        reader.sealer = Some(RefCell::new(Sealer::new(keys)?));
        Ok(reader)
    }

    /// Every signed checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, AuditError> {
        if !self.has_v2()? {
            return Ok(Vec::new());
        }
        schema::checkpoints(&self.conn)
    }

    /// RFC 9162 inclusion proof of record `seq` in the tree of the first `tree_size` records
    /// (e.g. a checkpoint's size). `None` if `seq` is not in `1..=tree_size` or the tree is
    /// larger than the store. Check it with [`crate::merkle::verify_inclusion`] using leaf
    /// index `seq - 1` and [`StoredRecord::leaf_hash`](crate::StoredRecord::leaf_hash).
    pub fn inclusion_proof(
        &self,
        seq: Seq,
        tree_size: u64,
    ) -> Result<Option<Vec<Hash>>, AuditError> {
        let Ok(index) = u64::try_from(seq - 1) else {
            return Ok(None);
        };
        if tree_size > self.tree_size()? {
            return Ok(None);
        }
        merkle::inclusion_proof(&mut DbNodes { conn: &self.conn }, index, tree_size)
    }

    /// RFC 9162 consistency proof from the tree of `old` records to the tree of `new`
    /// records (e.g. two checkpoints). Check it with [`crate::merkle::verify_consistency`].
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Option<Vec<Hash>>, AuditError> {
        if new > self.tree_size()? {
            return Ok(None);
        }
        merkle::consistency_proof(&mut DbNodes { conn: &self.conn }, old, new)
    }

    /// The Merkle root of the first `tree_size` records.
    pub fn root(&self, tree_size: u64) -> Result<Option<Hash>, AuditError> {
        if tree_size > self.tree_size()? {
            return Ok(None);
        }
        merkle::root(&mut DbNodes { conn: &self.conn }, tree_size).map(Some)
    }

    /// Number of records ever appended (the last seq), including pruned ones.
    pub fn tree_size(&self) -> Result<u64, AuditError> {
        let (last, _) = schema::chain_tail(&self.conn)?;
        Ok(u64::try_from(last).unwrap_or(0))
    }

    /// The first seq still stored (greater than 1 after pruning).
    pub fn first_seq(&self) -> Result<Seq, AuditError> {
        if !self.has_v2()? {
            return Ok(1);
        }
        schema::pruned_before(&self.conn)
    }

    fn has_v2(&self) -> Result<bool, AuditError> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(v >= 2)
    }

    /// Calls `f` for each record with `from_us <= time_us < to_us` in seq order, streaming
    /// (for exports of large ranges). Stops early when `f` returns `false`.
    pub fn for_each_in_time_range(
        &self,
        from_us: i64,
        to_us: i64,
        mut f: impl FnMut(StoredRecord) -> bool,
    ) -> Result<(), AuditError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM records WHERE time_us >= ?1 AND time_us < ?2 ORDER BY seq"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([from_us, to_us])?;
        let mut plain = Vec::new();
        let mut sealer = self.sealer.as_ref().map(|s| s.borrow_mut());
        while let Some(row) = rows.next()? {
            let rec = schema::read_row(row, sealer.as_deref_mut(), &mut plain)?;
            if !f(rec) {
                break;
            }
        }
        Ok(())
    }

    /// The last `n` records, in ascending seq order.
    pub fn tail(&self, n: usize) -> Result<Vec<StoredRecord>, AuditError> {
        let sql = format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM records ORDER BY seq DESC LIMIT ?1) ORDER BY seq"
        );
        self.query(&sql, vec![SqlValue::Integer(sql_limit(Some(n)))])
    }

    /// Up to `limit` records with a seq greater than `seq`, ascending (for `tail --follow`).
    pub fn after(&self, seq: Seq, limit: usize) -> Result<Vec<StoredRecord>, AuditError> {
        let sql = format!("SELECT {COLUMNS} FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2");
        self.query(
            &sql,
            vec![
                SqlValue::Integer(seq),
                SqlValue::Integer(sql_limit(Some(limit))),
            ],
        )
    }

    /// Records matching `filter`, ascending by seq.
    pub fn search(&self, filter: &Filter) -> Result<Vec<StoredRecord>, AuditError> {
        let mut conds: Vec<&str> = Vec::new();
        let mut args: Vec<SqlValue> = Vec::new();
        let mut add = |cond: &'static str, v: SqlValue| {
            conds.push(cond);
            args.push(v);
        };
        if let Some(u) = &filter.username {
            // Sealed rows keep the user name inside the seal: filtered after opening.
            add(
                "(username = ? OR key_id IS NOT NULL)",
                SqlValue::Text(u.clone()),
            );
        }
        if let Some(c) = &filter.connection {
            add("connection = ?", SqlValue::Text(c.clone()));
        }
        if let Some(id) = &filter.session_id {
            add("session_id = ?", SqlValue::Text(id.clone()));
        }
        if let Some(e) = filter.event {
            add("event = ?", SqlValue::Text(e.as_str().into()));
        }
        if let Some(d) = filter.decision {
            add("decision = ?", SqlValue::Text(d.as_str().into()));
        }
        if let Some(t) = filter.from_us {
            add("time_us >= ?", SqlValue::Integer(t));
        }
        if let Some(t) = filter.to_us {
            add("time_us < ?", SqlValue::Integer(t));
        }
        if let Some(s) = filter.after_seq {
            add("seq > ?", SqlValue::Integer(s));
        }
        let mut sql = format!("SELECT {COLUMNS} FROM records");
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        if filter.username.is_some() {
            sql.push_str(" ORDER BY seq");
            return self.query_filtered(&sql, args, filter.username.as_deref(), filter.limit);
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        args.push(SqlValue::Integer(sql_limit(filter.limit)));
        self.query(&sql, args)
    }

    /// Recomputes the hash chain from the stored columns and reports the first bad seq.
    pub fn verify_chain(&self) -> Result<VerifyReport, AuditError> {
        self.verify_chain_with_progress(|_| {})
    }

    /// As [`verify_chain`](Self::verify_chain), calling `progress(verified_so_far)` every
    /// 10 000 rows (for long logs).
    pub fn verify_chain_with_progress(
        &self,
        mut progress: impl FnMut(u64),
    ) -> Result<VerifyReport, AuditError> {
        let sql = format!("SELECT {COLUMNS} FROM records ORDER BY seq");
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut report = VerifyReport {
            verified: 0,
            last_seq: 0,
            last_hash: GENESIS,
            first_bad: None,
        };
        let mut buf = Vec::new();
        let mut plain = Vec::new();
        let mut sealer = self.sealer.as_ref().map(|s| s.borrow_mut());
        let mut first = true;
        while let Some(row) = rows.next()? {
            let seq: Seq = row.get(0)?;
            if first {
                // After pruning the chain starts at the first kept row, from its stored
                // prev_hash (the Merkle tree and checkpoints vouch for it: see `verify`).
                first = false;
                let start = if self.has_v2()? {
                    schema::pruned_before(&self.conn)?
                } else {
                    1
                };
                if start > 1 && seq == start {
                    report.last_seq = seq - 1;
                    let prev: Vec<u8> = row.get(27)?;
                    report.last_hash = schema::hash32(seq, "prev_hash", &prev)?;
                }
            }
            let expected = report.last_seq + 1;
            let bad = |seq, reason| Some(BadRecord { seq, reason });
            if seq < 1 {
                report.first_bad = bad(seq, ChainBreak::UnexpectedSeq);
                break;
            }
            if seq != expected {
                report.first_bad = bad(expected, ChainBreak::Missing);
                break;
            }
            let stored = match schema::decode_row(row, sealer.as_deref_mut(), &mut plain) {
                Ok(Decoded::Ok(s)) => s,
                Ok(Decoded::SealBroken) => {
                    report.first_bad = bad(seq, ChainBreak::SealBroken);
                    break;
                }
                Ok(Decoded::ClearMismatch) => {
                    report.first_bad = bad(seq, ChainBreak::ClearColumnsMismatch);
                    break;
                }
                Err(AuditError::Corrupt { .. }) => {
                    report.first_bad = bad(seq, ChainBreak::Undecodable);
                    break;
                }
                Err(e) => return Err(e),
            };
            if stored.prev_hash != report.last_hash {
                report.first_bad = bad(seq, ChainBreak::PrevHashMismatch);
                break;
            }
            let hash = schema::chain_hash(&report.last_hash, seq, &stored.record, &mut buf)?;
            if hash != stored.hash {
                report.first_bad = bad(seq, ChainBreak::HashMismatch);
                break;
            }
            report.verified += 1;
            report.last_seq = seq;
            report.last_hash = hash;
            if report.verified % 10_000 == 0 {
                progress(report.verified);
            }
        }
        Ok(report)
    }

    fn query(&self, sql: &str, args: Vec<SqlValue>) -> Result<Vec<StoredRecord>, AuditError> {
        self.query_filtered(sql, args, None, None)
    }

    /// Runs `sql`, decodes (and opens) each row, keeps rows whose username is `username`
    /// (when given; sealed rows hold it only inside the seal), up to `limit`.
    fn query_filtered(
        &self,
        sql: &str,
        args: Vec<SqlValue>,
        username: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        let mut out = Vec::new();
        let mut plain = Vec::new();
        let mut sealer = self.sealer.as_ref().map(|s| s.borrow_mut());
        while let Some(row) = rows.next()? {
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let rec = schema::read_row(row, sealer.as_deref_mut(), &mut plain)?;
            if username.is_some_and(|u| rec.record.username.as_deref() != Some(u)) {
                continue;
            }
            out.push(rec);
        }
        Ok(out)
    }
}

/// SQLite `LIMIT` value: negative means unlimited.
fn sql_limit(limit: Option<usize>) -> i64 {
    match limit {
        None => -1,
        Some(n) => i64::try_from(n).unwrap_or(i64::MAX),
    }
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainBreak::Missing => "missing (a record was deleted)",
            ChainBreak::UnexpectedSeq => "a sequence number the store never assigns",
            ChainBreak::Undecodable => "its columns cannot be decoded",
            ChainBreak::PrevHashMismatch => {
                "its previous hash does not link to the record before it (moved or replaced)"
            }
            ChainBreak::HashMismatch => "its hash does not match its content (edited)",
            ChainBreak::SealBroken => {
                "its sealed content does not authenticate (edited, moved, or an unknown key)"
            }
            ChainBreak::ClearColumnsMismatch => {
                "its searchable columns disagree with its sealed content (edited)"
            }
        })
    }
}
