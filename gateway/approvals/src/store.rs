//! Opening the SQLite file, the schema, and the transaction helpers.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use gatehouse_policy::{Group, IssuerId};

use crate::ApprovalError;

/// How long a writer waits for another process's transaction before failing.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an approval stays usable when the approver gives no window.
pub const DEFAULT_APPROVAL_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Pending requests one user may have at a time unless configured otherwise.
pub const DEFAULT_MAX_PENDING_PER_REQUESTER: u32 = 20;

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id               TEXT PRIMARY KEY,
    requester        TEXT NOT NULL,
    requester_groups TEXT NOT NULL,            -- JSON array
    connection       TEXT NOT NULL,
    statement        TEXT NOT NULL,
    statement_sha256 TEXT NOT NULL,
    rule             TEXT NOT NULL,
    reason           TEXT NOT NULL,
    approvers        TEXT NOT NULL,            -- JSON array of groups
    min_approvals    INTEGER NOT NULL CHECK (min_approvals >= 1),
    mode             TEXT NOT NULL CHECK (mode IN ('hold', 'ticket')),
    status           TEXT NOT NULL
        CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'executed')),
    created_at       INTEGER NOT NULL,         -- Unix milliseconds
    expires_at       INTEGER NOT NULL,
    decided_at       INTEGER,
    approved_until   INTEGER,
    executed_at      INTEGER,
    expired_at       INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, expires_at);
CREATE INDEX IF NOT EXISTS requests_ticket
    ON requests (requester, connection, statement_sha256, status);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created_at);

CREATE TABLE IF NOT EXISTS votes (
    request_id      TEXT NOT NULL REFERENCES requests (id),
    seq             INTEGER NOT NULL,
    approver        TEXT NOT NULL COLLATE NOCASE,
    approver_groups TEXT NOT NULL,             -- JSON array
    verdict         TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),
    comment         TEXT,
    at              INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver),
    UNIQUE (request_id, seq)
) STRICT;

CREATE TABLE IF NOT EXISTS grants (
    id               TEXT PRIMARY KEY,
    grantee          TEXT NOT NULL,
    connection       TEXT NOT NULL,
    scope            TEXT NOT NULL,            -- writes | any | rule:<name>
    issued_by        TEXT NOT NULL,
    issued_by_groups TEXT NOT NULL,            -- JSON array
    comment          TEXT,
    issued_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'revoked', 'expired')),
    revoked_by       TEXT,
    revoked_at       INTEGER,
    expired_at       INTEGER,
    use_count        INTEGER NOT NULL DEFAULT 0,
    last_used_at     INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS grants_lookup ON grants (grantee, connection, status, expires_at);
";

/// Schema 2: every stored user is a principal, so the issuer is stored beside each name
/// (requester, voter, grantee, grant issuer, revoker). A token's groups are all at its issuer,
/// so group lists stay lists of names at the issuer of the user they belong to. Rows of
/// schema 1 get the empty issuer, which no verified token has: old requests and grants
/// become inert rather than ambiguous. Votes are keyed by (issuer, name), so `alice` at two
/// issuers are two voters.
const MIGRATE_2: &str = "
ALTER TABLE requests ADD COLUMN requester_issuer TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS requests_ticket2
    ON requests (requester_issuer, requester, connection, statement_sha256, status);

CREATE TABLE votes2 (
    request_id      TEXT NOT NULL REFERENCES requests (id),
    seq             INTEGER NOT NULL,
    approver_issuer TEXT NOT NULL,
    approver        TEXT NOT NULL COLLATE NOCASE,
    approver_groups TEXT NOT NULL,             -- JSON array of names at approver_issuer
    verdict         TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),
    comment         TEXT,
    at              INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver_issuer, approver),
    UNIQUE (request_id, seq)
) STRICT;
INSERT INTO votes2 (request_id, seq, approver_issuer, approver, approver_groups, verdict,
    comment, at)
    SELECT request_id, seq, '', approver, approver_groups, verdict, comment, at FROM votes;
DROP TABLE votes;
ALTER TABLE votes2 RENAME TO votes;

ALTER TABLE grants ADD COLUMN grantee_issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE grants ADD COLUMN issued_by_issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE grants ADD COLUMN revoked_by_issuer TEXT;
CREATE INDEX IF NOT EXISTS grants_lookup2
    ON grants (grantee_issuer, grantee, connection, status, expires_at);
";

