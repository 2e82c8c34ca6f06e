#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse_audit::{
    AuditError, AuditReader, AuditStore, BadRecord, ChainBreak, Decision, EventKind, Filter,
    Record, StoreOptions, Synchronous,
};
use rusqlite::Connection;

/// Every append in these tests must finish well within this, or the test fails (no hangs).
const NO_HANG: Duration = Duration::from_secs(30);

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("audit.db")
}

fn open(path: &Path) -> AuditStore {
    AuditStore::open(path, StoreOptions::default()).unwrap()
}

fn stmt(i: i64) -> Record {
    let mut r = Record::new(EventKind::Statement, "gw-test", 1_700_000_000_000_000 + i);
    r.username = Some(if i % 2 == 0 { "alice" } else { "bob" }.into());
    r.connection = Some(if i % 3 == 0 { "prod" } else { "dev" }.into());
    r.statement = Some(format!("SELECT {i}"));
    r.decision = Some(if i % 5 == 0 {
        Decision::Deny
    } else {
        Decision::Allow
    });
    r
}

fn full_record() -> Record {
    Record {
        time_us: 1_712_345_678_901_234,
        event: EventKind::StatementResult,
        gateway: "gw-1".into(),
        listener: Some("pg-main".into()),
        session_id: Some("sess-42".into()),
        source: Some("10.0.0.7:51234".into()),
        subject: Some("sub-123".into()),
        username: Some("alice".into()),
        email: Some("alice@example.com".into()),
        groups: vec!["dba".into(), "on-call".into(), "ünïcode \"quoted\"".into()],
        token_id: Some("jti-9".into()),
        issuer: Some("https://idp.example.com".into()),
        connection: Some("prod".into()),
        protocol: Some("extended".into()),
        statement: Some("SELECT 'a\0b', $1 -- multi\nline".into()),
        statement_name: Some("s1".into()),
        param_count: Some(1),
        decision: Some(Decision::Allow),
        reason: Some("rule prod-read".into()),
        sqlstate: Some("00000".into()),
        rows: Some(12),
        bytes_in: Some(345),
        bytes_out: Some(6789),
        duration_us: Some(1500),
        ref_seq: Some(1),
        config_hash: Some("ab".repeat(32)),
        policy_hash: Some("cd".repeat(32)),
        payload: Some(b"\x00T\x00recorded bytes".to_vec()),
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(NO_HANG, f)
        .await
        .expect("audit operation hung")
}

#[tokio::test]
async fn round_trip_of_all_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let minimal = Record::new(EventKind::GatewayStart, "gw-1", -5);
    let full = full_record();
    assert_eq!(within(store.append(minimal.clone())).await.unwrap(), 1);
    assert_eq!(within(store.append(full.clone())).await.unwrap(), 2);
    // Acknowledged records are journaled; a flush (or the ingest window) makes them visible.
    within(store.flush()).await.unwrap();

    let reader = AuditReader::open(&path).unwrap();
    let got = reader.tail(10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].seq, &got[0].record), (1, &minimal));
    assert_eq!((got[1].seq, &got[1].record), (2, &full));
    assert_eq!(got[0].prev_hash, [0u8; 32]);
    assert_eq!(got[1].prev_hash, got[0].hash);

    let json = got[1].to_json();
    let o = json.as_object().unwrap();
    assert_eq!(o["seq"], 2);
    assert_eq!(o["time"], "2024-04-05T19:34:38.901234Z");
    assert_eq!(o["event"], "statement.result");
    assert_eq!(o["statement"], "SELECT 'a\0b', $1 -- multi\nline");
    assert_eq!(o["groups"][2], "ünïcode \"quoted\"");
    assert_eq!(o["decision"], "allow");
    assert_eq!(o["hash"], hex::encode(got[1].hash));
    assert_eq!(o["prev_hash"], hex::encode(got[0].hash));
    // Every Record field appears in the JSON of a fully populated record.
    let fields = serde_json::to_value(&full).unwrap();
    for key in fields.as_object().unwrap().keys() {
        assert!(o.contains_key(key), "to_json lacks {key}");
    }
    let o0 = got[0].to_json();
    assert_eq!(o0["time"], "1969-12-31T23:59:59.999995Z");
    assert!(o0.get("username").is_none());

    assert!(reader.verify_chain().unwrap().is_ok());
    store.shutdown().unwrap();
}

