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
use crate::journal::{self, Journal, LockOutcome, Row};
use crate::merkle::{CompactRange, Hash, CHUNK};
use crate::schema::{self, DEFAULT_BUSY_TIMEOUT};
use crate::seal::Sealer;
use crate::{AuditError, Record, Seq};

/// Durability of acknowledged records. Either way a record is acknowledged only once its
/// group is written to the journal, which survives a crash of the gateway process at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// *Bounded* (the default): the writer fsyncs the journal at most
    /// [`StoreOptions::sync_window`] after a group is written; a record survives an OS crash
    /// or power loss once the window has passed.
    #[default]
    Normal,
    /// *Strict*: every group is fsynced (one `fdatasync` for all the sessions' records in it)
    /// before any record in it is acknowledged; survives power loss.
    Full,
}

/// How to open an [`AuditStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Durability of acknowledged records.
    pub synchronous: Synchronous,
    /// How long an ingestion waits for a lock held by another connection before it fails.
    pub busy_timeout: Duration,
    /// With [`Synchronous::Normal`]: the most time between a journal write and the fsync
    /// that makes it survive power loss.
    pub sync_window: Duration,
    /// A signed checkpoint after this many records (with a key store). At least 1.
    pub checkpoint_every: u64,
    /// A signed checkpoint when this much time has passed since the last one and records
    /// were added (with a key store).
    pub checkpoint_interval: Duration,
    /// The most time a journaled record waits before it is ingested into SQLite (and so
    /// becomes visible to readers).
    pub ingest_window: Duration,
    /// Ingest at once when this many journaled records wait. At least 1.
    pub ingest_batch: usize,
    /// Appends move to the journal's other segment once the active one holds this many
    /// bytes (and the other is empty); a retired segment is emptied as soon as its rows are
    /// in SQLite. Bounds the journal's size under sustained load to about twice this.
    pub journal_segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            sync_window: Duration::from_millis(10),
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            ingest_window: Duration::from_millis(5),
            ingest_batch: 2048,
            journal_segment_bytes: 4 << 20,
        }
    }
}

type Ack<T> = oneshot::Sender<Result<T, AuditError>>;

/// Requests to the background thread.
enum Msg {
    /// Rows are pending or the journal is dirty: plan ingestion (at once if `now`) and the
    /// fsync of the sync window.
    Wake {
        now: bool,
    },
    /// Strict mode: acknowledge once the journal is fsynced past the caller's records.
    Sync(Ack<()>),
    Flush(Ack<()>),
    Checkpoint(CheckpointKind, mpsc::Sender<Result<Checkpoint, AuditError>>),
    PolicyHash(Option<String>),
    Shutdown(mpsc::Sender<Result<(), AuditError>>),
}

/// State shared by every handle and the background thread.
struct Shared {
    /// False after a failed append or ingestion until an append succeeds again.
    healthy: AtomicBool,
    /// True once the background thread has exited.
    gone: AtomicBool,
    /// The append side, taken by each append for the few microseconds it needs.
    log: Mutex<Log>,
    /// Signalled after each ingestion (and when the writer ends): appends waiting for the
    /// pending queue to drain below [`MAX_PENDING`] check again.
    drained: tokio::sync::Notify,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // Nothing under the lock panics by design; if something did, the state is still
        // consistent at every await-free step, so carry on rather than wedge every session.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything an append needs: the chain and tree tails, the sealer and the journal.
struct Log {
    journal: Journal,
    /// Set by the background thread when the journal file was unlinked or replaced under the
    /// store: every append is refused from then on (records would not survive a crash).
    journal_gone: bool,
    /// A `Wake` was sent and the background thread has not ingested since: later appends
    /// need not wake it again (one wake-up per ingestion, not one per statement).
    wake_sent: bool,
    sealer: Option<Sealer>,
    /// Scratch buffer for the canonical encoding.
    buf: Vec<u8>,
    /// Scratch buffer for one append's frames.
    frames: Vec<u8>,
    /// Seq of the last journaled record.
    last_seq: Seq,
    /// Chain hash of the last journaled record.
    last_hash: [u8; 32],
    /// The tree over every journaled record.
    merkle: CompactRange,
    /// Journaled rows not yet ingested into SQLite, in seq order.
    pending: Vec<Row>,
    /// Merkle chunk hashes completed by pending rows.
    pending_chunks: Vec<(u64, Hash)>,
    /// The newest `config_hash` journaled.
    config_hash: Option<String>,
    /// Why the last ingestion failed; while set every append is refused (fail closed).
    ingest_error: Option<Arc<AuditError>>,
    /// `append_nowait` records that could not be journaled yet (disk full, ingestion
    /// failing): written, in order, ahead of the next append that succeeds.
    deferred: Vec<Record>,
    /// `append_nowait` records dropped (deferral queue full, or the store stopped) since
    /// the last flush reported them.
    lost: u64,
    /// The first journal write since the last fsync (bounded durability).
    unsynced_since: Option<Instant>,
    /// The background thread is stopping or gone: appends are refused.
    stopped: bool,
    ingest_batch: usize,
    strict: bool,
}

/// Most journaled rows waiting for ingestion before appends wait for the background thread
/// (backpressure: a burst faster than SQLite ingests cannot grow memory and the journal
/// without bound).
const MAX_PENDING: usize = 65_536;
/// Ingestion retries an append waits for while ingestion is failing (see
/// `AuditStore::journal_retrying`).
const RECOVERY_ATTEMPTS: usize = 3;
/// How long an append waits for one retry.
const RECOVERY_WAIT: Duration = Duration::from_secs(2);

/// Most `append_nowait` records kept while the journal cannot be written.
const MAX_DEFERRED: usize = 65_536;

/// What an append asks of the background thread.
enum Nudge {
    None,
    /// Plan ingestion and the fsync window.
    Wake,
    /// A full ingest batch waits: ingest now.
    Now,
}

impl Log {
    /// Seals, chains and encodes `records`, appends them to the journal with one write (the
    /// records are then safe from a crash of the process), and queues the rows for ingestion.
    /// Returns the first seq. On error nothing of it is kept (the journal is cut back).
    fn append(&mut self, records: &[Record]) -> Result<(Seq, Nudge), AuditError> {
        // Deferred records go first, in the same write; they are dropped from memory only
        // once that write succeeded.
        let deferred = std::mem::take(&mut self.deferred);
        let result = self.append_records(&deferred, records);
        match result {
            Ok((first, nudge)) => {
                let skipped = Seq::try_from(deferred.len()).unwrap_or(0);
                Ok((first + skipped, nudge))
            }
            Err(e) => {
                self.deferred = deferred;
                Err(e)
            }
        }
    }

