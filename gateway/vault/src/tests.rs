#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use gatehouse_board::SoftwareKeyStore;

use super::*;

const CANARY: &str = "CANARY-4f1d9a";

struct Fixture {
    _tmp: tempfile::TempDir,
    keys: Arc<SoftwareKeyStore>,
    path: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let keys = Arc::new(SoftwareKeyStore::open_or_create(&tmp.path().join("keys")).unwrap());
        let path = tmp.path().join("vault.bin");
        Fixture {
            _tmp: tmp,
            keys,
            path,
        }
    }

    fn vault(&self) -> Vault {
        Vault::open(&self.path, self.keys.clone()).unwrap()
    }

    fn raw(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }

    fn write_raw(&self, bytes: &[u8]) {
        fs::write(&self.path, bytes).unwrap();
    }

    fn decoded(&self) -> VaultFile {
        self.vault().load().unwrap()
    }

    fn write_decoded(&self, file: &VaultFile) {
        let mut bytes = MAGIC.to_vec();
        postcard::to_io(file, &mut bytes).unwrap();
        self.write_raw(&bytes);
    }
}

fn cred(user: &str, password: &str) -> Credential {
    Credential::new(user, Secret::new(password))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Puts two entries, "alpha" holding the canary.
fn two_entries(fx: &Fixture) -> Vault {
    let vault = fx.vault();
    vault
        .put("alpha", &cred("svc_alpha", &format!("pw-{CANARY}-alpha")))
        .unwrap();
    vault
        .put("bravo", &cred("svc_bravo", "pw-bravo-2"))
        .unwrap();
    vault
}

fn assert_no_canary(err: &VaultError) {
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(CANARY), "secret in error: {shown}");
}

#[test]
fn missing_file_is_an_empty_vault() {
    let fx = Fixture::new();
    let vault = fx.vault();
    assert!(vault.names().unwrap().is_empty());
    assert!(vault.get("alpha").unwrap().is_none());
    assert!(!vault.remove("alpha").unwrap());
    assert!(vault.all_secrets().unwrap().is_empty());
    assert!(
        !fx.path.exists(),
        "reads and no-op removes must not create the file"
    );
}

#[test]
fn put_get_remove_names_round_trip_across_reopen() {
    let fx = Fixture::new();
    let vault = two_entries(&fx);
    vault.put("charlie", &cred("svc_c", "pw-c")).unwrap();
    // Replacing keeps one entry per name.
    vault
        .put("bravo", &cred("svc_bravo2", "pw-bravo-3"))
        .unwrap();
    drop(vault);

    let vault = fx.vault();
    assert_eq!(vault.names().unwrap(), ["alpha", "bravo", "charlie"]);
    let alpha = vault.get("alpha").unwrap().unwrap();
    assert_eq!(alpha.user, "svc_alpha");
    assert_eq!(alpha.password.expose(), format!("pw-{CANARY}-alpha"));
    let bravo = vault.get("bravo").unwrap().unwrap();
    assert_eq!(
        (bravo.user.as_str(), bravo.password.expose()),
        ("svc_bravo2", "pw-bravo-3")
    );
    assert_eq!(
        vault.entries().unwrap(),
        [
            ("alpha".to_owned(), "svc_alpha".to_owned()),
            ("bravo".to_owned(), "svc_bravo2".to_owned()),
            ("charlie".to_owned(), "svc_c".to_owned()),
        ]
    );
    let secrets: BTreeSet<String> = vault
        .all_secrets()
        .unwrap()
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert_eq!(
        secrets,
        BTreeSet::from([
            format!("pw-{CANARY}-alpha"),
            "pw-bravo-3".to_owned(),
            "pw-c".to_owned()
        ])
    );

    assert!(vault.remove("bravo").unwrap());
    assert!(!vault.remove("bravo").unwrap());
    assert!(vault.get("bravo").unwrap().is_none());
    drop(vault);
    assert_eq!(fx.vault().names().unwrap(), ["alpha", "charlie"]);
}

