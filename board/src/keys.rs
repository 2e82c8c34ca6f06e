//! The key-store interface shared by every backend: purposes, key ids, data keys, errors.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Length in bytes of a data-encryption key (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// Domain-separation prefix hashed into every [`KeyId`].
const KEY_ID_DOMAIN: &[u8] = b"gatehouse-key-id";

/// Purpose label hashed into the id of the signing key.
const SIGNING_LABEL: &str = "signing";

/// Number of SHA-256 bytes kept in a [`KeyId`].
const KEY_ID_BYTES: usize = 8;

/// Which kind of key store holds the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Keys in files on disk. Development and tests only.
    Software,
    /// Keys sealed by a TPM 2.0.
    Tpm,
}

impl Backend {
    /// Whether keys are protected by hardware (false for the software store).
    pub fn is_hardware_backed(self) -> bool {
        match self {
            Backend::Software => false,
            Backend::Tpm => true,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Software => "software (development only)",
            Backend::Tpm => "tpm2",
        })
    }
}

/// What a data-encryption key is used for. Each purpose has its own keys and rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyPurpose {
    /// Encrypts upstream credentials in the vault.
    Vault,
    /// Encrypts the audit store.
    Audit,
}

impl KeyPurpose {
    /// Every purpose, in a fixed order. A key store creates a key for each on first use.
    pub const ALL: [KeyPurpose; 2] = [KeyPurpose::Vault, KeyPurpose::Audit];

    /// Stable lowercase label; it is part of the [`KeyId`] derivation and of file names.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Vault => "vault",
            KeyPurpose::Audit => "audit",
        }
    }
}

impl fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyPurpose {
    type Err = KeyStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyPurpose::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| KeyStoreError::UnknownPurpose(s.to_owned()))
    }
}

/// Stable identifier of a key: lowercase hex of the first 8 bytes of
/// `SHA-256("gatehouse-key-id" || purpose || key material)`, where the material is the key
/// bytes for a data key and the raw public key for the signing key (purpose `"signing"`).
///
/// The id reveals nothing usable about the key; it may be logged and stored next to data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// Derives the id from a purpose label and the key material.
    fn derive(label: &str, material: &[u8]) -> KeyId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(KEY_ID_DOMAIN);
        ctx.update(label.as_bytes());
        ctx.update(material);
        let digest = ctx.finish();
        KeyId(hex::encode(&digest.as_ref()[..KEY_ID_BYTES]))
    }

    /// The id of a data key.
    pub fn for_data_key(purpose: KeyPurpose, key: &[u8; DATA_KEY_LEN]) -> KeyId {
        KeyId::derive(purpose.as_str(), key)
    }

    /// The id of an Ed25519 signing key, from its raw 32-byte public key. Offline verifiers
    /// use this to match a signature's key id to a published public key.
    pub fn for_signing_key(public_key: &[u8]) -> KeyId {
        KeyId::derive(SIGNING_LABEL, public_key)
    }

    /// Parses the textual form (16 lowercase hex digits).
    pub fn parse(s: &str) -> Result<KeyId, KeyStoreError> {
        let valid = s.len() == KEY_ID_BYTES * 2
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(KeyId(s.to_owned()))
        } else {
            Err(KeyStoreError::InvalidKeyId(s.to_owned()))
        }
    }

    /// The textual form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyId {
    type Err = KeyStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::parse(s)
    }
}

impl TryFrom<String> for KeyId {
    type Error = KeyStoreError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        KeyId::parse(&s)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

/// A 256-bit data-encryption key. The bytes are zeroized on drop and never printed: `Debug`
/// shows the purpose and the key id only.
pub struct DataKey {
    purpose: KeyPurpose,
    id: KeyId,
    bytes: Zeroizing<[u8; DATA_KEY_LEN]>,
}

impl DataKey {
    /// Wraps key bytes; the id is derived from them.
    /// Wraps unsealed key bytes; for key-store backends (the TPM crate).
    pub fn new(purpose: KeyPurpose, bytes: Zeroizing<[u8; DATA_KEY_LEN]>) -> DataKey {
        let id = KeyId::for_data_key(purpose, &bytes);
        DataKey { purpose, id, bytes }
    }

    /// The raw key. Hand it straight to the cipher; do not copy it elsewhere.
    pub fn bytes(&self) -> &[u8; DATA_KEY_LEN] {
        &self.bytes
    }

    /// The key's stable id.
    pub fn id(&self) -> KeyId {
        self.id.clone()
    }

    /// What the key is for.
    pub fn purpose(&self) -> KeyPurpose {
        self.purpose
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("purpose", &self.purpose)
            .field("id", &self.id.as_str())
            .finish_non_exhaustive()
    }
}

/// How a key store's signatures are made and how its public key is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureScheme {
    /// Ed25519: 64-byte signatures, raw 32-byte public key (the software store).
    Ed25519,
    /// ECDSA P-256 with SHA-256: DER `Ecdsa-Sig-Value` signatures, uncompressed SEC1
    /// 65-byte public key (TPMs, which rarely support Ed25519).
    EcdsaP256Sha256,
}

