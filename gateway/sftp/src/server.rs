//! The SSH side: accept connections, authenticate auditors by public key, allow one `sftp`
//! subsystem per connection and refuse everything else (shell, exec, pty, X11, agent and
//! port forwarding), each refusal and each login attempt an audit record.
//!
//! Every record of one batch of SFTP requests is committed to the audit store before any
//! reply of that batch is sent; if the store refuses, the session ends (fail closed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use gatehouse_audit::{AuditStore, Decision, EventKind, Record};
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::codec;
use crate::config::{AuditorKey, SftpConfig};
use crate::session::{AuditEvent, SessionLimits, SftpSession};
use crate::vfs::Root;

/// The listener name in audit records.
pub const LISTENER: &str = "sftp";

/// Session channels one connection may open (over its life).
const MAX_CHANNELS: usize = 4;

/// Replies buffered before they are written (one slice of a pipelined batch).
const OUT_HIGH_WATER: usize = 1024 * 1024;

/// How long shutdown waits for sessions to end after asking them to.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything sessions share.
struct Shared {
    gateway: String,
    audit: AuditStore,
    /// Fingerprint → auditor; replaced on reload ([`Auditors::replace`]).
    keys: ArcSwap<HashMap<String, AuditorKey>>,
    root: Arc<Root>,
    limits: SessionLimits,
}

/// A configured, not yet running SFTP server.
pub struct SftpServer {
    shared: Arc<Shared>,
    ssh: Arc<russh::server::Config>,
    max_sessions: usize,
    /// An unauthenticated connection is closed after this long (`sftp.login_grace_seconds`;
    /// OpenSSH's `LoginGraceTime` is 120 s, an auditor's client logs in within a second), so
    /// that connections that never log in cannot hold the session slots.
    login_grace: Duration,
}

impl std::fmt::Debug for SftpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpServer")
            .field("root", &self.shared.root)
            .field("auditors", &self.shared.keys.load().len())
            .finish()
    }
}

/// Server errors (setup only; session errors end that session).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("sftp: {0}")]
    Config(String),
    /// The served directory cannot be used.
    #[error("sftp: export directory: {0}")]
    Root(std::io::Error),
}

impl SftpServer {
    /// Builds the server: validates `cfg`, serves `root_dir`, uses `host_key`.
    pub fn new(
        cfg: &SftpConfig,
        gateway: &str,
        audit: AuditStore,
        root_dir: &std::path::Path,
        host_key: PrivateKey,
    ) -> Result<SftpServer, ServerError> {
        let keys = cfg.validate().map_err(ServerError::Config)?;
        let root = Arc::new(Root::new(root_dir).map_err(ServerError::Root)?);
        let ssh = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-Gatehouse".into()),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_millis(500),
            // OpenSSH first asks with method "none" to learn the methods: answer at once.
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            max_auth_attempts: 6,
            inactivity_timeout: Some(Duration::from_secs(cfg.idle_timeout_seconds)),
            keepalive_interval: Some(Duration::from_secs(60)),
            nodelay: true,
            ..Default::default()
        };
        Ok(SftpServer {
            shared: Arc::new(Shared {
                gateway: gateway.to_owned(),
                audit,
                keys: ArcSwap::from_pointee(keys),
                root,
                limits: SessionLimits {
                    max_handles: cfg.max_handles,
                    max_read: cfg.max_read_bytes,
                },
            }),
            ssh: Arc::new(ssh),
            max_sessions: cfg.max_sessions,
            login_grace: Duration::from_secs(cfg.login_grace_seconds),
        })
    }

    /// A handle that replaces the auditors (on a configuration reload).
    pub fn auditors(&self) -> Auditors {
        Auditors(Arc::clone(&self.shared))
    }

    /// Accepts connections on `listener` until `shutdown` turns true, then asks every session
    /// to disconnect and waits (a bounded time) for their end records.
    pub async fn run(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.max_sessions));
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                            tracing::warn!(%peer, "sftp: too many sessions; connection closed");
                            drop(tcp);
                            continue;
                        };
                        let shared = Arc::clone(&self.shared);
                        let ssh = Arc::clone(&self.ssh);
                        let stop = shutdown.clone();
                        let grace = self.login_grace;
                        sessions.spawn(async move {
                            connection(shared, ssh, tcp, peer, grace, stop).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sftp: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        sessions.abort_all();
    }
}