    /// An unacknowledged record (a statement's outcome, a session's end): kept in memory
    /// and journaled with the next append, or by the background thread within the ingest
    /// window, whichever comes first. That halves the journal writes of a statement (its
    /// write-ahead record carries the previous outcome along) at no cost in guarantees:
    /// nobody waits for such a record. Bounded: beyond [`MAX_DEFERRED`] records waiting (the
    /// journal failing for long) they are dropped and counted as lost.
    fn defer(&mut self, record: Record) -> Result<Nudge, AuditError> {
        if self.stopped {
            self.lost += 1;
            return Err(AuditError::WriterGone);
        }
        if self.deferred.len() >= MAX_DEFERRED {
            self.lost += 1;
            return Err(AuditError::Unhealthy);
        }
        self.deferred.push(record);
        let nudge = if self.deferred.len() == self.ingest_batch {
            Nudge::Now
        } else if !self.wake_sent {
            Nudge::Wake
        } else {
            Nudge::None
        };
        Ok(self.sent(nudge))
    }

    /// Notes that `nudge` is about to be sent.
    fn sent(&mut self, nudge: Nudge) -> Nudge {
        if !matches!(nudge, Nudge::None) {
            self.wake_sent = true;
        }
        nudge
    }

    /// Journals the deferred records now (the background thread, before ingesting).
    fn write_deferred(&mut self) -> Result<(), AuditError> {
        if self.deferred.is_empty() || self.stopped {
            return Ok(());
        }
        self.append(&[]).map(|_| ())
    }