impl SignatureScheme {
    /// Stable name used in signed artefacts ("ed25519", "ecdsa-p256-sha256").
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::Ed25519 => "ed25519",
            SignatureScheme::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }

    /// Parses [`SignatureScheme::as_str`].
    pub fn from_name(s: &str) -> Option<SignatureScheme> {
        match s {
            "ed25519" => Some(SignatureScheme::Ed25519),
            "ecdsa-p256-sha256" => Some(SignatureScheme::EcdsaP256Sha256),
            _ => None,
        }
    }

    /// Verifies `signature` over `message` with `public_key` in this scheme's encoding.
    pub fn verify(self, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let alg: &dyn ring::signature::VerificationAlgorithm = match self {
            SignatureScheme::Ed25519 => &ring::signature::ED25519,
            SignatureScheme::EcdsaP256Sha256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        };
        ring::signature::UnparsedPublicKey::new(alg, public_key)
            .verify(message, signature)
            .is_ok()
    }
}

/// A store of data-encryption keys and of the appliance's signing key.
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Which backend holds the keys.
    fn backend(&self) -> Backend;

    /// The current key for `purpose`; use it for new encryptions.
    fn data_key(&self, purpose: KeyPurpose) -> Result<DataKey, KeyStoreError>;

    /// A key for `purpose` by id, current or older (after rotation); use it to decrypt.
    fn data_key_by_id(&self, purpose: KeyPurpose, id: &KeyId) -> Result<DataKey, KeyStoreError>;

    /// Creates a new current key for `purpose` and returns its id. Older keys stay
    /// retrievable through [`KeyStore::data_key_by_id`].
    fn rotate_data_key(&self, purpose: KeyPurpose) -> Result<KeyId, KeyStoreError>;

    /// The scheme of [`KeyStore::sign`] and [`KeyStore::signing_public_key`].
    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::Ed25519
    }

    /// Signs `message` with the signing key, in [`KeyStore::signature_scheme`].
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError>;

    /// The public key of the signing key, encoded per [`KeyStore::signature_scheme`].
    fn signing_public_key(&self) -> Result<Vec<u8>, KeyStoreError>;

    /// The id of the signing key ([`KeyId::for_signing_key`] of its public key).
    fn signing_key_id(&self) -> Result<KeyId, KeyStoreError>;
}

/// Errors from a key store. Messages name files, purposes and key ids, never key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// A file-system operation failed.
    #[error("key store: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A key-store file or the directory is accessible to group or others.
    #[error(
        "key store refuses {}: mode {mode:04o} gives group or others access \
         (directory must be 0700, files 0600)",
        path.display()
    )]
    InsecurePermissions {
        /// The offending file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A path in the key store is not the expected kind (for example a symlink).
    #[error("key store refuses {}: expected a {expected}", path.display())]
    UnexpectedFileType {
        /// The offending path.
        path: PathBuf,
        /// What was expected ("regular file", "directory").
        expected: &'static str,
    },
    /// The key index cannot be parsed or is inconsistent.
    #[error("key store index {} is corrupt: {reason}", path.display())]
    CorruptIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key file has the wrong length or does not match its recorded id.
    #[error("key file {} is corrupt: {reason}", path.display())]
    CorruptKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// No key with this id exists for this purpose.
    #[error("no {purpose} key with id {id}")]
    UnknownKey {
        /// The purpose asked for.
        purpose: KeyPurpose,
        /// The id asked for.
        id: KeyId,
    },
    /// A backend-specific failure (for example the TPM), with its own typed error as source.
    #[error("key store backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A purpose name that this version does not know.
    #[error("unknown key purpose {0:?}")]
    UnknownPurpose(String),
    /// A key id that is not 16 lowercase hex digits.
    #[error("invalid key id {0:?}: expected 16 lowercase hex digits")]
    InvalidKeyId(String),
    /// The system random number generator failed.
    #[error("key store: the system random number generator failed")]
    Random,
    /// The stored signing key was rejected by the crypto library.
    #[error("key store: signing key rejected: {0}")]
    InvalidSigningKey(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn key_id_is_the_documented_hash() {
        let key = [7u8; 32];
        let mut input = b"gatehouse-key-id".to_vec();
        input.extend_from_slice(b"vault");
        input.extend_from_slice(&key);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let expected = hex::encode(&digest.as_ref()[..8]);
        assert_eq!(
            KeyId::for_data_key(KeyPurpose::Vault, &key).as_str(),
            expected
        );
        assert_ne!(
            KeyId::for_data_key(KeyPurpose::Vault, &key),
            KeyId::for_data_key(KeyPurpose::Audit, &key),
            "the purpose is part of the id"
        );
    }

    #[test]
    fn key_id_parse_accepts_only_canonical_form() {
        assert!(KeyId::parse("0123456789abcdef").is_ok());
        for bad in [
            "",
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789abcdeg",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&KeyId::parse("00112233aabbccdd").unwrap()).unwrap();
        assert_eq!(json, "\"00112233aabbccdd\"");
        assert!(serde_json::from_str::<KeyId>("\"not-an-id\"").is_err());
    }

    #[test]
    fn data_key_debug_shows_id_not_bytes() {
        let key = DataKey::new(KeyPurpose::Audit, Zeroizing::new([0xab; 32]));
        let debug = format!("{key:?}");
        assert!(debug.contains(key.id().as_str()), "{debug}");
        assert!(!debug.contains("abab"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
    }

    #[test]
    fn names_round_trip() {
        for purpose in KeyPurpose::ALL {
            assert_eq!(purpose.as_str().parse::<KeyPurpose>().unwrap(), purpose);
        }
        assert!("signing".parse::<KeyPurpose>().is_err());
        assert_eq!(Backend::Software.to_string(), "software (development only)");
        assert_eq!(Backend::Tpm.to_string(), "tpm2");
        assert!(!Backend::Software.is_hardware_backed());
    }
}
