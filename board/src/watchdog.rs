//! The board's watchdog (the Linux watchdog API, `/dev/watchdog`).
//!
//! Once the device is opened the board resets unless something is written to it within the
//! driver's timeout. The gateway opens it at start (when `gateway.watchdog` is set and the
//! board has one, see [`crate::facts::BoardFacts`]) and pets it from its async runtime, so a
//! gateway that hangs — or dies and is not restarted in time — resets the appliance. On a
//! clean shutdown it writes the "magic close" character, which disarms drivers not built with
//! `nowayout`. Plain writes only: no ioctl, so no unsafe code.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the gateway pets the watchdog. Drivers default to 30-60 s timeouts; a pet every
/// 5 s leaves room for a loaded 2-core box.
pub const PET_INTERVAL: Duration = Duration::from_secs(5);

/// The character that disarms the watchdog when written just before closing it.
const MAGIC_CLOSE: &[u8] = b"V";

/// An opened (armed) watchdog device.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    path: PathBuf,
}

impl Watchdog {
    /// Opens the device; from now on it must be petted. Opening fails if the device is busy
    /// (another process, e.g. systemd's `RuntimeWatchdogSec=`, holds it).
    pub fn open(path: &Path) -> std::io::Result<Watchdog> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Watchdog {
            file,
            path: path.to_owned(),
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Restarts the watchdog's countdown.
    pub fn pet(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"\0")?;
        self.file.flush()
    }

    /// Disarms the watchdog (magic close) and closes it. Only on a clean shutdown.
    pub fn disarm(mut self) -> std::io::Result<()> {
        self.file.write_all(MAGIC_CLOSE)?;
        self.file.flush()
    }
}

/// The driver's name for the watchdog behind `/dev/watchdog` (`/sys/class/watchdog/watchdog0/identity`,
/// e.g. "iTCO_wdt" or "Software Watchdog"), read under `root`.
pub fn identity_under(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("sys/class/watchdog/watchdog0/identity")).ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn pets_then_disarms_with_the_magic_character() {
        // A regular file stands in for the device: it records what the driver would read.
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, b"").unwrap();
        let mut wd = Watchdog::open(&dev).unwrap();
        assert_eq!(wd.path(), dev.as_path());
        wd.pet().unwrap();
        wd.pet().unwrap();
        wd.disarm().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"\0\0V");
    }

    #[test]
    fn a_missing_device_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Watchdog::open(&dir.path().join("watchdog")).is_err());
    }

    #[test]
    fn identity_is_read_from_sysfs() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(identity_under(root.path()), None);
        let sys = root.path().join("sys/class/watchdog/watchdog0");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("identity"), "i6300ESB timer\n").unwrap();
        assert_eq!(
            identity_under(root.path()).as_deref(),
            Some("i6300ESB timer")
        );
    }
}