    /// Journals `deferred` then `records` with one write; returns the first seq of it all.
    fn append_records(
        &mut self,
        deferred: &[Record],
        records: &[Record],
    ) -> Result<(Seq, Nudge), AuditError> {
        if self.stopped {
            return Err(AuditError::WriterGone);
        }
        if let Some(e) = &self.ingest_error {
            return group_failed(e);
        }
        if self.journal_gone {
            return Err(AuditError::GroupFailed(Arc::new(AuditError::FileReplaced)));
        }
        let first = self.last_seq + 1;
        let mut seq = self.last_seq;
        let mut prev = self.last_hash;
        let mut merkle = self.merkle.clone();
        let mut chunks = Vec::new();
        let mut config_hash = None;
        let pending_before = self.pending.len();
        self.frames.clear();
        let mut built = Ok(());
        for r in deferred.iter().chain(records) {
            seq += 1;
            let row = match schema::seal_row(&prev, seq, r, &mut self.buf, self.sealer.as_mut())
                .and_then(|row| journal::encode_frame(&row, &mut self.frames).map(|()| row))
            {
                Ok(row) => row,
                Err(e) => {
                    built = Err(e);
                    break;
                }
            };
            let leaf = crate::merkle::leaf_hash(&row.hash);
            if let Some(h) = merkle.push_capture(leaf, CHUNK.trailing_zeros()) {
                chunks.push((merkle.size() / CHUNK - 1, h));
            }
            if r.config_hash.is_some() {
                config_hash = r.config_hash.clone();
            }
            prev = row.hash;
            self.pending.push(row);
        }
        // A journal unlinked or replaced under the store would take acknowledged records
        // with it at a crash: the background thread checks its identity at every ingestion
        // (a `stat(2)` here would cost every statement) and sets `journal_gone`.
        let written = built.and_then(|()| self.journal.append(&self.frames, seq));
        if let Err(e) = written {
            self.pending.truncate(pending_before);
            return Err(AuditError::GroupFailed(Arc::new(e)));
        }
        self.last_seq = seq;
        self.last_hash = prev;
        self.merkle = merkle;
        self.pending_chunks.extend(chunks);
        if config_hash.is_some() {
            self.config_hash = config_hash;
        }
        let first_unsynced = !self.strict && self.unsynced_since.is_none();
        if first_unsynced {
            self.unsynced_since = Some(Instant::now());
        }
        let nudge = if pending_before < self.ingest_batch && self.pending.len() >= self.ingest_batch
        {
            Nudge::Now
        } else if !self.wake_sent || first_unsynced {
            Nudge::Wake
        } else {
            Nudge::None
        };
        Ok((first, self.sent(nudge)))
    }
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    strict: bool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("healthy", &self.healthy)
            .field("gone", &self.gone)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Asks the writer to ingest everything and stop, waits for its answer, joins it.
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
    /// The last handle going away ingests everything and joins the writer (blocking).
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

/// Handle to the write-ahead audit store. Cheap to clone; all clones share one journal and
/// one background thread.
///
/// Shutdown: [`AuditStore::shutdown`] stops the writer for every clone after ingesting
/// everything journaled before it. Dropping the last clone does the same (it blocks the
/// dropping thread for the final commit); dropping other clones does nothing.
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
        if opts.ingest_batch == 0 {
            return Err(AuditError::InvalidOptions(
                "ingest_batch must be at least 1",
            ));
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
        let mut conn = open_rw(path, opts.busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(AuditError::NotWal { mode });
        }
        // The journal carries durability; SQLite's WAL is fsynced before the journal is
        // emptied, so `NORMAL` loses nothing in either mode.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Room for a whole ingestion batch (up to `ingest_batch` rows of ~1 KiB) in the page
        // cache: with the default 2 MiB, a large batch spills dirty pages to the WAL mid-
        // transaction and writes them again at commit.
        conn.pragma_update(None, "cache_size", -16_384)?;
        schema::ensure_schema(&mut conn)?;
        let mut journal = match Journal::lock(path)? {
            LockOutcome::Locked(j) => j,
            LockOutcome::Busy => return Err(AuditError::Locked),
        };
        let replayed = replay_journal(&mut conn, &mut journal, path)?;
        if replayed > 0 {
            tracing::info!(records = replayed, "audit journal replayed into the store");
        }
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

        let ingested = merkle.size();
        let strict = opts.synchronous == Synchronous::Full;
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            gone: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
            log: Mutex::new(Log {
                journal_gone: false,
                wake_sent: false,
                sealer,
                buf: Vec::new(),
                frames: Vec::new(),
                last_seq,
                last_hash,
                merkle,
                pending: Vec::new(),
                pending_chunks: Vec::new(),
                config_hash,
                ingest_error: None,
                deferred: Vec::new(),
                lost: 0,
                unsynced_since: None,
                stopped: false,
                // Ingestion is what lets a checkpoint happen: never wait for more records
                // than a checkpoint should cover.
                ingest_batch: opts
                    .ingest_batch
                    .min(usize::try_from(opts.checkpoint_every).unwrap_or(usize::MAX)),
                strict,
                journal,
            }),
        });
        let journal_paths = journal::paths_for(path);
        let segment_files = [
            OpenOptions::new().write(true).open(&journal_paths[0])?,
            OpenOptions::new().write(true).open(&journal_paths[1])?,
        ];
        let journal_files = [
            FileIdentity::of(&journal_paths[0])?,
            FileIdentity::of(&journal_paths[1])?,
        ];
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            rx,
            shared: Arc::clone(&shared),
            segment_files,
            synced: [0, 0],
            ingested_seq: last_seq,
            file: FileIdentity::of(path)?,
            journal_files,
            spare: Vec::new(),
            path: path.to_owned(),
            keys,
            covered,
            ingested,
            last_checkpoint_at: Instant::now(),
            policy_hash,
            ingest_at: None,
            sync_at: None,
            opts,
        };
        let thread = std::thread::Builder::new()
            .name("gatehouse-audit-writer".into())
            .spawn(move || writer.run())?;
        Ok(AuditStore {
            inner: Arc::new(Inner {
                tx,
                shared,
                strict,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Writes a signed checkpoint of everything journaled so far (after ingesting it) and
    /// updates the high-water mark. Blocks the calling thread for the commit and the
    /// signature (call from `spawn_blocking` in async code).
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

    /// Writes `record` to the journal on the calling thread and resolves with its sequence
    /// number: at once in bounded mode (the record survives a crash of the process), after
    /// the journal's group fsync in strict mode. Never blocks longer than one `write(2)`
    /// (plus, in strict mode, awaiting the fsync).
    pub async fn append(&self, record: Record) -> Result<Seq, AuditError> {
        self.backpressure().await;
        let seq = self.journal_retrying(std::slice::from_ref(&record)).await?;
        self.durable().await?;
        Ok(seq)
    }

    /// Writes several records with one journal write and one acknowledgement. Sequence
    /// numbers are consecutive, in input order. Borrowed, so a caller that audits every read
    /// (the relay) can clear and reuse its vector instead of allocating one per statement.
    pub async fn append_batch(&self, records: &[Record]) -> Result<Vec<Seq>, AuditError> {
        self.backpressure().await;
        let first = self.journal_retrying(records).await?;
        self.durable().await?;
        let n = Seq::try_from(records.len()).unwrap_or(Seq::MAX);
        Ok((first..first + n).collect())
    }

    /// Writes `record` to the journal without awaiting its fsync (strict mode) and without
    /// an answer. When the journal cannot be written (disk full, ingestion failing), the
    /// record is kept in memory (up to a bound) and written ahead of the next append that
    /// succeeds; the error is still returned. Records dropped (bound reached, store stopped)
    /// are reported by the next [`flush`](Self::flush) as [`AuditError::Lost`].
    pub fn append_nowait(&self, record: Record) -> Result<(), AuditError> {
        let result = self.inner.shared.log().defer(record);
        match result {
            Ok(nudge) => {
                self.nudge(nudge);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Resolves once everything journaled before it is ingested into SQLite (visible to
    /// readers). Fails with [`AuditError::Lost`] if `append_nowait` records were refused
    /// since the last report, or with the ingestion's error.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, answer) = oneshot::channel();
        self.send(Msg::Flush(ack))?;
        answer.await.unwrap_or(Err(AuditError::WriterGone))
    }

    /// True while the writer runs and the last append and ingestion succeeded.
    pub fn is_healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Acquire)
            && !self.inner.shared.gone.load(Ordering::Acquire)
    }

    /// Ingests everything journaled before this call, stops the writer thread and joins it.
    /// Blocks the calling thread (call `flush().await` first from async code to keep the
    /// blocking part short). Other clones get [`AuditError::WriterGone`] afterwards.
    /// Returns what a final `flush` would have returned.
    pub fn shutdown(self) -> Result<(), AuditError> {
        self.inner.stop()
    }

    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        self.inner.tx.send(msg).map_err(|_| AuditError::WriterGone)
    }

    /// [`AuditStore::journal`]; when it is refused because ingestion is failing, asks the
    /// writer to retry ingestion at once and tries again after that attempt (so a store whose
    /// disk has room again accepts the next statement instead of the one after the retry).
    ///
    /// Up to [`RECOVERY_ATTEMPTS`] retries: an ingestion attempt that was already running
    /// when the caller asked (and fails, having started before the disk had room) wakes the
    /// caller too early; the next attempt is the one that can succeed.
    async fn journal_retrying(&self, records: &[Record]) -> Result<Seq, AuditError> {
        let mut result = self.journal(records);
        let shared = &self.inner.shared;
        for _ in 0..RECOVERY_ATTEMPTS {
            if result.is_ok() {
                return result;
            }
            let notified = shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let failing = {
                let log = shared.log();
                log.ingest_error.is_some() && !log.stopped
            };
            if !failing {
                return result;
            }
            if self.inner.tx.send(Msg::Wake { now: true }).is_err() {
                return result;
            }
            if tokio::time::timeout(RECOVERY_WAIT, notified).await.is_err() {
                return result;
            }
            result = self.journal(records);
        }
        result
    }

    /// One journal append on the calling thread.
    fn journal(&self, records: &[Record]) -> Result<Seq, AuditError> {
        let result = self.inner.shared.log().append(records);
        self.after_append(result)
    }

    /// Health bookkeeping and the nudge to the background thread after an append.
    fn after_append(&self, result: Result<(Seq, Nudge), AuditError>) -> Result<Seq, AuditError> {
        let shared = &self.inner.shared;
        match result {
            Ok((first, nudge)) => {
                if !shared.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("audit store recovered: records journaled again");
                }
                self.nudge(nudge);
                Ok(first)
            }
            Err(e) => {
                if shared.healthy.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, "audit append failed; statements refused");
                }
                Err(e)
            }
        }
    }

    fn nudge(&self, nudge: Nudge) {
        let now = match nudge {
            Nudge::None => return,
            Nudge::Wake => false,
            Nudge::Now => true,
        };
        // A gone writer shows at the next append (the log is stopped).
        let _ = self.inner.tx.send(Msg::Wake { now });
    }

    /// Waits while [`MAX_PENDING`] rows wait for ingestion (never in the steady state: the
    /// background thread ingests far faster than sessions produce).
    async fn backpressure(&self) {
        let shared = &self.inner.shared;
        loop {
            let notified = shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let log = shared.log();
                if log.pending.len() < MAX_PENDING || log.stopped {
                    return;
                }
            }
            let _ = self.inner.tx.send(Msg::Wake { now: true });
            notified.await;
        }
    }

    /// In strict mode, awaits the group fsync that covers everything journaled so far.
    async fn durable(&self) -> Result<(), AuditError> {
        if !self.inner.strict {
            return Ok(());
        }
        let (ack, answer) = oneshot::channel();
        self.send(Msg::Sync(ack))?;
        answer.await.unwrap_or(Err(AuditError::WriterGone))
    }
}

