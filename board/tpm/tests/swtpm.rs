//! The TPM key store against a real software TPM (`swtpm`), one per test.
//!
//! Skipped with a message when `swtpm` is not installed, unless `GATEHOUSE_REQUIRE_TPM=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use common::{snapshot, swtpm_available, Swtpm};
use gatehouse_board::{KeyId, KeyPurpose};
use gatehouse_board_tpm::{TpmError, TpmKeyStore, TpmOptions, SIGNATURE_SCHEME};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

/// A test directory with a TPM state and a key-store state directory inside.
struct Dirs {
    _root: tempfile::TempDir,
    tpm_a: std::path::PathBuf,
    tpm_b: std::path::PathBuf,
    keys: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    Dirs {
        tpm_a: root.path().join("tpm-a"),
        tpm_b: root.path().join("tpm-b"),
        keys: root.path().join("keys"),
        _root: root,
    }
}

fn key_bytes(store: &TpmKeyStore, purpose: KeyPurpose) -> (KeyId, [u8; 32]) {
    let key = store.current_key(purpose).unwrap();
    (key.id().clone(), *key.bytes())
}

#[test]
fn sealed_keys_survive_reopen_and_swtpm_restart() {
    if !swtpm_available("sealed_keys_survive_reopen_and_swtpm_restart") {
        return;
    }
    let d = dirs();
    let mut tpm = Swtpm::start(&d.tpm_a);
    let store = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    let vault = key_bytes(&store, KeyPurpose::Vault);
    let audit = key_bytes(&store, KeyPurpose::Audit);
    assert_ne!(vault.1, audit.1, "each purpose has its own key");
    assert_ne!(vault.1, [0u8; 32]);
    assert_eq!(vault.0, KeyId::for_data_key(KeyPurpose::Vault, &vault.1));
    let signing_id = store.signing_id().clone();
    drop(store);

    // Private files and directory, and no key bytes in any file.
    assert_eq!(
        fs::metadata(&d.keys).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for (name, (bytes, mode)) in snapshot(&d.keys) {
        assert_eq!(mode & 0o777, 0o600, "{name}");
        assert!(
            !bytes.windows(32).any(|w| w == vault.1 || w == audit.1),
            "{name} holds a key in the clear"
        );
    }

    let reopened = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    assert_eq!(key_bytes(&reopened, KeyPurpose::Vault), vault);
    assert_eq!(key_bytes(&reopened, KeyPurpose::Audit), audit);
    assert_eq!(reopened.signing_id(), &signing_id);
    drop(reopened);

    tpm.stop();
    let tpm = Swtpm::start(&d.tpm_a);
    let after_restart = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    assert_eq!(key_bytes(&after_restart, KeyPurpose::Vault), vault);
    assert_eq!(key_bytes(&after_restart, KeyPurpose::Audit), audit);
    assert_eq!(after_restart.signing_id(), &signing_id);
    let by_id = after_restart
        .key_by_id(KeyPurpose::Audit, &audit.0)
        .unwrap();
    assert_eq!(*by_id.bytes(), audit.1);
    let debug = format!("{by_id:?} {after_restart:?}");
    assert!(debug.contains(audit.0.as_str()), "{debug}");
    let hex: String = audit.1.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!debug.contains(&hex[..8]), "{debug}");
    assert!(
        !debug.contains(&format!("{:?}", &audit.1[..2])[1..]),
        "{debug}"
    );
}

