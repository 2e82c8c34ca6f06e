//! One client session from accept to close: negotiate, authenticate, authorize, connect
//! upstream, relay, finish. Every outcome is audited; every failure reaches the client as an
//! ErrorResponse in its own protocol.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gatehouse_audit::{Decision, EventKind, Record};
use gatehouse_identity::Identity;
use gatehouse_pgwire::{
    decode_password, decode_startup, encode_auth_cleartext, encode_auth_ok,
    encode_backend_key_data, encode_negotiate_protocol_version, next_frame, CancelKey,
    StartupMessage, StartupPacket, HEADER_LEN,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::cancel::CancelTarget;
use super::error::SessionError;
use super::limits::{ListenerSlots, UserSlot, REFUSAL_TIMEOUT};
use super::relay::{self, SessionStats};
use super::upstream::{self, Stream};
use crate::config::ConnectionConfig;
use crate::state::Gateway;

/// How long a client has to finish startup and authentication.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest PasswordMessage accepted (a JWT with many groups fits well inside).
const MAX_PASSWORD_MESSAGE: usize = 16 * 1024 + HEADER_LEN;

pub type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;

/// What a listener contributes to its sessions.
pub struct ListenerCtx {
    pub name: String,
    pub protocol: crate::config::ListenerProtocol,
    pub tls: Option<TlsAcceptor>,
    pub allow_plaintext: bool,
    /// Connection slots (`limits.sessions_per_listener`), taken at accept.
    pub slots: ListenerSlots,
    /// Turned `true` at gateway shutdown: every session of the listener ends and records
    /// its end.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl ListenerCtx {
    pub fn new(
        name: String,
        protocol: crate::config::ListenerProtocol,
        tls: Option<TlsAcceptor>,
        allow_plaintext: bool,
        max_sessions: u32,
    ) -> ListenerCtx {
        ListenerCtx {
            name,
            protocol,
            tls,
            allow_plaintext,
            slots: ListenerSlots::new(max_sessions),
            shutdown: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl std::fmt::Debug for ListenerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCtx")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("allow_plaintext", &self.allow_plaintext)
            .field("slots", &self.slots)
            .finish()
    }
}

/// Facts about the session known so far, for audit records.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub listener: String,
    pub source: String,
    pub identity: Option<Arc<Identity>>,
    pub claimed_user: Option<String>,
    pub connection: Option<String>,
}

impl SessionInfo {
    pub fn record(&self, gw: &Gateway, event: EventKind) -> Record {
        let mut r = gw.record(event);
        self.fill(&mut r);
        r
    }

    pub fn fill(&self, r: &mut Record) {
        r.listener = Some(self.listener.clone());
        r.session_id = Some(self.id.clone());
        r.source = Some(self.source.clone());
        r.connection = self.connection.clone();
        if let Some(id) = &self.identity {
            r.subject = Some(id.subject.clone());
            r.username = Some(id.username.clone());
            r.email = id.email.clone();
            r.groups = id.groups.clone();
            r.token_id = id.token_id.clone();
            r.issuer = Some(id.issuer.clone());
        } else {
            r.username = self.claimed_user.clone();
        }
    }
}

pub fn new_session_id() -> String {
    let b: [u8; 8] = rand::random();
    hex::encode(b)
}

fn new_info(lst: &ListenerCtx, peer: SocketAddr) -> SessionInfo {
    SessionInfo {
        id: new_session_id(),
        listener: lst.name.clone(),
        source: peer.to_string(),
        identity: None,
        claimed_user: None,
        connection: None,
    }
}

/// Runs one client connection to its end, holding `_slot` (its place in
/// `limits.sessions_per_listener`) until then. Never panics on client input; logs and
/// audits. At gateway shutdown the session is ended and its `session.end` recorded.
pub async fn handle(
    gw: Arc<Gateway>,
    lst: Arc<ListenerCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let mut info = new_info(&lst, peer);
    let mut client = Stream::Plain(tcp);
    let started = Instant::now();
    // Set once `login.success` is recorded: from then on the session owes a `session.end`.
    let logged_in = AtomicBool::new(false);
    let mut stop = lst.shutdown.subscribe();
    let result = tokio::select! {
        r = run(&gw, &lst, &mut client, &mut info, started, &logged_in) => r,
        _ = stop.wait_for(|s| *s) => Err(SessionError::ShuttingDown),
    };
    if let Err(SessionError::ShuttingDown) = &result {
        if logged_in.load(Ordering::Acquire) {
            // The relay was cut at an unknown point (maybe inside a message): its byte and
            // row counts are lost and no ErrorResponse is written into the stream.
            let mut rec = info.record(&gw, EventKind::SessionEnd);
            rec.duration_us = Some(started.elapsed().as_micros() as i64);
            rec.reason = Some(SessionError::ShuttingDown.to_string());
            rec.sqlstate = Some(SessionError::ShuttingDown.sqlstate().into());
            if let Err(e) = gw.audit.append(rec).await {
                tracing::error!(session = %info.id, error = %e, "could not record session end");
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
            return;
        }
    }
    if let Err(e) = result {
        match e {
            SessionError::Io(_) | SessionError::Timeout => {
                tracing::debug!(session = %info.id, error = %e, "session ended");
            }
            _ => {
                tracing::info!(session = %info.id, kind = ?e.kind(), sqlstate = e.sqlstate(), error = %e, "session failed")
            }
        }
        let mut out = BytesMut::new();
        e.encode(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = client.write_all(&out).await;
            let _ = client.shutdown().await;
        })
        .await;
    }
}

/// A connection over `limits.sessions_per_listener`, holding `_slot` (one of the listener's
/// refusal slots): negotiated like any other (TLS, cancel requests still work) within
/// [`REFUSAL_TIMEOUT`], then told 53300 in its own protocol, as PostgreSQL answers "too many
/// clients", and closed. Audited as a `login.failure`.
pub async fn refuse(
    gw: Arc<Gateway>,
    lst: Arc<ListenerCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let mut info = new_info(&lst, peer);
    let mut client = Stream::Plain(tcp);
    let e = SessionError::TooManyConnections {
        listener: lst.name.clone(),
        limit: lst.slots.limit(),
    };
    let negotiated = tokio::time::timeout(
        REFUSAL_TIMEOUT,
        negotiate(&gw, &lst, &mut client, &mut info),
    )
    .await;
    let answer = match negotiated {
        // A cancel request: handled as usual.
        Ok(Ok(None)) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
            return;
        }
        Ok(Ok(Some(_))) => true,
        // No TLS on a TLS listener, a protocol error: nothing secret was sent, say why.
        Ok(Err(SessionError::Io(_))) | Err(_) => false,
        Ok(Err(_)) => true,
    };
    audit_login_failure(&gw, &info, &e).await;
    tracing::warn!(listener = %lst.name, source = %info.source, limit = lst.slots.limit(), "connection refused: listener at its session limit");
    if answer {
        let mut out = BytesMut::new();
        e.encode(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = client.write_all(&out).await;
            let _ = client.shutdown().await;
        })
        .await;
    }
}

