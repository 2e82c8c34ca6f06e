//! Board support for the Gatehouse appliance: the key store and the facts about the
//! hardware the gateway runs on.
//!
//! The gateway never handles long-lived key material itself. It asks a [`KeyStore`] for
//! data-encryption keys (one current key per [`KeyPurpose`], older ones still available by
//! [`KeyId`] after rotation) and for Ed25519 signatures (the audit chain is signed with it).
//!
//! Backends:
//! - [`SoftwareKeyStore`] keeps keys in files under a directory. It exists for development and
//!   tests only and says so loudly when opened; its keys are only as safe as the file system.
//! - A TPM 2.0 backend ([`Backend::Tpm`]) comes later; only that module may know the TPM.
//!
//! Invariants:
//! - Key bytes never appear in `Debug`/`Display` output, log lines or error messages. A
//!   [`DataKey`] prints its id only, and its bytes are zeroized on drop.
//! - A [`KeyId`] is a stable function of the purpose and the key (see [`KeyId::derive`]), so
//!   anything encrypted records the id of the key it used and stays readable after rotation.
//! - Rotation never deletes a key; old keys remain retrievable for decryption.
//! - The software store refuses to open when its directory or key files are accessible to
//!   group or others, and writes every file atomically (temp file, fsync, rename) with mode
//!   0600.
#![forbid(unsafe_code)]

pub mod facts;
mod fsutil;
mod keys;
mod software;
pub mod watchdog;

pub use keys::{
    Backend, DataKey, KeyId, KeyPurpose, KeyStore, KeyStoreError, SignatureScheme, DATA_KEY_LEN,
};
pub use software::SoftwareKeyStore;
