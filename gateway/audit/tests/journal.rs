//! The write-ahead journal's two segments under a running store: bounded under sustained
//! load, and nothing acknowledged lost when the process is killed at any point of a
//! rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_audit::{AuditReader, AuditStore, Decision, EventKind, Record, StoreOptions};

/// A small segment size, so that a test rotates many times.
const SEGMENT: u64 = 16 << 10;

fn segments(db: &Path) -> [PathBuf; 2] {
    [
        db.with_file_name("audit.db.journal"),
        db.with_file_name("audit.db.journal.1"),
    ]
}

fn journal_bytes(db: &Path) -> u64 {
    segments(db)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn statement(task: u64, i: u64) -> Record {
    let mut r = Record::new(EventKind::Statement, "gw-test", 1_700_000_000_000_000);
    r.session_id = Some(format!("task-{task}"));
    r.username = Some("alice".into());
    r.connection = Some("prod".into());
    // Long enough that every statement's frames are a few hundred bytes.
    r.statement = Some(format!(
        "SELECT {i}, '{}' FROM accounts WHERE owner = 'alice'",
        "x".repeat(200)
    ));
    r.decision = Some(Decision::Allow);
    r
}

fn outcome(task: u64, seq: i64) -> Record {
    let mut r = Record::new(EventKind::StatementResult, "gw-test", 1_700_000_000_000_100);
    r.session_id = Some(format!("task-{task}"));
    r.ref_seq = Some(seq);
    r.rows = Some(1);
    r
}

fn options() -> StoreOptions {
    StoreOptions {
        journal_segment_bytes: SEGMENT,
        ..StoreOptions::default()
    }
}

/// Under load that never pauses, some record always waits for ingestion. A single journal
/// file could only be emptied when none did, so it grew without bound; the segments are
/// emptied one at a time, and the journal stays near two segments' size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_stays_bounded_under_sustained_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let store = AuditStore::open(&path, options()).unwrap();

    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = Arc::clone(&running);
        let path = path.clone();
        std::thread::spawn(move || {
            // (largest size seen, bytes seen added: a lower bound of what went through it)
            let (mut max, mut through, mut prev) = (0u64, 0u64, 0u64);
            while running.load(Ordering::Acquire) {
                let now = journal_bytes(&path);
                max = max.max(now);
                through += now.saturating_sub(prev);
                prev = now;
                std::thread::sleep(Duration::from_millis(1));
            }
            (max, through)
        })
    };
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let seq = store.append(statement(task, n)).await.unwrap();
                store.append_nowait(outcome(task, seq)).unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        }));
    }
    let mut statements = 0;
    for t in tasks {
        statements += t.await.unwrap();
    }
    running.store(false, Ordering::Release);
    let (max, through) = sampler.join().unwrap();
    store.flush().await.unwrap();

    let reader = AuditReader::open(&path).unwrap();
    let rows = reader.after(0, usize::MAX).unwrap();
    assert_eq!(rows.len() as u64, 2 * statements);
    assert!(reader.verify_chain().unwrap().is_ok());
    // Each statement journals well over 300 bytes: at least 2000 of them are over 600 KiB
    // through the journal, which a journal that is never emptied would hold at the end.
    assert!(
        statements >= 2000,
        "only {statements} statements in 2.5 s: the test did not load the store"
    );
    // Near two segments when ingestion keeps up; on a loaded machine (tests run in parallel
    // on two cores) ingestion lags and more waits, but a journal that is emptied never holds
    // more than a fraction of what went through it (one that is not holds all of it).
    assert!(
        max <= 16 * SEGMENT || max * 4 <= through,
        "the journal grew to {max} bytes with {SEGMENT}-byte segments ({through} bytes went through it)"
    );
    store.shutdown().unwrap();
    assert_eq!(
        journal_bytes(&path),
        0,
        "a clean shutdown empties the journal"
    );
}

