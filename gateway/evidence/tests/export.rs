#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_audit::{AuditStore, Decision, EventKind, PublicKey, Record, StoreOptions};
use gatehouse_board::{KeyStore, SoftwareKeyStore};
use gatehouse_evidence::{
    csv, export, verify_export, ExportOptions, ExportProblem, ExportProgress,
};
use serde_json::Value;

fn oscal_dir() -> PathBuf {
    // Resolved when the test runs (cargo and nextest set it), not when it was compiled: the
    // build cache is shared between checkouts in different folders.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    dir.join("../../../shared/oscal")
}

const T0: i64 = 1_712_000_000_000_000;

fn records() -> Vec<Record> {
    let mut out = Vec::new();
    let mut cfg = Record::new(EventKind::ConfigLoaded, "gw", T0);
    cfg.config_hash = Some("ab".repeat(32));
    out.push(cfg);
    let mut login = Record::new(EventKind::LoginSuccess, "gw", T0 + 1);
    login.username = Some("alice".into());
    login.groups = vec!["analysts".into(), "on,call".into()];
    out.push(login);
    let mut fail = Record::new(EventKind::LoginFailure, "gw", T0 + 2);
    fail.reason = Some("token expired".into());
    out.push(fail);
    for i in 0..40 {
        let mut s = Record::new(EventKind::Statement, "gw", T0 + 10 + i);
        s.username = Some("alice".into());
        s.connection = Some("prod".into());
        s.statement = Some(match i % 4 {
            0 => "=HYPERLINK(\"http://evil\",\"x\")".to_owned(),
            1 => "SELECT 'a,\"b\"'\r\nFROM t".to_owned(),
            2 => "-1+cmd|' /C calc'!A0".to_owned(),
            _ => format!("SELECT {i}"),
        });
        s.decision = Some(if i % 5 == 0 {
            Decision::Deny
        } else {
            Decision::Allow
        });
        out.push(s);
    }
    // Outside the range.
    out.push(Record::new(EventKind::GatewayStop, "gw", T0 + 1_000_000));
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    out: PathBuf,
    keys: Arc<dyn KeyStore>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open_or_create(&dir.path().join("keys")).unwrap());
    let store = dir.path().join("audit.db");
    let s = AuditStore::open_with(&store, StoreOptions::default(), keys.clone()).unwrap();
    s.append_batch(&records()).await.unwrap();
    s.shutdown().unwrap();
    let out = dir.path().join("export");
    Fixture {
        _dir: dir,
        store,
        out,
        keys,
    }
}

fn run(f: &Fixture) -> gatehouse_evidence::ExportSummary {
    let mut writes = 0;
    let summary = export(
        &ExportOptions {
            store: f.store.clone(),
            from_us: T0,
            to_us: T0 + 1000,
            catalog: oscal_dir().join("NIST_SP-800-53_rev5_catalog.json"),
            out_dir: f.out.clone(),
        },
        f.keys.clone(),
        |p| {
            if matches!(p, ExportProgress::Writing { .. }) {
                writes += 1;
            }
        },
    )
    .unwrap();
    assert!(writes >= 1);
    summary
}