/// Settings for [`ApprovalStore::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// How long a write waits for another process's transaction.
    pub busy_timeout: Duration,
    /// Default for `Decide::approved_for`.
    pub approval_window: Duration,
    /// Pending, unexpired requests one requester may have; `create_request` refuses more
    /// with [`ApprovalError::TooManyPending`]. At least 1.
    pub max_pending_per_requester: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            approval_window: DEFAULT_APPROVAL_WINDOW,
            max_pending_per_requester: DEFAULT_MAX_PENDING_PER_REQUESTER,
        }
    }
}

/// A handle on `approvals.db`. Cheap to clone (one connection shared behind a mutex); open
/// another handle — in this or another process — for independent connections. Calls block on
/// SQLite (milliseconds); async callers should use `spawn_blocking` for writes.
#[derive(Debug, Clone)]
pub struct ApprovalStore {
    pub(crate) conn: Arc<Mutex<Connection>>,
    pub(crate) opts: StoreOptions,
    /// `opts.max_pending_per_requester`, changeable while running (configuration reload).
    max_pending: Arc<AtomicU32>,
    path: PathBuf,
}

impl ApprovalStore {
    /// Open (creating if needed) the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<ApprovalStore, ApprovalError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Open (creating if needed) the store at `path`: parent directory 0700, file 0600,
    /// WAL journal, schema created or checked.
    pub fn open_with(
        path: impl AsRef<Path>,
        opts: StoreOptions,
    ) -> Result<ApprovalStore, ApprovalError> {
        Self::open_upgrading(path, opts, None)
    }

    /// As [`ApprovalStore::open_with`]; when this open migrates a schema-1 store, its users
    /// (which carry no issuer) are given `legacy_issuer`. Pass it only when exactly one issuer
    /// is configured, so the old names are unambiguous; otherwise old rows get the empty issuer
    /// and stay inert.
    pub fn open_upgrading(
        path: impl AsRef<Path>,
        opts: StoreOptions,
        legacy_issuer: Option<&IssuerId>,
    ) -> Result<ApprovalStore, ApprovalError> {
        let path = path.as_ref();
        if opts.approval_window.is_zero() || opts.approval_window > crate::MAX_APPROVAL_WINDOW {
            return Err(ApprovalError::Invalid(
                "approval window must be between 1 ms and 24 h".to_owned(),
            ));
        }
        if opts.max_pending_per_requester == 0 {
            return Err(ApprovalError::Invalid(
                "max_pending_per_requester must be at least 1".to_owned(),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(opts.busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ApprovalError::NotWal { mode });
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        ensure_schema(&mut conn, legacy_issuer)?;
        tracing::debug!(path = %path.display(), "approval store opened");
        Ok(ApprovalStore {
            conn: Arc::new(Mutex::new(conn)),
            max_pending: Arc::new(AtomicU32::new(opts.max_pending_per_requester)),
            opts,
            path: path.to_owned(),
        })
    }

    /// The file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options in effect.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            max_pending_per_requester: self.max_pending(),
            ..self.opts
        }
    }

    /// Changes the pending-request limit of every clone of this handle (0 is taken as 1).
    /// Requests already pending stay; only new ones are refused while over the limit.
    pub fn set_max_pending_per_requester(&self, n: u32) {
        self.max_pending.store(n.max(1), Ordering::Relaxed);
    }

    pub(crate) fn max_pending(&self) -> u32 {
        self.max_pending.load(Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock drops the open Transaction, which rolls back; the
        // connection itself stays usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` in a `BEGIN IMMEDIATE` transaction: it holds the write lock from the start, so
    /// what `f` reads cannot change before it writes. Committed only if `f` returns `Ok`.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ApprovalError>,
    ) -> Result<T, ApprovalError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Run `f` in a read transaction (one consistent snapshot across several queries).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ApprovalError>,
    ) -> Result<T, ApprovalError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let out = f(&tx)?;
        tx.finish()?;
        Ok(out)
    }
}