#[test]
fn signatures_verify_with_ring_and_openssl() {
    if !swtpm_available("signatures_verify_with_ring_and_openssl") {
        return;
    }
    let d = dirs();
    let tpm = Swtpm::start(&d.tpm_a);
    let store = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    assert_eq!(store.signature_scheme(), SIGNATURE_SCHEME);
    assert_eq!(SIGNATURE_SCHEME, "ecdsa-p256-sha256");
    let public = store.signing_public_key_sec1().to_vec();
    assert_eq!(public.len(), 65);
    assert_eq!(public[0], 0x04);
    assert_eq!(store.signing_id(), &KeyId::for_signing_key(&public));

    let message = b"audit chain head 0001 sha256:abcdef";
    let signature = store.sign_der(message).unwrap();
    assert_eq!(signature[0], 0x30, "DER SEQUENCE");
    let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public);
    verifier.verify(message, &signature).unwrap();
    assert!(verifier.verify(b"another message", &signature).is_err());
    // ECDSA is randomised: a second signature differs and verifies too.
    let second = store.sign_der(message).unwrap();
    assert_ne!(second, signature);
    verifier.verify(message, &second).unwrap();

    // OpenSSL, from the SubjectPublicKeyInfo, as an offline verifier would.
    let work = tempfile::tempdir().unwrap();
    let spki = work.path().join("pub.der");
    let pem = work.path().join("pub.pem");
    let msg = work.path().join("msg");
    let sig = work.path().join("sig.der");
    let bad = work.path().join("bad");
    fs::write(&spki, store.signing_public_key_spki_der()).unwrap();
    fs::write(&msg, message).unwrap();
    fs::write(&bad, b"audit chain head 0002").unwrap();
    fs::write(&sig, &signature).unwrap();
    let status = Command::new("openssl")
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&spki)
        .arg("-out")
        .arg(&pem)
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl cannot read the SPKI");
    let verify = |file: &std::path::Path| {
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pem)
            .arg("-signature")
            .arg(&sig)
            .arg(file)
            .output()
            .expect("run openssl")
    };
    let good = verify(&msg);
    assert!(
        good.status.success(),
        "openssl rejected the signature: {}",
        String::from_utf8_lossy(&good.stdout)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("Verified OK"));
    assert!(
        !verify(&bad).status.success(),
        "openssl accepted a wrong message"
    );

    // The same key after reopen.
    drop(store);
    let reopened = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    assert_eq!(reopened.signing_public_key_sec1(), public.as_slice());
    verifier
        .verify(b"later", &reopened.sign_der(b"later").unwrap())
        .unwrap();
}