#[test]
fn get_sees_changes_made_through_another_handle() {
    let fx = Fixture::new();
    let server = fx.vault();
    assert!(server.get("alpha").unwrap().is_none());
    let cli = fx.vault();
    cli.put("alpha", &cred("svc", "first")).unwrap();
    assert_eq!(
        server.get("alpha").unwrap().unwrap().password.expose(),
        "first"
    );
    cli.put("alpha", &cred("svc", "second")).unwrap();
    assert_eq!(
        server.get("alpha").unwrap().unwrap().password.expose(),
        "second"
    );
}

#[test]
fn file_is_private_and_holds_no_plaintext() {
    let fx = Fixture::new();
    drop(two_entries(&fx));
    let mode = fs::metadata(&fx.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let raw = fx.raw();
    assert!(raw.starts_with(MAGIC));
    assert!(
        !contains(&raw, CANARY.as_bytes()),
        "password canary found in vault file"
    );
    assert!(!contains(&raw, b"pw-bravo-2"));
    assert!(
        !contains(&raw, b"svc_alpha"),
        "the upstream user is encrypted too"
    );
    assert!(
        contains(&raw, b"alpha"),
        "connection names are stored in clear"
    );
    // No temp file left behind.
    let mut tmp = fx.path.as_os_str().to_owned();
    tmp.push(".tmp");
    assert!(!Path::new(&tmp).exists());
}

#[test]
fn same_password_encrypts_differently_per_entry() {
    let fx = Fixture::new();
    let vault = fx.vault();
    vault.put("one", &cred("u", CANARY)).unwrap();
    vault.put("two", &cred("u", CANARY)).unwrap();
    let file = fx.decoded();
    assert_ne!(file.entries[0].nonce, file.entries[1].nonce);
    assert_ne!(file.entries[0].ciphertext, file.entries[1].ciphertext);
}

#[test]
fn swapping_entries_between_connections_is_detected() {
    let fx = Fixture::new();
    drop(two_entries(&fx));
    let mut file = fx.decoded();
    assert_eq!(file.entries.len(), 2);
    // Move each sealed payload under the other connection's name.
    let (first, second) = file.entries.split_at_mut(1);
    std::mem::swap(&mut first[0].connection, &mut second[0].connection);
    fx.write_decoded(&file);

    let vault = fx.vault();
    for name in ["alpha", "bravo"] {
        let err = vault.get(name).unwrap_err();
        match &err {
            VaultError::EntryUnreadable { connection } => assert_eq!(connection, name),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(name), "{err}");
        assert_no_canary(&err);
    }
    assert!(vault.all_secrets().is_err());
    assert!(vault.entries().is_err());
}

#[test]
fn tampered_ciphertext_byte_is_detected() {
    let fx = Fixture::new();
    drop(two_entries(&fx));
    let mut file = fx.decoded();
    let alpha = file
        .entries
        .iter_mut()
        .find(|e| e.connection == "alpha")
        .unwrap();
    alpha.ciphertext[3] ^= 0x01;
    fx.write_decoded(&file);
    let vault = fx.vault();
    let err = vault.get("alpha").unwrap_err();
    assert!(
        matches!(&err, VaultError::EntryUnreadable { connection } if connection == "alpha"),
        "{err:?}"
    );
    assert_no_canary(&err);
    // The untouched entry still opens.
    assert_eq!(
        vault.get("bravo").unwrap().unwrap().password.expose(),
        "pw-bravo-2"
    );
    // Other writes keep the damaged entry as it is (evidence), neither dropped nor "repaired".
    vault.put("charlie", &cred("svc_c", "pw-c")).unwrap();
    assert!(matches!(
        vault.get("alpha"),
        Err(VaultError::EntryUnreadable { .. })
    ));
    assert_eq!(vault.names().unwrap(), ["alpha", "bravo", "charlie"]);
}

/// Flipping any single byte of the file never yields a wrong credential: either something
/// fails, or what still opens is exactly what was stored.
#[test]
fn every_single_byte_flip_is_detected() {
    let fx = Fixture::new();
    drop(two_entries(&fx));
    let original = fx.raw();
    let expected: BTreeMap<&str, (&str, String)> = BTreeMap::from([
        ("alpha", ("svc_alpha", format!("pw-{CANARY}-alpha"))),
        ("bravo", ("svc_bravo", "pw-bravo-2".to_owned())),
    ]);
    for i in 0..original.len() {
        let mut bytes = original.clone();
        bytes[i] ^= 0xff;
        fx.write_raw(&bytes);
        let mut detected = false;
        match Vault::open(&fx.path, fx.keys.clone()) {
            Err(err) => {
                assert_no_canary(&err);
                detected = true;
            }
            Ok(vault) => match vault.names() {
                Err(err) => {
                    assert_no_canary(&err);
                    detected = true;
                }
                Ok(names) => {
                    for name in names {
                        match vault.get(&name) {
                            Err(err) => {
                                assert_no_canary(&err);
                                detected = true;
                            }
                            Ok(Some(c)) => {
                                let (user, password) = expected
                                    .get(name.as_str())
                                    .unwrap_or_else(|| panic!("byte {i}: {name:?} opened"));
                                assert_eq!(&c.user, user, "byte {i}");
                                assert_eq!(c.password.expose(), password, "byte {i}");
                            }
                            Ok(None) => panic!("byte {i}: listed name {name:?} not found"),
                        }
                    }
                }
            },
        }
        assert!(
            detected,
            "flipping byte {i} of {} went unnoticed",
            original.len()
        );
    }
}

#[test]
fn corrupt_file_is_a_typed_error() {
    let fx = Fixture::new();
    fx.write_raw(b"definitely not a vault");
    fs::set_permissions(&fx.path, fs::Permissions::from_mode(0o600)).unwrap();
    let err = Vault::open(&fx.path, fx.keys.clone()).unwrap_err();
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err}");

    let fx = Fixture::new();
    drop(two_entries(&fx));
    let mut raw = fx.raw();
    raw.truncate(raw.len() - 5);
    fx.write_raw(&raw);
    let err = Vault::open(&fx.path, fx.keys.clone()).unwrap_err();
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err}");

    // Duplicate names are refused rather than resolved silently.
    let fx = Fixture::new();
    drop(two_entries(&fx));
    let mut file = fx.decoded();
    file.entries[1].connection = "alpha".to_owned();
    fx.write_decoded(&file);
    let err = Vault::open(&fx.path, fx.keys.clone()).unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[test]