fn ensure_schema(
    conn: &mut Connection,
    legacy_issuer: Option<&IssuerId>,
) -> Result<(), ApprovalError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(ApprovalError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        tx.execute_batch(SCHEMA)?;
    }
    if found < 2 {
        tx.execute_batch(MIGRATE_2)?;
        if let (1, Some(iss)) = (found, legacy_issuer) {
            for sql in [
                "UPDATE requests SET requester_issuer = ?1 WHERE requester_issuer = ''",
                "UPDATE votes SET approver_issuer = ?1 WHERE approver_issuer = ''",
                "UPDATE grants SET grantee_issuer = ?1, issued_by_issuer = ?1",
                "UPDATE grants SET revoked_by_issuer = ?1 WHERE revoked_by IS NOT NULL",
            ] {
                tx.execute(sql, [iss.as_str()])?;
            }
        }
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// JSON text of a list of names, as stored.
pub(crate) fn names_to_json(names: &[String]) -> Result<String, ApprovalError> {
    serde_json::to_string(names).map_err(|e| ApprovalError::Invalid(e.to_string()))
}

pub(crate) fn names_from_json(s: &str) -> Result<Vec<String>, ApprovalError> {
    serde_json::from_str(s).map_err(|e| ApprovalError::Corrupt(format!("name list: {e}")))
}

/// JSON text of the names of `groups`, which must all be at `issuer` (a token's groups are).
pub(crate) fn groups_to_json(issuer: &IssuerId, groups: &[Group]) -> Result<String, ApprovalError> {
    if groups.iter().any(|g| &g.issuer != issuer) {
        return Err(ApprovalError::Invalid(
            "a user's groups must be at the user's issuer".to_owned(),
        ));
    }
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    names_to_json(&names)
}

/// The stored group names of a user at `issuer`.
pub(crate) fn groups_from_json(issuer: &IssuerId, s: &str) -> Result<Vec<Group>, ApprovalError> {
    Ok(Group::all_of(issuer, &names_from_json(s)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn creates_private_wal_file_and_refuses_newer_schema() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("approvals.db");
        let store = ApprovalStore::open(&path).unwrap();
        assert_eq!(store.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let jm: String = store
            .lock()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jm, "wal");
        drop(store);
        // Reopening an existing store works; a newer schema is refused.
        ApprovalStore::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            ApprovalStore::open(&path),
            Err(ApprovalError::UnsupportedSchema { found: 99, .. })
        ));
    }

    #[test]
    fn schema_1_rows_become_inert_principals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO grants (id, grantee, connection, scope, issued_by, issued_by_groups,
                    issued_at, expires_at, status)
                 VALUES ('grt_aaaaaaaaaaaaaaaa', 'alice', 'app', 'any', 'bob', '[\"dba\"]',
                    0, 9999999999999, 'active')",
                [],
            )
            .unwrap();
        }
        let store = ApprovalStore::open(&path).unwrap();
        let v: i64 = store
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let g = store
            .grant(&"grt_aaaaaaaaaaaaaaaa".parse().unwrap())
            .unwrap();
        // The old grantee has the empty issuer: no verified token's principal matches it.
        assert_eq!(
            g.user,
            gatehouse_policy::Principal::new(IssuerId::new(""), "alice")
        );
        assert_eq!(
            g.issued_by_groups,
            vec![Group::new(IssuerId::new(""), "dba")]
        );
        let real = gatehouse_policy::Principal::new(IssuerId::new("https://idp.example"), "alice");
        let now = std::time::SystemTime::now();
        assert!(store.active_grants(&real, "app", now).unwrap().is_empty());
        drop(store);
        // Opening again does not migrate twice.
        ApprovalStore::open(&path).unwrap();
    }

    #[test]
    fn schema_1_rows_take_the_sole_issuer_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let v1 = |path: &Path| {
            let c = Connection::open(path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO grants (id, grantee, connection, scope, issued_by, issued_by_groups,
                    issued_at, expires_at, status)
                 VALUES ('grt_aaaaaaaaaaaaaaaa', 'alice', 'app', 'any', 'bob', '[]',
                    0, 9999999999999, 'active')",
                [],
            )
            .unwrap();
        };
        v1(&path);
        let idp = IssuerId::new("https://idp.example");
        let store =
            ApprovalStore::open_upgrading(&path, StoreOptions::default(), Some(&idp)).unwrap();
        let alice = gatehouse_policy::Principal::new(idp.clone(), "alice");
        let now = std::time::SystemTime::now();
        assert_eq!(store.active_grants(&alice, "app", now).unwrap().len(), 1);
        let g = store
            .grant(&"grt_aaaaaaaaaaaaaaaa".parse().unwrap())
            .unwrap();
        assert_eq!(g.issued_by, gatehouse_policy::Principal::new(idp, "bob"));
    }

    #[test]
    fn rejects_unusable_approval_window() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            approval_window: Duration::ZERO,
            ..StoreOptions::default()
        };
        assert!(matches!(
            ApprovalStore::open_with(dir.path().join("a.db"), opts),
            Err(ApprovalError::Invalid(_))
        ));
    }
}