#[tokio::test]
async fn oscal_export_validates_against_the_nist_schema() {
    let f = fixture().await;
    let summary = run(&f);
    assert_eq!(summary.records, 43);
    assert!(
        summary.verification_ok,
        "{:?}",
        summary.verification_problems
    );
    assert_eq!(summary.uncovered, 0);
    assert_eq!(summary.controls["ia-2"].records, 2);
    assert_eq!(summary.controls["ac-6"].records, 8);
    assert_eq!(summary.controls["ir-4"].records, 9);
    assert_eq!(summary.controls["cm-2"].records, 1);
    assert_eq!(
        summary.control_titles["au-3.1"],
        "Additional Audit Information"
    );

    let schema: Value = serde_json::from_slice(
        &std::fs::read(oscal_dir().join("oscal_assessment-results_schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let doc: Value =
        serde_json::from_slice(&std::fs::read(f.out.join("assessment-results.json")).unwrap())
            .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The validator is not vacuous: a broken document fails.
    let mut bad = doc.clone();
    bad["assessment-results"]["uuid"] = Value::from("not-a-uuid");
    assert!(!validator.is_valid(&bad));
    let mut bad = doc.clone();
    bad["assessment-results"]
        .as_object_mut()
        .unwrap()
        .remove("import-ap");
    assert!(!validator.is_valid(&bad));

    let ar = &doc["assessment-results"];
    let findings = ar["results"][0]["findings"].as_array().unwrap();
    assert!(findings
        .iter()
        .any(|f| f["target"]["target-id"] == "ac-3_obj"
            && f["target"]["status"]["state"] == "satisfied"));
    let obs = ar["results"][0]["observations"].as_array().unwrap();
    assert!(obs.iter().any(|o| o["props"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["value"] == "Identification and Authentication (organizational Users)")));
}

#[tokio::test]
async fn csv_and_jsonl_round_trip() {
    let f = fixture().await;
    run(&f);
    let want: Vec<Record> = records().into_iter().take(43).collect();
    let jsonl = std::fs::read_to_string(f.out.join("records.jsonl")).unwrap();
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 43);
    for (i, (v, r)) in lines.iter().zip(&want).enumerate() {
        assert_eq!(v["seq"], i as i64 + 1);
        assert_eq!(v["time_us"], r.time_us);
        assert_eq!(v["statement"].as_str(), r.statement.as_deref());
        assert_eq!(v["username"].as_str(), r.username.as_deref());
        assert!(!v["controls"].as_array().unwrap().is_empty());
    }
    assert_eq!(lines[1]["controls"][0], "ac-2");

    let text = std::fs::read_to_string(f.out.join("records.csv")).unwrap();
    let rows = csv::parse(&text).unwrap();
    assert_eq!(rows.len(), 44);
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let (st, gr, ctl) = (col("statement"), col("groups"), col("controls"));
    for (row, r) in rows[1..].iter().zip(&want) {
        assert_eq!(row.len(), rows[0].len());
        let cell = &row[st];
        if let Some(s) = &r.statement {
            if s.starts_with(['=', '+', '-', '@']) {
                assert!(cell.starts_with('\''), "unguarded formula {cell:?}");
            }
            assert_eq!(csv::unguard(cell), s);
        } else {
            assert_eq!(cell, "");
        }
        assert_eq!(row[gr], r.groups.join(";"));
        assert!(!row[ctl].is_empty());
    }
}

#[tokio::test]
async fn tampered_export_fails_verification() {
    let f = fixture().await;
    run(&f);
    let pk = PublicKey::of(f.keys.as_ref()).unwrap();
    let ok = verify_export(&f.out, Some(&pk)).unwrap();
    assert!(ok.is_ok(), "{:?}", ok.problems);
    assert!(ok.manifest.unwrap().checkpoint.is_some());

    // A different trusted key.
    let other_dir = tempfile::tempdir().unwrap();
    let other = SoftwareKeyStore::open_or_create(&other_dir.path().join("k")).unwrap();
    let check = verify_export(&f.out, Some(&PublicKey::of(&other).unwrap())).unwrap();
    assert!(check.problems.contains(&ExportProblem::UntrustedSigner));

    // Edit one record in the CSV.
    let path = f.out.join("records.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("SELECT 3", "SELECT 4", 1)).unwrap();
    let check = verify_export(&f.out, Some(&pk)).unwrap();
    assert_eq!(
        check.problems,
        vec![ExportProblem::FileChanged("records.csv".into())]
    );
    std::fs::write(&path, text).unwrap();

    // Edit the manifest (e.g. to match an edited file): the signature breaks.
    let mpath = f.out.join("manifest.json");
    let m = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, m.replacen("\"records\": 43", "\"records\": 42", 1)).unwrap();
    let check = verify_export(&f.out, Some(&pk)).unwrap();
    assert_eq!(check.problems, vec![ExportProblem::BadSignature]);
    std::fs::write(&mpath, m).unwrap();

    // Remove a file.
    std::fs::remove_file(f.out.join("records.jsonl")).unwrap();
    let check = verify_export(&f.out, Some(&pk)).unwrap();
    assert_eq!(
        check.problems,
        vec![ExportProblem::MissingFile("records.jsonl".into())]
    );
}
