//! Tamper evidence with a key store: sealed records, signed checkpoints, the high-water mark,
//! proofs, retention and key rotation. Each kind of tampering must be named by `verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_audit::merkle::{verify_consistency, verify_inclusion};
use gatehouse_audit::{
    prune, rotate_signing_key, verify, AuditError, AuditReader, AuditStore, BadRecord, ChainBreak,
    CheckpointKind, Decision, EventKind, Problem, PublicKey, Record, StoreOptions, VerifyOptions,
};
use gatehouse_board::{KeyStore, SoftwareKeyStore};
use rusqlite::Connection;

struct Env {
    _dir: tempfile::TempDir,
    path: PathBuf,
    keys: Arc<dyn KeyStore>,
}

fn new_env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open_or_create(&dir.path().join("keys")).unwrap());
    let path = dir.path().join("data").join("audit.db");
    Env {
        _dir: dir,
        path,
        keys,
    }
}

fn stmt(i: i64) -> Record {
    let mut r = Record::new(
        EventKind::Statement,
        "gw",
        1_700_000_000_000_000 + i * 1_000_000,
    );
    r.username = Some("alice".into());
    r.email = Some("alice@example.com".into());
    r.groups = vec!["analysts".into()];
    r.source = Some("10.0.0.1:5000".into());
    r.connection = Some("prod".into());
    r.statement = Some(format!("SELECT secret_column_{i} FROM t"));
    r.decision = Some(if i % 7 == 0 {
        Decision::Deny
    } else {
        Decision::Allow
    });
    r
}

fn opts() -> StoreOptions {
    StoreOptions {
        checkpoint_every: 100,
        ..StoreOptions::default()
    }
}

/// Writes records 1..=n (in batches of `batch`) and shuts down (final checkpoint).
async fn write(env: &Env, from: i64, n: i64) {
    let store = AuditStore::open_with(&env.path, opts(), env.keys.clone()).unwrap();
    let recs: Vec<Record> = (from..from + n).map(stmt).collect();
    for chunk in recs.chunks(37) {
        store.append_batch(chunk).await.unwrap();
        // Ingest each batch, as the ingest window would at this pace: checkpoints then
        // fall every `checkpoint_every` records instead of once for the whole burst.
        store.flush().await.unwrap();
    }
    store.shutdown().unwrap();
}

fn check(env: &Env) -> gatehouse_audit::Verification {
    let o = VerifyOptions {
        keys: Some(env.keys.clone()),
        trusted_key: Some(PublicKey::of(env.keys.as_ref()).unwrap()),
        ..VerifyOptions::default()
    };
    verify(&env.path, &o, |_| {}).unwrap()
}

fn db(env: &Env) -> Connection {
    Connection::open(&env.path).unwrap()
}

#[tokio::test]
async fn clean_store_verifies_with_checkpoints_and_sealed_rows() {
    let env = new_env();
    write(&env, 1, 1000).await;
    let v = check(&env);
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!(v.records, 1000);
    assert!(v.content_checked);
    // One per 100 records, taken at the ingestion that crosses it (every 111), plus shutdown.
    assert!(v.checkpoints >= 9, "{}", v.checkpoints);
    assert_eq!(v.uncovered, 0);
    assert_eq!(v.last_checkpoint.as_ref().unwrap().size, 1000);
    // The shutdown checkpoint is written when records are left uncovered; when the count
    // checkpoint after the last ingestion already covered all 1,000 (which depends on how
    // the ingestions fell), there is nothing left for it.
    assert!(
        matches!(
            v.last_checkpoint.unwrap().kind,
            CheckpointKind::Shutdown | CheckpointKind::Interval
        ),
        "the last checkpoint covers the whole store"
    );

    // Sensitive text is not in the file in the clear.
    let bytes = std::fs::read(&env.path).unwrap();
    let needle = b"secret_column_5";
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    let needle = b"alice@example.com";
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));

    // Readers need the keys; with them, the records come back whole.
    assert!(matches!(
        AuditReader::open(&env.path).unwrap().tail(1),
        Err(AuditError::KeysRequired)
    ));
    let reader = AuditReader::open_with(&env.path, env.keys.clone()).unwrap();
    let got = reader.tail(1).unwrap();
    assert_eq!(got[0].record, stmt(1000));
    assert!(reader.verify_chain().unwrap().is_ok());
    // Search by a sealed field still works.
    let f = gatehouse_audit::Filter {
        username: Some("alice".into()),
        limit: Some(3),
        ..Default::default()
    };
    assert_eq!(reader.search(&f).unwrap().len(), 3);
    // Opening without keys is refused once sealed.
    assert!(matches!(
        AuditStore::open(&env.path, StoreOptions::default()),
        Err(AuditError::KeysRequired)
    ));
    // Without keys, verification is structural and says so.
    let v = verify(&env.path, &VerifyOptions::default(), |_| {}).unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    assert!(!v.content_checked);
}

