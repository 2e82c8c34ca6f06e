//! A real `swtpm` per test: free loopback ports, its own state directory, stopped on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set by CI: a missing `swtpm` is then a failure, not a skip.
const REQUIRE_ENV: &str = "GATEHOUSE_REQUIRE_TPM";

/// A running software TPM.
pub struct Swtpm {
    child: Option<Child>,
    pub state: PathBuf,
    pub port: u16,
    pub ctrl_port: u16,
}

/// Whether the `swtpm` binary is installed. When it is not: panics if CI demands a TPM,
/// otherwise prints why the test is skipped and returns false.
pub fn swtpm_available(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("swtpm").is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: the swtpm binary is not installed but {REQUIRE_ENV}=1 requires it");
    }
    // Straight to stderr, past the test harness's output capture, so the skip is seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: the swtpm binary is not installed (apt-get install swtpm swtpm-tools); \
         set {REQUIRE_ENV}=1 to make this a failure"
    );
    false
}

/// A free port P whose successor P+1 is free too: the TSS's swtpm TCTI always talks to the
/// control channel on the command port + 1.
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    /// Starts swtpm on fresh ports with its state in `state` (created if missing).
    pub fn start(state: &Path) -> Swtpm {
        fs::create_dir_all(state).unwrap();
        let port = free_port_pair();
        let ctrl_port = port + 1;
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl_port},bindaddr=127.0.0.1"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start swtpm");
        let tpm = Swtpm {
            child: Some(child),
            state: state.to_owned(),
            port,
            ctrl_port,
        };
        // Ready when the control port accepts (probing the server port would use up the
        // one client connection swtpm serves at a time).
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", ctrl_port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        tpm
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Stops swtpm: a clean shutdown through the control channel (it saves its state),
    /// then waits; kills it if it does not exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("swtpm_ioctl")
            .arg("--tcp")
            .arg(format!("127.0.0.1:{}", self.ctrl_port))
            .arg("-s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every file in `dir` with its bytes and mode, for "nothing was touched" checks.
pub fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode();
            (
                e.file_name().to_string_lossy().into_owned(),
                (fs::read(e.path()).unwrap(), mode),
            )
        })
        .collect()
}
