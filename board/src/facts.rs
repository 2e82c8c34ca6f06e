//! Facts about the board the gateway runs on.
//!
//! For now this only records whether the device nodes the appliance relies on are present.
//! Presence of a path is all it says: nothing here opens or probes a device, so a present
//! `/dev/tpmrm0` does not mean the TPM works. The image work extends this (hardware identity,
//! TPM properties, watchdog timeout).

use std::path::{Path, PathBuf};

/// The TPM 2.0 resource-manager device the TPM key store uses.
pub const TPM_DEVICE: &str = "/dev/tpmrm0";
/// The kernel watchdog device.
pub const WATCHDOG_DEVICE: &str = "/dev/watchdog";

/// What the running system offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardFacts {
    /// Path of the TPM resource-manager device if it exists.
    pub tpm_device: Option<PathBuf>,
    /// Path of the watchdog device if it exists.
    pub watchdog_device: Option<PathBuf>,
}

impl BoardFacts {
    /// Reads the facts from the running system.
    pub fn detect() -> BoardFacts {
        BoardFacts::detect_under(Path::new("/"))
    }

    /// Reads the facts with `root` in place of `/` (tests, or inspecting a mounted image).
    pub fn detect_under(root: &Path) -> BoardFacts {
        BoardFacts {
            tpm_device: present(root, TPM_DEVICE),
            watchdog_device: present(root, WATCHDOG_DEVICE),
        }
    }
}

fn present(root: &Path, device: &str) -> Option<PathBuf> {
    let path = root.join(device.trim_start_matches('/'));
    // `try_exists` so that a permission error is not mistaken for presence.
    match path.try_exists() {
        Ok(true) => Some(path),
        Ok(false) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn empty_root_has_nothing() {
        let root = tempfile::tempdir().unwrap();
        let facts = BoardFacts::detect_under(root.path());
        assert_eq!(
            facts,
            BoardFacts {
                tpm_device: None,
                watchdog_device: None
            }
        );
    }

    #[test]
    fn present_devices_are_reported_with_their_paths() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/tpmrm0"), b"").unwrap();
        let facts = BoardFacts::detect_under(root.path());
        assert_eq!(facts.tpm_device, Some(root.path().join("dev/tpmrm0")));
        assert_eq!(facts.watchdog_device, None);

        std::fs::write(root.path().join("dev/watchdog"), b"").unwrap();
        let facts = BoardFacts::detect_under(root.path());
        assert_eq!(
            facts.watchdog_device,
            Some(root.path().join("dev/watchdog"))
        );
    }

    #[test]
    fn detect_matches_the_running_system() {
        let facts = BoardFacts::detect();
        assert_eq!(facts.tpm_device.is_some(), Path::new(TPM_DEVICE).exists());
        assert_eq!(
            facts.watchdog_device.is_some(),
            Path::new(WATCHDOG_DEVICE).exists()
        );
        if let Some(path) = facts.tpm_device {
            assert_eq!(path, Path::new(TPM_DEVICE));
        }
    }
}
