//! CPU cost of auditing one statement the way the gateway does it: a sealed store (software
//! key store), and per statement an awaited `append` of the statement record (write-ahead)
//! then an `append_nowait` of its outcome, from 8 concurrent tasks. Reports the process's CPU
//! time per statement, split into the calling threads and the background writer thread (from
//! `/proc/self/task/*/stat`), so a change to the hot path can be judged without pgbench.
//! Run with `cargo bench -p gatehouse-audit --bench statement`; `AUDIT_BENCH_SECS` (default
//! 3) sets the duration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_audit::{AuditStore, Decision, EventKind, Record, StoreOptions};
use gatehouse_board::SoftwareKeyStore;

fn statement(task: usize, i: u64) -> Record {
    let mut r = Record::new(
        EventKind::Statement,
        "bench-gw",
        1_700_000_000_000_000 + i as i64,
    );
    r.listener = Some("pg".into());
    r.session_id = Some(format!("3f2a9c1e-0000-4000-8000-{task:012}"));
    r.source = Some("127.0.0.1:50000".into());
    r.subject = Some("alice".into());
    r.username = Some("alice".into());
    r.email = Some("alice@example.com".into());
    r.groups = vec!["analysts".into(), "agents".into()];
    r.token_id = Some("3c8b0a4e-1f2d-4c5b-9a7e-6d5c4b3a2910".into());
    r.issuer = Some("https://issuer.example.com".into());
    r.connection = Some("bench".into());
    r.protocol = Some("simple".into());
    r.statement = Some(format!(
        "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
        i * 7919 % 1_000_000
    ));
    r.param_count = Some(0);
    r.decision = Some(Decision::Allow);
    r
}

fn outcome(task: usize, i: u64, seq: i64) -> Record {
    let mut r = Record::new(
        EventKind::StatementResult,
        "bench-gw",
        1_700_000_000_000_100 + i as i64,
    );
    r.listener = Some("pg".into());
    r.session_id = Some(format!("3f2a9c1e-0000-4000-8000-{task:012}"));
    r.subject = Some("alice".into());
    r.username = Some("alice".into());
    r.connection = Some("bench".into());
    r.rows = Some(1);
    r.duration_us = Some(90);
    r.ref_seq = Some(seq);
    r
}

/// (caller threads, writer thread) CPU time of this process so far.
fn cpu_split() -> (Duration, Duration) {
    let tick = 100.0; // USER_HZ on Linux
    let (mut callers, mut writer) = (0f64, 0f64);
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = entry.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let comm_end = stat.rfind(')').unwrap();
        let comm = &stat[stat.find('(').unwrap() + 1..comm_end];
        let fields: Vec<&str> = stat[comm_end + 2..].split(' ').collect();
        // After ")": state(0) ... utime(11) stime(12).
        let t = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / tick;
        if comm.starts_with("gatehouse-audit") {
            writer += t;
        } else {
            callers += t;
        }
    }
    (
        Duration::from_secs_f64(callers),
        Duration::from_secs_f64(writer),
    )
}

fn main() {
    let secs: u64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let tasks = 8;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(SoftwareKeyStore::open_or_create(&dir.path().join("keys")).unwrap());
    let store =
        AuditStore::open_with(&dir.path().join("audit.db"), StoreOptions::default(), keys).unwrap();
    let (c0, w0) = cpu_split();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let statements: u64 = rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let seq = store.append(statement(t, i)).await.unwrap();
                    store.append_nowait(outcome(t, i, seq)).unwrap();
                    // A statement's round trip yields to the runtime, as a session does.
                    tokio::task::yield_now().await;
                    i += 1;
                }
                i
            }));
        }
        let mut n = 0;
        for h in handles {
            n += h.await.unwrap();
        }
        store.flush().await.unwrap();
        n
    });
    let elapsed = started.elapsed();
    let (c1, w1) = cpu_split();
    store.shutdown().unwrap();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / statements as f64;
    println!(
        "statements  seconds  statements/s  caller CPU µs/stmt  writer CPU µs/stmt  total µs/stmt"
    );
    println!(
        "{statements:>10}  {:>7.2}  {:>12.0}  {:>18.2}  {:>18.2}  {:>13.2}",
        elapsed.as_secs_f64(),
        statements as f64 / elapsed.as_secs_f64(),
        per(c1 - c0),
        per(w1 - w0),
        per((c1 - c0) + (w1 - w0)),
    );
}
