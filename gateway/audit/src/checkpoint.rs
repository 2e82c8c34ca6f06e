//! Signed checkpoints: a statement by the appliance's signing key that the first `size`
//! records have Merkle root `root` and chain hash `last_hash`; and the high-water-mark file.
//!
//! The signed message is a small line-oriented text (like a CT "signed note"), so an auditor
//! can reproduce it without this code:
//!
//! ```text
//! gatehouse-audit-checkpoint/v1
//! size 1000
//! root <64 hex>
//! time-us 1712345678901234
//! last-hash <64 hex>
//! config <hex or ->
//! policy <hex or ->
//! kind interval|shutdown|demand|rotation|prune
//! key-id <16 hex>
//! scheme ed25519|ecdsa-p256-sha256
//! next-key <scheme>:<public key hex> | -
//! ```
//!
//! Each line ends with `\n`. `next-key` is set only on a rotation checkpoint: it is signed
//! by the outgoing key and names the key that signs the checkpoints after it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gatehouse_board::{KeyId, KeyStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::merkle::Hash;
use crate::AuditError;

/// Why a checkpoint was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// The writer's record count or time interval elapsed.
    Interval,
    /// The store shut down.
    Shutdown,
    /// [`crate::AuditStore::checkpoint_now`].
    Demand,
    /// The signing key changes: signed by the outgoing key, names the next one.
    Rotation,
    /// Written by [`crate::prune`] before it deleted anything.
    Prune,
}