async fn run(
    gw: &Arc<Gateway>,
    lst: &ListenerCtx,
    client: &mut ClientStream,
    info: &mut SessionInfo,
    started: Instant,
    logged_in: &AtomicBool,
) -> Result<(), SessionError> {
    let startup = tokio::time::timeout(STARTUP_TIMEOUT, negotiate(gw, lst, client, info))
        .await
        .map_err(|_| SessionError::Timeout)??;
    let Some((startup, buf)) = startup else {
        // A cancel request, handled. Close cleanly: a TLS client (libpq 17+ cancels over TLS)
        // treats a missing close_notify as an error.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
        return Ok(());
    };
    let login = tokio::time::timeout(
        STARTUP_TIMEOUT,
        authenticate(gw, lst, client, info, &startup, buf),
    )
    .await;
    let (conn, buf, _user_slot) = match login {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            audit_login_failure(gw, info, &e).await;
            return Err(e);
        }
        Err(_) => {
            audit_login_failure(gw, info, &SessionError::Timeout).await;
            return Err(SessionError::Timeout);
        }
    };
    // Login succeeded: record it before anything reaches the upstream.
    let mut rec = info.record(gw, EventKind::LoginSuccess);
    rec.decision = Some(Decision::Allow);
    rec.config_hash = Some(gw.config.load().hash.clone());
    gw.audit
        .append(rec)
        .await
        .map_err(|e| SessionError::AuditUnavailable(e.to_string()))?;
    logged_in.store(true, Ordering::Release);

    let cred = gw
        .vault
        .get(&conn.name)
        .map_err(|e| SessionError::Vault(e.to_string()))?
        .ok_or_else(|| SessionError::NoCredential(conn.name.clone()))?;
    let params = forwarded_params(&startup);
    let up = match upstream::connect(&conn, &cred, &params).await {
        Ok(up) => up,
        Err(e) => {
            let mut rec = info.record(gw, EventKind::SessionEnd);
            rec.reason = Some(e.to_string());
            rec.sqlstate = Some(e.sqlstate().into());
            rec.duration_us = Some(started.elapsed().as_micros() as i64);
            let _ = gw.audit.append(rec).await;
            return Err(e);
        }
    };
    drop(cred);
    let (key, _guard) = gw.cancels.register(CancelTarget {
        upstream_key: up.key,
        connection: conn.clone(),
        session_id: info.id.clone(),
    });
    let mut hello = BytesMut::with_capacity(up.tail.len() + 64);
    encode_auth_ok(&mut hello);
    // The tail ends with ReadyForQuery; BackendKeyData goes right before it.
    let rfq_at = up.tail.len().saturating_sub(6);
    hello.extend_from_slice(&up.tail[..rfq_at]);
    encode_backend_key_data(&mut hello, key);
    hello.extend_from_slice(&up.tail[rfq_at..]);
    client.write_all(&hello).await?;
    client.flush().await?;

    // How the server reads statement text, as it reported at startup (followed on every
    // change by the relay).
    let settings = relay::ServerSettings::from_startup(&up.tail);
    let stats = relay::run(
        gw,
        info,
        client,
        up.stream,
        buf,
        settings,
        relay_limits(&gw.config.load().config.limits),
    )
    .await;
    let (stats, err) = match stats {
        Ok(s) => (s, None),
        Err((s, e)) => (s, Some(e)),
    };
    finish(gw, info, &stats, err.as_ref(), started).await;
    match err {
        Some(
            e @ (SessionError::UpstreamLost
            | SessionError::AuditUnavailable(_)
            | SessionError::MaskingFailed(_)
            | SessionError::ClientProtocol(_)),
        ) => Err(e),
        Some(e) => {
            tracing::debug!(session = %info.id, error = %e, "session ended");
            Ok(())
        }
        None => Ok(()),
    }
}