#[tokio::test]
async fn proofs_verify_against_signed_checkpoints() {
    let env = new_env();
    write(&env, 1, 700).await;
    let reader = AuditReader::open_with(&env.path, env.keys.clone()).unwrap();
    let cps = reader.checkpoints().unwrap();
    let last = cps.last().unwrap();
    assert!(last.signature_valid());
    let rec = &reader.after(522, 1).unwrap()[0];
    assert_eq!(rec.seq, 523);
    let proof = reader.inclusion_proof(523, last.size).unwrap().unwrap();
    assert!(verify_inclusion(
        522,
        last.size,
        &rec.leaf_hash(),
        &proof,
        &last.root
    ));
    assert!(!verify_inclusion(
        521,
        last.size,
        &rec.leaf_hash(),
        &proof,
        &last.root
    ));
    let first = &cps[0];
    let cproof = reader
        .consistency_proof(first.size, last.size)
        .unwrap()
        .unwrap();
    assert!(verify_consistency(
        first.size,
        last.size,
        &first.root,
        &last.root,
        &cproof
    ));
    assert!(!verify_consistency(
        first.size, last.size, &last.root, &last.root, &cproof
    ));
    assert!(reader.inclusion_proof(701, 700).unwrap().is_none());
}

#[tokio::test]
async fn edited_sealed_row_is_named() {
    let env = new_env();
    write(&env, 1, 300).await;
    // Flip one byte of the ciphertext of seq 123.
    db(&env)
        .execute(
            "UPDATE records SET sealed = CAST(substr(sealed, 1, 20) || X'00' || substr(sealed, 22) AS BLOB) WHERE seq = 123",
            [],
        )
        .unwrap();
    let v = check(&env);
    assert_eq!(
        v.first_bad_record(),
        Some(BadRecord {
            seq: 123,
            reason: ChainBreak::SealBroken
        })
    );
}

#[tokio::test]
async fn edited_clear_column_is_named() {
    let env = new_env();
    write(&env, 1, 300).await;
    db(&env)
        .execute("UPDATE records SET decision = 'allow' WHERE seq = 98", [])
        .unwrap();
    let v = check(&env);
    assert_eq!(
        v.first_bad_record(),
        Some(BadRecord {
            seq: 98,
            reason: ChainBreak::ClearColumnsMismatch
        })
    );
}

#[tokio::test]
async fn moved_ciphertext_is_named() {
    let env = new_env();
    write(&env, 1, 300).await;
    db(&env)
        .execute(
            "UPDATE records SET sealed = (SELECT sealed FROM records WHERE seq = 11) WHERE seq = 12",
            [],
        )
        .unwrap();
    assert_eq!(
        check(&env).first_bad_record().map(|b| (b.seq, b.reason)),
        Some((12, ChainBreak::SealBroken))
    );
}

#[tokio::test]
async fn rewritten_chain_is_caught_by_checkpoint_roots() {
    // An attacker with the audit key re-seals an edited record and recomputes every hash
    // after it: the chain is self-consistent, the signed Merkle roots are not.
    let env = new_env();
    write(&env, 1, 300).await;
    let plain = tempfile::tempdir().unwrap();
    let plain_path = plain.path().join("p.db");
    // Build the forged rows in a plaintext store and copy its hashes over (key-less rows).
    let forged = AuditStore::open(&plain_path, StoreOptions::default()).unwrap();
    let mut recs: Vec<Record> = (1..=300).map(stmt).collect();
    recs[199].statement = Some("SELECT innocent".into());
    forged.append_batch(&recs).await.unwrap();
    forged.shutdown().unwrap();
    let c = db(&env);
    c.execute("ATTACH DATABASE ?1 AS f", [plain_path.to_str().unwrap()])
        .unwrap();
    c.execute_batch(
        "DELETE FROM main.records;
         INSERT INTO main.records SELECT * FROM f.records;
         DELETE FROM main.merkle_chunks;
         INSERT INTO main.merkle_chunks SELECT * FROM f.merkle_chunks;",
    )
    .unwrap();
    drop(c);
    let v = check(&env);
    assert!(v.first_bad_record().is_none(), "{:?}", v.problems);
    assert!(
        v.problems
            .iter()
            .any(|p| matches!(p, Problem::CheckpointRoot { size, .. } if *size >= 200)),
        "{:?}",
        v.problems
    );
    assert!(!v
        .problems
        .iter()
        .any(|p| matches!(p, Problem::CheckpointRoot { size, .. } if *size < 200)));
}