fn wrong_key_store_is_a_clear_error_naming_the_connection() {
    let fx = Fixture::new();
    drop(two_entries(&fx));
    let other_dir = tempfile::tempdir().unwrap();
    let other = Arc::new(SoftwareKeyStore::open_or_create(&other_dir.path().join("keys")).unwrap());
    let vault = Vault::open(&fx.path, other).unwrap();
    let err = vault.get("alpha").unwrap_err();
    match &err {
        VaultError::Key {
            connection, source, ..
        } => {
            assert_eq!(connection, "alpha");
            assert!(
                matches!(source, KeyStoreError::UnknownKey { .. }),
                "{source}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_no_canary(&err);
}

#[test]
fn rotation_keeps_entries_readable_and_rekey_moves_them_to_the_current_key() {
    let fx = Fixture::new();
    let vault = fx.vault();
    vault.put("alpha", &cred("svc_alpha", CANARY)).unwrap();
    let old = fx.keys.data_key(KeyPurpose::Vault).unwrap().id();

    let new = fx.keys.rotate_data_key(KeyPurpose::Vault).unwrap();
    assert_ne!(old, new);
    vault.put("bravo", &cred("svc_bravo", "pw-b")).unwrap();
    let ids: Vec<KeyId> = fx.decoded().entries.into_iter().map(|e| e.key_id).collect();
    assert_eq!(ids, [old.clone(), new.clone()]);
    assert_eq!(
        vault.get("alpha").unwrap().unwrap().password.expose(),
        CANARY
    );
    assert_eq!(
        vault.get("bravo").unwrap().unwrap().password.expose(),
        "pw-b"
    );

    let before = fx.decoded();
    assert_eq!(vault.rekey().unwrap(), 1);
    let after = fx.decoded();
    assert!(after.entries.iter().all(|e| e.key_id == new));
    assert_ne!(
        before.entries[0].nonce, after.entries[0].nonce,
        "re-sealed with a fresh nonce"
    );
    assert_eq!(
        before.entries[1].ciphertext, after.entries[1].ciphertext,
        "current entries untouched"
    );
    assert_eq!(
        vault.get("alpha").unwrap().unwrap().password.expose(),
        CANARY
    );
    assert_eq!(vault.get("alpha").unwrap().unwrap().user, "svc_alpha");
    assert_eq!(vault.rekey().unwrap(), 0);

    // After rekey the entries no longer need the old key: a store without it still reads them.
    let key_file = fx.keys.dir().join(format!("vault-{old}.key"));
    assert!(key_file.exists());
    fs::remove_file(&key_file).unwrap();
    assert_eq!(vault.entries().unwrap().len(), 2);
}

#[test]
fn rekey_writes_nothing_when_an_entry_is_unreadable() {
    let fx = Fixture::new();
    drop(two_entries(&fx));
    fx.keys.rotate_data_key(KeyPurpose::Vault).unwrap();
    let mut file = fx.decoded();
    file.entries[0].ciphertext[0] ^= 0x80;
    fx.write_decoded(&file);
    let before = fx.raw();
    let err = fx.vault().rekey().unwrap_err();
    assert!(matches!(err, VaultError::EntryUnreadable { .. }), "{err}");
    assert_eq!(fx.raw(), before);
}

#[test]
fn debug_and_display_never_show_the_password() {
    let c = cred("svc_alpha", CANARY);
    let shown = format!("{c:?} {:?} {} {c:#?}", c.password, c.password);
    assert!(!shown.contains(CANARY), "{shown}");
    assert!(shown.contains("[redacted]"));
    assert!(shown.contains("svc_alpha"));

    let fx = Fixture::new();
    let vault = two_entries(&fx);
    assert!(!format!("{vault:?}").contains(CANARY));
}

#[test]
fn refuses_exposed_vault_file() {
    let fx = Fixture::new();
    drop(two_entries(&fx));
    fs::set_permissions(&fx.path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Vault::open(&fx.path, fx.keys.clone()).unwrap_err();
    assert!(
        matches!(err, VaultError::InsecurePermissions { mode: 0o644, .. }),
        "{err}"
    );
}

#[test]
fn invalid_input_is_rejected_without_echoing_the_password() {
    let fx = Fixture::new();
    let vault = fx.vault();
    for name in ["", "bad\nname", &"x".repeat(256)] {
        let err = vault.put(name, &cred("u", CANARY)).unwrap_err();
        assert!(matches!(err, VaultError::InvalidConnectionName(_)), "{err}");
    }
    let err = vault.put("ok", &cred("", CANARY)).unwrap_err();
    assert!(matches!(err, VaultError::InvalidCredential { .. }), "{err}");
    assert_no_canary(&err);
    let err = vault
        .put("ok", &cred("u", &format!("{CANARY}\0tail")))
        .unwrap_err();
    assert_no_canary(&err);
    assert!(vault.names().unwrap().is_empty());
}

#[test]
fn concurrent_writers_lose_no_update() {
    let fx = Fixture::new();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            // Separate handles stand in for separate processes (the file lock serialises
            // them); threads sharing one handle use the mutex as well.
            let vault = Arc::new(fx.vault());
            std::thread::spawn(move || {
                for i in 0..8 {
                    vault
                        .put(&format!("conn-{t}-{i}"), &cred("u", &format!("p{t}{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let names = fx.vault().names().unwrap();
    assert_eq!(names.len(), 32, "{names:?}");
    assert_eq!(
        fx.vault()
            .get("conn-3-7")
            .unwrap()
            .unwrap()
            .password
            .expose(),
        "p37"
    );
}
