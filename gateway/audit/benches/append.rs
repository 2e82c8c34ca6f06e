//! Throughput of awaited `append` with group commit: N concurrent tasks, each awaiting every
//! record before sending the next (as a gateway session does), for `synchronous` NORMAL and
//! FULL. Run with `cargo bench -p gatehouse-audit --bench append`.
//! `AUDIT_BENCH_SECS` (default 3) sets the duration of each run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use gatehouse_audit::{AuditStore, Decision, EventKind, Record, StoreOptions, Synchronous};

fn record(task: usize, i: u64) -> Record {
    let mut r = Record::new(EventKind::Statement, "bench-gw", 1_700_000_000_000_000);
    r.listener = Some("pg".into());
    r.session_id = Some(format!("session-{task}"));
    r.source = Some("10.1.2.3:50000".into());
    r.subject = Some("00u1abcd".into());
    r.username = Some("alice".into());
    r.email = Some("alice@example.com".into());
    r.groups = vec!["analysts".into(), "agents".into()];
    r.connection = Some("bench".into());
    r.protocol = Some("extended".into());
    r.statement = Some(format!(
        "UPDATE pgbench_accounts SET abalance = abalance + {i} WHERE aid = {task};"
    ));
    r.param_count = Some(0);
    r.decision = Some(Decision::Allow);
    r
}

struct Outcome {
    records: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

async fn run(sync: Synchronous, tasks: usize, duration: Duration) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(
        &dir.path().join("audit.db"),
        StoreOptions {
            synchronous: sync,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                store.append(record(t, i)).await.unwrap();
                latencies.push(t0.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.unwrap());
    }
    let elapsed = started.elapsed();
    store.shutdown().unwrap();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    Outcome {
        records: latencies.len() as u64,
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() {
    let secs: u64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("synchronous  tasks   records   seconds    records/s   p50 latency  p99 latency");
    for sync in [Synchronous::Normal, Synchronous::Full] {
        for tasks in [1, 8, 64] {
            let o = rt.block_on(run(sync, tasks, Duration::from_secs(secs)));
            println!(
                "{:<11}  {tasks:>5}  {:>8}  {:>8.2}  {:>11.0}  {:>11.1?}  {:>11.1?}",
                format!("{sync:?}"),
                o.records,
                o.elapsed.as_secs_f64(),
                o.records as f64 / o.elapsed.as_secs_f64(),
                o.p50,
                o.p99,
            );
        }
    }
}
