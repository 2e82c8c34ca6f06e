//! `gatehouse serve`: validate the config, open the stores, bind the listeners, accept
//! sessions until SIGTERM/SIGINT; SIGHUP reloads the config (a bad file keeps the old one).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use gatehouse_audit::EventKind;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerProtocol, LoadedConfig, LogFormat};
use crate::pg::limits::Admission;
use crate::pg::session::{self, ListenerCtx};

/// How long shutdown waits for PostgreSQL sessions to record their end.
const PG_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
use crate::state::Gateway;

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is dropped. The default
        // reports it with `eprintln!`, which panics when stderr fails too: that killed the
        // thread that logged — the audit writer among them — exactly when the disk was full.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn main(config_path: &Path) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config_path)?;
    init_logging(loaded.config.gateway.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = loaded.config.gateway.worker_threads {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().thread_name("gatehouse").build()?;
    let pid_file = loaded.config.pid_path();
    let pid_written = pid_file.clone();
    let result = rt.block_on(async move {
        let (gw, listeners) = prepare(loaded).await?;
        write_pid_file(&pid_written)?;
        run(gw, listeners, shutdown_signal()).await
    });
    let _ = std::fs::remove_file(&pid_file);
    result
}

/// Records this process's pid in the data dir, so that `gatehouse audit checkpoint` and
/// `gatehouse status` find the running gateway (see [`running_pid`]).
pub fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))
}

/// The pid of a `gatehouse serve` running on this config's data dir, if one runs.
pub fn running_pid(cfg: &crate::config::Config) -> Option<i32> {
    let text = std::fs::read_to_string(cfg.pid_path()).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "gatehouse").then_some(pid)
}

/// Asks the gateway `pid` for an audit checkpoint (SIGUSR1).
pub fn signal_checkpoint(pid: i32) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid).context("invalid pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1)
        .context("signalling the running gateway")?;
    Ok(())
}

/// Everything that can fail before a port is bound, then the binds.
pub async fn prepare(
    loaded: LoadedConfig,
) -> anyhow::Result<(Arc<Gateway>, Vec<(TcpListener, Arc<ListenerCtx>)>)> {
    let config = loaded.config.clone();
    if config.listeners.is_empty() {
        anyhow::bail!("no listeners configured");
    }
    let gw = Arc::new(Gateway::open(loaded)?);
    let mut ctxs = Vec::new();
    for l in &config.listeners {
        let tls = crate::tls::server_config(l, &config.gateway.data_dir, gw.keys.as_ref())
            .with_context(|| format!("listener {:?}: TLS", l.name))?;
        if l.dangerous_allow_plaintext_on_loopback {
            tracing::warn!(listener = %l.name, "DANGEROUS: tokens accepted without TLS on this loopback listener (development only)");
        }
        ctxs.push((
            l,
            Arc::new(ListenerCtx::new(
                l.name.clone(),
                l.protocol,
                Some(TlsAcceptor::from(tls)),
                l.dangerous_allow_plaintext_on_loopback,
                config.limits.sessions_per_listener,
            )),
        ));
    }
    for (i, ok) in gw.verifier.load().prefetch().await {
        if let Err(e) = ok {
            tracing::warn!(issuer = %i, error = %e.reason(), "identity provider not reachable yet; logins through it fail until it is");
        }
    }
    let mut bound = Vec::new();
    for (l, ctx) in ctxs {
        let listener = TcpListener::bind(l.bind)
            .await
            .with_context(|| format!("listener {:?}: binding {}", l.name, l.bind))?;
        let protocol = match l.protocol {
            ListenerProtocol::Postgres => "postgres",
            ListenerProtocol::Api => "api",
        };
        tracing::info!(listener = %l.name, addr = %listener.local_addr()?, protocol, "listening");
        bound.push((listener, ctx));
    }
    Ok((gw, bound))
}

