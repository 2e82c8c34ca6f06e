//! `gatehouse-audit`: the write-ahead, hash-chained audit store of the Gatehouse gateway.
//!
//! The gateway writes an audit [`Record`] for every decision and awaits
//! [`AuditStore::append`] *before* it forwards the statement the record describes.
//! [`AuditReader`] reads, searches and verifies the store, also while the gateway runs.
//!
//! # Invariants
//! - **Only this crate knows SQLite.** Callers see records, sequence numbers and typed errors;
//!   the schema, the SQL and the file format stay in here (`schema.rs` alone names columns).
//! - **A record acknowledged is journaled.** `append` resolves `Ok(seq)` only after the
//!   record's frame is written to the journal (two segments, `<db>.journal` and
//!   `<db>.journal.1`; one `write(2)` per append to the active one):
//!   durable against process crashes at once, against power loss after the sync window
//!   ([`Synchronous::Normal`]) or before the acknowledgement ([`Synchronous::Full`], one
//!   fsync shared by every append waiting). The journal is replayed into SQLite at open, and
//!   by [`recover`] when no writer runs; a segment is emptied only after the WAL holding its
//!   rows is fsynced.
//! - **Fail closed.** If an append's write fails, nothing of it is kept (the journal is cut
//!   back to its last whole frame) and the caller gets an error; if ingestion into SQLite
//!   fails, the journaled rows are kept and every new append is refused until an ingestion
//!   succeeds. Rows already committed are never touched.
//! - **Sequence numbers are dense**: 1, 2, 3, … in journal order, with no gaps, continuing
//!   across restarts (a failed append assigns nothing).
//! - **One writer**: the journal is `flock`ed; a second store on the same file is refused.
//! - **Errors never carry record contents** (SQL text, identities, addresses).
//!
//! # Journal and ingestion
//! An append takes a short mutex, seals, chains and encodes its records, appends them to the
//! journal and returns: no thread hand-off on the statement's path. A background thread moves
//! journaled rows into SQLite in one transaction every [`StoreOptions::ingest_window`] (or at
//! [`StoreOptions::ingest_batch`] rows), fsyncs the journal, writes checkpoints (of what it
//! has ingested) and, once the active segment has reached
//! [`StoreOptions::journal_segment_bytes`], moves appends to the other segment and empties
//! the retired one as soon as its rows are in SQLite, so the journal stays near two segments'
//! size under sustained load. Readers see a record once it is
//! ingested; [`AuditStore::flush`] forces that. `append_nowait` records (outcomes, session
//! ends) are kept in memory and journaled with the next append or ingestion.
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
