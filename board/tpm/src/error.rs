//! Errors of the TPM key store. Messages name files, purposes, key ids and TPM response
//! codes, never key bytes or unsealed data.

use std::io;
use std::path::PathBuf;

use gatehouse_board::{KeyId, KeyPurpose, KeyStoreError};

/// What went wrong in the TPM key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string could not be parsed or the TPM could not be reached through it.
    #[error("cannot connect to the TPM through TCTI {tcti:?}: {source}")]
    Connect {
        /// The TCTI configuration string.
        tcti: String,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },
    /// A TPM command failed.
    #[error("TPM command {command} failed: {source}")]
    Tpm {
        /// What was being done ("create primary key", "unseal", ...).
        command: &'static str,
        /// The TSS or TPM response code.
        #[source]
        source: tss_esapi::Error,
    },
    /// The state directory was made with another TPM (or this TPM's owner hierarchy was
    /// cleared since): its sealed objects cannot be loaded under this TPM's primary key.
    /// Nothing has been changed or deleted.
    #[error(
        "the sealed objects in {} belong to another TPM (the TPM was replaced, reset or its \
         owner hierarchy cleared): they cannot be unsealed here. Nothing was changed or \
         deleted. Reattach the original TPM to recover the keys, or see the recovery section \
         of board/tpm/README.md",
        dir.display()
    )]
    ForeignTpm {
        /// The state directory.
        dir: PathBuf,
    },
    /// The objects are bound to PCR values that differ from the current ones (the boot
    /// chain or configuration changed). Nothing has been changed or deleted.
    #[error(
        "the TPM refused to release {what}: the PCR values it is bound to ({pcrs:?}, SHA-256 \
         bank) have changed since it was sealed. Nothing was changed or deleted; boot the \
         measured configuration again, or see the recovery section of board/tpm/README.md"
    )]
    PcrPolicyFailed {
        /// Which object ("the vault key 0123…", "the signing key").
        what: String,
        /// The PCR indices the policy covers.
        pcrs: Vec<u8>,
    },
    /// The store was opened with a PCR policy different from the one it was provisioned
    /// with.
    #[error(
        "the key store in {} was provisioned with PCR policy {recorded:?} but opened with \
         {requested:?}",
        dir.display()
    )]
    PolicyMismatch {
        /// The state directory.
        dir: PathBuf,
        /// PCRs recorded at provisioning.
        recorded: Vec<u8>,
        /// PCRs asked for now.
        requested: Vec<u8>,
    },
    /// A PCR index outside 0..=23 or an empty/duplicate selection.
    #[error("invalid PCR selection {0:?}: expected distinct indices 0..=23")]
    InvalidPcrSelection(Vec<u8>),
    /// A state file is missing, malformed or inconsistent.
    #[error("TPM key-store state {} is corrupt: {reason}", path.display())]
    CorruptState {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state directory has blob files but no index: refusing to provision over them.
    #[error(
        "{} holds sealed-object files but no index.json; refusing to provision new keys over \
         them (restore index.json from a backup, or move the directory aside to start anew)",
        dir.display()
    )]
    IndexMissing {
        /// The state directory.
        dir: PathBuf,
    },
    /// No key with this id exists for this purpose.
    #[error("no {purpose} key with id {id}")]
    UnknownKey {
        /// The purpose asked for.
        purpose: KeyPurpose,
        /// The id asked for.
        id: KeyId,
    },
    /// A file-system operation failed.
    #[error("TPM key store: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A state file or the directory is accessible to group or others.
    #[error(
        "TPM key store refuses {}: mode {mode:04o} gives group or others access \
         (directory must be 0700, files 0600)",
        path.display()
    )]
    InsecurePermissions {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A path is not the expected kind (for example a symlink).
    #[error("TPM key store refuses {}: expected a {expected}", path.display())]
    UnexpectedFileType {
        /// The offending path.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
    },
    /// The TPM returned something this crate does not accept (wrong key type, sizes).
    #[error("the TPM returned an unexpected {0}")]
    UnexpectedResponse(&'static str),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl TpmError {
    /// Wraps a TSS error from `command`.
    pub(crate) fn tpm(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
        move |source| TpmError::Tpm { command, source }
    }

    /// The TPM response-code kind, if this is a TPM command failure.
    pub(crate) fn response_kind(
        &self,
    ) -> Option<tss_esapi::constants::response_code::Tss2ResponseCodeKind> {
        match self {
            TpmError::Tpm {
                source: tss_esapi::Error::Tss2Error(rc),
                ..
            } => rc.kind(),
            _ => None,
        }
    }
}

/// Maps onto the board crate's error so the store can stand behind `dyn KeyStore`.
/// Variants with a direct counterpart map onto it; every other error becomes
/// [`KeyStoreError::Backend`] and can be recovered with `downcast_ref::<TpmError>()`.
impl From<TpmError> for KeyStoreError {
    fn from(err: TpmError) -> KeyStoreError {
        match err {
            TpmError::UnknownKey { purpose, id } => KeyStoreError::UnknownKey { purpose, id },
            TpmError::Io {
                action,
                path,
                source,
            } => KeyStoreError::Io {
                action,
                path,
                source,
            },
            TpmError::InsecurePermissions { path, mode } => {
                KeyStoreError::InsecurePermissions { path, mode }
            }
            TpmError::UnexpectedFileType { path, expected } => {
                KeyStoreError::UnexpectedFileType { path, expected }
            }
            TpmError::Random => KeyStoreError::Random,
            other => KeyStoreError::Backend(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn maps_onto_key_store_error_and_stays_recoverable() {
        let id = KeyId::parse("0011223344556677").unwrap();
        let mapped = KeyStoreError::from(TpmError::UnknownKey {
            purpose: KeyPurpose::Audit,
            id: id.clone(),
        });
        assert!(matches!(mapped, KeyStoreError::UnknownKey { id: ref got, .. } if *got == id));

        let mapped = KeyStoreError::from(TpmError::ForeignTpm {
            dir: PathBuf::from("/var/lib/gatehouse/keys"),
        });
        let text = mapped.to_string();
        assert!(
            text.starts_with("key store backend: the sealed objects"),
            "{text}"
        );
        let KeyStoreError::Backend(source) = mapped else {
            panic!("expected Backend, got {mapped:?}");
        };
        let inner = source.downcast_ref::<TpmError>();
        assert!(
            matches!(inner, Some(TpmError::ForeignTpm { .. })),
            "{inner:?}"
        );
    }
}