pub async fn run(
    gw: Arc<Gateway>,
    listeners: Vec<(TcpListener, Arc<ListenerCtx>)>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let sftp = crate::sftp::start(&gw).await?;
    let hash = gw.config.load().hash.clone();
    let mut start = gw.record(EventKind::GatewayStart);
    start.config_hash = Some(hash.clone());
    start.reason = Some(format!(
        "gatehouse {} started; key store: {}",
        env!("CARGO_PKG_VERSION"),
        gw.keys.backend()
    ));
    gw.audit
        .append(start)
        .await
        .context("audit store refused the start record")?;
    let mut cfg = gw.record(EventKind::ConfigLoaded);
    cfg.config_hash = Some(hash);
    cfg.reason = Some(policy_note(&gw));
    cfg.policy_hash = gw.policy_hash();
    gw.audit
        .append(cfg)
        .await
        .context("audit store refused the config record")?;

    let mut tasks = Vec::new();
    let pg_listeners: Vec<Arc<ListenerCtx>> = listeners
        .iter()
        .filter(|(_, c)| c.protocol == ListenerProtocol::Postgres)
        .map(|(_, c)| c.clone())
        .collect();
    for (listener, ctx) in listeners {
        let gw = gw.clone();
        if ctx.protocol == ListenerProtocol::Api {
            tasks.push(tokio::spawn(crate::api::serve(gw, ctx, listener)));
            continue;
        }
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    // Counted from accept: a connection that has not logged in holds a slot.
                    // With every session and refusal slot busy this waits, and further
                    // connections wait in the kernel's accept queue.
                    Ok((tcp, peer)) => match ctx.slots.admit().await {
                        Admission::Session(slot) => {
                            tokio::spawn(session::handle(gw.clone(), ctx.clone(), tcp, peer, slot));
                        }
                        Admission::Refuse(slot) => {
                            tokio::spawn(session::refuse(gw.clone(), ctx.clone(), tcp, peer, slot));
                        }
                    },
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let reload = tokio::spawn(reload_on_hup(gw.clone()));
    let on_demand = tokio::spawn(checkpoint_on_usr1(gw.clone()));
    let retention = tokio::spawn(prune_hourly(gw.clone()));
    let approvals = tokio::spawn(audit_approvals(gw.clone()));
    let outbox = tokio::spawn(drain_outbox(gw.clone()));
    let (watchdog_stop, stop_rx) = tokio::sync::oneshot::channel();
    let watchdog = tokio::spawn(pet_watchdog(
        gw.config.load().config.gateway.watchdog,
        stop_rx,
    ));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = watchdog_stop.send(());
    let _ = watchdog.await;
    for t in tasks {
        t.abort();
    }
    // PostgreSQL sessions end and record their end before `gateway.stop`, like SFTP's.
    for ctx in &pg_listeners {
        ctx.shutdown.send_replace(true);
    }
    for ctx in &pg_listeners {
        if tokio::time::timeout(PG_SHUTDOWN_GRACE, ctx.slots.drained())
            .await
            .is_err()
        {
            tracing::warn!(listener = %ctx.name, left = ctx.slots.in_use(), "sessions still ending at shutdown");
        }
    }
    reload.abort();
    on_demand.abort();
    retention.abort();
    approvals.abort();
    outbox.abort();
    if let Some(sftp) = sftp {
        sftp.stop().await;
    }
    let stop = gw.record(EventKind::GatewayStop);
    if let Err(e) = gw.audit.append(stop).await {
        tracing::error!(error = %e, "could not record the stop");
    }
    gw.audit.flush().await.context("flushing the audit store")?;
    // A signed checkpoint over everything, so that `audit verify` sees no uncovered tail.
    let audit_gw = gw.clone();
    match tokio::task::spawn_blocking(move || audit_gw.audit.checkpoint_at_shutdown()).await {
        Ok(Ok(cp)) => tracing::info!(size = cp.size, "audit checkpoint written at shutdown"),
        Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint at shutdown failed"),
        Err(e) => tracing::error!(error = %e, "audit checkpoint at shutdown failed"),
    }
    Ok(())
}

/// Pets the board's watchdog from the runtime, so a hung gateway resets the appliance;
/// disarms it on a clean shutdown.
async fn pet_watchdog(enabled: bool, mut stop: tokio::sync::oneshot::Receiver<()>) {
    use gatehouse_board::watchdog::{self, Watchdog};
    let facts = gatehouse_board::facts::BoardFacts::detect();
    let Some(path) = facts.watchdog_device.filter(|_| enabled) else {
        return;
    };
    let mut wd = match Watchdog::open(&path) {
        Ok(wd) => wd,
        Err(e) => {
            tracing::warn!(device = %path.display(), error = %e, "cannot open the watchdog");
            return;
        }
    };
    let identity = watchdog::identity_under(std::path::Path::new("/")).unwrap_or_default();
    tracing::info!(device = %path.display(), %identity, "petting the board's watchdog");
    let mut tick = tokio::time::interval(watchdog::PET_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => if let Err(e) = wd.pet() {
                tracing::error!(error = %e, "petting the watchdog failed");
            },
            _ = &mut stop => break,
        }
    }
    if let Err(e) = wd.disarm() {
        tracing::warn!(error = %e, "disarming the watchdog failed");
    }
}

