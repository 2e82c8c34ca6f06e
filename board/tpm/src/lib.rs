//! The TPM 2.0 backend of Gatehouse's key store ([`TpmKeyStore`]).
//!
//! Only this crate knows the TPM: it is the one place that talks to the TSS (through
//! `tss-esapi`; the FFI stays in `tss-esapi-sys`), and the rest of the gateway sees the
//! [`gatehouse_board::KeyStore`] interface and [`TpmInfo`].
//!
//! Key hierarchy (details and recovery in `README.md`):
//! - **Primary storage key**: ECC P-256 restricted decryption key under the owner
//!   hierarchy, from the fixed TCG SRK template. Re-created at every operation from the
//!   TPM's owner seed (same TPM, same key), flushed afterwards; nothing is persisted in the
//!   TPM. Its TPM name is recorded at provisioning and checked on every operation: a
//!   different name means another TPM (or a cleared owner hierarchy) and gives
//!   [`TpmError::ForeignTpm`] before anything is loaded or written.
//! - **Data keys**: 32 random bytes (TPM RNG XOR OS RNG), sealed in keyed-hash data objects
//!   under the primary; one object per key, per [`gatehouse_board::KeyPurpose`], the
//!   wrapped public/private areas stored in the state directory. Rotation adds an object;
//!   none is ever deleted.
//! - **Signing key**: ECDSA P-256 / SHA-256, generated inside the TPM and stored only
//!   wrapped ([`SIGNATURE_SCHEME`]). TPMs do not offer Ed25519.
//! - Optional PCR binding ([`TpmOptions::pcr_policy`], default off): data keys and the
//!   signing key get a `PolicyPCR` auth policy over the chosen SHA-256 PCRs.
//!
//! Invariants:
//! - Key bytes never appear in `Debug`/`Display`, logs or errors; unsealed keys are
//!   zeroized on drop ([`UnsealedKey`]).
//! - Secrets cross the TPM bus only inside salted, parameter-encrypted sessions.
//! - No TPM handle outlives one operation: every transient object and session is flushed
//!   on success and on error (no resource manager is needed).
//! - Nothing in the state directory is deleted or rewritten when the TPM refuses it
//!   (foreign TPM, PCR mismatch); files are written 0600 atomically, the directory is 0700.
//! - Key ids follow [`gatehouse_board::KeyId`]: a data key's id hashes its purpose and
//!   bytes, the signing key's id its SEC1 public key, so ids are stable across reopen.
#![forbid(unsafe_code)]

mod der;
mod error;
mod state;
mod store;
mod tpm;

pub use error::TpmError;
pub use store::{TpmKeyStore, TpmOptions, UnsealedKey, SIGNATURE_SCHEME};

/// What the TPM says about itself, for `gatehouse board status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TpmInfo {
    /// Manufacturer id as its ASCII code (`TPM_PT_MANUFACTURER`), e.g. "IBM", "IFX", "STM".
    pub manufacturer: String,
    /// The same as a number.
    pub manufacturer_id: u32,
    /// The four vendor strings (`TPM_PT_VENDOR_STRING_1..4`) concatenated, e.g. "SW   TPM".
    pub vendor: String,
    /// `TPM_PT_FIRMWARE_VERSION_1` and `_2` as four 16-bit parts "a.b.c.d".
    pub firmware_version: String,
    /// The raw firmware version words.
    pub firmware_version_raw: [u32; 2],
    /// The TPM 2.0 specification revision (`TPM_PT_REVISION`), e.g. "1.59".
    pub spec_revision: String,
}

mod key_store {
    use gatehouse_board::{
        Backend, DataKey, KeyId, KeyPurpose, KeyStore, KeyStoreError, SignatureScheme,
    };

    use crate::TpmKeyStore;

    /// Signs with ECDSA P-256 (DER signature, uncompressed SEC1 public key), as
    /// [`KeyStore::signature_scheme`] says.
    impl KeyStore for TpmKeyStore {
        fn backend(&self) -> Backend {
            Backend::Tpm
        }

        fn data_key(&self, purpose: KeyPurpose) -> Result<DataKey, KeyStoreError> {
            let key = self.current_key(purpose)?;
            Ok(DataKey::new(purpose, key.into_bytes()))
        }

        fn data_key_by_id(
            &self,
            purpose: KeyPurpose,
            id: &KeyId,
        ) -> Result<DataKey, KeyStoreError> {
            let key = self.key_by_id(purpose, id)?;
            Ok(DataKey::new(purpose, key.into_bytes()))
        }

        fn rotate_data_key(&self, purpose: KeyPurpose) -> Result<KeyId, KeyStoreError> {
            Ok(self.rotate(purpose)?)
        }

        fn signature_scheme(&self) -> SignatureScheme {
            SignatureScheme::EcdsaP256Sha256
        }

        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
            Ok(self.sign_der(message)?)
        }

        fn signing_public_key(&self) -> Result<Vec<u8>, KeyStoreError> {
            Ok(self.signing_public_key_sec1().to_vec())
        }

        fn signing_key_id(&self) -> Result<KeyId, KeyStoreError> {
            Ok(self.signing_id().clone())
        }
    }
}