#[tokio::test]
async fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    within(store.append(stmt(1))).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&path.with_extension("db-wal")), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    store.shutdown().unwrap();
}

#[tokio::test]
async fn seq_and_chain_continue_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut seqs = Vec::new();
    for round in 0..3 {
        let store = open(&path);
        for i in 0..5 {
            seqs.push(within(store.append(stmt(round * 10 + i))).await.unwrap());
        }
        let batch = within(store.append_batch(&[stmt(100), stmt(101)]))
            .await
            .unwrap();
        seqs.extend(batch);
        if round == 1 {
            drop(store); // the drop path drains and joins as well
        } else {
            store.shutdown().unwrap();
        }
    }
    assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
    let reader = AuditReader::open(&path).unwrap();
    let report = reader.verify_chain().unwrap();
    assert_eq!(report.first_bad, None);
    assert_eq!(report.verified, 21);
    assert_eq!(report.last_seq, 21);
    assert_eq!(report.last_hash, reader.tail(1).unwrap()[0].hash);
}

/// Writes `n` records, closes the store, returns the path.
async fn store_with(dir: &tempfile::TempDir, n: i64) -> PathBuf {
    let path = db_path(dir);
    let store = open(&path);
    let recs: Vec<Record> = (1..=n).map(stmt).collect();
    within(store.append_batch(&recs)).await.unwrap();
    store.shutdown().unwrap();
    path
}

fn first_bad(path: &Path) -> Option<BadRecord> {
    AuditReader::open(path)
        .unwrap()
        .verify_chain()
        .unwrap()
        .first_bad
}

#[tokio::test]
async fn tampering_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(&dir, 8).await;
    assert_eq!(first_bad(&path), None);
    let db = Connection::open(&path).unwrap();

    // Edit one field of seq 5.
    db.execute(
        "UPDATE records SET statement = 'SELECT 1' WHERE seq = 5",
        [],
    )
    .unwrap();
    assert_eq!(
        first_bad(&path),
        Some(BadRecord {
            seq: 5,
            reason: ChainBreak::HashMismatch
        })
    );
    // Edit only a field that is not text: still caught.
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = store_with(&dir2, 8).await;
    let db2 = Connection::open(&path2).unwrap();
    db2.execute("UPDATE records SET time_us = time_us + 1 WHERE seq = 7", [])
        .unwrap();
    assert_eq!(first_bad(&path2).map(|b| b.seq), Some(7));
    // Editing the group list (JSON column) of seq 2.
    db2.execute(
        r#"UPDATE records SET "groups" = '["admin"]' WHERE seq = 2"#,
        [],
    )
    .unwrap();
    assert_eq!(first_bad(&path2).map(|b| b.seq), Some(2));
    // An undecodable value.
    db2.execute("UPDATE records SET event = 'bogus' WHERE seq = 1", [])
        .unwrap();
    assert_eq!(
        first_bad(&path2),
        Some(BadRecord {
            seq: 1,
            reason: ChainBreak::Undecodable
        })
    );
    drop(db);

    // Delete a row.
    let dir3 = tempfile::tempdir().unwrap();
    let path3 = store_with(&dir3, 8).await;
    let db3 = Connection::open(&path3).unwrap();
    db3.execute("DELETE FROM records WHERE seq = 4", [])
        .unwrap();
    assert_eq!(
        first_bad(&path3),
        Some(BadRecord {
            seq: 4,
            reason: ChainBreak::Missing
        })
    );

    // Swap two rows (whole rows, hashes included).
    let dir4 = tempfile::tempdir().unwrap();
    let path4 = store_with(&dir4, 8).await;
    let db4 = Connection::open(&path4).unwrap();
    db4.execute_batch(
        "BEGIN;
         UPDATE records SET seq = -1 WHERE seq = 3;
         UPDATE records SET seq = 3 WHERE seq = 6;
         UPDATE records SET seq = 6 WHERE seq = -1;
         COMMIT;",
    )
    .unwrap();
    assert_eq!(
        first_bad(&path4),
        Some(BadRecord {
            seq: 3,
            reason: ChainBreak::PrevHashMismatch
        })
    );

    // Swap only the contents, keeping seq and hashes in place.
    let dir5 = tempfile::tempdir().unwrap();
    let path5 = store_with(&dir5, 8).await;
    let db5 = Connection::open(&path5).unwrap();
    db5.execute_batch(
        "BEGIN;
         CREATE TEMP TABLE t AS SELECT seq, statement, username FROM records WHERE seq IN (2, 5);
         UPDATE records SET statement = (SELECT statement FROM t WHERE seq = 5),
                            username = (SELECT username FROM t WHERE seq = 5) WHERE seq = 2;
         UPDATE records SET statement = (SELECT statement FROM t WHERE seq = 2),
                            username = (SELECT username FROM t WHERE seq = 2) WHERE seq = 5;
         COMMIT;",
    )
    .unwrap();
    assert_eq!(first_bad(&path5).map(|b| b.seq), Some(2));

    // A forged extra row at seq 0.
    let dir6 = tempfile::tempdir().unwrap();
    let path6 = store_with(&dir6, 3).await;
    let db6 = Connection::open(&path6).unwrap();
    db6.execute_batch(
        "INSERT INTO records SELECT 0, time_us, event, gateway, listener, session_id, source,
             subject, username, email, \"groups\", token_id, issuer, connection, protocol,
             statement, statement_name, param_count, decision, reason, sqlstate, \"rows\",
             bytes_in, bytes_out, duration_us, ref_seq, config_hash, prev_hash, hash, key_id, sealed,
             policy_hash, payload
         FROM records WHERE seq = 1",
    )
    .unwrap();
    assert_eq!(
        first_bad(&path6),
        Some(BadRecord {
            seq: 0,
            reason: ChainBreak::UnexpectedSeq
        })
    );
}

