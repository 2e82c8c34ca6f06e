//! The write side: a cheap handle in front of one writer thread that group-commits.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_board::KeyStore;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::checkpoint::{self, Checkpoint, CheckpointKind, PublicKey};
use crate::merkle::{CompactRange, CHUNK};
use crate::schema::{self, DEFAULT_BUSY_TIMEOUT};
use crate::seal::Sealer;
use crate::{AuditError, Record, Seq};

/// Durability of acknowledged records (the journal is always WAL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// *Bounded* (the default): `synchronous=NORMAL`, and the writer fsyncs the WAL at most
    /// [`StoreOptions::sync_window`] after a commit. A committed record survives a crash of
    /// the gateway process at once, and an OS crash or power loss once the window has passed
    /// (never corrupts the file).
    #[default]
    Normal,
    /// *Strict*: `synchronous=FULL`, every group commit is fsynced before any record in it
    /// is acknowledged; survives power loss.
    Full,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How to open an [`AuditStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Durability of each group commit.
    pub synchronous: Synchronous,
    /// Most records one group (one transaction) takes off the queue. At least 1.
    pub max_batch: usize,
    /// How long a write waits for a lock held by another connection before the group fails.
    pub busy_timeout: Duration,
    /// With [`Synchronous::Normal`]: the most time between a commit and the fsync of the WAL
    /// that makes it survive power loss.
    pub sync_window: Duration,
    /// A signed checkpoint after this many records (with a key store). At least 1.
    pub checkpoint_every: u64,
    /// A signed checkpoint when this much time has passed since the last one and records
    /// were added (with a key store).
    pub checkpoint_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Normal,
            max_batch: 4096,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            sync_window: Duration::from_millis(10),
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

type Ack<T> = oneshot::Sender<Result<T, AuditError>>;

#[allow(
    clippy::large_enum_variant,
    reason = "`One` is the hot path; boxing it would add an allocation per record"
)]
enum Msg {
    One {
        record: Record,
        /// `None` for `append_nowait`.
        ack: Option<Ack<Seq>>,
    },
    Many {
        records: Vec<Record>,
        ack: Ack<Vec<Seq>>,
    },
    Flush(Ack<()>),
    Checkpoint(CheckpointKind, mpsc::Sender<Result<Checkpoint, AuditError>>),
    PolicyHash(Option<String>),
    Shutdown(mpsc::Sender<Result<(), AuditError>>),
}

/// How long a group of only unacknowledged records may wait for an acknowledged one.
const LAZY_COMMIT: Duration = Duration::from_millis(2);

impl Msg {
    /// An `append_nowait` record: nobody waits for its commit.
    fn is_lazy(&self) -> bool {
        matches!(self, Msg::One { ack: None, .. })
    }

    fn record_count(&self) -> usize {
        match self {
            Msg::One { .. } => 1,
            Msg::Many { records, .. } => records.len(),
            Msg::Flush(_) | Msg::Shutdown(_) | Msg::Checkpoint(..) | Msg::PolicyHash(_) => 0,
        }
    }
}

/// State the writer thread shares with the handles.
#[derive(Debug)]
struct Shared {
    /// False after a failed group until a group commits again.
    healthy: AtomicBool,
    /// True once the writer thread has exited.
    gone: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    /// Asks the writer to commit what is queued and stop, waits for its answer, joins it.
    fn stop(&self) -> Result<(), AuditError> {
        let (ack, answer) = mpsc::channel();
        let result = match self.tx.send(Msg::Shutdown(ack)) {
            Ok(()) => answer.recv().unwrap_or(Err(AuditError::WriterGone)),
            Err(_) => Err(AuditError::WriterGone),
        };
        let handle = match self.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
        result
    }
}

impl Drop for Inner {
    /// The last handle going away drains the queue, commits and joins the writer (blocking).
    fn drop(&mut self) {
        let already_stopped = match self.thread.get_mut() {
            Ok(t) => t.is_none(),
            Err(p) => p.get_ref().is_none(),
        };
        if !already_stopped {
            if let Err(e) = self.stop() {
                tracing::error!(error = %e, "audit store did not shut down cleanly");
            }
        }
    }
}

/// Handle to the write-ahead audit store. Cheap to clone; all clones feed one writer thread.
///
/// Shutdown: [`AuditStore::shutdown`] stops the writer for every clone after committing
/// everything queued before it. Dropping the last clone does the same (it blocks the dropping
/// thread for the final commit); dropping other clones does nothing.
#[derive(Clone, Debug)]
pub struct AuditStore {
    inner: Arc<Inner>,
}

impl AuditStore {
    /// Opens (creating if needed) the store at `path` without a key store: records are
    /// stored in the clear and hash-chained into the Merkle tree, but no checkpoint can be
    /// signed. For development and tests; the gateway uses [`AuditStore::open_with`].
    /// Refused with [`AuditError::KeysRequired`] for a store that was ever opened with keys.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<AuditStore, AuditError> {
        AuditStore::start(path, opts, None)
    }

    /// Opens (creating if needed) the store at `path`: the directory (0700) and file (0600)
    /// are created, WAL mode and `synchronous` are set, the schema is created or migrated,
    /// the Merkle state is rebuilt, the database is checked against its high-water mark
    /// ([`AuditError::RolledBack`]), and the writer thread is started. Sequence numbers, the
    /// hash chain and the tree continue from the last row. New records are sealed with the
    /// key store's audit key; checkpoints are signed with its signing key.
    pub fn open_with(
        path: &Path,
        opts: StoreOptions,
        keys: Arc<dyn KeyStore>,
    ) -> Result<AuditStore, AuditError> {
        AuditStore::start(path, opts, Some(keys))
    }

    fn start(
        path: &Path,
        opts: StoreOptions,
        keys: Option<Arc<dyn KeyStore>>,
    ) -> Result<AuditStore, AuditError> {
        if opts.max_batch == 0 {
            return Err(AuditError::InvalidOptions("max_batch must be at least 1"));
        }
        if opts.checkpoint_every == 0 {
            return Err(AuditError::InvalidOptions(
                "checkpoint_every must be at least 1",
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
            return Err(AuditError::NotWal { mode });
        }
        conn.pragma_update(None, "synchronous", opts.synchronous.pragma_value())?;
        schema::ensure_schema(&mut conn)?;
        // Fail at open, not at the first append, if the tail row is unreadable.
        let (last_seq, last_hash) = schema::chain_tail(&conn)?;
        let sealed_before = schema::meta_get(&conn, schema::META_SEALED)?.is_some();
        let sealer = match &keys {
            Some(k) => {
                if !sealed_before {
                    schema::meta_set(&conn, schema::META_SEALED, "1")?;
                }
                Some(Sealer::new(Arc::clone(k))?)
            }
            None if sealed_before => return Err(AuditError::KeysRequired),
            None => None,
        };
        let last_cp = schema::last_checkpoint(&conn)?;
        check_high_water_mark(&conn, path, last_cp.as_ref())?;
        let merkle = schema::rebuild_merkle(&mut conn)?;
        if let (Some(k), Some(cp)) = (&keys, &last_cp) {
            let current = PublicKey::of(k.as_ref())?;
            let expected = cp.next_key.as_ref().unwrap_or(&cp.signer);
            if current != *expected {
                tracing::warn!(
                    key_id = %current.key_id(),
                    previous = %expected.key_id(),
                    "audit signing key differs from the last checkpoint's and no rotation \
                     was recorded; verification will report the change"
                );
            }
        }
        let config_hash = match &last_cp {
            Some(cp) => cp.config_hash.clone(),
            None => None,
        };
        let policy_hash = last_cp.as_ref().and_then(|cp| cp.policy_hash.clone());
        let covered = last_cp.as_ref().map_or(0, |cp| cp.size);
        tracing::info!(last_seq, sealed = sealer.is_some(), "audit store opened");

        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            gone: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let now = Instant::now();
        let writer = Writer {
            conn,
            rx,
            shared: Arc::clone(&shared),
            max_batch: opts.max_batch,
            lost: 0,
            buf: Vec::new(),
            file: FileIdentity::of(path)?,
            path: path.to_owned(),
            keys,
            sealer,
            merkle,
            last_hash,
            covered,
            last_checkpoint_at: now,
            config_hash,
            policy_hash,
            unsynced_since: None,
            opts,
        };
        let thread = std::thread::Builder::new()
            .name("gatehouse-audit-writer".into())
            .spawn(move || writer.run())?;
        Ok(AuditStore {
            inner: Arc::new(Inner {
                tx,
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Writes a signed checkpoint of everything committed so far (after everything queued
    /// before this call is committed) and updates the high-water mark. Blocks the calling
    /// thread for the commit and the signature (call from `spawn_blocking` in async code).
    pub fn checkpoint_now(&self) -> Result<Checkpoint, AuditError> {
        self.checkpoint_of_kind(CheckpointKind::Demand)
    }

    /// Like [`AuditStore::checkpoint_now`], marked as the shutdown checkpoint (for a store
    /// shared behind an `Arc`, where [`AuditStore::shutdown`] cannot take it by value).
    pub fn checkpoint_at_shutdown(&self) -> Result<Checkpoint, AuditError> {
        self.checkpoint_of_kind(CheckpointKind::Shutdown)
    }

    fn checkpoint_of_kind(&self, kind: CheckpointKind) -> Result<Checkpoint, AuditError> {
        let (ack, answer) = mpsc::channel();
        self.send(Msg::Checkpoint(kind, ack))?;
        answer.recv().unwrap_or(Err(AuditError::WriterGone))
    }

    /// Sets the policy hash that the next checkpoints carry (`None`: no policy loaded).
    pub fn set_policy_hash(&self, hash: Option<String>) -> Result<(), AuditError> {
        self.send(Msg::PolicyHash(hash))
    }

    /// Queues `record` and resolves with its sequence number once its group has committed.
    /// Dropping the future does not withdraw the record.
    pub async fn append(&self, record: Record) -> Result<Seq, AuditError> {
        let (ack, answer) = oneshot::channel();
        self.send(Msg::One {
            record,
            ack: Some(ack),
        })?;
        answer.await.unwrap_or(Err(AuditError::WriterGone))
    }

    /// Queues several records to be committed in the same transaction, with one
    /// acknowledgement. Sequence numbers are consecutive, in input order.
    pub async fn append_batch(&self, records: Vec<Record>) -> Result<Vec<Seq>, AuditError> {
        let (ack, answer) = oneshot::channel();
        self.send(Msg::Many { records, ack })?;
        answer.await.unwrap_or(Err(AuditError::WriterGone))
    }

    /// Queues `record` without waiting: it is committed, in order, with the next group.
    /// Refused with [`AuditError::Unhealthy`] while the last group has failed, and with
    /// [`AuditError::WriterGone`] after shutdown. A later [`flush`](Self::flush) reports any
    /// such record whose group then failed.
    pub fn append_nowait(&self, record: Record) -> Result<(), AuditError> {
        if !self.inner.shared.healthy.load(Ordering::Acquire) {
            return Err(if self.inner.shared.gone.load(Ordering::Acquire) {
                AuditError::WriterGone
            } else {
                AuditError::Unhealthy
            });
        }
        self.send(Msg::One { record, ack: None })
    }

    /// Resolves once everything queued before it is committed. Fails with
    /// [`AuditError::Lost`] if records queued by `append_nowait` since the last report were
    /// not committed, or with the group's error if the final group failed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, answer) = oneshot::channel();
        self.send(Msg::Flush(ack))?;
        answer.await.unwrap_or(Err(AuditError::WriterGone))
    }

    /// True while the writer runs and the last group (if any) committed.
    pub fn is_healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Acquire)
            && !self.inner.shared.gone.load(Ordering::Acquire)
    }

    /// Commits everything queued before this call, stops the writer thread and joins it.
    /// Blocks the calling thread (call `flush().await` first from async code to keep the
    /// blocking part short). Other clones get [`AuditError::WriterGone`] afterwards.
    /// Returns what a final `flush` would have returned.
    pub fn shutdown(self) -> Result<(), AuditError> {
        self.inner.stop()
    }

    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        self.inner.tx.send(msg).map_err(|_| AuditError::WriterGone)
    }
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    max_batch: usize,
    /// `append_nowait` records dropped by failed groups, not yet reported by a flush.
    lost: u64,
    /// Scratch buffer for the canonical encoding.
    buf: Vec<u8>,
    /// Identity of the database file at open.
    file: FileIdentity,
    path: PathBuf,
    keys: Option<Arc<dyn KeyStore>>,
    sealer: Option<Sealer>,
    /// The tree over every committed record.
    merkle: CompactRange,
    /// Chain hash of the last committed record.
    last_hash: [u8; 32],
    /// Records covered by the newest checkpoint.
    covered: u64,
    last_checkpoint_at: Instant,
    config_hash: Option<String>,
    policy_hash: Option<String>,
    /// First commit not yet fsynced (bounded durability).
    unsynced_since: Option<Instant>,
    opts: StoreOptions,
}

/// The database file's path and inode, to notice it being removed or replaced.
struct FileIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Result<FileIdentity, AuditError> {
        let meta = std::fs::metadata(path)?;
        Ok(FileIdentity {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn check(&self) -> Result<(), AuditError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => Ok(()),
            _ => Err(AuditError::FileReplaced),
        }
    }
}

/// Marks the store gone when the writer thread ends, however it ends.
struct GoneOnExit(Arc<Shared>);

impl Drop for GoneOnExit {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.healthy.store(false, Ordering::Release);
    }
}

impl Writer {
    fn run(mut self) {
        let _gone = GoneOnExit(Arc::clone(&self.shared));
        let mut group = Vec::new();
        loop {
            let first = match self.next_deadline() {
                None => match self.rx.recv() {
                    Ok(m) => m,
                    // Fails only when every handle is gone (they send `Shutdown` first).
                    Err(_) => break,
                },
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(wait) {
                        Ok(m) => m,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.tick();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut records = first.record_count();
            let mut stop = matches!(first, Msg::Shutdown(_));
            group.push(first);
            while !stop && records < self.max_batch {
                match self.rx.try_recv() {
                    Ok(msg) => {
                        records += msg.record_count();
                        stop = matches!(msg, Msg::Shutdown(_));
                        group.push(msg);
                    }
                    Err(_) => break,
                }
            }
            // Nobody waits for a group of only `append_nowait` records (statement outcomes,
            // written after the fact): hold it up to LAZY_COMMIT so that it shares the commit
            // of the next awaited record. Under load that halves the commits (and the WAL
            // pages written); an awaited record is never delayed by this.
            let lazy_until = Instant::now() + LAZY_COMMIT;
            while !stop && records < self.max_batch && group.iter().all(Msg::is_lazy) {
                let wait = lazy_until.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                match self.rx.recv_timeout(wait) {
                    Ok(msg) => {
                        records += msg.record_count();
                        stop = matches!(msg, Msg::Shutdown(_));
                        group.push(msg);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        stop = true;
                        break;
                    }
                }
            }
            self.commit_group(&mut group, records);
            self.tick();
            if stop {
                break;
            }
        }
        // Messages still queued are dropped with their acknowledgement senders, so their
        // callers see `WriterGone` instead of waiting forever.
    }

    /// When the writer must wake up without a message: the end of the sync window, or the
    /// checkpoint interval if records are not yet covered.
    fn next_deadline(&self) -> Option<Instant> {
        let sync = self.unsynced_since.map(|t| t + self.opts.sync_window);
        let cp = (self.keys.is_some() && self.merkle.size() > self.covered)
            .then(|| self.last_checkpoint_at + self.opts.checkpoint_interval);
        match (sync, cp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Periodic work: fsync the WAL when the sync window is over; an interval checkpoint when
    /// enough records or time have passed.
    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(t) = self.unsynced_since {
            if now >= t + self.opts.sync_window {
                match self.sync_wal() {
                    Ok(()) => self.unsynced_since = None,
                    Err(e) => tracing::error!(error = %e, "audit WAL fsync failed"),
                }
            }
        }
        let pending = self.merkle.size() - self.covered.min(self.merkle.size());
        if self.keys.is_some()
            && pending > 0
            && (pending >= self.opts.checkpoint_every
                || now >= self.last_checkpoint_at + self.opts.checkpoint_interval)
        {
            if let Err(e) = self.checkpoint(CheckpointKind::Interval) {
                // Retried at the next interval; verification shows the uncovered records.
                self.last_checkpoint_at = now;
                tracing::error!(error = %e, "audit checkpoint failed");
            }
        }
    }

    /// Makes every committed WAL frame durable: fsync of the `-wal` file (SQLite with
    /// `synchronous=NORMAL` fsyncs it only before checkpoints).
    fn sync_wal(&self) -> Result<(), AuditError> {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        match std::fs::File::open(PathBuf::from(wal)) {
            Ok(f) => Ok(f.sync_data()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Signs and stores a checkpoint of everything committed, and updates the high-water mark.
    fn checkpoint(&mut self, kind: CheckpointKind) -> Result<Checkpoint, AuditError> {
        let keys = self.keys.as_ref().ok_or(AuditError::NoSigningKey)?;
        let mut cp = Checkpoint {
            id: 0,
            size: self.merkle.size(),
            root: self.merkle.root(),
            time_us: now_us(),
            last_hash: self.last_hash,
            config_hash: self.config_hash.clone(),
            policy_hash: self.policy_hash.clone(),
            kind,
            signer: PublicKey::of(keys.as_ref())?,
            next_key: None,
            signature: Vec::new(),
        };
        cp.sign(keys.as_ref())?;
        cp.id = schema::insert_checkpoint(&self.conn, &cp)?;
        checkpoint::write_hwm(&self.path, &cp)?;
        self.covered = cp.size;
        self.last_checkpoint_at = Instant::now();
        tracing::debug!(size = cp.size, "audit checkpoint written");
        Ok(cp)
    }

    /// Writes every record in `group` in one transaction, then answers every message.
    fn commit_group(&mut self, group: &mut Vec<Msg>, records: usize) {
        // A group without records (only flushes) writes nothing and proves nothing about the
        // health of the store, so it leaves the health flag alone.
        let result = if records == 0 {
            Ok(0)
        } else {
            self.write(group)
        };
        match result {
            Ok(first) => {
                if records > 0 && !self.shared.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("audit store recovered: group committed");
                }
                let lost = std::mem::take(&mut self.lost);
                let mut seq = first;
                let mut checkpoint_acks = Vec::new();
                let mut shutdown_acks = Vec::new();
                for msg in group.drain(..) {
                    match msg {
                        Msg::One { ack, .. } => {
                            if let Some(ack) = ack {
                                let _ = ack.send(Ok(seq));
                            }
                            seq += 1;
                        }
                        Msg::Many { records, ack } => {
                            let n = Seq::try_from(records.len()).unwrap_or(Seq::MAX);
                            let _ = ack.send(Ok((seq..seq + n).collect()));
                            seq += n;
                        }
                        Msg::Flush(ack) => {
                            let _ = ack.send(lost_result(lost));
                        }
                        Msg::Checkpoint(kind, ack) => checkpoint_acks.push((kind, ack)),
                        Msg::PolicyHash(h) => self.policy_hash = h,
                        Msg::Shutdown(ack) => shutdown_acks.push(ack),
                    }
                }
                // Several requests in one group share one checkpoint unless their kinds differ.
                let mut last: Option<(CheckpointKind, Checkpoint)> = None;
                for (kind, ack) in checkpoint_acks {
                    let r = match &last {
                        Some((k, cp)) if *k == kind => Ok(cp.clone()),
                        _ => self.checkpoint(kind),
                    };
                    if let Ok(cp) = &r {
                        last = Some((kind, cp.clone()));
                    }
                    let _ = ack.send(r);
                }
                if !shutdown_acks.is_empty() {
                    let mut result = lost_result(lost);
                    if self.keys.is_some() && self.merkle.size() > self.covered {
                        if let Err(e) = self.checkpoint(CheckpointKind::Shutdown) {
                            tracing::error!(error = %e, "audit shutdown checkpoint failed");
                            if result.is_ok() {
                                result = Err(e);
                            }
                        }
                    }
                    if let Err(e) = self.sync_wal() {
                        tracing::error!(error = %e, "audit WAL fsync at shutdown failed");
                    }
                    let mut result = Some(result);
                    for ack in shutdown_acks {
                        let r = match result.take() {
                            Some(r) => r,
                            None => lost_result(0),
                        };
                        let _ = ack.send(r);
                    }
                }
            }
            Err(e) => {
                self.shared.healthy.store(false, Ordering::Release);
                tracing::error!(error = %e, records, "audit group commit failed; records refused");
                let e = Arc::new(e);
                for msg in group.drain(..) {
                    match msg {
                        Msg::One { ack: Some(ack), .. } => {
                            let _ = ack.send(group_failed(&e));
                        }
                        Msg::One { ack: None, .. } => self.lost += 1,
                        Msg::Many { ack, .. } => {
                            let _ = ack.send(group_failed(&e));
                        }
                        Msg::Flush(ack) => {
                            let _ = ack.send(group_failed(&e));
                        }
                        Msg::Checkpoint(_, ack) => {
                            let _ = ack.send(group_failed(&e));
                        }
                        Msg::PolicyHash(h) => self.policy_hash = h,
                        Msg::Shutdown(ack) => {
                            let _ = ack.send(group_failed(&e));
                        }
                    }
                }
            }
        }
    }

    /// One transaction: read the chain tail, insert the records and the Merkle chunks they
    /// complete, commit. Returns the first seq. On error the transaction is rolled back and
    /// the in-memory tree is unchanged. BEGIN/COMMIT/ROLLBACK are cached statements (parsing
    /// them anew was a tenth of the writer's time under load).
    fn write(&mut self, group: &[Msg]) -> Result<Seq, AuditError> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        match self.write_in_transaction(group) {
            Ok(done) => {
                if let Err(e) = self.conn.prepare_cached("COMMIT")?.execute([]) {
                    self.rollback();
                    return Err(e.into());
                }
                Ok(self.committed(done)?)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let r = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
            if let Err(e) = r {
                tracing::error!(error = %e, "audit rollback failed");
            }
        }
    }

    fn write_in_transaction(&mut self, group: &[Msg]) -> Result<Written, AuditError> {
        let tx = &self.conn;
        let records = group.iter().flat_map(|msg| match msg {
            Msg::One { record, .. } => std::slice::from_ref(record),
            Msg::Many { records, .. } => records.as_slice(),
            _ => &[],
        });
        let mut merkle = self.merkle.clone();
        let mut last_hash = self.last_hash;
        let mut config_hash = None;
        let mut chunks = Vec::new();
        let first = schema::insert_group(
            tx,
            records,
            &mut self.buf,
            self.sealer.as_ref(),
            |_, r, hash| {
                let leaf = crate::merkle::leaf_hash(&hash);
                if let Some(h) = merkle.push_capture(leaf, CHUNK.trailing_zeros()) {
                    chunks.push((merkle.size() / CHUNK - 1, h));
                }
                if r.config_hash.is_some() {
                    config_hash = r.config_hash.clone();
                }
                last_hash = hash;
            },
        )?;
        if u64::try_from(first - 1).ok() != Some(self.merkle.size()) {
            // The table's tail is not where the tree ends: another writer appended. Refuse
            // rather than sign a tree that does not match the rows.
            return Err(AuditError::Corrupt {
                seq: first,
                reason: "records were appended outside this writer".into(),
            });
        }
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO merkle_chunks (chunk, hash) VALUES (?1, ?2)")?;
            for (k, h) in &chunks {
                stmt.execute(params![i64::try_from(*k).unwrap_or(i64::MAX), &h[..]])?;
            }
        }
        Ok(Written {
            first,
            merkle,
            last_hash,
            config_hash,
        })
    }

    /// Updates the in-memory state after a commit.
    fn committed(&mut self, done: Written) -> Result<Seq, AuditError> {
        let Written {
            first,
            merkle,
            last_hash,
            config_hash,
        } = done;
        // SQLite keeps writing to a file that was unlinked or replaced under it (the open
        // descriptor stays valid), and such records would vanish at the next open. Checked
        // after the commit so a removal before this point fails the group it hit.
        self.file.check()?;
        self.merkle = merkle;
        self.last_hash = last_hash;
        if config_hash.is_some() {
            self.config_hash = config_hash;
        }
        if self.opts.synchronous == Synchronous::Normal && self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        Ok(first)
    }
}

/// What one group's transaction produced, applied to the writer once it commits.
struct Written {
    first: Seq,
    merkle: CompactRange,
    last_hash: [u8; 32],
    config_hash: Option<String>,
}

/// Refuses to open a database that is older than its high-water mark.
fn check_high_water_mark(
    conn: &Connection,
    path: &Path,
    last: Option<&Checkpoint>,
) -> Result<(), AuditError> {
    let hwm = match checkpoint::read_hwm(path)? {
        None => return Ok(()),
        Some(Err(())) => return Err(AuditError::BadHighWaterMark),
        Some(Ok(h)) => h,
    };
    let db_size = last.map_or(0, |c| c.size);
    let present = schema::checkpoints(conn)?
        .iter()
        .any(|c| c.size == hwm.size && c.root == hwm.root && c.signature == hwm.signature);
    if !present || hwm.size > db_size {
        return Err(AuditError::RolledBack {
            hwm_size: hwm.size,
            db_size,
        });
    }
    Ok(())
}

/// UTC microseconds now.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn group_failed<T>(e: &Arc<AuditError>) -> Result<T, AuditError> {
    Err(AuditError::GroupFailed(Arc::clone(e)))
}

fn lost_result(lost: u64) -> Result<(), AuditError> {
    if lost == 0 {
        Ok(())
    } else {
        Err(AuditError::Lost { count: lost })
    }
}
