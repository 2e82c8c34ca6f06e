//! The SFTP server's SSH host key: Ed25519, made on first start, stored only sealed by the
//! key store (the TPM on an appliance), like the listener TLS key (`gatehouse/src/tls.rs`).
//!
//! The file `data_dir/sftp/host_ed25519.sealed` is
//!
//! ```text
//! gatehouse-sealed-ssh-host-key/v1 <vault data key id>
//! <base64: 12-byte nonce || AES-256-GCM(vault data key, nonce, aad, 32-byte Ed25519 seed)>
//! ```
//!
//! with `aad = "gatehouse-sealed-ssh-host-key/v1" || key id`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use gatehouse_board::{KeyId, KeyPurpose, KeyStore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use zeroize::Zeroizing;

const MAGIC: &str = "gatehouse-sealed-ssh-host-key/v1";

/// Host key errors. Messages name no key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyError {
    /// Reading or writing the sealed file failed.
    #[error("host key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key store could not give the sealing key.
    #[error("key store: {0}")]
    Keys(#[from] gatehouse_board::KeyStoreError),
    /// The file is not a sealed host key, or does not open with this key store.
    #[error(
        "the sealed SSH host key {0} does not open with this key store (another TPM, or edited)"
    )]
    Unseal(PathBuf),
    /// No randomness.
    #[error("random number generator failed")]
    Random,
}

/// Where the sealed host key lives in a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("sftp").join("host_ed25519.sealed")
}

fn aad(id: &KeyId) -> Vec<u8> {
    let mut a = MAGIC.as_bytes().to_vec();
    a.extend_from_slice(id.as_str().as_bytes());
    a
}

fn aead(bytes: &[u8; 32]) -> LessSafeKey {
    // AES-256 takes any 32-byte key; `new` fails only on a wrong length.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostKeyError + '_ {
    move |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the host key, making and sealing a new one when there is none. Two processes racing
/// to make it agree on one: the file is published with `link(2)`, which never replaces.
pub fn load_or_create(data_dir: &Path, keys: &dyn KeyStore) -> Result<PrivateKey, HostKeyError> {
    let file = path(data_dir);
    if let Some(k) = load(&file, keys)? {
        return Ok(k);
    }
    let dir = file.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let rng = SystemRandom::new();
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill(&mut seed[..]).map_err(|_| HostKeyError::Random)?;
    let dk = keys.data_key(KeyPurpose::Vault)?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| HostKeyError::Random)?;
    let mut buf = seed.to_vec();
    aead(dk.bytes())
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(&dk.id())),
            &mut buf,
        )
        .map_err(|_| HostKeyError::Random)?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&buf);
    let text = format!(
        "{MAGIC} {}\n{}\n",
        dk.id().as_str(),
        base64::engine::general_purpose::STANDARD.encode(blob)
    );
    let tmp = dir.join(format!(".host_ed25519.{}.tmp", std::process::id()));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    let linked = std::fs::hard_link(&tmp, &file);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(file = %file.display(), "generated the SFTP host key (sealed by the key store)");
            Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load(&file, keys)?.ok_or(HostKeyError::Unseal(file))
        }
        Err(e) => Err(io(&file)(e)),
    }
}

/// Loads and unseals the host key; `None` when the file does not exist.
pub fn load(file: &Path, keys: &dyn KeyStore) -> Result<Option<PrivateKey>, HostKeyError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(file)(e)),
    };
    let bad = || HostKeyError::Unseal(file.to_owned());
    let mut lines = text.lines();
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix(MAGIC))
        .map(str::trim)
        .ok_or_else(bad)?;
    let id = KeyId::parse(id).map_err(|_| bad())?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(lines.next().unwrap_or_default().trim())
        .map_err(|_| bad())?;
    if blob.len() != NONCE_LEN + 32 + AES_256_GCM.tag_len() {
        return Err(bad());
    }
    let dk = keys.data_key_by_id(KeyPurpose::Vault, &id)?;
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let plain = aead(dk.bytes())
        .open_in_place(nonce, Aad::from(aad(&id)), &mut buf)
        .map_err(|_| bad())?;
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(plain.try_into().map_err(|_| bad())?);
    Ok(Some(PrivateKey::from(Ed25519Keypair::from_seed(&seed))))
}

/// The public half in OpenSSH form (`ssh-ed25519 AAAA…`) and its SHA-256 fingerprint
/// (`SHA256:…`, as `ssh-keygen -l` prints it).
pub fn public_line_and_fingerprint(key: &PrivateKey) -> (String, String) {
    let public = key.public_key();
    let line = public
        .to_openssh()
        .unwrap_or_else(|_| String::from("(unencodable)"));
    (line, public.fingerprint(HashAlg::Sha256).to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use gatehouse_board::SoftwareKeyStore;

    #[test]
    fn made_once_sealed_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = SoftwareKeyStore::open_or_create(&tmp.path().join("keys")).unwrap();
        let a = load_or_create(tmp.path(), &keys).unwrap();
        let b = load_or_create(tmp.path(), &keys).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let text = std::fs::read_to_string(path(tmp.path())).unwrap();
        assert!(text.starts_with(MAGIC));
        // The seed is not in the file in any obvious form.
        let seed = match a.key_data() {
            russh::keys::ssh_key::private::KeypairData::Ed25519(k) => k.private.to_bytes(),
            _ => panic!("not ed25519"),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(seed);
        assert!(!text.contains(&b64) && !text.contains(&hex::encode(seed)));
        let (line, fp) = public_line_and_fingerprint(&a);
        assert!(line.starts_with("ssh-ed25519 "));
        assert!(fp.starts_with("SHA256:"));

        // Another key store cannot open it, and says so.
        let other = SoftwareKeyStore::open_or_create(&tmp.path().join("other")).unwrap();
        assert!(load(&path(tmp.path()), &other).is_err());
        // An edited file does not open.
        let mut edited = text.clone();
        edited.replace_range(text.len() - 6..text.len() - 5, "A");
        if edited == text {
            edited.replace_range(text.len() - 6..text.len() - 5, "B");
        }
        std::fs::write(path(tmp.path()), edited).unwrap();
        assert!(load(&path(tmp.path()), &keys).is_err());
    }
}