/// Replaces the auditor table of a running server: logins from then on use the new keys
/// (sessions already open carry on).
#[derive(Clone)]
pub struct Auditors(Arc<Shared>);

impl std::fmt::Debug for Auditors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auditors")
    }
}

impl Auditors {
    /// Validates `cfg` and puts its auditors in force.
    pub fn replace(&self, cfg: &SftpConfig) -> Result<(), String> {
        let keys = cfg.validate()?;
        self.0.keys.store(Arc::new(keys));
        Ok(())
    }
}

fn new_session_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Who a session is, for its audit records.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    session_id: String,
    peer: SocketAddr,
    /// (auditor, key fingerprint) once authenticated.
    who: Option<(String, String)>,
}

impl Ctx {
    fn record(&self, event: EventKind) -> Record {
        let mut r = Record::new(event, &self.shared.gateway, now_us());
        r.listener = Some(LISTENER.into());
        r.session_id = Some(self.session_id.clone());
        r.source = Some(self.peer.to_string());
        r.protocol = Some("sftp".into());
        if let Some((user, fp)) = &self.who {
            r.username = Some(user.clone());
            r.subject = Some(fp.clone());
        }
        r
    }

    fn denied(&self, op: &str, target: &str, reason: &str) -> Record {
        let mut r = self.record(EventKind::SftpDenied);
        r.statement = Some(if target.is_empty() {
            op.to_owned()
        } else {
            format!("{op} {target}")
        });
        r.decision = Some(Decision::Deny);
        r.reason = Some(reason.to_owned());
        r
    }

    fn event_record(&self, e: AuditEvent) -> Record {
        match e {
            AuditEvent::Opened { path, size } => {
                let mut r = self.record(EventKind::SftpOpen);
                r.statement = Some(format!("open {path}"));
                r.decision = Some(Decision::Allow);
                r.rows = Some(i64::try_from(size).unwrap_or(i64::MAX));
                r
            }
            AuditEvent::Downloaded {
                path,
                bytes,
                size,
                duration,
            } => {
                let mut r = self.record(EventKind::SftpDownload);
                r.statement = Some(format!("download {path}"));
                r.bytes_out = Some(i64::try_from(bytes).unwrap_or(i64::MAX));
                r.rows = Some(i64::try_from(size).unwrap_or(i64::MAX));
                r.duration_us = Some(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX));
                r.reason = Some(if bytes >= size {
                    "complete".into()
                } else {
                    format!("partial: {bytes} of {size} bytes")
                });
                r
            }
            AuditEvent::Denied { op, target, reason } => self.denied(&op, &target, reason),
        }
    }

    async fn append(&self, r: Record) -> bool {
        match self.shared.audit.append(r).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "sftp: audit store refused a record; refusing");
                false
            }
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    ssh: Arc<russh::server::Config>,
    tcp: TcpStream,
    peer: SocketAddr,
    login_grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Ctx {
        shared,
        session_id: new_session_id(),
        peer,
        who: None,
    };
    let authenticated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = Conn {
        ctx,
        authenticated: Arc::clone(&authenticated),
        started: Instant::now(),
        channels: HashMap::new(),
        sessions_opened: 0,
        sftp_started: false,
        bytes_out: Arc::new(AtomicU64::new(0)),
    };
    // The grace time runs from the accept: `run_stream` itself waits for the client's
    // identification string, which a client may never send.
    let deadline = tokio::time::Instant::now() + login_grace;
    let started = tokio::time::timeout_at(deadline, russh::server::run_stream(ssh, tcp, handler));
    let mut running = match started.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "sftp: handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "sftp: no SSH identification within the grace time; closed");
            return;
        }
    };
    let handle = running.handle();
    let grace = tokio::time::sleep_until(deadline);
    tokio::pin!(grace);
    let mut grace_over = false;
    loop {
        tokio::select! {
            () = &mut grace, if !grace_over => {
                grace_over = true;
                if !authenticated.load(Ordering::Relaxed) {
                    tracing::info!(%peer, "sftp: no login within the grace time; disconnecting");
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "login grace time over".into(),
                            "en".into(),
                        )
                        .await;
                }
                continue;
            }
            r = &mut running => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "sftp: session ended with an error");
                }
            }
            _ = shutdown.changed() => {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "gateway shutting down".into(),
                        "en".into(),
                    )
                    .await;
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut running).await;
            }
        }
        break;
    }
}

