//! `gatehouse-audit`: the write-ahead, hash-chained audit store of the Gatehouse gateway.
//!
//! The gateway writes an audit [`Record`] for every decision and awaits
//! [`AuditStore::append`] *before* it forwards the statement the record describes.
//! [`AuditReader`] reads, searches and verifies the store, also while the gateway runs.
//!
//! # Invariants
//! - **Only this crate knows SQLite.** Callers see records, sequence numbers and typed errors;
//!   the schema, the SQL and the file format stay in here (`schema.rs` alone names columns).
//! - **A record acknowledged is committed.** `append` resolves `Ok(seq)` only after the SQLite
//!   transaction holding the record has committed (durable against process crashes with
//!   [`Synchronous::Normal`], against power loss with [`Synchronous::Full`]).
//! - **Fail closed.** If a group's insert or commit fails, every record of that group gets an
//!   error and none of them is stored (one transaction); the store reports unhealthy,
//!   [`AuditStore::append_nowait`] is refused, and each later group is retried afresh. Rows
//!   already committed are never touched.
//! - **Sequence numbers are dense**: 1, 2, 3, … in commit order, with no gaps, continuing across
//!   restarts (a failed group assigns nothing).
//! - **Errors never carry record contents** (SQL text, identities, addresses).
//!
//! # Group commit
//! One writer thread owns the read-write connection. It blocks on a channel, drains everything
//! queued (up to [`StoreOptions::max_batch`] records), inserts all of it in one
//! `BEGIN IMMEDIATE … COMMIT`, then acknowledges every caller through a oneshot channel. Under
//! load many callers share one commit (one fsync), so throughput grows with concurrency while
//! each caller still waits for its own commit.
//!
//! # Hash chain and canonical encoding
//! Each row stores `prev_hash` and `hash`, where
//!
//! ```text
//! hash(seq) = SHA-256( prev_hash || postcard((seq, record)) )
//! prev_hash(1) = 32 zero bytes,  prev_hash(n) = hash(n - 1)
//! ```
//!
//! The canonical encoding is [postcard](https://docs.rs/postcard) (v1 wire format) of the
//! tuple `(seq: i64, record: &Record)`: the serde derive of [`Record`], fields in declaration
//! order; integers as zig-zag varints, strings and vectors length-prefixed, `Option` as a
//! 0/1 tag, and the enums [`EventKind`] and [`Decision`] as their **variant index** (not their
//! names). Hence fields of `Record` and variants of those enums may only be appended, never
//! reordered, removed or retyped. [`AuditReader::verify_chain`] rebuilds each `Record` from the
//! stored columns, re-encodes it and recomputes the chain, naming the first seq that does not
//! match (edited, deleted, moved or undecodable rows). Truncation of the newest rows is not
//! visible to the chain alone; compare [`VerifyReport::last_hash`] with a signed checkpoint.
//!
//! # Storage
//! One SQLite file (created 0600, its directory 0700), `journal_mode=WAL`, `synchronous` per
//! [`StoreOptions`], a busy timeout, one `STRICT` table `records` with a column per field
//! (`groups` as a JSON array), and the schema version in `PRAGMA user_version`. There are no
//! secondary indexes on purpose: each one adds a b-tree page to every commit's WAL write, and
//! with four of them the write-ahead path ran at about a third of the speed (25k vs 70k
//! records/s, 8 writers, `cargo bench -p gatehouse-audit`). Searches scan by `seq`.

#![forbid(unsafe_code)]

mod checkpoint;
mod error;
mod journal;
mod maintain;
pub mod merkle;
mod reader;
mod record;
mod schema;
mod seal;
mod store;
mod verify;

pub use checkpoint::{hwm_path, read_hwm, Checkpoint, CheckpointKind, PublicKey};
pub use error::AuditError;
pub use maintain::{prune, rotate_signing_key, PruneReport};
pub use reader::{AuditReader, BadRecord, ChainBreak, Filter, VerifyReport};
pub use record::{format_rfc3339_us, parse_rfc3339_us, Decision, EventKind, Record, StoredRecord};
pub use store::{recover, AuditStore, StoreOptions, Synchronous};
pub use verify::{verify, Problem, Verification, VerifyOptions, VerifyProgress};

/// Sequence number of a stored record: 1, 2, 3, … without gaps.
pub type Seq = i64;
