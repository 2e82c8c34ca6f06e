//! Audit records written by CLI commands (`connection add/update/set-credential/remove`).
//!
//! The running gateway is the audit store's only writer (it holds the journal lock), so a CLI
//! process cannot append while one runs. A command therefore drops its record, as JSON, into
//! `data_dir/audit-outbox/` (0700 directory, 0600 files, written under a temporary name and
//! renamed, so a reader never sees half a file) and then either
//! - appends it itself, when no gateway holds the store ([`deliver`]), or
//! - leaves it to the running gateway, which drains the outbox at start and every second
//!   ([`drain_into`], called by `serve`).
//!
//! A file is removed only after its record was accepted by the store. Records carry the
//! time the command ran, not the time they were drained.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gatehouse_audit::{AuditError, AuditStore, Record};

use crate::config::Config;

/// Longest outbox file read back (a record is a few hundred bytes).
const MAX_FILE: u64 = 64 * 1024;

pub fn dir(config: &Config) -> PathBuf {
    config.gateway.data_dir.join("audit-outbox")
}

/// Writes `record` into the outbox.
pub fn enqueue(config: &Config, record: &Record) -> anyhow::Result<PathBuf> {
    let dir = dir(config);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut rand = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rand)
        .map_err(|_| anyhow::anyhow!("no randomness for an outbox file name"))?;
    let name = format!("{:020}-{}.json", record.time_us.max(0), hex::encode(rand));
    let tmp = dir.join(format!(".tmp-{name}"));
    let json = serde_json::to_vec(record).context("encoding the audit record")?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(path)
}

/// The outbox files, oldest first (names start with the zero-padded time).
fn pending(config: &Config) -> anyhow::Result<Vec<PathBuf>> {
    let dir = dir(config);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let visible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.') && n.ends_with(".json"));
        if visible {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<Record> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE), &mut buf)?;
    serde_json::from_slice(&buf).with_context(|| format!("outbox file {}", path.display()))
}

/// Appends every outbox record to `store` (the gateway's own), removing each file once the
/// store accepted it. A file that cannot be parsed is left in place and reported. Returns the
/// records appended.
pub async fn drain_into(config: &Config, store: &AuditStore) -> anyhow::Result<Vec<Record>> {
    let mut done = Vec::new();
    for path in pending(config)? {
        let record = match read(&path) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "unreadable audit outbox file left in place");
                continue;
            }
        };
        store.append(record.clone()).await?;
        store.flush().await?;
        std::fs::remove_file(&path)?;
        done.push(record);
    }
    Ok(done)
}

/// How [`deliver`] got the record into the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Appended by this process (no gateway was running).
    Appended,
    /// Left for the running gateway, which records it within a second.
    Queued,
}

/// Enqueues `record` and, when no gateway holds the audit store, appends the whole outbox
/// now; otherwise the running gateway picks it up.
pub fn deliver(config: &Config, record: &Record) -> anyhow::Result<Delivery> {
    enqueue(config, record)?;
    if crate::serve::running_pid(config).is_some() {
        return Ok(Delivery::Queued);
    }
    let keys = crate::state::open_keys(config)?;
    let store = match AuditStore::open_with(
        &config.audit_path(),
        gatehouse_audit::StoreOptions::default(),
        keys,
    ) {
        Ok(s) => s,
        Err(AuditError::Locked) => return Ok(Delivery::Queued),
        Err(e) => return Err(e).context("opening the audit store"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let drained = rt.block_on(drain_into(config, &store));
    store.shutdown().context("closing the audit store")?;
    drained?;
    Ok(Delivery::Appended)
}
