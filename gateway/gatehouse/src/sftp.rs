//! Wires the SFTP server for auditors (`gatehouse-sftp`) into `gatehouse serve`, and the
//! `gatehouse sftp` commands.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use tokio::sync::watch;

use crate::config::{Config, LoadedConfig};
use crate::state::Gateway;

#[derive(Debug, Subcommand)]
pub enum SftpCommand {
    /// Print the SFTP server's host key (made and sealed now if the gateway never ran) and its
    /// SHA-256 fingerprint, for auditors' known_hosts.
    HostKey {
        /// Print a known_hosts line for this host name or address instead
        /// (`[HOST]:PORT ssh-ed25519 …`, the port from `sftp.bind`).
        #[arg(long, value_name = "HOST")]
        known_hosts: Option<String>,
    },
}

pub fn command(config: &Path, cmd: SftpCommand) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    let cfg = &loaded.config;
    match cmd {
        SftpCommand::HostKey { known_hosts } => {
            std::fs::create_dir_all(&cfg.gateway.data_dir)?;
            let keys = crate::state::open_keys(cfg)?;
            let key =
                gatehouse_sftp::hostkey::load_or_create(&cfg.gateway.data_dir, keys.as_ref())?;
            let (line, fingerprint) = gatehouse_sftp::hostkey::public_line_and_fingerprint(&key);
            match known_hosts {
                Some(host) => {
                    let Some(sftp) = &cfg.sftp else {
                        bail!("no [sftp] section in the configuration");
                    };
                    let port = sftp.bind.port();
                    let name = if port == 22 {
                        host
                    } else {
                        format!("[{host}]:{port}")
                    };
                    println!("{name} {line}");
                }
                None => {
                    println!("{line}");
                    println!("{fingerprint}");
                }
            }
            Ok(())
        }
    }
}

/// A started SFTP server and its export schedule.
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    exports: Option<tokio::task::JoinHandle<()>>,
    reload: tokio::task::JoinHandle<()>,
}

/// Starts the SFTP server when `[sftp]` is configured: unseals (or makes) the host key, binds
/// `sftp.bind`, starts the export schedule.
pub async fn start(gw: &Arc<Gateway>) -> anyhow::Result<Option<Running>> {
    let loaded = gw.config.load();
    let cfg: &Config = &loaded.config;
    let Some(sftp) = &cfg.sftp else {
        return Ok(None);
    };
    if sftp.export_every_seconds > 0 && !cfg.audit.catalog.is_file() {
        bail!(
            "sftp.export_every_seconds needs the 800-53 catalog; audit.catalog {} is not a file",
            cfg.audit.catalog.display()
        );
    }
    let host_key = gatehouse_sftp::hostkey::load_or_create(&cfg.gateway.data_dir, gw.keys.as_ref())
        .context("sftp: host key")?;
    let (_, fingerprint) = gatehouse_sftp::hostkey::public_line_and_fingerprint(&host_key);
    let server = gatehouse_sftp::SftpServer::new(
        sftp,
        &cfg.gateway.name,
        gw.audit.clone(),
        &cfg.exports_dir(),
        host_key,
    )?;
    let listener = tokio::net::TcpListener::bind(sftp.bind)
        .await
        .with_context(|| format!("sftp: binding {}", sftp.bind))?;
    tracing::info!(addr = %listener.local_addr()?, host_key = %fingerprint, "listening (sftp, read-only evidence for auditors)");
    let (stop, stopped) = watch::channel(false);
    let reload = tokio::spawn(follow_reloads(Arc::clone(gw), server.auditors()));
    let server = tokio::spawn(server.run(listener, stopped));
    let exports = (sftp.export_every_seconds > 0).then(|| {
        let retention = Duration::from_secs(cfg.audit.retention_seconds);
        let sched = gatehouse_sftp::ScheduledExports {
            dir: cfg.exports_dir(),
            store: cfg.audit_path(),
            catalog: cfg.audit.catalog.clone(),
            keys: Arc::clone(&gw.keys),
        };
        tokio::spawn(export_every(
            sched,
            Duration::from_secs(sftp.export_every_seconds),
            retention,
        ))
    });
    Ok(Some(Running {
        stop,
        server,
        exports,
        reload,
    }))
}

impl Running {
    /// Stops accepting, disconnects sessions and waits for their end records.
    pub async fn stop(self) {
        if let Some(e) = self.exports {
            e.abort();
        }
        self.reload.abort();
        let _ = self.stop.send(true);
        let _ = self.server.await;
    }
}

/// Puts the auditors of a reloaded configuration (SIGHUP) in force, so that removing an
/// auditor or a key takes effect without a restart. The other `[sftp]` keys need a restart.
async fn follow_reloads(gw: Arc<Gateway>, auditors: gatehouse_sftp::Auditors) {
    let mut hash = gw.config.load().hash.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let loaded = gw.config.load();
        if loaded.hash == hash {
            continue;
        }
        hash = loaded.hash.clone();
        match &loaded.config.sftp {
            Some(sftp) => match auditors.replace(sftp) {
                Ok(()) => tracing::info!(auditors = sftp.auditors.len(), "sftp: auditors reloaded"),
                Err(e) => tracing::error!(error = %e, "sftp: reloaded auditors refused"),
            },
            None => tracing::warn!(
                "sftp: [sftp] removed from the configuration; the server runs until restart"
            ),
        }
    }
}

/// Writes an export every `every` (the first at start), of the records since the last one,
/// and deletes scheduled exports older than the audit retention period.
async fn export_every(
    sched: gatehouse_sftp::ScheduledExports,
    every: Duration,
    retention: Duration,
) {
    sched.clean_partials();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = sched.clone();
        let r = tokio::task::spawn_blocking(move || {
            let now = crate::state::now_us();
            let cutoff =
                now.saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX));
            let pruned = s.prune_before(cutoff);
            if pruned > 0 {
                tracing::info!(
                    pruned,
                    "sftp: scheduled exports older than the audit retention deleted"
                );
            }
            s.run_once(now)
        })
        .await;
        match r {
            Ok(Ok(Some((dir, summary)))) => tracing::info!(
                dir = %dir.display(),
                records = summary.records,
                verification = if summary.verification_ok { "passed" } else { "FAILED" },
                "sftp: scheduled evidence export written"
            ),
            Ok(Ok(None)) => tracing::debug!("sftp: no new records to export"),
            Ok(Err(e)) => tracing::error!(error = %e, "sftp: scheduled evidence export failed"),
            Err(e) => tracing::error!(error = %e, "sftp: scheduled evidence export failed"),
        }
    }
}
