//! Offline verification of a whole store: chain, sealed records, Merkle chunks, every
//! checkpoint's root and signature, key continuity, monotonic checkpoints, truncation and
//! rollback (against the high-water mark).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatehouse_board::KeyStore;
use rusqlite::{Connection, OpenFlags};

use crate::checkpoint::{self, Checkpoint, PublicKey};
use crate::merkle::{self, CompactRange, Hash, CHUNK};
use crate::reader::{BadRecord, ChainBreak};
use crate::schema::{self, DbNodes, Decoded, COLUMNS, DEFAULT_BUSY_TIMEOUT, GENESIS};
use crate::seal::Sealer;
use crate::{AuditError, Seq};

/// What [`verify`] checks against.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The key store, to open sealed records and recompute their hashes. Without it, sealed
    /// records are checked structurally only (links, Merkle tree, signatures) and
    /// [`Verification::content_checked`] is false.
    pub keys: Option<Arc<dyn KeyStore>>,
    /// The signing key the first checkpoint must be signed by (the appliance's published
    /// key). `None`: trust the first checkpoint's key (reported in `signing_keys`).
    pub trusted_key: Option<PublicKey>,
    /// Where the high-water mark is (`None`: `<db>.hwm`).
    pub hwm_path: Option<PathBuf>,
    /// A checkpoint obtained earlier (e.g. from an export manifest); the store must contain
    /// it (same size, root and signature) and must not be smaller.
    pub known_checkpoint: Option<Checkpoint>,
}

/// Progress of [`verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Records checked so far.
    pub done: u64,
    /// Records stored (the total to check).
    pub total: u64,
}

/// One thing that does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The first bad record (verification of records stops there).
    Record(BadRecord),
    /// A stored Merkle chunk hash differs from the one recomputed from its records.
    Chunk {
        /// Chunk index (leaves `chunk*256 .. chunk*256+256`).
        chunk: u64,
    },
    /// A checkpoint's root does not match the records (edited/replaced rows or chunks).
    CheckpointRoot {
        /// Checkpoint id.
        id: i64,
        /// Its tree size.
        size: u64,
    },
    /// A checkpoint's `last_hash` is not the chain hash of its last record.
    CheckpointLastHash {
        /// Checkpoint id.
        id: i64,
    },
    /// A checkpoint's signature does not verify with its signer key.
    Signature {
        /// Checkpoint id.
        id: i64,
    },
    /// The first checkpoint is not signed by the trusted key.
    UntrustedKey {
        /// Checkpoint id.
        id: i64,
        /// The key id that signed it.
        key_id: String,
    },
    /// The signing key changed without a rotation checkpoint signed by the previous key.
    KeyChanged {
        /// Checkpoint id.
        id: i64,
        /// The key id that signed it.
        key_id: String,
    },
    /// A checkpoint covers fewer records than an earlier one, goes back in time, or has the
    /// same size with another root.
    NotMonotonic {
        /// Checkpoint id.
        id: i64,
    },
    /// A checkpoint covers more records than the store holds: the tail was cut off.
    Truncated {
        /// Records the newest checkpoint covers.
        checkpoint_size: u64,
        /// The last seq stored.
        last_seq: Seq,
    },
    /// The database is older than the high-water mark (or the known checkpoint).
    RolledBack {
        /// Records the high-water mark covers.
        hwm_size: u64,
        /// Records the newest checkpoint in the database covers.
        db_size: u64,
    },
    /// The store has checkpoints but the high-water-mark file is missing.
    HwmMissing,
    /// The high-water-mark file does not parse or its signature does not verify.
    HwmInvalid,
    /// A row of the `checkpoints` table cannot be decoded.
    CorruptCheckpoints,
}

