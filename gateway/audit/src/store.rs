//! The write side: a cheap handle in front of one writer thread that group-commits.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::oneshot;

use crate::schema::{self, DEFAULT_BUSY_TIMEOUT};
use crate::{AuditError, Record, Seq};

/// SQLite `synchronous` setting for the store (the journal is always WAL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=NORMAL`: a committed record survives a crash of the gateway process; an OS
    /// crash or power loss can lose the last commits (never corrupts the file).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it is acknowledged; survives power loss.
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Normal,
            max_batch: 4096,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
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
    Shutdown(mpsc::Sender<Result<(), AuditError>>),
}

impl Msg {
    fn record_count(&self) -> usize {
        match self {
            Msg::One { .. } => 1,
            Msg::Many { records, .. } => records.len(),
            Msg::Flush(_) | Msg::Shutdown(_) => 0,
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
    /// Opens (creating if needed) the store at `path`: the directory (0700) and file (0600)
    /// are created, WAL mode and `synchronous` are set, the schema is created, and the writer
    /// thread is started. Sequence numbers and the hash chain continue from the last row.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<AuditStore, AuditError> {
        if opts.max_batch == 0 {
            return Err(AuditError::InvalidOptions("max_batch must be at least 1"));
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
        let (last_seq, _) = schema::chain_tail(&conn)?;
        tracing::info!(last_seq, "audit store opened");

        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            gone: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            rx,
            shared: Arc::clone(&shared),
            max_batch: opts.max_batch,
            lost: 0,
            buf: Vec::new(),
            file: FileIdentity::of(path)?,
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
        // `recv` fails only when every handle is gone (they send `Shutdown` first).
        while let Ok(first) = self.rx.recv() {
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
            self.commit_group(&mut group, records);
            if stop {
                break;
            }
        }
        // Messages still queued are dropped with their acknowledgement senders, so their
        // callers see `WriterGone` instead of waiting forever.
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
                        Msg::Shutdown(ack) => {
                            let _ = ack.send(lost_result(lost));
                        }
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
                        Msg::Shutdown(ack) => {
                            let _ = ack.send(group_failed(&e));
                        }
                    }
                }
            }
        }
    }

    /// One transaction: read the chain tail, insert, commit. Returns the first seq. On error
    /// the transaction is rolled back (dropping an uncommitted `Transaction` rolls back).
    fn write(&mut self, group: &[Msg]) -> Result<Seq, AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let records = group.iter().flat_map(|msg| match msg {
            Msg::One { record, .. } => std::slice::from_ref(record),
            Msg::Many { records, .. } => records.as_slice(),
            Msg::Flush(_) | Msg::Shutdown(_) => &[],
        });
        let first = schema::insert_group(&tx, records, &mut self.buf)?;
        tx.commit()?;
        // SQLite keeps writing to a file that was unlinked or replaced under it (the open
        // descriptor stays valid), and such records would vanish at the next open. Checked
        // after the commit so a removal before this point fails the group it hit.
        self.file.check()?;
        Ok(first)
    }
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