#[tokio::test]
async fn deleted_and_reordered_rows_are_named() {
    let env = new_env();
    write(&env, 1, 300).await;
    db(&env)
        .execute("DELETE FROM records WHERE seq = 77", [])
        .unwrap();
    assert_eq!(
        check(&env).first_bad_record(),
        Some(BadRecord {
            seq: 77,
            reason: ChainBreak::Missing
        })
    );

    let env = new_env();
    write(&env, 1, 300).await;
    db(&env)
        .execute_batch(
            "BEGIN;
             UPDATE records SET seq = -1 WHERE seq = 30;
             UPDATE records SET seq = 30 WHERE seq = 31;
             UPDATE records SET seq = 31 WHERE seq = -1;
             COMMIT;",
        )
        .unwrap();
    assert_eq!(check(&env).first_bad_record().map(|b| b.seq), Some(30));
}

#[tokio::test]
async fn truncated_tail_is_named() {
    let env = new_env();
    write(&env, 1, 300).await;
    db(&env)
        .execute("DELETE FROM records WHERE seq > 290", [])
        .unwrap();
    let v = check(&env);
    assert!(v.first_bad_record().is_none());
    assert!(
        v.problems.contains(&Problem::Truncated {
            checkpoint_size: 300,
            last_seq: 290
        }),
        "{:?}",
        v.problems
    );
}

#[tokio::test]
async fn replaced_signing_key_is_named_and_rotation_is_accepted() {
    let env = new_env();
    write(&env, 1, 150).await;
    // A different key store (same audit DB) signs later checkpoints: no rotation record.
    let other_dir = tempfile::tempdir().unwrap();
    let other: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open_or_create(&other_dir.path().join("k")).unwrap());
    // Its audit key differs too; reading old rows needs the old key, so only sign with it.
    let foreign = Env {
        _dir: tempfile::tempdir().unwrap(),
        path: env.path.clone(),
        keys: other.clone(),
    };
    write(&foreign, 151, 50).await;
    let v = check(&env);
    let other_id = PublicKey::of(other.as_ref()).unwrap().key_id().to_string();
    assert!(
        v.problems
            .iter()
            .any(|p| matches!(p, Problem::KeyChanged { key_id, .. } if *key_id == other_id)),
        "{:?}",
        v.problems
    );
    // Trusting the foreign key instead: the first checkpoint is untrusted.
    let o = VerifyOptions {
        trusted_key: Some(PublicKey::of(other.as_ref()).unwrap()),
        ..VerifyOptions::default()
    };
    let v = verify(&env.path, &o, |_| {}).unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| matches!(p, Problem::UntrustedKey { .. })),
        "{:?}",
        v.problems
    );

    // A proper rotation: the old key endorses the new one first.
    let env = new_env();
    write(&env, 1, 150).await;
    let new_dir = tempfile::tempdir().unwrap();
    let new_keys = SoftwareKeyStore::open_or_create(&new_dir.path().join("k")).unwrap();
    let cp = rotate_signing_key(
        &env.path,
        env.keys.as_ref(),
        &PublicKey::of(&new_keys).unwrap(),
    )
    .unwrap();
    assert_eq!(cp.kind, CheckpointKind::Rotation);
    let v = check(&env);
    assert!(v.is_ok(), "{:?}", v.problems);
}

#[tokio::test]
async fn rolled_back_database_is_refused_and_named() {
    let env = new_env();
    write(&env, 1, 200).await;
    let old_copy = env.path.with_extension("old");
    std::fs::copy(&env.path, &old_copy).unwrap();
    write(&env, 201, 100).await;
    std::fs::copy(&old_copy, &env.path).unwrap();
    let v = check(&env);
    assert!(
        v.problems.contains(&Problem::RolledBack {
            hwm_size: 300,
            db_size: 200
        }),
        "{:?}",
        v.problems
    );
    assert!(matches!(
        AuditStore::open_with(&env.path, opts(), env.keys.clone()),
        Err(AuditError::RolledBack {
            hwm_size: 300,
            db_size: 200
        })
    ));
    // Deleting the high-water mark is itself reported.
    std::fs::remove_file(gatehouse_audit::hwm_path(&env.path)).unwrap();
    assert!(check(&env).problems.contains(&Problem::HwmMissing));
}