/// Session-level errors: an SSH protocol error, or the audit store refused (fail closed).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}

/// One SSH connection.
struct Conn {
    ctx: Ctx,
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    channels: HashMap<ChannelId, Channel<Msg>>,
    sessions_opened: usize,
    sftp_started: bool,
    bytes_out: Arc<AtomicU64>,
}

impl Conn {
    async fn refuse(&self, op: &str, target: &str, reason: &str) {
        let _ = self.ctx.append(self.ctx.denied(op, target, reason)).await;
    }

    async fn login_failure(&self, user: &str, reason: String) {
        let mut r = self.ctx.record(EventKind::LoginFailure);
        r.username = Some(bounded(user));
        r.decision = Some(Decision::Deny);
        r.reason = Some(reason);
        let _ = self.ctx.append(r).await;
    }
}

fn bounded(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect()
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.ctx.who.is_none() {
            return;
        }
        let mut r = self.ctx.record(EventKind::SessionEnd);
        r.bytes_out = Some(i64::try_from(self.bytes_out.load(Ordering::Relaxed)).unwrap_or(0));
        r.duration_us = Some(i64::try_from(self.started.elapsed().as_micros()).unwrap_or(0));
        if let Err(e) = self.ctx.shared.audit.append_nowait(r) {
            tracing::error!(error = %e, "sftp: could not record the session end");
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = ConnError;

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        // The password is never looked at, logged or recorded.
        self.login_failure(user, "password authentication is not accepted".into())
            .await;
        Ok(Auth::reject())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.login_failure(
            user,
            "keyboard-interactive authentication is not accepted".into(),
        )
        .await;
        Ok(Auth::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        let keys = self.ctx.shared.keys.load();
        match keys.get(&fp) {
            Some(k) if k.auditor == user => Ok(Auth::Accept),
            Some(_) => {
                self.login_failure(
                    user,
                    format!("publickey {fp}: the key belongs to another auditor"),
                )
                .await;
                Ok(Auth::reject())
            }
            None => {
                self.login_failure(user, format!("publickey {fp}: unknown key"))
                    .await;
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let keys = self.ctx.shared.keys.load();
        let Some(k) = keys.get(&fp).filter(|k| k.auditor == user) else {
            self.login_failure(user, format!("publickey {fp}: unknown key"))
                .await;
            return Ok(Auth::reject());
        };
        let mut ctx = self.ctx.clone();
        ctx.who = Some((k.auditor.clone(), fp.clone()));
        let mut r = ctx.record(EventKind::LoginSuccess);
        r.decision = Some(Decision::Allow);
        r.reason = Some(format!("publickey {} {fp}", key.algorithm));
        // Write-ahead: no session without its login record.
        if !ctx.append(r).await {
            return Ok(Auth::reject());
        }
        tracing::info!(auditor = %k.auditor, key = %fp, peer = %self.ctx.peer, "sftp: auditor logged in");
        self.ctx = ctx;
        self.authenticated.store(true, Ordering::Relaxed);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A few session channels per connection (the sftp client opens one).
        if self.sessions_opened >= MAX_CHANNELS {
            self.refuse("channel", "session", "too many session channels")
                .await;
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.sessions_opened += 1;
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(
            "port-forward",
            &format!("{}:{port_to_connect}", bounded(host_to_connect)),
            "port forwarding is not allowed",
        )
        .await;
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(
            "streamlocal-forward",
            &bounded(socket_path),
            "socket forwarding is not allowed",
        )
        .await;
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(
            "remote-forward",
            &format!("{}:{port}", bounded(address)),
            "port forwarding is not allowed",
        )
        .await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(
            "remote-forward",
            &bounded(socket_path),
            "socket forwarding is not allowed",
        )
        .await;
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("agent-forward", "", "agent forwarding is not allowed")
            .await;
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11-forward", "", "X11 forwarding is not allowed")
            .await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("pty", "", "no terminal: SFTP only").await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // OpenSSH sends LANG/LC_* by default; ignoring them is not worth a record.
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("shell", "", "no shell: SFTP only").await;
        session.channel_failure(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = bounded(&String::from_utf8_lossy(data));
        self.refuse("exec", &command, "no commands: SFTP only")
            .await;
        session.channel_failure(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ch = if name == "sftp" && !self.sftp_started {
            self.channels.remove(&channel)
        } else {
            None
        };
        let Some(ch) = ch else {
            self.refuse(
                "subsystem",
                &bounded(name),
                "only the sftp subsystem is served",
            )
            .await;
            session.channel_failure(channel)?;
            return Ok(());
        };
        self.sftp_started = true;
        session.channel_success(channel)?;
        let ctx = self.ctx.clone();
        let bytes_out = Arc::clone(&self.bytes_out);
        tokio::spawn(async move {
            let mut stream = ch.into_stream();
            serve_sftp(&ctx, &mut stream, &bytes_out).await;
            let _ = stream.shutdown().await;
        });
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.close(channel)?;
        Ok(())
    }
}

/// Runs the SFTP protocol on one channel until the client ends it, a framing error, or the
/// audit store refuses.
async fn serve_sftp<S>(ctx: &Ctx, stream: &mut S, bytes_out: &AtomicU64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut sftp = Some(SftpSession::new(
        Arc::clone(&ctx.shared.root),
        ctx.shared.limits,
    ));
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    'session: loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Every whole packet in the buffer is one batch.
        let mut packets = Vec::new();
        let mut used = 0;
        loop {
            match codec::frame_len(&buf[used..]) {
                Ok(Some(len)) => {
                    packets.push(buf[used + 4..used + len].to_vec());
                    used += len;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, session = %ctx.session_id, "sftp: framing error; session ends");
                    let _ = ctx
                        .append(ctx.denied("protocol", "", "malformed SFTP stream"))
                        .await;
                    break 'session;
                }
            }
        }
        buf.drain(..used);
        if packets.is_empty() {
            continue;
        }
        // Replies are written in slices of at most OUT_HIGH_WATER bytes: a read of many tiny
        // pipelined requests cannot make the server buffer their large replies all at once.
        let mut pending: std::collections::VecDeque<Vec<u8>> = packets.into();
        while !pending.is_empty() {
            let Some(mut s) = sftp.take() else {
                break 'session;
            };
            // File-system work off the async runtime.
            let done = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let mut events = Vec::new();
                while out.len() < OUT_HIGH_WATER {
                    let Some(p) = pending.pop_front() else { break };
                    match codec::parse_request(&p) {
                        Ok(req) => s.handle(req, &mut out, &mut events),
                        Err(m) => s.malformed(m, &mut out),
                    }
                }
                (s, pending, out, events)
            })
            .await;
            let Ok((s, rest, out, events)) = done else {
                break 'session;
            };
            pending = rest;
            bytes_out.store(s.bytes_served, Ordering::Relaxed);
            sftp = Some(s);
            // Write-ahead: this slice's records are committed before its replies are sent.
            if !events.is_empty() {
                let records: Vec<Record> =
                    events.into_iter().map(|e| ctx.event_record(e)).collect();
                if let Err(e) = ctx.shared.audit.append_batch(&records).await {
                    tracing::error!(error = %e, "sftp: audit store refused; session ends");
                    break 'session;
                }
            }
            if stream.write_all(&out).await.is_err() {
                break 'session;
            }
        }
    }
    if let Some(mut s) = sftp {
        let left: Vec<Record> = s
            .close_all()
            .into_iter()
            .map(|e| ctx.event_record(e))
            .collect();
        if !left.is_empty() {
            let _ = ctx.shared.audit.append_batch(&left).await;
        }
    }
}