impl CheckpointKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Interval => "interval",
            CheckpointKind::Shutdown => "shutdown",
            CheckpointKind::Demand => "demand",
            CheckpointKind::Rotation => "rotation",
            CheckpointKind::Prune => "prune",
        }
    }

    /// Parses [`CheckpointKind::as_str`].
    pub fn from_name(s: &str) -> Option<CheckpointKind> {
        [
            CheckpointKind::Interval,
            CheckpointKind::Shutdown,
            CheckpointKind::Demand,
            CheckpointKind::Rotation,
            CheckpointKind::Prune,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A public key with its scheme, as embedded in checkpoints and passed to verifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey {
    /// Signature scheme.
    pub scheme: SignatureScheme,
    /// Encoded public key (raw Ed25519 or uncompressed SEC1 P-256).
    pub key: Vec<u8>,
}

impl PublicKey {
    /// The key store's current signing key.
    pub fn of(keys: &dyn KeyStore) -> Result<PublicKey, AuditError> {
        Ok(PublicKey {
            scheme: keys.signature_scheme(),
            key: keys.signing_public_key().map_err(AuditError::keys)?,
        })
    }

    /// [`KeyId::for_signing_key`] of the key.
    pub fn key_id(&self) -> KeyId {
        KeyId::for_signing_key(&self.key)
    }

    /// `scheme:hex`.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.scheme.as_str(), hex::encode(&self.key))
    }

    /// Parses [`PublicKey::to_text`].
    pub fn from_text(s: &str) -> Option<PublicKey> {
        let (scheme, key) = s.split_once(':')?;
        Some(PublicKey {
            scheme: SignatureScheme::from_name(scheme)?,
            key: hex::decode(key).ok()?,
        })
    }
}

/// A signed checkpoint as stored in the `checkpoints` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Row id (ascending in write order).
    pub id: i64,
    /// Number of records (leaves) covered: seqs `1..=size`.
    pub size: u64,
    /// Merkle root of those leaves.
    pub root: Hash,
    /// When it was made (UTC microseconds).
    pub time_us: i64,
    /// Chain hash of record `size` (genesis zeros when `size == 0`).
    pub last_hash: Hash,
    /// The configuration hash in force (from the last `config.loaded` record).
    pub config_hash: Option<String>,
    /// The policy hash in force, if the gateway set one.
    pub policy_hash: Option<String>,
    /// Why it was made.
    pub kind: CheckpointKind,
    /// The signing key (its id is derived from it).
    pub signer: PublicKey,
    /// For [`CheckpointKind::Rotation`]: the key that signs from here on.
    pub next_key: Option<PublicKey>,
    /// Signature over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn message(&self) -> Vec<u8> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        format!(
            "gatehouse-audit-checkpoint/v1\nsize {}\nroot {}\ntime-us {}\nlast-hash {}\n\
             config {}\npolicy {}\nkind {}\nkey-id {}\nscheme {}\nnext-key {}\n",
            self.size,
            hex::encode(self.root),
            self.time_us,
            hex::encode(self.last_hash),
            opt(&self.config_hash),
            opt(&self.policy_hash),
            self.kind.as_str(),
            self.signer.key_id(),
            self.signer.scheme.as_str(),
            self.next_key
                .as_ref()
                .map(PublicKey::to_text)
                .unwrap_or_else(|| "-".into()),
        )
        .into_bytes()
    }

    /// Signs with `keys` (sets `signer` and `signature`).
    pub(crate) fn sign(&mut self, keys: &dyn KeyStore) -> Result<(), AuditError> {
        self.signer = PublicKey::of(keys)?;
        self.signature = keys.sign(&self.message()).map_err(AuditError::keys)?;
        Ok(())
    }

    /// Whether the signature verifies with the embedded signer key.
    pub fn signature_valid(&self) -> bool {
        self.signer
            .scheme
            .verify(&self.signer.key, &self.message(), &self.signature)
    }

    /// The file form of the checkpoint (the high-water mark and export manifests): the signed
    /// message, then `signer <scheme:hex>` and `signature <hex>` lines.
    pub fn to_text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.message()).into_owned();
        s.push_str(&format!(
            "signer {}\nsignature {}\n",
            self.signer.to_text(),
            hex::encode(&self.signature)
        ));
        s
    }

    /// Parses [`Checkpoint::to_text`] (the id is 0). `None` if malformed.
    pub fn from_text(text: &str) -> Option<Checkpoint> {
        let mut lines = text.lines();
        if lines.next()? != "gatehouse-audit-checkpoint/v1" {
            return None;
        }
        let mut field = |name: &str| -> Option<String> {
            let line = lines.next()?;
            let (k, v) = line.split_once(' ')?;
            (k == name).then(|| v.to_owned())
        };
        let hash = |s: String| -> Option<Hash> { hex::decode(s).ok()?.try_into().ok() };
        let opt = |s: String| if s == "-" { None } else { Some(s) };
        let size = field("size")?.parse().ok()?;
        let root = hash(field("root")?)?;
        let time_us = field("time-us")?.parse().ok()?;
        let last_hash = hash(field("last-hash")?)?;
        let config_hash = opt(field("config")?);
        let policy_hash = opt(field("policy")?);
        let kind = CheckpointKind::from_name(&field("kind")?)?;
        let key_id = field("key-id")?;
        let scheme = field("scheme")?;
        let next_key = match opt(field("next-key")?) {
            None => None,
            Some(t) => Some(PublicKey::from_text(&t)?),
        };
        let signer = PublicKey::from_text(&field("signer")?)?;
        let signature = hex::decode(field("signature")?).ok()?;
        let cp = Checkpoint {
            id: 0,
            size,
            root,
            time_us,
            last_hash,
            config_hash,
            policy_hash,
            kind,
            signer,
            next_key,
            signature,
        };
        (cp.signer.key_id().as_str() == key_id && cp.signer.scheme.as_str() == scheme).then_some(cp)
    }
}

/// The high-water-mark file of a store: `<db path>.hwm`.
pub fn hwm_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".hwm");
    PathBuf::from(s)
}

/// Writes the checkpoint to the high-water-mark file atomically (temp file, fsync, rename,
/// fsync of the directory).
pub(crate) fn write_hwm(db: &Path, cp: &Checkpoint) -> Result<(), AuditError> {
    let path = hwm_path(db);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(cp.to_text().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the high-water mark: `Ok(None)` if the file does not exist.
pub fn read_hwm(db: &Path) -> Result<Option<Result<Checkpoint, ()>>, AuditError> {
    match std::fs::read_to_string(hwm_path(db)) {
        Ok(text) => Ok(Some(Checkpoint::from_text(&text).ok_or(()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}