#[tokio::test]
async fn tampered_store_reopens_and_keeps_appending_after_the_real_tail() {
    // The writer continues from the last row even if an older row was edited; the report
    // still names the edited row, and new rows chain from the stored tail hash.
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(&dir, 3).await;
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE records SET gateway = 'x' WHERE seq = 2", [])
        .unwrap();
    let store = open(&path);
    assert_eq!(within(store.append(stmt(9))).await.unwrap(), 4);
    store.shutdown().unwrap();
    assert_eq!(first_bad(&path).map(|b| b.seq), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_all_acknowledged_and_present() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = AuditStore::open(
        &path,
        StoreOptions {
            ingest_batch: 64,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    const TASKS: i64 = 50;
    const PER_TASK: i64 = 100;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..PER_TASK {
                let mut r = stmt(t * PER_TASK + i);
                r.session_id = Some(format!("task-{t}"));
                r.rows = Some(i);
                let seq = store.append(r).await.unwrap();
                out.push((seq, i));
            }
            out
        }));
    }
    let mut all = BTreeSet::new();
    for h in handles {
        let acks = within(h).await.unwrap();
        // Each task's own records got increasing seqs (it awaited each one).
        assert!(acks.windows(2).all(|w| w[0].0 < w[1].0));
        for (seq, _) in acks {
            assert!(all.insert(seq), "seq {seq} acknowledged twice");
        }
    }
    let n = TASKS * PER_TASK;
    assert_eq!(all, (1..=n).collect::<BTreeSet<_>>());
    within(store.flush()).await.unwrap();

    let reader = AuditReader::open(&path).unwrap();
    let rows = reader.after(0, usize::MAX).unwrap();
    assert_eq!(rows.len() as i64, n);
    for row in &rows {
        let t = row.record.session_id.as_deref().unwrap();
        let t: i64 = t.strip_prefix("task-").unwrap().parse().unwrap();
        let i = row.record.rows.unwrap();
        assert_eq!(row.record, {
            let mut r = stmt(t * PER_TASK + i);
            r.session_id = Some(format!("task-{t}"));
            r.rows = Some(i);
            r
        });
    }
    let report = reader.verify_chain().unwrap();
    assert!(report.is_ok());
    assert_eq!(report.verified as i64, n);
    store.shutdown().unwrap();
}

