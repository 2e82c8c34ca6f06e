//! The `[sftp]` configuration table (see docs/configuration.md).

use std::collections::HashMap;
use std::net::SocketAddr;

use russh::keys::{Algorithm, HashAlg, PublicKey};
use serde::Deserialize;

/// `[sftp]`: the read-only SFTP server for auditors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// Address and port to listen on.
    pub bind: SocketAddr,
    /// Who may log in, each with their OpenSSH public keys.
    #[serde(default)]
    pub auditors: Vec<AuditorConfig>,
    /// SSH connections at once; more are closed at accept.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Open file and directory handles per session.
    #[serde(default = "default_max_handles")]
    pub max_handles: usize,
    /// Most bytes one SFTP read returns.
    #[serde(default = "default_max_read_bytes")]
    pub max_read_bytes: u32,
    /// A connection idle this long is closed.
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// A connection that has not logged in after this long is closed.
    #[serde(default = "default_login_grace_seconds")]
    pub login_grace_seconds: u64,
    /// The gateway writes a new evidence export into `data_dir/exports/` this often (0: never;
    /// exports made with `gatehouse audit export --out data_dir/exports/NAME` are served too).
    #[serde(default = "default_export_every_seconds")]
    pub export_every_seconds: u64,
}

/// One auditor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditorConfig {
    /// The SSH user name the auditor logs in with (recorded as the username).
    pub name: String,
    /// OpenSSH public key lines (`ssh-ed25519 AAAA… comment`, `ecdsa-sha2-nistp256 …`).
    pub keys: Vec<String>,
}

fn default_max_sessions() -> usize {
    8
}
fn default_max_handles() -> usize {
    32
}
fn default_max_read_bytes() -> u32 {
    64 * 1024
}
fn default_idle_timeout_seconds() -> u64 {
    600
}
fn default_login_grace_seconds() -> u64 {
    20
}
fn default_export_every_seconds() -> u64 {
    3600
}

/// The largest `max_read_bytes`: a DATA reply (13 bytes of header) must stay within the
/// 256 KiB packet OpenSSH's client accepts.
pub const MAX_READ_LIMIT: u32 = 255 * 1024;

/// A validated auditor key: who it belongs to and its fingerprint.
#[derive(Debug, Clone)]
pub struct AuditorKey {
    /// The auditor's name.
    pub auditor: String,
    /// `SHA256:…`.
    pub fingerprint: String,
}

/// Accepted key types: Ed25519 and ECDSA. RSA is not offered (the `rsa` crate is banned,
/// RUSTSEC-2023-0071), DSA is obsolete.
fn algorithm_ok(a: &Algorithm) -> bool {
    matches!(a, Algorithm::Ed25519 | Algorithm::Ecdsa { .. })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl SftpConfig {
    /// Checks everything and builds the key table (fingerprint → auditor).
    pub fn validate(&self) -> Result<HashMap<String, AuditorKey>, String> {
        if self.auditors.is_empty() {
            return Err("sftp.auditors: list at least one auditor".into());
        }
        if !(1..=1024).contains(&self.max_sessions) {
            return Err("sftp.max_sessions must be 1-1024".into());
        }
        if !(1..=1024).contains(&self.max_handles) {
            return Err("sftp.max_handles must be 1-1024".into());
        }
        if !(1..=MAX_READ_LIMIT).contains(&self.max_read_bytes) {
            return Err(format!("sftp.max_read_bytes must be 1-{MAX_READ_LIMIT}"));
        }
        if !(1..=86_400).contains(&self.idle_timeout_seconds) {
            return Err("sftp.idle_timeout_seconds must be 1-86400".into());
        }
        if !(1..=600).contains(&self.login_grace_seconds) {
            return Err("sftp.login_grace_seconds must be 1-600".into());
        }
        if self.export_every_seconds > 31 * 86_400 {
            return Err("sftp.export_every_seconds must be 0-2678400".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut table = HashMap::new();
        for a in &self.auditors {
            if !valid_name(&a.name) {
                return Err(format!(
                    "sftp.auditors: name {:?}: use 1-63 letters, digits, '_', '-', '.'",
                    a.name
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(format!("sftp.auditors: duplicate name {:?}", a.name));
            }
            if a.keys.is_empty() {
                return Err(format!("sftp auditor {:?}: list at least one key", a.name));
            }
            for (i, line) in a.keys.iter().enumerate() {
                let key = PublicKey::from_openssh(line.trim()).map_err(|_| {
                    format!(
                        "sftp auditor {:?}: keys[{i}] is not an OpenSSH public key line",
                        a.name
                    )
                })?;
                if !algorithm_ok(&key.algorithm()) {
                    return Err(format!(
                        "sftp auditor {:?}: keys[{i}] is {}; use ssh-ed25519 or ecdsa-sha2-nistp256/384/521",
                        a.name,
                        key.algorithm()
                    ));
                }
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                let prev = table.insert(
                    fingerprint.clone(),
                    AuditorKey {
                        auditor: a.name.clone(),
                        fingerprint: fingerprint.clone(),
                    },
                );
                if prev.is_some() {
                    return Err(format!("sftp.auditors: key {fingerprint} is listed twice"));
                }
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILp3bWwFdkt2Td2jgi4OUObZ+67SYSD8Tg32TACffBqO carol@laptop";

    fn parse(toml_text: &str) -> Result<SftpConfig, String> {
        toml::from_str::<SftpConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn valid_config_builds_the_key_table() {
        let c = parse(&format!(
            "bind = \"127.0.0.1:2222\"\n[[auditors]]\nname = \"carol\"\nkeys = [\"{ED}\"]\n"
        ))
        .unwrap();
        let t = c.validate().unwrap();
        assert_eq!(t.len(), 1);
        let k = t.values().next().unwrap();
        assert_eq!(k.auditor, "carol");
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert_eq!(c.max_read_bytes, 65536);
    }

    #[test]
    fn refuses_bad_configs() {
        assert!(parse("bind = \"127.0.0.1:2222\"\nbogus = 1\n").is_err());
        let none = parse("bind = \"127.0.0.1:2222\"\n").unwrap();
        assert!(none
            .validate()
            .unwrap_err()
            .contains("at least one auditor"));
        let bad_key = parse(
            "bind = \"127.0.0.1:2222\"\n[[auditors]]\nname = \"carol\"\nkeys = [\"ssh-ed25519 nope\"]\n",
        )
        .unwrap();
        assert!(bad_key.validate().unwrap_err().contains("keys[0]"));
        let twice = parse(&format!(
            "bind = \"127.0.0.1:2222\"\n[[auditors]]\nname = \"a\"\nkeys = [\"{ED}\"]\n[[auditors]]\nname = \"b\"\nkeys = [\"{ED}\"]\n"
        ))
        .unwrap();
        assert!(twice.validate().unwrap_err().contains("listed twice"));
        let big_read = parse(&format!(
            "bind = \"127.0.0.1:2222\"\nmax_read_bytes = 300000\n[[auditors]]\nname = \"a\"\nkeys = [\"{ED}\"]\n"
        ))
        .unwrap();
        assert!(big_read.validate().is_err());
    }
}