/// Result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Records checked.
    pub records: u64,
    /// First seq stored (after pruning).
    pub first_seq: Seq,
    /// Last seq stored.
    pub last_seq: Seq,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The newest checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
    /// Records after the newest checkpoint (protected by the chain only until the next one).
    pub uncovered: u64,
    /// Whether sealed records were opened and their hashes recomputed.
    pub content_checked: bool,
    /// Key ids that signed checkpoints, in order of first use.
    pub signing_keys: Vec<String>,
    /// Everything found wrong; empty when the store verifies.
    pub problems: Vec<Problem>,
}

impl Verification {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first bad record, if any.
    pub fn first_bad_record(&self) -> Option<BadRecord> {
        self.problems.iter().find_map(|p| match p {
            Problem::Record(b) => Some(*b),
            _ => None,
        })
    }
}

/// Progress is reported every this many records.
const PROGRESS_EVERY: u64 = 65_536;

/// Verifies the store at `path` offline (read-only; works while the gateway runs, against a
/// consistent snapshot).
pub fn verify(
    path: &Path,
    opts: &VerifyOptions,
    mut progress: impl FnMut(VerifyProgress),
) -> Result<Verification, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(DEFAULT_BUSY_TIMEOUT)?;
    // One snapshot for everything below.
    conn.execute_batch("BEGIN")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 2 {
        return Err(AuditError::SchemaVersion {
            found: version,
            expected: schema::SCHEMA_VERSION,
        });
    }
    let mut sealer = match &opts.keys {
        Some(k) => Some(Sealer::new(Arc::clone(k))?),
        None => None,
    };
    let mut problems = Vec::new();
    let cps = match schema::checkpoints(&conn) {
        Ok(c) => c,
        Err(AuditError::Corrupt { .. }) => {
            problems.push(Problem::CorruptCheckpoints);
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let signing_keys = check_signatures(&cps, opts.trusted_key.as_ref(), &mut problems);

    let start = schema::pruned_before(&conn)?;
    let (last_seq, _) = schema::chain_tail(&conn)?;
    let stored: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    let total = u64::try_from(stored).unwrap_or(0);
    let chunks = stored_chunks(&conn)?;

    // Checkpoints entirely inside the pruned region: roots from chunks and kept leaves.
    let pruned_leaves = u64::try_from(start - 1).unwrap_or(0);
    for cp in cps.iter().filter(|c| c.size < pruned_leaves) {
        match merkle::root(&mut DbNodes { conn: &conn }, cp.size) {
            Ok(r) if r == cp.root => {}
            Ok(_) | Err(AuditError::Corrupt { .. }) => problems.push(Problem::CheckpointRoot {
                id: cp.id,
                size: cp.size,
            }),
            Err(e) => return Err(e),
        }
    }
    let mut targets: Vec<&Checkpoint> = cps.iter().filter(|c| c.size >= pruned_leaves).collect();
    targets.sort_by_key(|c| (c.size, c.id));
    let mut next_target = 0;

    let mut tree = CompactRange::from_source(&mut DbNodes { conn: &conn }, pruned_leaves)?;
    let mut last_hash = GENESIS;
    let mut content_checked = true;
    let mut records = 0u64;
    let mut expected = start;
    let mut buf = Vec::new();
    let mut plain = Vec::new();
    let mut check_targets = |tree: &CompactRange, last_hash: &Hash, problems: &mut Vec<Problem>| {
        while let Some(cp) = targets.get(next_target).filter(|c| c.size == tree.size()) {
            if cp.root != tree.root() {
                problems.push(Problem::CheckpointRoot {
                    id: cp.id,
                    size: cp.size,
                });
            }
            if cp.size > pruned_leaves && cp.last_hash != *last_hash {
                problems.push(Problem::CheckpointLastHash { id: cp.id });
            }
            next_target += 1;
        }
    };
    check_targets(&tree, &last_hash, &mut problems);

    let sql = format!("SELECT {COLUMNS} FROM records ORDER BY seq");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let seq: Seq = row.get(0)?;
        let bad = |seq, reason| Problem::Record(BadRecord { seq, reason });
        if seq < 1 {
            problems.push(bad(seq, ChainBreak::UnexpectedSeq));
            break;
        }
        if seq != expected {
            problems.push(bad(expected, ChainBreak::Missing));
            break;
        }
        let sealed: Option<String> = row.get(29)?;
        let (prev, hash) = if sealed.is_some() && sealer.is_none() {
            // Structural check only: links and the tree, not the content.
            content_checked = false;
            let p: Vec<u8> = row.get(27)?;
            let h: Vec<u8> = row.get(28)?;
            match (schema::hash32(seq, "", &p), schema::hash32(seq, "", &h)) {
                (Ok(p), Ok(h)) => (p, h),
                _ => {
                    problems.push(bad(seq, ChainBreak::Undecodable));
                    break;
                }
            }
        } else {
            let stored = match schema::decode_row(row, sealer.as_mut(), &mut plain) {
                Ok(Decoded::Ok(s)) => s,
                Ok(Decoded::SealBroken) => {
                    problems.push(bad(seq, ChainBreak::SealBroken));
                    break;
                }
                Ok(Decoded::ClearMismatch) => {
                    problems.push(bad(seq, ChainBreak::ClearColumnsMismatch));
                    break;
                }
                Err(AuditError::Corrupt { .. }) => {
                    problems.push(bad(seq, ChainBreak::Undecodable));
                    break;
                }
                Err(e) => return Err(e),
            };
            let recomputed = if sealed.is_some() {
                // `plain` still holds the opened canonical encoding.
                schema::chain_hash_encoded(&stored.prev_hash, seq, &plain)
            } else {
                schema::chain_hash(&stored.prev_hash, seq, &stored.record, &mut buf)?
            };
            if recomputed != stored.hash {
                problems.push(bad(seq, ChainBreak::HashMismatch));
                break;
            }
            (stored.prev_hash, stored.hash)
        };
        // The first kept row after pruning links to a pruned row: its prev_hash is vouched
        // for by its own hash, which is a leaf under the checkpoints.
        if (seq != start || start == 1) && prev != last_hash {
            problems.push(bad(seq, ChainBreak::PrevHashMismatch));
            break;
        }
        if let Some(h) = tree.push_capture(merkle::leaf_hash(&hash), CHUNK.trailing_zeros()) {
            let k = tree.size() / CHUNK - 1;
            if chunks.get(usize::try_from(k).unwrap_or(usize::MAX)) != Some(&h) {
                problems.push(Problem::Chunk { chunk: k });
            }
        }
        last_hash = hash;
        records += 1;
        expected = seq + 1;
        check_targets(&tree, &last_hash, &mut problems);
        if records % PROGRESS_EVERY == 0 {
            progress(VerifyProgress {
                done: records,
                total,
            });
        }
    }
    drop(rows);
    drop(stmt);
    progress(VerifyProgress {
        done: records,
        total,
    });

    let last_checkpoint = cps.iter().max_by_key(|c| (c.size, c.id)).cloned();
    let db_size = last_checkpoint.as_ref().map_or(0, |c| c.size);
    let last = u64::try_from(last_seq).unwrap_or(0);
    if db_size > last {
        problems.push(Problem::Truncated {
            checkpoint_size: db_size,
            last_seq,
        });
    }
    let hwm_path = opts
        .hwm_path
        .clone()
        .unwrap_or_else(|| checkpoint::hwm_path(path));
    let hwm = match std::fs::read_to_string(&hwm_path) {
        Ok(text) => match Checkpoint::from_text(&text) {
            Some(cp) if cp.signature_valid() => Some(cp),
            _ => {
                problems.push(Problem::HwmInvalid);
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !cps.is_empty() {
                problems.push(Problem::HwmMissing);
            }
            None
        }
        Err(e) => return Err(e.into()),
    };
    for mark in hwm.iter().chain(opts.known_checkpoint.iter()) {
        let present = cps
            .iter()
            .any(|c| c.size == mark.size && c.root == mark.root && c.signature == mark.signature);
        if !present || mark.size > db_size {
            problems.push(Problem::RolledBack {
                hwm_size: mark.size,
                db_size,
            });
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(Verification {
        records,
        first_seq: start,
        last_seq,
        checkpoints: cps.len() as u64,
        uncovered: last.saturating_sub(db_size),
        last_checkpoint,
        content_checked,
        signing_keys,
        problems,
    })
}

/// Signatures, key continuity and monotonicity of the checkpoints (in id order).
fn check_signatures(
    cps: &[Checkpoint],
    trusted: Option<&PublicKey>,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut expected = trusted.cloned();
    let mut prev: Option<&Checkpoint> = None;
    for (i, cp) in cps.iter().enumerate() {
        let key_id = cp.signer.key_id().to_string();
        if !keys.contains(&key_id) {
            keys.push(key_id.clone());
        }
        let valid = cp.signature_valid();
        if !valid {
            problems.push(Problem::Signature { id: cp.id });
        }
        match &expected {
            Some(k) if *k != cp.signer => {
                problems.push(if i == 0 {
                    Problem::UntrustedKey { id: cp.id, key_id }
                } else {
                    Problem::KeyChanged { id: cp.id, key_id }
                });
            }
            _ => {}
        }
        expected = Some(match (&cp.next_key, valid) {
            (Some(next), true) => next.clone(),
            _ => cp.signer.clone(),
        });
        if let Some(p) = prev {
            if cp.size < p.size
                || cp.time_us < p.time_us
                || (cp.size == p.size && cp.root != p.root)
            {
                problems.push(Problem::NotMonotonic { id: cp.id });
            }
        }
        prev = Some(cp);
    }
    keys
}

/// Every stored chunk hash, by index.
fn stored_chunks(conn: &Connection) -> Result<Vec<Hash>, AuditError> {
    let mut stmt = conn.prepare("SELECT chunk, hash FROM merkle_chunks ORDER BY chunk")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let k: i64 = row.get(0)?;
        let h: Vec<u8> = row.get(1)?;
        if usize::try_from(k).ok() != Some(out.len()) {
            // A gap or a forged index: verification against records reports the chunk.
            break;
        }
        out.push(schema::hash32(k, "chunk", &h)?);
    }
    Ok(out)
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Record(b) => write!(f, "record {}: {}", b.seq, b.reason),
            Problem::Chunk { chunk } => write!(
                f,
                "Merkle chunk {chunk} (records {}..{}) does not match its records",
                chunk * 256 + 1,
                chunk * 256 + 256
            ),
            Problem::CheckpointRoot { id, size } => write!(
                f,
                "checkpoint {id}: its root over {size} records does not match the records"
            ),
            Problem::CheckpointLastHash { id } => write!(
                f,
                "checkpoint {id}: its last hash is not the chain hash of its last record"
            ),
            Problem::Signature { id } => write!(f, "checkpoint {id}: signature does not verify"),
            Problem::UntrustedKey { id, key_id } => write!(
                f,
                "checkpoint {id}: signed by key {key_id}, not by the trusted key"
            ),
            Problem::KeyChanged { id, key_id } => write!(
                f,
                "checkpoint {id}: signing key changed to {key_id} without a rotation signed by the previous key"
            ),
            Problem::NotMonotonic { id } => write!(
                f,
                "checkpoint {id}: covers fewer records, goes back in time, or forks an earlier checkpoint"
            ),
            Problem::Truncated {
                checkpoint_size,
                last_seq,
            } => write!(
                f,
                "truncated: a checkpoint covers {checkpoint_size} records but the store ends at record {last_seq}"
            ),
            Problem::RolledBack { hwm_size, db_size } => write!(
                f,
                "rolled back: the high-water mark covers {hwm_size} records, the database's newest checkpoint {db_size}"
            ),
            Problem::HwmMissing => {
                f.write_str("the high-water-mark file is missing although checkpoints exist")
            }
            Problem::HwmInvalid => {
                f.write_str("the high-water-mark file does not parse or its signature does not verify")
            }
            Problem::CorruptCheckpoints => f.write_str("a checkpoint row cannot be decoded"),
        }
    }
}