#[tokio::test]
async fn nowait_records_are_committed_by_flush_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let reader = AuditReader::open(&path).unwrap();
    let first = within(store.append(stmt(0))).await.unwrap();
    for i in 1..=1000 {
        store.append_nowait(stmt(i)).unwrap();
    }
    within(store.flush()).await.unwrap();
    let rows = reader.after(first, 5000).unwrap();
    assert_eq!(rows.len(), 1000);
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, first + 1 + k as i64);
        assert_eq!(row.record, stmt(k as i64 + 1));
    }
    // Shutdown commits what was queued without waiting, too.
    for i in 1001..=1010 {
        store.append_nowait(stmt(i)).unwrap();
    }
    store.shutdown().unwrap();
    assert_eq!(reader.tail(1).unwrap()[0].seq, 1011);
    assert!(reader.verify_chain().unwrap().is_ok());
}

#[tokio::test]
async fn after_shutdown_every_handle_gets_writer_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let other = store.clone();
    assert!(other.is_healthy());
    store.shutdown().unwrap();
    assert!(!other.is_healthy());
    assert!(matches!(
        within(other.append(stmt(1))).await,
        Err(AuditError::WriterGone)
    ));
    assert!(matches!(
        other.append_nowait(stmt(1)),
        Err(AuditError::WriterGone)
    ));
    assert!(matches!(
        within(other.flush()).await,
        Err(AuditError::WriterGone)
    ));
    assert!(matches!(other.shutdown(), Err(AuditError::WriterGone)));
}

const SECRET: &str = "SELECT secret_marker_4711";

fn poison() -> Record {
    let mut r = stmt(1);
    r.statement = Some(SECRET.into());
    r.username = Some("user_marker_4712".into());
    r
}

fn assert_no_contents(e: &AuditError) {
    for text in [format!("{e}"), format!("{e:?}")] {
        assert!(!text.contains("marker_471"), "error leaks contents: {text}");
    }
}

/// SQLite rejecting rows (here a trigger standing in for any write failure) is found when
/// the journal is ingested: the store turns unhealthy, every new group is refused (fail
/// closed) and `append_nowait` too, while the rows already journaled are kept and reach the
/// database once SQLite accepts them again. Nothing acknowledged is lost.
#[tokio::test]
async fn failed_ingestion_fails_closed_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    for i in 1..=3 {
        within(store.append(stmt(i))).await.unwrap();
    }
    let db = Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TRIGGER fail_all BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .unwrap();

    // Journaled (acknowledged) while healthy; the flush's ingestion then fails.
    assert_eq!(within(store.append(stmt(4))).await.unwrap(), 4);
    let e = within(store.flush()).await.unwrap_err();
    assert!(matches!(e, AuditError::GroupFailed(_)), "{e:?}");
    assert!(e.to_string().contains("injected"));
    assert_no_contents(&e);
    assert!(!store.is_healthy());

    // Fail closed: nothing new is accepted while ingestion fails.
    let e = within(store.append(poison())).await.unwrap_err();
    assert!(matches!(e, AuditError::GroupFailed(_)), "{e:?}");
    assert_no_contents(&e);
    let e = within(store.append_batch(&[stmt(5), poison()]))
        .await
        .unwrap_err();
    assert_no_contents(&e);
    // An unacknowledged record is kept in memory and journaled once the store heals.
    store.append_nowait(stmt(5)).unwrap();

    db.execute_batch("DROP TRIGGER fail_all;").unwrap();
    // The writer retries within its ingest window; a flush retries at once.
    within(store.flush()).await.unwrap();
    assert_eq!(within(store.append(stmt(6))).await.unwrap(), 6);
    assert!(store.is_healthy());
    store.append_nowait(stmt(7)).unwrap();
    within(store.flush()).await.unwrap();
    store.shutdown().unwrap();

    let reader = AuditReader::open(&path).unwrap();
    let rows = reader.after(0, 100).unwrap();
    let got: Vec<_> = rows.iter().map(|r| r.record.clone()).collect();
    let want = vec![
        stmt(1),
        stmt(2),
        stmt(3),
        stmt(4),
        stmt(5),
        stmt(6),
        stmt(7),
    ];
    assert_eq!(got, want);
    assert_eq!(rows.last().unwrap().seq, 7);
    assert!(reader.verify_chain().unwrap().is_ok());
}

