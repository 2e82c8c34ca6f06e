//! `gatehouse-sftp`: the read-only SFTP server through which auditors pull evidence exports.
//!
//! - [`codec`]: the sans-IO SFTP v3 codec (`gatehouse-sftp-codec`: requests in, replies out;
//!   bounded lengths; fuzzed).
//! - [`vfs`]: the virtual root over `data_dir/exports`; `..` above it, symlinks and hidden
//!   names are refused.
//! - [`session`]: one SFTP session's state machine (handles, reads, refusals, audit events).
//! - [`server`]: the SSH side on `russh`: public-key logins of configured auditors, the `sftp`
//!   subsystem only, every login, download and refusal an audit record.
//! - [`hostkey`]: the Ed25519 host key, sealed by the key store.
//! - [`exports`]: scheduled evidence exports into the served directory.
//! - [`config`]: the `[sftp]` table.

#![forbid(unsafe_code)]

pub use gatehouse_sftp_codec as codec;
pub mod config;
pub mod exports;
pub mod hostkey;
pub mod server;
pub mod session;
pub mod vfs;

pub use config::{AuditorConfig, SftpConfig};
pub use exports::ScheduledExports;
pub use server::{Auditors, ServerError, SftpServer};