/// The relay's share of `[limits]`.
fn relay_limits(l: &crate::config::LimitsConfig) -> relay::Limits {
    relay::Limits {
        statement_bytes: l.statement_bytes as usize,
        upstream_message_bytes: l.upstream_message_bytes as usize,
    }
}

async fn finish(
    gw: &Gateway,
    info: &SessionInfo,
    stats: &SessionStats,
    err: Option<&SessionError>,
    started: Instant,
) {
    let mut rec = info.record(gw, EventKind::SessionEnd);
    rec.duration_us = Some(started.elapsed().as_micros() as i64);
    rec.bytes_in = Some(stats.bytes_in as i64);
    rec.bytes_out = Some(stats.bytes_out as i64);
    rec.rows = Some(stats.rows as i64);
    if let Some(e) = err {
        rec.reason = Some(e.to_string());
        rec.sqlstate = Some(e.sqlstate().into());
    }
    if let Err(e) = gw.audit.append(rec).await {
        tracing::error!(session = %info.id, error = %e, "could not record session end");
    }
}

async fn audit_login_failure(gw: &Gateway, info: &SessionInfo, e: &SessionError) {
    let mut rec = info.record(gw, EventKind::LoginFailure);
    rec.decision = Some(Decision::Deny);
    rec.reason = Some(e.to_string());
    rec.sqlstate = Some(e.sqlstate().into());
    if let Err(err) = gw.audit.append(rec).await {
        tracing::error!(session = %info.id, error = %err, "could not record a failed login");
    }
}

/// Startup parameters passed on to the upstream.
fn forwarded_params(m: &StartupMessage) -> Vec<(String, String)> {
    m.params
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "user" | "database" | "replication") && !k.starts_with("_pq_.")
        })
        .cloned()
        .collect()
}