/// The child process of `acknowledged_records_survive_sigkill_across_segment_rotations`:
/// appends statements with their outcomes as fast as it can and prints each acknowledged
/// seq, until it is killed. Ignored: only that test runs it.
#[test]
#[ignore = "run by acknowledged_records_survive_sigkill_across_segment_rotations"]
fn sigkill_child_writer() {
    let path = PathBuf::from(
        std::env::var_os("GATEHOUSE_AUDIT_CHILD_DB").expect("GATEHOUSE_AUDIT_CHILD_DB"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = AuditStore::open(&path, options()).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0.. {
            let seq = store.append(statement(0, i)).await.unwrap();
            store.append_nowait(outcome(0, seq)).unwrap();
            writeln!(out, "ack {seq}").unwrap();
            out.flush().unwrap();
        }
    });
}

/// SIGKILL lands at arbitrary points of the rotation cycle (appends to either segment, a
/// retired segment waiting for ingestion or being emptied; each round's statements are
/// dozens of segments' worth of frames): every acknowledged record is in the store after the
/// next open, and the chain verifies.
#[test]
fn acknowledged_records_survive_sigkill_across_segment_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut acked = BTreeSet::new();
    for (round, kill_after) in [700usize, 1900, 1300, 2600].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "sigkill_child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("GATEHOUSE_AUDIT_CHILD_DB", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut seen = 0usize;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(seq) = line.strip_prefix("ack ") {
                acked.insert(seq.parse::<i64>().unwrap());
                seen += 1;
                if seen == kill_after {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert_eq!(
            seen, kill_after,
            "round {round}: the child stopped before it was killed"
        );
    }
    // The next open replays both segments in seq order.
    let store = AuditStore::open(&path, options()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.flush()).unwrap();
    store.shutdown().unwrap();
    let reader = AuditReader::open(&path).unwrap();
    let stored: BTreeSet<i64> = reader
        .after(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    let missing: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {missing:?} (of {})",
        acked.len()
    );
    assert!(reader.verify_chain().unwrap().is_ok());
}

/// The child process of `a_record_over_64_mib_and_the_next_survive_a_crash`: appends a
/// statement record larger than 64 MiB and a small one with ingestion held off, prints both
/// acknowledged seqs, and exits without shutting the store down (a crash: both rows are in the
/// journal only). Ignored: only that test runs it.
#[test]
#[ignore = "run by a_record_over_64_mib_and_the_next_survive_a_crash"]
fn big_record_child_writer() {
    let path = PathBuf::from(
        std::env::var_os("GATEHOUSE_AUDIT_CHILD_DB").expect("GATEHOUSE_AUDIT_CHILD_DB"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = AuditStore::open(
            &path,
            StoreOptions {
                ingest_window: Duration::from_secs(3600),
                ingest_batch: 1 << 20,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let mut big = statement(0, 0);
        big.statement = Some(format!("SELECT '{}'", "x".repeat(64 << 20)));
        let a = store.append(big).await.unwrap();
        let b = store.append(statement(0, 1)).await.unwrap();
        println!("ack {a}\nack {b}");
        std::io::stdout().flush().unwrap();
        std::process::exit(0);
    });
}

/// A statement record over the journal reader's old 64 MiB bound, then another, both
/// acknowledged, then a crash before ingestion: the next open replays both (the big frame used
/// to be taken for a torn tail and cut off with the record after it).
#[test]
fn a_record_over_64_mib_and_the_next_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "big_record_child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("GATEHOUSE_AUDIT_CHILD_DB", &path)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let acked: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        // libtest may print its "test ... " prefix on the first line.
        .filter_map(|l| l.split_once("ack ")?.1.trim().parse().ok())
        .collect();
    assert_eq!(acked.len(), 2, "the child acknowledged both records");
    assert!(
        journal_bytes(&path) > 64 << 20,
        "the rows are in the journal, not yet ingested"
    );
    let store = AuditStore::open(&path, StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.flush()).unwrap();
    store.shutdown().unwrap();
    let reader = AuditReader::open(&path).unwrap();
    let stored: Vec<(i64, usize)> = reader
        .after(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| (r.seq, r.record.statement.as_ref().map_or(0, String::len)))
        .collect();
    for seq in &acked {
        assert!(
            stored.iter().any(|(s, _)| s == seq),
            "acknowledged record {seq} lost; stored: {stored:?}"
        );
    }
    assert!(stored.iter().any(|&(_, len)| len > 64 << 20));
    assert!(reader.verify_chain().unwrap().is_ok());
}
