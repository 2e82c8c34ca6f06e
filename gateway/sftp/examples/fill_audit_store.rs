//! Benchmark helper: fills `DATA_DIR/audit.db` with N sealed statement records, under the
//! software key store in `DATA_DIR/keys` (the layout `gatehouse serve` uses), so that
//! `gatehouse audit export` can make a large, real export for `bench/sftp-download.sh`.
//!
//! `cargo run --release -p gatehouse-sftp --example fill_audit_store -- DATA_DIR N`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_audit::{AuditStore, Decision, EventKind, Record, StoreOptions};
use gatehouse_board::{KeyStore, SoftwareKeyStore};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: fill_audit_store DATA_DIR N"));
    let n: i64 = args
        .next()
        .and_then(|v| v.parse().ok())
        .expect("usage: fill_audit_store DATA_DIR N");
    std::fs::create_dir_all(&dir).unwrap();
    let keys: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open_or_create(&dir.join("keys")).unwrap());
    let store =
        AuditStore::open_with(&dir.join("audit.db"), StoreOptions::default(), keys).unwrap();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        - 3_600_000_000;
    let mut i = 0;
    while i < n {
        let batch: Vec<Record> = (i..(i + 4096).min(n))
            .map(|k| {
                let mut r = Record::new(EventKind::Statement, "gh-bench", start + k);
                r.listener = Some("pg".into());
                r.session_id = Some(format!("{:016x}", k / 100));
                r.source = Some("127.0.0.1:50000".into());
                r.username = Some("agent-alice".into());
                r.groups = vec!["analysts".into()];
                r.connection = Some("orders".into());
                r.protocol = Some("simple".into());
                r.statement = Some(format!(
                    "SELECT id, customer, total FROM orders WHERE id = {k} AND status = 'open'"
                ));
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
    println!("{n} records in {}", dir.join("audit.db").display());
}