/// The background thread: ingests journaled rows into SQLite in batches, fsyncs the journal
/// (bounded: within the sync window; strict: one fsync per group of waiting appends), writes
/// checkpoints, empties the journal once its rows are durable in SQLite.
struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    /// Second descriptors of the journal's segments, for fsync and for emptying a retired
    /// segment without holding the log.
    segment_files: [std::fs::File; 2],
    /// Each segment's length at its last fsync (what a new fsync would have to cover).
    synced: [u64; 2],
    /// The highest seq ingested into SQLite.
    ingested_seq: Seq,
    /// Identity of the database file at open.
    file: FileIdentity,
    /// Identity of the journal's segment files at open, checked at every ingestion.
    journal_files: [FileIdentity; 2],
    /// The queue vector of the previous ingestion, emptied, to be swapped in next time.
    spare: Vec<Row>,
    path: PathBuf,
    keys: Option<Arc<dyn KeyStore>>,
    /// Records covered by the newest checkpoint.
    covered: u64,
    /// Records ingested (the database's tree size).
    ingested: u64,
    last_checkpoint_at: Instant,
    policy_hash: Option<String>,
    /// When pending rows must be ingested.
    ingest_at: Option<Instant>,
    /// When the journal must be fsynced (bounded).
    sync_at: Option<Instant>,
    opts: StoreOptions,
}