#[test]
fn another_tpm_is_refused_without_touching_state() {
    if !swtpm_available("another_tpm_is_refused_without_touching_state") {
        return;
    }
    let d = dirs();
    let mut tpm_a = Swtpm::start(&d.tpm_a);
    let store = TpmKeyStore::open_or_provision(&tpm_a.tcti(), &d.keys).unwrap();
    let vault = key_bytes(&store, KeyPurpose::Vault);
    drop(store);
    tpm_a.stop();
    let before = snapshot(&d.keys);

    // A fresh swtpm state is another TPM: other seeds, other primary key.
    let tpm_b = Swtpm::start(&d.tpm_b);
    let err = TpmKeyStore::open_or_provision(&tpm_b.tcti(), &d.keys).unwrap_err();
    assert!(matches!(err, TpmError::ForeignTpm { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("belong to another TPM"), "{text}");
    assert!(text.contains("Nothing was changed or deleted"), "{text}");
    assert_eq!(snapshot(&d.keys), before, "state files changed");

    // A blob from TPM A smuggled into a store of TPM B: the TPM's integrity check
    // refuses it, and that too is reported as another TPM's object.
    let keys_b = d.keys.with_file_name("keys-b");
    let store_b = TpmKeyStore::open_or_provision(&tpm_b.tcti(), &keys_b).unwrap();
    drop(store_b);
    let index_path = keys_b.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    index["purposes"]["vault"]["current"] = vault.0.as_str().into();
    index["purposes"]["vault"]["keys"] = serde_json::json!([vault.0.as_str()]);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    for ext in ["pub", "priv"] {
        let name = format!("vault-{}.{ext}", vault.0);
        fs::copy(d.keys.join(&name), keys_b.join(&name)).unwrap();
    }
    let before_b = snapshot(&keys_b);
    let err = TpmKeyStore::open_or_provision(&tpm_b.tcti(), &keys_b).unwrap_err();
    assert!(matches!(err, TpmError::ForeignTpm { .. }), "{err:?}");
    assert_eq!(snapshot(&keys_b), before_b);

    // The original TPM still opens the untouched state.
    drop(tpm_b);
    let tpm_a = Swtpm::start(&d.tpm_a);
    let store = TpmKeyStore::open_or_provision(&tpm_a.tcti(), &d.keys).unwrap();
    assert_eq!(key_bytes(&store, KeyPurpose::Vault), vault);
    drop(store);

    // Blobs without an index are not provisioned over.
    fs::remove_file(d.keys.join("index.json")).unwrap();
    let before = snapshot(&d.keys);
    let err = TpmKeyStore::open_or_provision(&tpm_a.tcti(), &d.keys).unwrap_err();
    assert!(matches!(err, TpmError::IndexMissing { .. }), "{err:?}");
    assert_eq!(snapshot(&d.keys), before);
}

#[test]
fn rotation_keeps_old_keys() {
    if !swtpm_available("rotation_keeps_old_keys") {
        return;
    }
    let d = dirs();
    let tpm = Swtpm::start(&d.tpm_a);
    let store = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    let first = key_bytes(&store, KeyPurpose::Vault);
    let audit = key_bytes(&store, KeyPurpose::Audit);
    let second_id = store.rotate(KeyPurpose::Vault).unwrap();
    let third_id = store.rotate(KeyPurpose::Vault).unwrap();
    assert_ne!(second_id, first.0);
    assert_ne!(third_id, second_id);
    let current = key_bytes(&store, KeyPurpose::Vault);
    assert_eq!(current.0, third_id);
    assert_eq!(
        store.data_key_ids(KeyPurpose::Vault).unwrap(),
        vec![first.0.clone(), second_id.clone(), third_id.clone()]
    );
    let second = *store
        .key_by_id(KeyPurpose::Vault, &second_id)
        .unwrap()
        .bytes();
    assert_eq!(
        *store
            .key_by_id(KeyPurpose::Vault, &first.0)
            .unwrap()
            .bytes(),
        first.1
    );
    assert_eq!(
        key_bytes(&store, KeyPurpose::Audit),
        audit,
        "other purpose untouched"
    );

    // Ids belong to their purpose; unknown ids are errors.
    let err = store.key_by_id(KeyPurpose::Audit, &first.0).unwrap_err();
    assert!(matches!(err, TpmError::UnknownKey { .. }), "{err:?}");
    let unknown = KeyId::parse("0000000000000000").unwrap();
    assert!(matches!(
        store.key_by_id(KeyPurpose::Vault, &unknown),
        Err(TpmError::UnknownKey { .. })
    ));
    drop(store);

    let reopened = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    assert_eq!(key_bytes(&reopened, KeyPurpose::Vault), current);
    for (id, bytes) in [(&first.0, first.1), (&second_id, second)] {
        assert_eq!(
            *reopened.key_by_id(KeyPurpose::Vault, id).unwrap().bytes(),
            bytes
        );
    }
}

#[test]
fn no_handle_leak_over_many_operations() {
    use tss_esapi::constants::CapabilityType;
    use tss_esapi::structures::CapabilityData;

    if !swtpm_available("no_handle_leak_over_many_operations") {
        return;
    }
    let d = dirs();
    let tpm = Swtpm::start(&d.tpm_a);
    let store = Arc::new(TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap());
    let expected = key_bytes(&store, KeyPurpose::Vault);
    // swtpm has 3 transient object slots and no resource manager: one leaked handle per
    // call would fail within a few iterations with TPM_RC_OBJECT_MEMORY.
    for i in 0..200 {
        let key = store.current_key(KeyPurpose::Vault).unwrap_or_else(|e| {
            panic!("unseal {i} failed: {e}");
        });
        assert_eq!(*key.bytes(), expected.1);
    }
    for _ in 0..20 {
        store.sign_der(b"m").unwrap();
    }
    // Concurrent use from several threads is serialised by the store.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for _ in 0..10 {
                    store.current_key(KeyPurpose::Audit).unwrap();
                    store.sign_der(b"t").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    store.rotate(KeyPurpose::Audit).unwrap();

    // Ask the TPM itself: no transient objects and no sessions left loaded.
    let mut ctx = tss_esapi::Context::new(tpm.tcti().parse().unwrap()).unwrap();
    for (first_handle, what) in [
        (0x8000_0000u32, "transient objects"),
        (0x0200_0000, "loaded sessions"),
    ] {
        let (data, _) = ctx
            .get_capability(CapabilityType::Handles, first_handle, 64)
            .unwrap();
        match data {
            CapabilityData::Handles(list) => {
                assert!(list.is_empty(), "{what} left in the TPM: {list:?}")
            }
            other => panic!("unexpected capability data {other:?}"),
        }
    }
}

#[test]
fn pcr_policy_binds_keys_to_pcr_values() {
    use tss_esapi::handles::PcrHandle;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{Digest, DigestValues};

    if !swtpm_available("pcr_policy_binds_keys_to_pcr_values") {
        return;
    }
    let d = dirs();
    let tpm = Swtpm::start(&d.tpm_a);
    let options = TpmOptions::with_pcr_policy(&[16]);
    let store = TpmKeyStore::open_or_provision_with(&tpm.tcti(), &d.keys, &options).unwrap();
    assert_eq!(store.pcr_policy(), &[16]);
    let vault = key_bytes(&store, KeyPurpose::Vault);
    let public = store.signing_public_key_sec1().to_vec();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public)
        .verify(b"x", &store.sign_der(b"x").unwrap())
        .unwrap();
    drop(store);

    // Opening with another policy is refused.
    let err = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap_err();
    assert!(matches!(err, TpmError::PolicyMismatch { .. }), "{err:?}");

    let with_ctx = |f: &dyn Fn(&mut tss_esapi::Context)| {
        let mut ctx = tss_esapi::Context::new(tpm.tcti().parse().unwrap()).unwrap();
        ctx.execute_with_session(Some(AuthSession::Password), |ctx| f(ctx));
    };
    // Change PCR 16 (the debug PCR, resettable from locality 0).
    with_ctx(&|ctx| {
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(vec![0x5a; 32]).unwrap(),
        );
        ctx.pcr_extend(PcrHandle::Pcr16, values).unwrap();
    });
    let before = snapshot(&d.keys);
    let err = TpmKeyStore::open_or_provision_with(&tpm.tcti(), &d.keys, &options).unwrap_err();
    assert!(matches!(err, TpmError::PcrPolicyFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("PCR values"), "{err}");
    assert_eq!(snapshot(&d.keys), before, "state files changed");

    // Back to the sealed state: the same keys come out again.
    with_ctx(&|ctx| ctx.pcr_reset(PcrHandle::Pcr16).unwrap());
    let store = TpmKeyStore::open_or_provision_with(&tpm.tcti(), &d.keys, &options).unwrap();
    assert_eq!(key_bytes(&store, KeyPurpose::Vault), vault);

    assert!(matches!(
        TpmKeyStore::open_or_provision_with(
            &tpm.tcti(),
            &d.keys,
            &TpmOptions::with_pcr_policy(&[24])
        ),
        Err(TpmError::InvalidPcrSelection(_))
    ));
}

#[test]
fn info_matches_tpm2_getcap() {
    if !swtpm_available("info_matches_tpm2_getcap") {
        return;
    }
    let d = dirs();
    let tpm = Swtpm::start(&d.tpm_a);
    let store = TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap();
    let info = store.info();
    drop(store);
    // swtpm (libtpms) reports manufacturer "IBM" and vendor strings "SW  " " TPM".
    assert_eq!(info.manufacturer, "IBM");
    assert_eq!(info.vendor, "SW   TPM");

    // An independent reading through tpm2-tools, when installed.
    let Ok(out) = Command::new("tpm2_getcap")
        .arg("-T")
        .arg(tpm.tcti())
        .arg("properties-fixed")
        .output()
    else {
        assert_ne!(
            std::env::var("GATEHOUSE_REQUIRE_TPM").as_deref(),
            Ok("1"),
            "tpm2_getcap (tpm2-tools) is required when GATEHOUSE_REQUIRE_TPM=1"
        );
        eprintln!("tpm2_getcap not installed; independent comparison skipped");
        return;
    };
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let raw = |name: &str| -> u32 {
        let block = &text[text.find(&format!("{name}:")).unwrap()..];
        let line = block.lines().find(|l| l.contains("raw:")).unwrap();
        let hex = line.trim().trim_start_matches("raw:").trim();
        u32::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
    };
    assert_eq!(info.manufacturer_id, raw("TPM2_PT_MANUFACTURER"));
    assert_eq!(
        info.firmware_version_raw,
        [
            raw("TPM2_PT_FIRMWARE_VERSION_1"),
            raw("TPM2_PT_FIRMWARE_VERSION_2")
        ]
    );
    let fw1 = info.firmware_version_raw[0];
    assert!(info
        .firmware_version
        .starts_with(&format!("{}.{}.", fw1 >> 16, fw1 & 0xffff)));
}

#[test]
fn works_behind_the_key_store_trait() {
    use gatehouse_board::{Backend, KeyStore};

    if !swtpm_available("works_behind_the_key_store_trait") {
        return;
    }
    let d = dirs();
    let tpm = Swtpm::start(&d.tpm_a);
    let store: Box<dyn KeyStore> =
        Box::new(TpmKeyStore::open_or_provision(&tpm.tcti(), &d.keys).unwrap());
    assert_eq!(store.backend(), Backend::Tpm);
    let key = store.data_key(KeyPurpose::Vault).unwrap();
    assert_eq!(
        key.id(),
        KeyId::for_data_key(KeyPurpose::Vault, key.bytes())
    );
    let rotated = store.rotate_data_key(KeyPurpose::Vault).unwrap();
    assert_eq!(store.data_key(KeyPurpose::Vault).unwrap().id(), rotated);
    assert_eq!(
        store
            .data_key_by_id(KeyPurpose::Vault, &key.id())
            .unwrap()
            .bytes(),
        key.bytes()
    );
    let public = store.signing_public_key().unwrap();
    assert_eq!(
        store.signing_key_id().unwrap(),
        KeyId::for_signing_key(&public)
    );
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public)
        .verify(b"m", &store.sign(b"m").unwrap())
        .unwrap();
    let unknown = KeyId::parse("0000000000000000").unwrap();
    assert!(matches!(
        store.data_key_by_id(KeyPurpose::Audit, &unknown),
        Err(gatehouse_board::KeyStoreError::UnknownKey { .. })
    ));
}
