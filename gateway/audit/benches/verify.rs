//! Verification speed over a large sealed store: writes `AUDIT_VERIFY_RECORDS` records
//! (default 1 000 000) with a software key store, then times `verify` (chain, AES-GCM open,
//! Merkle roots of every checkpoint, signatures) and proof generation.
//! Run with `cargo bench -p gatehouse-audit --bench verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use gatehouse_audit::{
    verify, AuditReader, AuditStore, Decision, EventKind, PublicKey, Record, StoreOptions,
    VerifyOptions,
};
use gatehouse_board::{KeyStore, SoftwareKeyStore};

fn record(i: u64) -> Record {
    let mut r = Record::new(
        EventKind::Statement,
        "bench-gw",
        1_700_000_000_000_000 + i as i64,
    );
    r.session_id = Some(format!("session-{}", i % 64));
    r.source = Some("10.1.2.3:50000".into());
    r.username = Some("alice".into());
    r.email = Some("alice@example.com".into());
    r.groups = vec!["analysts".into(), "agents".into()];
    r.connection = Some("bench".into());
    r.protocol = Some("extended".into());
    r.statement = Some(format!(
        "UPDATE pgbench_accounts SET abalance = abalance + {i} WHERE aid = 7;"
    ));
    r.decision = Some(Decision::Allow);
    r
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("AUDIT_VERIFY_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open_or_create(&dir.path().join("keys")).unwrap());
    let path = dir.path().join("audit.db");
    let store = AuditStore::open_with(&path, StoreOptions::default(), keys.clone()).unwrap();
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Record> = (i..(i + 4096).min(n)).map(record).collect();
        i += batch.len() as u64;
        store.append_batch(&batch).await.unwrap();
    }
    store.shutdown().unwrap();
    let w = t.elapsed();
    println!(
        "write (batches of 4096, sealed): {n} records in {:.2} s = {:.0} records/s, file {} MB",
        w.as_secs_f64(),
        n as f64 / w.as_secs_f64(),
        std::fs::metadata(&path).unwrap().len() / 1_000_000
    );

    let opts = VerifyOptions {
        keys: Some(keys.clone()),
        trusted_key: Some(PublicKey::of(keys.as_ref()).unwrap()),
        ..VerifyOptions::default()
    };
    let t = Instant::now();
    let v = verify(&path, &opts, |_| {}).unwrap();
    let e = t.elapsed();
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!(v.records, n);
    println!(
        "verify (with keys): {n} records, {} checkpoints in {:.2} s = {:.0} records/s",
        v.checkpoints,
        e.as_secs_f64(),
        n as f64 / e.as_secs_f64()
    );
    let t = Instant::now();
    let v = verify(&path, &VerifyOptions::default(), |_| {}).unwrap();
    let e = t.elapsed();
    assert!(v.is_ok());
    println!(
        "verify (structural, no keys): {:.2} s = {:.0} records/s",
        e.as_secs_f64(),
        n as f64 / e.as_secs_f64()
    );
    let reader = AuditReader::open_with(&path, keys).unwrap();
    let t = Instant::now();
    for k in 0..100u64 {
        let seq = (k * 7919 % n) + 1;
        reader.inclusion_proof(seq as i64, n).unwrap().unwrap();
    }
    println!(
        "inclusion proof at size {n}: {:.2?} each",
        t.elapsed() / 100
    );
    let t = Instant::now();
    reader.consistency_proof(n / 3, n).unwrap().unwrap();
    println!("consistency proof: {:.2?}", t.elapsed());
}