async fn reload_on_hup(gw: Arc<Gateway>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match gw.reload() {
            Ok(hash) => {
                tracing::info!(config_hash = %hash, "configuration reloaded");
                let mut r = gw.record(EventKind::ConfigLoaded);
                r.config_hash = Some(hash);
                r.reason = Some(policy_note(&gw));
                r.policy_hash = gw.policy_hash();
                if let Err(e) = gw.audit.append(r).await {
                    tracing::error!(error = %e, "could not record the reload");
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration reload refused; the running configuration stays in force")
            }
        }
    }
}

/// The policy in force, for the `config.loaded` record; also hands its hash to the audit
/// store, whose checkpoints carry it (CM-2).
fn policy_note(gw: &Gateway) -> String {
    let policy = gw.policy.load();
    let hash = policy.as_ref().as_ref().map(|p| p.hash().to_owned());
    if let Err(e) = gw.audit.set_policy_hash(hash) {
        tracing::error!(error = %e, "could not pass the policy hash to the audit store");
    }
    match policy.as_ref() {
        Some(p) => format!("policy version {} sha256 {}", p.version(), p.hash()),
        None => "no policy configured: every statement is allowed and recorded".into(),
    }
}

/// Records the CLI's connection changes (`outbox.rs`) at start and every second. A changed
/// credential also rebuilds the masking engines, so that the new password is masked in every
/// session that starts from then on.
async fn drain_outbox(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let config = gw.config.load().config.clone();
        match crate::outbox::drain_into(&config, &gw.audit).await {
            Ok(done) if done.iter().any(|r| r.event == EventKind::ConnectionChanged) => {
                let g = gw.clone();
                match tokio::task::spawn_blocking(move || g.rebuild_masking()).await {
                    Ok(Ok(())) => tracing::info!("connection changed: masking engines rebuilt"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %format!("{e:#}"), "masking engines not rebuilt")
                    }
                    Err(_) => {}
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "audit outbox not drained"),
        }
    }
}