/// TLS and GSS negotiation up to the StartupMessage. `None` for a handled CancelRequest.
async fn negotiate(
    gw: &Arc<Gateway>,
    lst: &ListenerCtx,
    client: &mut ClientStream,
    info: &mut SessionInfo,
) -> Result<Option<(StartupMessage, BytesMut)>, SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls_done = false;
    let mut gss_refused = false;
    loop {
        let (packet, n) = loop {
            if let Some(p) = decode_startup(&buf)? {
                break p;
            }
            if client.read_buf(&mut buf).await? == 0 {
                return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let _ = buf.split_to(n);
        match packet {
            StartupPacket::SslRequest => {
                if tls_done {
                    return Err(SessionError::UnexpectedStartupMessage);
                }
                // Bytes pipelined after SSLRequest would be read as if they came over TLS
                // (CVE-2021-23214): refuse.
                if !buf.is_empty() {
                    return Err(SessionError::UnexpectedStartupMessage);
                }
                let Some(acceptor) = &lst.tls else {
                    client.write_all(b"N").await?;
                    continue;
                };
                client.write_all(b"S").await?;
                client.flush().await?;
                let Stream::Plain(tcp) = std::mem::replace(client, Stream::Detached) else {
                    return Err(SessionError::UnexpectedStartupMessage);
                };
                let tls = acceptor.accept(tcp).await?;
                *client = Stream::Tls(Box::new(tls));
                tls_done = true;
            }
            StartupPacket::GssEncRequest => {
                if gss_refused || !buf.is_empty() {
                    return Err(SessionError::UnexpectedStartupMessage);
                }
                gss_refused = true;
                client.write_all(b"N").await?;
            }
            StartupPacket::Cancel(key) => {
                handle_cancel(gw, info, key).await;
                return Ok(None);
            }
            StartupPacket::Startup(m) => {
                info.claimed_user = m.param("user").map(str::to_owned);
                let unrecognised: Vec<&str> = m
                    .params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| k.starts_with("_pq_."))
                    .collect();
                if m.minor > 0 || !unrecognised.is_empty() {
                    let mut out = BytesMut::new();
                    encode_negotiate_protocol_version(&mut out, 0, &unrecognised);
                    client.write_all(&out).await?;
                }
                if m.param("replication")
                    .is_some_and(|v| v != "false" && v != "0" && v != "off" && v != "no")
                {
                    return Err(SessionError::Unsupported("replication connections"));
                }
                if !tls_done && !lst.allow_plaintext {
                    return Err(SessionError::TlsRequired);
                }
                return Ok(Some((m, buf)));
            }
        }
    }
}

async fn handle_cancel(gw: &Gateway, info: &SessionInfo, key: CancelKey) {
    let target = gw.cancels.lookup(key);
    let mut rec = info.record(gw, EventKind::Cancel);
    match target {
        Some(t) => {
            rec.connection = Some(t.connection.name.clone());
            rec.reason = Some(format!("cancel for session {}", t.session_id));
            rec.decision = Some(Decision::Allow);
            let _ = gw.audit.append_nowait(rec);
            if let Err(e) = upstream::cancel(t.connection.clone(), t.upstream_key).await {
                tracing::warn!(error = %e, "forwarding a cancel request failed");
            }
        }
        None => {
            rec.decision = Some(Decision::Deny);
            rec.reason = Some("unknown cancel key".into());
            let _ = gw.audit.append_nowait(rec);
        }
    }
}

/// Asks for the token, validates it, checks the user and the connection, and counts the
/// session against `limits.sessions_per_user`.
async fn authenticate(
    gw: &Gateway,
    _lst: &ListenerCtx,
    client: &mut ClientStream,
    info: &mut SessionInfo,
    startup: &StartupMessage,
    mut buf: BytesMut,
) -> Result<(Arc<ConnectionConfig>, BytesMut, UserSlot), SessionError> {
    let user = startup
        .param("user")
        .ok_or(SessionError::MissingParameter("user"))?
        .to_owned();
    // libpq semantics: the database defaults to the user name.
    let dbname = startup
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    info.connection = Some(dbname.clone());

    let mut out = BytesMut::new();
    encode_auth_cleartext(&mut out);
    client.write_all(&out).await?;
    client.flush().await?;
    let frame = loop {
        if let Some(f) = next_frame(&buf, MAX_PASSWORD_MESSAGE)? {
            let n = f.wire_len();
            if f.tag != b'p' {
                return Err(SessionError::UnexpectedStartupMessage);
            }
            break buf.split_to(n);
        }
        if client.read_buf(&mut buf).await? == 0 {
            return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    };
    let token = decode_password(&frame[HEADER_LEN..])?;
    let verifier = gw.verifier.load_full();
    let identity = verifier
        .verify(token, std::time::SystemTime::now())
        .await
        .map_err(|e| {
            if e.is_unavailable() {
                SessionError::IdentityUnavailable(e.reason())
            } else {
                SessionError::BadToken {
                    reason: e.reason(),
                    client: e.client_message(),
                }
            }
        })?;
    let identity = Arc::new(identity);
    if identity.username != user {
        let e = SessionError::UserMismatch {
            user,
            identity: identity.username.clone(),
        };
        info.identity = Some(identity);
        return Err(e);
    }
    info.identity = Some(Arc::clone(&identity));
    let config = gw.config.load();
    let conn = config
        .config
        .connection(&dbname)
        .cloned()
        .ok_or(SessionError::UnknownConnection(dbname))?;
    match conn.kind {
        crate::config::ConnectionKind::Postgres => {}
    }
    let limit = config.config.limits.sessions_per_user;
    let slot = gw
        .user_sessions
        .try_acquire(&identity.issuer, &identity.username, limit)
        .ok_or_else(|| SessionError::TooManySessionsForUser {
            user: identity.username.clone(),
            limit,
        })?;
    Ok((Arc::new(conn), buf, slot))
}
