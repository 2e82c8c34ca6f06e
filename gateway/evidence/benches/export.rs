//! Export speed: writes `EVIDENCE_BENCH_RECORDS` sealed records (default 200 000), then
//! times a full export (verification, CSV, JSON Lines, OSCAL, signed manifest) and
//! `verify_export`. Run with `cargo bench -p gatehouse-evidence --bench export`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use gatehouse_audit::{AuditStore, Decision, EventKind, Record, StoreOptions};
use gatehouse_board::{KeyStore, SoftwareKeyStore};
use gatehouse_evidence::{export, verify_export, ExportOptions};

#[tokio::main]
async fn main() {
    let n: i64 = std::env::var("EVIDENCE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open_or_create(&dir.path().join("keys")).unwrap());
    let store_path = dir.path().join("audit.db");
    let store = AuditStore::open_with(&store_path, StoreOptions::default(), keys.clone()).unwrap();
    let mut i = 0;
    while i < n {
        let batch: Vec<Record> = (i..(i + 4096).min(n))
            .map(|k| {
                let mut r = Record::new(EventKind::Statement, "gw", 1_700_000_000_000_000 + k);
                r.username = Some("alice".into());
                r.statement = Some(format!("SELECT * FROM t WHERE id = {k}"));
                r.decision = Some(if k % 10 == 0 {
                    Decision::Deny
                } else {
                    Decision::Allow
                });
                r
            })
            .collect();
        i += batch.len() as i64;
        store.append_batch(&batch).await.unwrap();
    }
    store.shutdown().unwrap();
    let out = dir.path().join("export");
    let t = Instant::now();
    let summary = export(
        &ExportOptions {
            store: store_path,
            from_us: 0,
            to_us: i64::MAX,
            catalog: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/oscal/NIST_SP-800-53_rev5_catalog.json"),
            out_dir: out.clone(),
        },
        keys,
        |_| {},
    )
    .unwrap();
    let e = t.elapsed();
    assert_eq!(summary.records as i64, n);
    println!(
        "export: {n} records in {:.2} s = {:.0} records/s (includes verifying the store)",
        e.as_secs_f64(),
        n as f64 / e.as_secs_f64()
    );
    let t = Instant::now();
    assert!(verify_export(&out, None).unwrap().is_ok());
    println!("verify_export: {:.2?}", t.elapsed());
}