/// Puts the life of every approval request into the audit trail: requested, approved,
/// denied, expired, executed. Decisions are made by the CLI (another process) in the
/// approvals store; the gateway, the audit store's only writer, watches the store every
/// second and records each change once. Requests already in the store when the gateway
/// starts are not recorded again.
async fn audit_approvals(gw: Arc<Gateway>) {
    use gatehouse_approvals::{RequestFilter, RequestStatus};
    let mut seen: std::collections::HashMap<String, RequestStatus> =
        std::collections::HashMap::new();
    let mut seen_grants: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut first = true;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let g = gw.clone();
        let listed = tokio::task::spawn_blocking(move || {
            g.approvals.expire(std::time::SystemTime::now())?;
            g.approvals.list(RequestFilter::All, 1000)
        })
        .await;
        let requests = match listed {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "approvals store unavailable for auditing");
                continue;
            }
            Err(_) => continue,
        };
        let policy = gw.policy.load();
        let policy_note = policy
            .as_ref()
            .as_ref()
            .map(|p| format!("policy {} sha256 {}", p.version(), p.hash()))
            .unwrap_or_else(|| "no policy".into());
        let mut records = Vec::new();
        // (event, request) of each approval record, for the webhook.
        let mut changes = Vec::new();
        for r in requests.iter().rev() {
            let key = r.id.to_string();
            let before = seen.insert(key.clone(), r.status);
            if first {
                continue;
            }
            let mut events = Vec::new();
            if before.is_none() {
                events.push(EventKind::ApprovalRequested);
            }
            if before != Some(r.status) {
                match r.status {
                    RequestStatus::Pending => {}
                    RequestStatus::Approved => events.push(EventKind::ApprovalApproved),
                    RequestStatus::Denied => events.push(EventKind::ApprovalDenied),
                    RequestStatus::Expired => events.push(EventKind::ApprovalExpired),
                    RequestStatus::Executed => {
                        if before != Some(RequestStatus::Approved)
                            && r.votes
                                .iter()
                                .any(|v| v.verdict == gatehouse_approvals::Verdict::Approve)
                        {
                            events.push(EventKind::ApprovalApproved);
                        }
                        events.push(EventKind::ApprovalExecuted);
                    }
                }
            }
            // People as configuration writes them (`dev:bob`, or plain for the one real issuer).
            let issuers = gw.config.load().config.issuers().unwrap_or_default();
            for ev in events {
                let mut rec = gw.record(ev);
                rec.policy_hash = gw.policy_hash();
                rec.username = Some(r.requester.name.clone());
                rec.issuer = Some(r.requester.issuer.as_str().to_owned());
                rec.groups = r.requester_groups.iter().map(|g| g.name.clone()).collect();
                rec.connection = Some(r.connection.clone());
                rec.statement = Some(r.statement.clone());
                rec.decision = Some(match ev {
                    EventKind::ApprovalApproved | EventKind::ApprovalExecuted => {
                        gatehouse_audit::Decision::Allow
                    }
                    EventKind::ApprovalDenied | EventKind::ApprovalExpired => {
                        gatehouse_audit::Decision::Deny
                    }
                    _ => gatehouse_audit::Decision::Deny,
                });
                let votes: Vec<String> = r
                    .votes
                    .iter()
                    .map(|v| {
                        format!(
                            "{} {} ({}){}",
                            issuers.show_user(&v.approver),
                            v.verdict.as_str(),
                            crate::decisions::names(&v.approver_groups).join(","),
                            v.comment
                                .as_ref()
                                .map(|c| format!(": {c}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                rec.reason = Some(format!(
                    "{} {} mode {}; approvers {} ({} needed); votes [{}]; {}",
                    r.id,
                    r.rule,
                    r.mode.as_str(),
                    r.approvers.join("|"),
                    r.min_approvals,
                    votes.join("; "),
                    policy_note
                ));
                records.push(rec);
                changes.push((ev, r));
            }
        }
        // Grants: issued, then ended (expired or revoked); each use is in the statement record.
        let g2 = gw.clone();
        let grants = tokio::task::spawn_blocking(move || {
            g2.approvals.expire_grants(std::time::SystemTime::now())?;
            g2.approvals
                .list_grants(gatehouse_approvals::GrantFilter::All, 1000)
        })
        .await;
        if let Ok(Ok(grants)) = grants {
            for g in grants.iter().rev() {
                let active = g.status == gatehouse_approvals::GrantStatus::Active;
                let before = seen_grants.insert(g.id.to_string(), active);
                if first {
                    continue;
                }
                let mut events = Vec::new();
                if before.is_none() {
                    events.push(EventKind::GrantIssued);
                }
                if !active && before != Some(false) {
                    events.push(EventKind::GrantEnded);
                }
                // People as configuration writes them (`dev:bob`, or plain for the one real issuer).
                let issuers = gw.config.load().config.issuers().unwrap_or_default();
                for ev in events {
                    let mut rec = gw.record(ev);
                    rec.policy_hash = gw.policy_hash();
                    rec.username = Some(g.user.name.clone());
                    rec.issuer = Some(g.user.issuer.as_str().to_owned());
                    rec.connection = Some(g.connection.clone());
                    rec.decision = Some(if ev == EventKind::GrantIssued {
                        gatehouse_audit::Decision::Allow
                    } else {
                        gatehouse_audit::Decision::Deny
                    });
                    rec.rows = Some(i64::try_from(g.use_count).unwrap_or(i64::MAX));
                    rec.reason = Some(format!(
                        "{} {:?} scope {:?}; issued by {} ({}){}{}; uses {}; {}",
                        g.id,
                        g.status,
                        g.scope,
                        issuers.show_user(&g.issued_by),
                        crate::decisions::names(&g.issued_by_groups).join(","),
                        g.comment
                            .as_ref()
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default(),
                        g.revoked_by
                            .as_ref()
                            .map(|r| format!("; revoked by {}", issuers.show_user(r)))
                            .unwrap_or_default(),
                        g.use_count,
                        policy_note
                    ));
                    records.push(rec);
                }
            }
        }
        first = false;
        if let Some(hook) = gw.config.load().config.approvals.webhook.clone() {
            // Each event once, in order, best effort.
            let gateway = gw.name();
            let bodies: Vec<serde_json::Value> = changes
                .iter()
                .map(|(ev, r)| crate::webhook::payload(hook.format, &gateway, ev.as_str(), r))
                .collect();
            if !bodies.is_empty() {
                tokio::task::spawn_blocking(move || {
                    for b in &bodies {
                        if let Err(e) = crate::webhook::deliver(&hook, b) {
                            tracing::warn!(error = %e, "approval webhook delivery failed");
                        }
                    }
                });
            }
        }
        if !records.is_empty() {
            if let Err(e) = gw.audit.append_batch(&records).await {
                tracing::error!(error = %e, "could not record approval events");
            }
        }
    }
}

/// Retention (AU-11): every hour, records older than `audit.retention_seconds` are pruned
/// (whole Merkle chunks, checkpointed records only; see `gatehouse_audit::prune`).
async fn prune_hourly(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let g = gw.clone();
        let r = tokio::task::spawn_blocking(move || {
            let cfg = g.config.load();
            let retention = std::time::Duration::from_secs(cfg.config.audit.retention_seconds);
            let now = crate::state::now_us();
            let before = now - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
            gatehouse_audit::prune(
                &cfg.config.audit_path(),
                g.keys.as_ref(),
                before,
                retention,
                now,
            )
        })
        .await;
        match r {
            Ok(Ok(report)) => tracing::info!(
                deleted = report.deleted,
                first_seq = report.first_seq,
                "audit retention: records pruned"
            ),
            Ok(Err(gatehouse_audit::AuditError::Retention(why))) => {
                tracing::debug!(why, "audit retention: nothing to prune")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "audit retention: prune failed"),
            Err(e) => tracing::error!(error = %e, "audit retention: prune task failed"),
        }
    }
}

/// SIGUSR1 asks for a signed audit checkpoint now (`gatehouse audit checkpoint` sends it).
async fn checkpoint_on_usr1(gw: Arc<Gateway>) {
    let Ok(mut usr1) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
    else {
        return;
    };
    while usr1.recv().await.is_some() {
        let g = gw.clone();
        match tokio::task::spawn_blocking(move || g.audit.checkpoint_now()).await {
            Ok(Ok(cp)) => tracing::info!(size = cp.size, id = cp.id, "audit checkpoint on demand"),
            Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint on demand failed"),
            Err(e) => tracing::error!(error = %e, "audit checkpoint on demand failed"),
        }
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
