//! The one error type of the crate.
//!
//! Invariant: no variant carries record contents (SQL text, identities, addresses). SQLite's own
//! messages name tables, columns and constraints, never bound values, and every message this
//! crate writes itself names only sequence numbers and column names.

use std::sync::Arc;

use crate::Seq;

/// Everything that can go wrong in the audit store.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Creating the directory or the database file failed.
    #[error("audit store I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// SQLite refused an operation (open, schema, query, insert, commit).
    #[error("audit store SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The canonical (postcard) encoding of a record failed.
    #[error("audit record encoding failed: {0}")]
    Encode(#[from] postcard::Error),

    /// The group this record was committed with failed; nothing in the group was written.
    /// The inner error is shared by every caller in that group.
    #[error("audit group commit failed: {0}")]
    GroupFailed(#[source] Arc<AuditError>),

    /// The writer thread has stopped (store shut down, or the thread died).
    #[error("audit writer is gone")]
    WriterGone,

    /// `append_nowait` was refused because the last group failed to commit; appends that are
    /// awaited keep retrying and clear this state when one commits.
    #[error("audit store is unhealthy (last commit failed)")]
    Unhealthy,

    /// `flush` (or `shutdown`): this many records queued with `append_nowait` since the last
    /// report were not committed because their group failed.
    #[error("{count} audit records queued without waiting were not committed")]
    Lost {
        /// How many `append_nowait` records were dropped.
        count: u64,
    },

    /// A stored row cannot be decoded (wrong type, unknown enum name, bad hash length).
    #[error("audit record {seq} is corrupt: {reason}")]
    Corrupt {
        /// The row's sequence number.
        seq: Seq,
        /// What is wrong (never the row's contents).
        reason: String,
    },

    /// The database is not in WAL mode after asking for it (e.g. a file system without shared
    /// memory support).
    #[error("audit store could not enable WAL mode (journal mode is {mode:?})")]
    NotWal {
        /// The journal mode SQLite reported.
        mode: String,
    },

    /// The file was written by a newer schema than this code knows.
    #[error("audit store schema version {found} is not supported (expected {expected})")]
    SchemaVersion {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The version this code writes.
        expected: i64,
    },

    /// The database file was removed or replaced while the store had it open. Groups keep
    /// failing until the gateway is restarted (a new file would restart the chain).
    #[error("audit database file was removed or replaced while open")]
    FileReplaced,

    /// A `StoreOptions` value is out of range.
    #[error("invalid audit store options: {0}")]
    InvalidOptions(&'static str),

    /// The key store failed (getting the audit key or signing). Key-store errors name files,
    /// purposes and key ids, never key bytes.
    #[error("audit store key store error: {0}")]
    Keys(#[source] Arc<gatehouse_board::KeyStoreError>),

    /// AES-GCM or the random number generator failed.
    #[error("audit store cryptographic operation failed")]
    Crypto,

    /// The store holds sealed records (or was opened with keys before), and this operation
    /// was given no key store.
    #[error("audit store is encrypted: open it with the key store")]
    KeysRequired,

    /// The store is older than its high-water mark: the database file was rolled back to an
    /// earlier copy (or the newest checkpoints were removed).
    #[error(
        "audit store rolled back: the high-water mark covers {hwm_size} records, the newest \
         matching checkpoint in the database {db_size}"
    )]
    RolledBack {
        /// Records covered by the high-water mark.
        hwm_size: u64,
        /// Records covered by the newest checkpoint in the database.
        db_size: u64,
    },

    /// The high-water-mark file exists but cannot be parsed.
    #[error("audit store high-water mark file is malformed")]
    BadHighWaterMark,

    /// `prune` was asked to delete records inside the retention period, or records not yet
    /// covered by a checkpoint.
    #[error("refusing to prune: {0}")]
    Retention(&'static str),

    /// A checkpoint needs a signing key, and the store was opened without a key store.
    /// Another process holds the store's journal: a second gateway on the same data dir.
    #[error("audit store is in use by another process (its journal is locked)")]
    Locked,

    #[error("audit store has no signing key (opened without a key store)")]
    NoSigningKey,
}

impl AuditError {
    pub(crate) fn keys(e: gatehouse_board::KeyStoreError) -> AuditError {
        AuditError::Keys(Arc::new(e))
    }
}