#[tokio::test]
async fn forged_checkpoint_signature_is_named() {
    let env = new_env();
    write(&env, 1, 200).await;
    db(&env)
        .execute("UPDATE checkpoints SET size = size WHERE id = 1", [])
        .unwrap();
    db(&env)
        .execute(
            "UPDATE checkpoints SET time_us = time_us + 1 WHERE id = 1",
            [],
        )
        .unwrap();
    let v = check(&env);
    assert!(
        v.problems.contains(&Problem::Signature { id: 1 }),
        "{:?}",
        v.problems
    );
}

#[tokio::test]
async fn checkpoint_now_and_interval() {
    let env = new_env();
    let store = AuditStore::open_with(
        &env.path,
        StoreOptions {
            checkpoint_interval: Duration::from_millis(50),
            ..StoreOptions::default()
        },
        env.keys.clone(),
    )
    .unwrap();
    store.append(stmt(1)).await.unwrap();
    let cp = store.checkpoint_now().unwrap();
    assert_eq!((cp.size, cp.kind), (1, CheckpointKind::Demand));
    store.append(stmt(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reader = AuditReader::open_with(&env.path, env.keys.clone()).unwrap();
    let cps = reader.checkpoints().unwrap();
    assert_eq!(cps.last().unwrap().size, 2);
    assert_eq!(cps.last().unwrap().kind, CheckpointKind::Interval);
    store.shutdown().unwrap();
    // Nothing new: no extra shutdown checkpoint.
    assert_eq!(reader.checkpoints().unwrap().len(), cps.len());
    assert!(check(&env).is_ok());
}

#[tokio::test]
async fn prune_respects_retention_and_keeps_the_store_verifiable() {
    let env = new_env();
    write(&env, 1, 1000).await;
    let t = |i: i64| 1_700_000_000_000_000 + i * 1_000_000;
    let now = t(2000);
    // Inside the retention period: refused.
    let e = prune(
        &env.path,
        env.keys.as_ref(),
        t(600),
        Duration::from_secs(1500),
        now,
    )
    .unwrap_err();
    assert!(matches!(e, AuditError::Retention(_)), "{e:?}");
    let r = prune(
        &env.path,
        env.keys.as_ref(),
        t(600),
        Duration::from_secs(1000),
        now,
    )
    .unwrap();
    // Records 1..=599 are older; whole chunks only: 512.
    assert_eq!((r.deleted, r.first_seq), (512, 513));
    let v = check(&env);
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!((v.first_seq, v.records), (513, 488));
    // Old checkpoints (sizes 100, 200, …) still verify from kept leaves; proofs still work.
    let reader = AuditReader::open_with(&env.path, env.keys.clone()).unwrap();
    let cps = reader.checkpoints().unwrap();
    let last = cps.last().unwrap();
    let rec = &reader.after(699, 1).unwrap()[0];
    let proof = reader.inclusion_proof(700, last.size).unwrap().unwrap();
    assert!(verify_inclusion(
        699,
        last.size,
        &rec.leaf_hash(),
        &proof,
        &last.root
    ));
    let p = reader
        .consistency_proof(cps[0].size, last.size)
        .unwrap()
        .unwrap();
    assert!(verify_consistency(
        cps[0].size,
        last.size,
        &cps[0].root,
        &last.root,
        &p
    ));
    assert!(reader.verify_chain().unwrap().is_ok());
    // The store keeps appending after the pruned prefix.
    write(&env, 1001, 10).await;
    assert!(check(&env).is_ok());
}

#[tokio::test]
async fn upgrade_from_plain_store_keeps_verifying() {
    let env = new_env();
    let plain = AuditStore::open(&env.path, StoreOptions::default()).unwrap();
    plain
        .append_batch(&(1..=300).map(stmt).collect::<Vec<_>>())
        .await
        .unwrap();
    plain.shutdown().unwrap();
    write(&env, 301, 50).await;
    let v = check(&env);
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!(v.records, 350);
}