/// Another process holding SQLite's write lock delays ingestion, not the statement path:
/// appends are acknowledged from the journal, ingestion fails after the busy timeout (the
/// store turns unhealthy and refuses new groups) instead of hanging, and once the lock is
/// released everything journaled reaches the database.
#[tokio::test]
async fn locked_database_fails_within_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = AuditStore::open(
        &path,
        StoreOptions {
            busy_timeout: Duration::from_millis(200),
            synchronous: Synchronous::Full,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    within(store.append(stmt(1))).await.unwrap();
    within(store.flush()).await.unwrap();
    let db = Connection::open(&path).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_eq!(within(store.append(stmt(2))).await.unwrap(), 2);
    let started = Instant::now();
    let e = within(store.flush()).await.unwrap_err();
    assert!(matches!(e, AuditError::GroupFailed(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!store.is_healthy());
    db.execute_batch("COMMIT").unwrap();
    within(store.flush()).await.unwrap();
    assert_eq!(within(store.append(stmt(3))).await.unwrap(), 3);
    assert!(store.is_healthy());
    store.shutdown().unwrap();
    let reader = AuditReader::open(&path).unwrap();
    assert_eq!(reader.tail(10).unwrap().len(), 3);
}

/// A second writer on the same store is refused while the first runs.
#[tokio::test]
async fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    assert!(matches!(
        AuditStore::open(&path, StoreOptions::default()),
        Err(AuditError::Locked)
    ));
    store.shutdown().unwrap();
    AuditStore::open(&path, StoreOptions::default())
        .unwrap()
        .shutdown()
        .unwrap();
}

/// The data directory disappears under a running store: appends return an error, not hang.
#[tokio::test]
async fn removed_directory_makes_append_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    within(store.append(stmt(1))).await.unwrap();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    // The background thread notices at its next ingestion (within the ingest window, not
    // at every append: a stat per statement was too dear); from then on appends fail.
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        match within(store.append(stmt(2))).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "appends still accepted");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    assert!(matches!(e, AuditError::GroupFailed(_)), "{e:?}");
    assert!(!store.is_healthy());
    // Keeps failing, fast, for every new group.
    let started = Instant::now();
    assert!(within(store.append(stmt(3))).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = store.shutdown();
}

/// The journal alone is replaced under a running store (the database stays): appends are
/// refused from the next ingestion on, and every record acknowledged before is still
/// ingested into the database.
#[tokio::test]
async fn replaced_journal_refuses_appends_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    within(store.append(stmt(1))).await.unwrap();
    let journal = path.with_file_name("audit.db.journal");
    let stand_in = path.with_file_name("stand-in");
    std::fs::write(&stand_in, b"").unwrap();
    std::fs::rename(&stand_in, &journal).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut acknowledged = vec![1i64];
    let mut i = 2;
    let e = loop {
        match within(store.append(stmt(i))).await {
            Err(e) => break e,
            Ok(_) => {
                acknowledged.push(i);
                assert!(Instant::now() < deadline, "appends still accepted");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        i += 1;
    };
    assert!(matches!(e, AuditError::GroupFailed(_)), "{e:?}");
    assert!(!store.is_healthy());
    let _ = store.flush().await;
    let _ = store.shutdown();
    let seen: Vec<i64> = AuditReader::open(&path)
        .unwrap()
        .tail(1000)
        .unwrap()
        .iter()
        .map(|r| r.record.time_us - 1_700_000_000_000_000)
        .collect();
    assert_eq!(seen, acknowledged);
}

#[tokio::test]
async fn opening_a_non_database_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    std::fs::write(
        &path,
        b"this is not a database, it is plain text padding".repeat(40),
    )
    .unwrap();
    assert!(AuditStore::open(&path, StoreOptions::default()).is_err());
    assert!(matches!(
        AuditStore::open(
            &dir.path().join("other.db"),
            StoreOptions {
                ingest_batch: 0,
                ..StoreOptions::default()
            }
        ),
        Err(AuditError::InvalidOptions(_))
    ));
    assert!(AuditReader::open(&dir.path().join("missing.db")).is_err());
}

#[tokio::test]
async fn reader_works_while_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    within(store.append(stmt(0))).await.unwrap();
    let reader = AuditReader::open(&path).unwrap();
    let recs: Vec<Record> = (1..=30).map(stmt).collect();
    within(store.append_batch(&recs)).await.unwrap();
    within(store.flush()).await.unwrap();

    let tail = reader.tail(3).unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [29, 30, 31]);
    assert_eq!(reader.tail(0).unwrap(), vec![]);
    assert_eq!(reader.tail(1000).unwrap().len(), 31);

    // Follow: poll after the last seen seq while appending.
    let mut last = 0;
    let mut seen = Vec::new();
    loop {
        let page = reader.after(last, 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        last = page.last().unwrap().seq;
        seen.extend(page.into_iter().map(|r| r.seq));
    }
    assert_eq!(seen, (1..=31).collect::<Vec<_>>());
    within(store.append(stmt(31))).await.unwrap();
    within(store.flush()).await.unwrap();
    assert_eq!(reader.after(last, 7).unwrap()[0].seq, 32);

    // Search (records i = 0..=31 at seq i + 1).
    let ids = |f: &Filter| -> Vec<i64> {
        reader
            .search(f)
            .unwrap()
            .iter()
            .map(|r| r.record.time_us - 1_700_000_000_000_000)
            .collect()
    };
    let all: Vec<i64> = (0..=31).collect();
    assert_eq!(ids(&Filter::default()), all);
    let f = Filter {
        username: Some("alice".into()),
        connection: Some("prod".into()),
        ..Filter::default()
    };
    let want: Vec<i64> = all.iter().copied().filter(|i| i % 6 == 0).collect();
    assert_eq!(ids(&f), want);
    let f = Filter {
        decision: Some(Decision::Deny),
        event: Some(EventKind::Statement),
        ..Filter::default()
    };
    let want: Vec<i64> = all.iter().copied().filter(|i| i % 5 == 0).collect();
    assert_eq!(ids(&f), want);
    let f = Filter {
        from_us: Some(1_700_000_000_000_010),
        to_us: Some(1_700_000_000_000_020),
        limit: Some(4),
        ..Filter::default()
    };
    assert_eq!(ids(&f), vec![10, 11, 12, 13]);
    let f = Filter {
        from_us: Some(1_700_000_000_000_010),
        to_us: Some(1_700_000_000_000_020),
        after_seq: Some(15),
        ..Filter::default()
    };
    assert_eq!(ids(&f), vec![15, 16, 17, 18, 19]);
    let f = Filter {
        event: Some(EventKind::LoginFailure),
        ..Filter::default()
    };
    assert_eq!(ids(&f), Vec::<i64>::new());

    assert!(reader.verify_chain().unwrap().is_ok());
    store.shutdown().unwrap();
    // And after the writer has gone (WAL checkpointed and removed).
    let reader = AuditReader::open(&path).unwrap();
    assert_eq!(reader.tail(1).unwrap()[0].seq, 32);
}

