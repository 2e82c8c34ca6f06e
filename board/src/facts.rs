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

/// What a network interface of the appliance is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicRole {
    /// Faces the agents and the targets: the data-path listeners (PostgreSQL, HTTP).
    Service,
    /// Faces operators and auditors: the web console and the SFTP export server.
    Management,
}

impl NicRole {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            NicRole::Service => "service",
            NicRole::Management => "management",
        }
    }
}

/// The appliance's NICs in the order the kernel names them on the reference boards (QEMU's
/// virtio-net and the generic x86-64 board with predictable names turned off): the first is
/// the service NIC, the second the management NIC. A one-NIC board serves both roles on it.
pub const NIC_ROLES: [(&str, NicRole); 2] =
    [("eth0", NicRole::Service), ("eth1", NicRole::Management)];

/// What the running system offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardFacts {
    /// Path of the TPM resource-manager device if it exists.
    pub tpm_device: Option<PathBuf>,
    /// Path of the watchdog device if it exists.
    pub watchdog_device: Option<PathBuf>,
    /// The role NICs present on this system (`/sys/class/net/<name>`), with their roles.
    pub nics: Vec<(String, NicRole)>,
}

impl BoardFacts {
    /// Reads the facts from the running system.
    pub fn detect() -> BoardFacts {
        BoardFacts::detect_under(Path::new("/"))
    }

    /// Reads the facts with `root` in place of `/` (tests, or inspecting a mounted image).
    pub fn detect_under(root: &Path) -> BoardFacts {
        let nics = NIC_ROLES
            .iter()
            .filter(|(name, _)| present(root, &format!("/sys/class/net/{name}")).is_some())
            .map(|(name, role)| ((*name).to_owned(), *role))
            .collect();
        BoardFacts {
            tpm_device: present(root, TPM_DEVICE),
            watchdog_device: present(root, WATCHDOG_DEVICE),
            nics,
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
                watchdog_device: None,
                nics: Vec::new(),
            }
        );
    }

    #[test]
    fn role_nics_are_reported_when_present() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/net/eth1")).unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/net/lo")).unwrap();
        let facts = BoardFacts::detect_under(root.path());
        assert_eq!(facts.nics, vec![("eth1".to_owned(), NicRole::Management)]);
        std::fs::create_dir_all(root.path().join("sys/class/net/eth0")).unwrap();
        let facts = BoardFacts::detect_under(root.path());
        assert_eq!(
            facts.nics,
            vec![
                ("eth0".to_owned(), NicRole::Service),
                ("eth1".to_owned(), NicRole::Management)
            ]
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
