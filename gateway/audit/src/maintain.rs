//! Retention (AU-11) and signing-key rotation: operations on a store file that run beside
//! (or without) the writer, each in one SQLite transaction.

use std::path::Path;
use std::time::Duration;

use gatehouse_board::KeyStore;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use crate::checkpoint::{self, Checkpoint, CheckpointKind, PublicKey};
use crate::merkle::{CompactRange, CHUNK};
use crate::schema::{self, DbNodes, DEFAULT_BUSY_TIMEOUT};
use crate::{AuditError, Seq};

/// What [`prune`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneReport {
    /// Records deleted.
    pub deleted: u64,
    /// The first seq still stored.
    pub first_seq: Seq,
    /// Leaf hashes kept so that older checkpoints still verify.
    pub kept_leaves: u64,
    /// The checkpoint written before deleting (signed, kind `prune`).
    pub checkpoint: Checkpoint,
}

fn open_rw(path: &Path) -> Result<Connection, AuditError> {
    if !path.exists() {
        return Err(AuditError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "audit store does not exist",
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(DEFAULT_BUSY_TIMEOUT)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != schema::SCHEMA_VERSION {
        return Err(AuditError::SchemaVersion {
            found: version,
            expected: schema::SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// Deletes the oldest records whose time is before `before_us`, keeping everything inside
/// the `retention` period (`before_us` later than `now_us - retention` is refused with
/// [`AuditError::Retention`]) and everything a signed checkpoint does not cover yet.
///
/// Only a prefix of seqs is deleted, ending on a multiple of 256 records (a Merkle chunk)
/// and never the last record. The chunk hashes stay, and the leaf hashes of every deleted
/// chunk in which a checkpoint ended are kept, so every checkpoint, proof and the remaining
/// records still verify. A signed `prune` checkpoint is written first, in the same
/// transaction. Safe while the gateway runs.
pub fn prune(
    path: &Path,
    keys: &dyn KeyStore,
    before_us: i64,
    retention: Duration,
    now_us: i64,
) -> Result<PruneReport, AuditError> {
    let retention_us = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    if before_us > now_us.saturating_sub(retention_us) {
        return Err(AuditError::Retention(
            "the cut-off is inside the retention period",
        ));
    }
    let mut conn = open_rw(path)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let start = schema::pruned_before(&tx)?;
    let (last_seq, last_hash) = schema::chain_tail(&tx)?;
    let cps = schema::checkpoints(&tx)?;
    let covered = cps.iter().map(|c| c.size).max().unwrap_or(0);
    // The first seq at or after the cut-off (time is not strictly ordered by seq: stop at
    // the first record that must stay).
    let first_young: Option<Seq> = tx
        .query_row(
            "SELECT min(seq) FROM records WHERE time_us >= ?1",
            [before_us],
            |r| r.get(0),
        )
        .unwrap_or(None);
    let mut end = first_young.unwrap_or(last_seq + 1) - 1; // last seq that may go
    end = end.min(last_seq - 1); // never the last record
    end = end.min(i64::try_from(covered).unwrap_or(0)); // only checkpointed records
    end -= end.rem_euclid(CHUNK as i64); // a whole number of chunks
    let size = u64::try_from(last_seq).unwrap_or(0);
    let tree = CompactRange::from_source(&mut DbNodes { conn: &tx }, size)?;
    let mut cp = Checkpoint {
        id: 0,
        size,
        root: tree.root(),
        // The signed time is the wall clock; `now_us` only decides the retention cut-off.
        time_us: crate::store::now_us(),
        last_hash,
        config_hash: cps.last().and_then(|c| c.config_hash.clone()),
        policy_hash: cps.last().and_then(|c| c.policy_hash.clone()),
        kind: CheckpointKind::Prune,
        signer: PublicKey::of(keys)?,
        next_key: None,
        signature: Vec::new(),
    };
    cp.sign(keys)?;
    if end < start {
        return Err(AuditError::Retention(
            "no whole chunk of checkpointed records is older than the cut-off",
        ));
    }
    cp.id = schema::insert_checkpoint(&tx, &cp)?;
    // Keep the leaves of chunks in which a checkpoint ends.
    let mut kept = 0u64;
    for c in &cps {
        let m = i64::try_from(c.size).unwrap_or(i64::MAX);
        if m % CHUNK as i64 != 0 && m < end {
            // The whole chunk: consistency proofs from this checkpoint need its subtrees.
            let from = m - m % CHUNK as i64 + 1;
            kept += u64::try_from(tx.execute(
                "INSERT OR IGNORE INTO pruned_leaves (leaf, hash)
                 SELECT seq - 1, hash FROM records WHERE seq >= ?1 AND seq <= ?2",
                params![from, from + CHUNK as i64 - 1],
            )?)
            .unwrap_or(0);
        }
    }
    // `hash` above is the chain hash; the table holds leaf hashes.
    let mut leaves: Vec<(i64, Vec<u8>)> = Vec::new();
    {
        let mut stmt = tx.prepare("SELECT leaf, hash FROM pruned_leaves")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            leaves.push((r.get(0)?, r.get(1)?));
        }
    }
    for (leaf, h) in leaves {
        if leaf + 1 >= start {
            let h = schema::hash32(leaf + 1, "hash", &h)?;
            tx.execute(
                "UPDATE pruned_leaves SET hash = ?2 WHERE leaf = ?1",
                params![leaf, &crate::merkle::leaf_hash(&h)[..]],
            )?;
        }
    }
    let deleted = tx.execute("DELETE FROM records WHERE seq <= ?1", [end])?;
    schema::meta_set(&tx, schema::META_PRUNED_BEFORE, &(end + 1).to_string())?;
    tx.commit()?;
    checkpoint::write_hwm(path, &cp)?;
    tracing::info!(deleted, first_seq = end + 1, "audit records pruned");
    Ok(PruneReport {
        deleted: deleted as u64,
        first_seq: end + 1,
        kept_leaves: kept,
        checkpoint: cp,
    })
}

/// Records a signing-key rotation: a `rotation` checkpoint over the current tree, signed by
/// the outgoing key (`old`) and naming `new` as the key of every later checkpoint. Run it
/// before the gateway starts with the new key store. The high-water mark is updated.
pub fn rotate_signing_key(
    path: &Path,
    old: &dyn KeyStore,
    new: &PublicKey,
) -> Result<Checkpoint, AuditError> {
    let mut conn = open_rw(path)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (last_seq, last_hash) = schema::chain_tail(&tx)?;
    let size = u64::try_from(last_seq).unwrap_or(0);
    let tree = CompactRange::from_source(&mut DbNodes { conn: &tx }, size)?;
    let prev = schema::last_checkpoint(&tx)?;
    let mut cp = Checkpoint {
        id: 0,
        size,
        root: tree.root(),
        time_us: crate::store::now_us(),
        last_hash,
        config_hash: prev.as_ref().and_then(|c| c.config_hash.clone()),
        policy_hash: prev.as_ref().and_then(|c| c.policy_hash.clone()),
        kind: CheckpointKind::Rotation,
        signer: PublicKey::of(old)?,
        next_key: Some(new.clone()),
        signature: Vec::new(),
    };
    cp.sign(old)?;
    cp.id = schema::insert_checkpoint(&tx, &cp)?;
    tx.commit()?;
    checkpoint::write_hwm(path, &cp)?;
    Ok(cp)
}