/// What one ingestion moved: the tree it makes whole in the database.
struct Snapshot {
    size: u64,
    root: Hash,
    last_hash: [u8; 32],
    config_hash: Option<String>,
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
        self.0.log().stopped = true;
        self.0.gone.store(true, Ordering::Release);
        self.0.healthy.store(false, Ordering::Release);
        self.0.drained.notify_waiters();
    }
}

impl Writer {
    fn run(mut self) {
        let _gone = GoneOnExit(Arc::clone(&self.shared));
        loop {
            let msg = match self.next_deadline() {
                None => match self.rx.recv() {
                    Ok(m) => Some(m),
                    // Fails only when every handle is gone (they send `Shutdown` first).
                    Err(_) => break,
                },
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(wait) {
                        Ok(m) => Some(m),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut batch: Vec<Msg> = msg.into_iter().collect();
            while let Ok(m) = self.rx.try_recv() {
                batch.push(m);
            }
            if self.handle(batch) {
                break;
            }
            self.tick();
        }
        // Messages still queued are dropped with their acknowledgement senders, so their
        // callers see `WriterGone` instead of waiting forever.
    }

    /// Handles a batch of messages; true when the writer must stop.
    fn handle(&mut self, batch: Vec<Msg>) -> bool {
        let mut syncs = Vec::new();
        let mut stop = false;
        for msg in batch {
            match msg {
                Msg::Wake { now } => {
                    let now_i = Instant::now();
                    let at = if now {
                        now_i
                    } else {
                        now_i + self.opts.ingest_window
                    };
                    self.ingest_at = Some(self.ingest_at.map_or(at, |a| a.min(at)));
                    let since = self.shared.log().unsynced_since;
                    if let Some(t) = since {
                        let at = t + self.opts.sync_window;
                        self.sync_at = Some(self.sync_at.map_or(at, |a| a.min(at)));
                    }
                }
                Msg::Sync(ack) => syncs.push(ack),
                Msg::Flush(ack) => {
                    let r = self.ingest().map(|_| ());
                    let lost = std::mem::take(&mut self.shared.log().lost);
                    let _ = ack.send(r.and_then(|()| lost_result(lost)));
                }
                Msg::Checkpoint(kind, ack) => {
                    let _ = ack.send(self.checkpoint(kind));
                }
                Msg::PolicyHash(h) => self.policy_hash = h,
                Msg::Shutdown(ack) => {
                    let _ = ack.send(self.shut_down());
                    stop = true;
                    break;
                }
            }
        }
        if !syncs.is_empty() {
            // One fsync for every append that waits: group commit across sessions.
            let r = self.sync_journal();
            for ack in syncs {
                let _ = ack.send(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(AuditError::Io(std::io::Error::new(e.kind(), e.to_string()))),
                });
            }
        }
        stop
    }

    /// When the writer must wake up without a message: ingestion, the sync window, or the
    /// checkpoint interval if records are not yet covered.
    fn next_deadline(&self) -> Option<Instant> {
        let cp = (self.keys.is_some() && self.ingested > self.covered)
            .then(|| self.last_checkpoint_at + self.opts.checkpoint_interval);
        [self.ingest_at, self.sync_at, cp]
            .into_iter()
            .flatten()
            .min()
    }

    /// Periodic work that is due: fsync of the journal, ingestion, an interval checkpoint.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.sync_at.is_some_and(|t| now >= t) {
            self.sync_at = None;
            let since = self.shared.log().unsynced_since.take();
            if since.is_some() {
                if let Err(e) = self.sync_journal() {
                    tracing::error!(error = %e, "audit journal fsync failed");
                    let mut log = self.shared.log();
                    log.unsynced_since = since.min(log.unsynced_since).or(since);
                    self.sync_at = Some(now + self.opts.sync_window);
                }
            }
        }
        if self.ingest_at.is_some_and(|t| now >= t) {
            self.ingest_at = None;
            if self.ingest().is_err() {
                // Retried; the rows stay safe in the journal meanwhile.
                self.ingest_at = Some(now + self.opts.ingest_window);
            }
        }
        let uncovered = self.ingested.saturating_sub(self.covered);
        if self.keys.is_some()
            && uncovered > 0
            && (uncovered >= self.opts.checkpoint_every
                || now >= self.last_checkpoint_at + self.opts.checkpoint_interval)
        {
            if let Err(e) = self.checkpoint(CheckpointKind::Interval) {
                // Retried at the next interval; verification shows the uncovered records.
                self.last_checkpoint_at = now;
                tracing::error!(error = %e, "audit checkpoint failed");
            }
        }
    }

    /// Moves every pending journaled row into SQLite in one transaction (with the Merkle
    /// chunks they complete) and returns the tree that the database then holds. Once the
    /// journal has grown past [`JOURNAL_RESET_BYTES`] with nothing left pending, the WAL is
    /// fsynced and the journal emptied. On failure the rows go back to the front of the
    /// queue (they are still in the journal), and appends are refused until an ingestion
    /// succeeds.
    fn ingest(&mut self) -> Result<Snapshot, AuditError> {
        let (rows, chunks, snapshot) = {
            let mut log = self.shared.log();
            if let Err(e) = log.write_deferred() {
                // They stay deferred; the store reports unhealthy through the next append.
                tracing::warn!(error = %e, "deferred audit records not journaled yet");
            }
            // Everything pending is taken now: the next append must wake this thread again.
            log.wake_sent = false;
            // Rotating here, with the rows taken, leaves the retired segment holding only
            // rows of this ingestion: it can be emptied as soon as they are in SQLite.
            log.journal.rotate(self.opts.journal_segment_bytes);
            let snapshot = Snapshot {
                size: log.merkle.size(),
                root: log.merkle.root(),
                last_hash: log.last_hash,
                config_hash: log.config_hash.clone(),
            };
            // The emptied vector of the last ingestion takes the pending one's place, so the
            // queue keeps its capacity instead of regrowing (and moving its rows) every time.
            let spare = std::mem::take(&mut self.spare);
            (
                std::mem::replace(&mut log.pending, spare),
                std::mem::take(&mut log.pending_chunks),
                snapshot,
            )
        };
        if rows.is_empty() {
            return Ok(snapshot);
        }
        self.check_journal();
        let inserted = self.insert(&rows, &chunks);
        self.shared.drained.notify_waiters();
        match inserted {
            Ok(()) => {
                let mut rows = rows;
                if let Some(last) = rows.last() {
                    self.ingested_seq = last.seq;
                }
                rows.clear();
                self.spare = rows;
                self.ingested = snapshot.size;
                let mut log = self.shared.log();
                if log.ingest_error.take().is_some() {
                    self.shared.healthy.store(true, Ordering::Release);
                    tracing::info!("audit store recovered: journal ingested");
                }
                let retired = log.journal.retired();
                drop(log);
                if let Some((index, last)) = retired {
                    if last.is_some_and(|l| l <= self.ingested_seq) {
                        self.empty_segment(index);
                    }
                }
                Ok(snapshot)
            }
            Err(e) => {
                let e = Arc::new(e);
                let mut log = self.shared.log();
                if log.ingest_error.is_none() {
                    tracing::error!(
                        error = %e,
                        pending = rows.len() + log.pending.len(),
                        "audit ingestion into SQLite failed; new records refused until it \
                         succeeds (journaled records are kept)"
                    );
                }
                let mut back = rows;
                back.append(&mut log.pending);
                log.pending = back;
                let mut back_chunks = chunks;
                back_chunks.append(&mut log.pending_chunks);
                log.pending_chunks = back_chunks;
                log.ingest_error = Some(Arc::clone(&e));
                self.shared.healthy.store(false, Ordering::Release);
                group_failed(&e)
            }
        }
    }

    /// Refuses every later append if the journal was unlinked or replaced (by hand, or with
    /// its directory): what is journaled from then on would not survive a crash. Records
    /// acknowledged since then are in memory and still ingested.
    fn check_journal(&self) {
        let checked = self.journal_files[0]
            .check()
            .and_then(|()| self.journal_files[1].check());
        if let Err(e) = checked {
            let mut log = self.shared.log();
            if !log.journal_gone {
                log.journal_gone = true;
                self.shared.healthy.store(false, Ordering::Release);
                tracing::error!(error = %e, "audit journal removed or replaced; statements refused");
            }
        }
    }

    fn insert(&mut self, rows: &[Row], chunks: &[(u64, Hash)]) -> Result<(), AuditError> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let result = (|| {
            let (tail, _) = schema::chain_tail(&self.conn)?;
            let first = rows.first().map_or(tail + 1, |r| r.seq);
            if tail + 1 != first {
                // The table's tail is not where the journal continues: another writer
                // appended. Refuse rather than sign a tree that does not match the rows.
                return Err(AuditError::Corrupt {
                    seq: first,
                    reason: "records were appended outside this writer".into(),
                });
            }
            schema::insert_rows(&self.conn, rows)?;
            let mut stmt = self
                .conn
                .prepare_cached("INSERT INTO merkle_chunks (chunk, hash) VALUES (?1, ?2)")?;
            for (k, h) in chunks {
                stmt.execute(params![i64::try_from(*k).unwrap_or(i64::MAX), &h[..]])?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if let Err(e) = self.conn.prepare_cached("COMMIT")?.execute([]) {
                    self.rollback();
                    return Err(e.into());
                }
            }
            Err(e) => {
                self.rollback();
                return Err(e);
            }
        }
        // SQLite keeps writing to a file that was unlinked or replaced under it (the open
        // descriptor stays valid), and such rows would vanish at the next open.
        self.file.check()
    }

    /// fsync of every journal segment written since its last fsync.
    fn sync_journal(&mut self) -> std::io::Result<()> {
        let lens = self.shared.log().journal.lens();
        for (i, len) in lens.into_iter().enumerate() {
            if len != self.synced[i] {
                self.segment_files[i].sync_data()?;
                self.synced[i] = len;
            }
        }
        Ok(())
    }

    /// Empties the retired segment `index`, every row of which is in SQLite: fsync the WAL
    /// first (so a power loss cannot take rows the journal no longer holds), then truncate
    /// through this thread's own descriptor. Appends go to the other segment meanwhile, so
    /// nothing waits for it.
    fn empty_segment(&mut self, index: usize) {
        if let Err(e) = self.sync_wal() {
            tracing::error!(error = %e, "audit WAL fsync failed; journal segment kept");
            return;
        }
        let file = &self.segment_files[index];
        if let Err(e) = file.set_len(0).and_then(|()| file.sync_data()) {
            tracing::error!(error = %e, "audit journal segment could not be emptied");
            return;
        }
        self.synced[index] = 0;
        self.shared.log().journal.emptied(index);
    }

    /// Empties the journal once everything in it is in SQLite: fsync the WAL first (so a
    /// power loss cannot take rows the journal no longer holds), then truncate.
    fn reset_journal(&mut self) {
        if let Err(e) = self.sync_wal() {
            tracing::error!(error = %e, "audit WAL fsync failed; journal kept");
            return;
        }
        let mut log = self.shared.log();
        // Appends since the check above are not in SQLite yet: keep the journal then.
        if log.pending.is_empty() {
            if let Err(e) = log.journal.reset() {
                tracing::error!(error = %e, "audit journal could not be emptied");
            } else {
                log.unsynced_since = None;
                self.synced = [0, 0];
            }
        }
    }

    /// Makes every committed WAL frame durable: fsync of the `-wal` file (SQLite with
    /// `synchronous=NORMAL` fsyncs it only before checkpoints).
    fn sync_wal(&self) -> Result<(), AuditError> {
        fsync_wal(&self.path)
    }

    /// Ingests everything, then signs and stores a checkpoint of it and updates the
    /// high-water mark.
    fn checkpoint(&mut self, kind: CheckpointKind) -> Result<Checkpoint, AuditError> {
        // What a checkpoint signs must be in the database it is stored in.
        let snap = self.ingest()?;
        let keys = self.keys.as_ref().ok_or(AuditError::NoSigningKey)?;
        let mut cp = Checkpoint {
            id: 0,
            size: snap.size,
            root: snap.root,
            time_us: now_us(),
            last_hash: snap.last_hash,
            config_hash: snap.config_hash,
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

    /// Refuses further appends, ingests everything, writes the shutdown checkpoint, makes
    /// SQLite durable and empties the journal.
    fn shut_down(&mut self) -> Result<(), AuditError> {
        // Journal and ingest what is deferred or pending, then refuse appends and take in
        // whatever raced in between.
        let first = self.ingest().map(|_| ());
        self.shared.log().stopped = true;
        let mut result = first.and(self.ingest().map(|_| ()));
        let lost = std::mem::take(&mut self.shared.log().lost);
        if result.is_ok() {
            result = lost_result(lost);
        }
        if self.keys.is_some() && self.ingested > self.covered {
            if let Err(e) = self.checkpoint(CheckpointKind::Shutdown) {
                tracing::error!(error = %e, "audit shutdown checkpoint failed");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        let pending = !self.shared.log().pending.is_empty();
        if pending {
            // Kept in the journal, replayed at the next open.
            if let Err(e) = self.sync_journal() {
                tracing::error!(error = %e, "audit journal fsync at shutdown failed");
            }
        } else {
            self.reset_journal();
        }
        result
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
}

/// fsync of the `-wal` file of the database at `path` (SQLite with `synchronous=NORMAL`
/// fsyncs it only before its own checkpoints); nothing to do when there is none.
fn fsync_wal(path: &Path) -> Result<(), AuditError> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::File::open(PathBuf::from(wal)) {
        Ok(f) => Ok(f.sync_data()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A read-write connection to the database at `path` with a busy timeout.
fn open_rw(path: &Path, busy_timeout: Duration) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

/// Replays the journal's rows that the database lacks (after a crash), makes them durable in
/// SQLite and empties the journal. Returns how many rows were inserted.
fn replay_journal(
    conn: &mut Connection,
    journal: &mut Journal,
    path: &Path,
) -> Result<usize, AuditError> {
    let rows = journal.read_all()?;
    if rows.is_empty() {
        if journal.len() > 0 {
            journal.reset()?;
        }
        return Ok(0);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let n = schema::replay_rows(&tx, &rows)?;
    tx.commit()?;
    fsync_wal(path)?;
    journal.reset()?;
    Ok(n)
}

/// Makes every acknowledged record visible to readers of the store at `path`: ingests what a
/// crashed writer left in the journal when no writer runs, or, while a gateway runs, waits
/// (up to a few seconds) until it has ingested what its journal holds now. Readers call
/// this before reading. Needs no keys: journal rows are sealed already. Returns how many
/// records were moved into the database.
pub fn recover(path: &Path) -> Result<usize, AuditError> {
    migrate_if_old(path)?;
    if !journal::any_unlocked(path)? {
        return Ok(0);
    }
    let mut journal = match Journal::lock(path)? {
        LockOutcome::Locked(j) => j,
        LockOutcome::Busy => {
            wait_for_ingestion(path)?;
            return Ok(0);
        }
    };
    let mut conn = open_rw(path, DEFAULT_BUSY_TIMEOUT)?;
    schema::ensure_schema(&mut conn)?;
    let n = replay_journal(&mut conn, &mut journal, path)?;
    // Fill in the Merkle chunks the replayed rows complete.
    schema::rebuild_merkle(&mut conn)?;
    Ok(n)
}

/// Brings a store written by an older version to the current schema (new columns only; rows
/// and hashes untouched), so readers of the new version can read it before a gateway of the
/// new version has opened it. A store a running gateway holds is current already.
fn migrate_if_old(path: &Path) -> Result<(), AuditError> {
    let version: i64 = {
        let ro = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        ro.query_row("PRAGMA user_version", [], |r| r.get(0))?
    };
    if version >= schema::SCHEMA_VERSION {
        return Ok(());
    }
    let mut conn = open_rw(path, DEFAULT_BUSY_TIMEOUT)?;
    schema::ensure_schema(&mut conn)?;
    tracing::info!(from = version, "audit store schema upgraded for reading");
    Ok(())
}

/// A gateway runs and owns the journal: wait (briefly) until it has ingested what the
/// journal holds now, so that a reader started after a statement sees that statement's
/// record. Gives up quietly after [`INGEST_WAIT`] (a stalled writer is the writer's problem).
fn wait_for_ingestion(path: &Path) -> Result<(), AuditError> {
    let Some(want) = journal::last_seq_unlocked(path)? else {
        return Ok(());
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(DEFAULT_BUSY_TIMEOUT)?;
    let deadline = Instant::now() + INGEST_WAIT;
    loop {
        let (tail, _) = schema::chain_tail(&conn)?;
        if tail >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                stored = tail,
                journaled = want,
                "the running gateway has not ingested its audit journal yet"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How long a reader waits for a running writer to ingest its journal.
const INGEST_WAIT: Duration = Duration::from_secs(5);

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