#[tokio::test]
async fn verify_progress_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(&dir, 25_000).await;
    let mut calls = Vec::new();
    let report = AuditReader::open(&path)
        .unwrap()
        .verify_chain_with_progress(|n| calls.push(n))
        .unwrap();
    assert_eq!(report.verified, 25_000);
    assert_eq!(calls, vec![10_000, 20_000]);
}

/// Without a flush, journaled records reach the database within the ingest window.
#[tokio::test]
async fn records_become_visible_within_the_ingest_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let reader = AuditReader::open(&path).unwrap();
    for round in 0..20i64 {
        let seq = within(store.append(stmt(round))).await.unwrap();
        store.append_nowait(stmt(round + 100)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let tail = reader.tail(1).unwrap();
            if tail.first().map(|r| r.seq) == Some(seq + 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: seq {} not visible",
                seq + 1
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        if round % 3 == 0 {
            std::thread::sleep(Duration::from_millis(7));
        }
    }
    store.shutdown().unwrap();
}

/// A store written before the extension columns existed (schema 2) is readable after
/// `recover`, which adds the columns; its rows and hashes are untouched and still verify.
#[tokio::test]
async fn recover_upgrades_an_older_schema_for_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    for i in 1..=5 {
        within(store.append(stmt(i))).await.unwrap();
    }
    store.shutdown().unwrap();
    // What a schema-2 store looks like: no extension columns.
    let db = Connection::open(&path).unwrap();
    db.execute_batch(
        "ALTER TABLE records DROP COLUMN payload;
         ALTER TABLE records DROP COLUMN policy_hash;
         PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(db);
    assert!(AuditReader::open(&path).unwrap().tail(5).is_err());
    assert_eq!(gatehouse_audit::recover(&path).unwrap(), 0);
    let reader = AuditReader::open(&path).unwrap();
    assert_eq!(reader.tail(10).unwrap().len(), 5);
    assert!(reader.verify_chain().unwrap().is_ok());
}
