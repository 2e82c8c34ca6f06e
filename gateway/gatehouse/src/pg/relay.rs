//! The audited relay. Two directions run concurrently:
//!
//! - client → upstream: split the byte stream into messages; for every statement that will
//!   run (Query, Execute, FunctionCall) build an audit record; commit the records (one group
//!   commit per read) and only then forward the bytes. If the audit store refuses, nothing of
//!   that read is forwarded and the session ends with SQLSTATE 58030 (fail closed).
//! - upstream → client: forward bytes as they come, reading only message headers and the few
//!   small messages that carry outcomes (CommandComplete, ErrorResponse, ReadyForQuery), so
//!   each audited statement gets a `statement.result` record with its SQLSTATE and row count.
//!
//! Large DataRow and CopyData messages are streamed through without being buffered whole.
//!
//! Guardrails: with a policy loaded, every Query and Parse is classified by PostgreSQL's own
//! parser (`gatehouse-sql`) and judged (`gatehouse-policy`). A refused statement never reaches
//! the target: its message is *replaced* by `DO … RAISE EXCEPTION … ERRCODE '42501'`, so that
//! PostgreSQL itself answers with the ErrorResponse naming the rule, aborts the transaction
//! block if one is open, and skips to the next Sync in the extended protocol — the session
//! stays usable and its state matches what the client sees. A Bind of a refused prepared
//! statement is re-encoded without parameters to fit the replacement.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use gatehouse_audit::{Decision, EventKind, Record, Seq};
use gatehouse_pgwire::{
    command_tag_rows, decode_command_complete, decode_error_fields, peek_header, Frame,
    FrontendMessage, HEADER_LEN, PQ_LARGE_MESSAGE_LIMIT,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::error::SessionError;
use super::session::{ClientStream, SessionInfo};
use super::upstream::UpstreamStream;
use crate::state::Gateway;

/// Largest client message Gatehouse reads whole (Query, Parse, Bind ...). PostgreSQL itself
/// allows up to 1 GiB; a statement text beyond this is refused with 08P01.
pub const MAX_INSPECTED_MESSAGE: usize = 256 * 1024 * 1024;

/// Totals for the session record.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rows: u64,
    pub statements: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A simple Query: done at ReadyForQuery.
    Simple,
    /// An Execute: done at CommandComplete / EmptyQueryResponse / PortalSuspended / error.
    Execute,
    /// A Sync or FunctionCall without a statement: a ReadyForQuery boundary.
    Boundary,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    seq: Seq,
    started: Instant,
    rows: u64,
    sqlstate: Option<String>,
    done: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: VecDeque<Pending>,
    stats: SessionStats,
}

impl Shared {
    /// The statement the next response belongs to: the first unfinished entry before the
    /// next ReadyForQuery boundary.
    fn current(&mut self) -> Option<&mut Pending> {
        for p in self.pending.iter_mut() {
            match p.kind {
                Kind::Boundary => return None,
                Kind::Simple => return Some(p),
                Kind::Execute if !p.done => return Some(p),
                Kind::Execute => {}
            }
        }
        None
    }
}

/// Statement text and parameter count of a prepared statement or portal.
#[derive(Debug, Clone)]
struct Prepared {
    sql: Arc<str>,
    statement: Arc<str>,
    param_count: i64,
    /// Refused by the policy: (decision label, rule and reason for the audit record).
    refused: Option<Arc<(Decision, String)>>,
}

#[derive(Debug, Default)]
struct ClientState {
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Prepared>,
    /// SQL-level `PREPARE`s forwarded on this session, to judge `EXECUTE`.
    sql_prepared: gatehouse_sql::PreparedStatements,
    /// The session's identity and connection tags, as the policy sees them.
    who: Option<Arc<Who>>,
    /// (policy hash, whether that policy can restrict this session).
    restricted_cache: Option<(String, bool)>,
}

/// Who is asking, where: the policy facts fixed for the session.
#[derive(Debug)]
struct Who {
    user: gatehouse_policy::Principal,
    groups: Vec<gatehouse_policy::Group>,
    connection: String,
    tags: std::collections::BTreeMap<String, String>,
    /// `Some(max bytes)` when the connection records sessions.
    recording: Option<u64>,
}

/// A session recording in progress: the bytes the client received (after masking), cut
/// into `session.output` records at each ReadyForQuery (or every [`RECORDING_CHUNK`]).
struct Recorder {
    max: u64,
    total: u64,
    buf: Vec<u8>,
    started: Instant,
    truncated: bool,
    /// The newest statement seen completing (the records' `ref_seq`).
    last_ref: Option<i64>,
}

/// A recording record is written at least every this many bytes.
const RECORDING_CHUNK: usize = 64 * 1024;

impl Recorder {
    fn new(max: u64) -> Recorder {
        Recorder {
            max,
            total: 0,
            buf: Vec::new(),
            started: Instant::now(),
            truncated: false,
            last_ref: None,
        }
    }

    /// Takes what the client was sent; true when this crossed the size limit.
    fn push(&mut self, bytes: &[u8]) -> bool {
        if self.truncated {
            return false;
        }
        let room = usize::try_from(self.max.saturating_sub(self.total)).unwrap_or(usize::MAX);
        let take = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..take]);
        self.total += take as u64;
        if take < bytes.len() {
            self.truncated = true;
            return true;
        }
        false
    }

    /// The next `session.output` record, when one is due.
    fn record(
        &mut self,
        gw: &Gateway,
        info: &SessionInfo,
        boundary: bool,
        just_truncated: bool,
    ) -> Option<Record> {
        if !(just_truncated
            || (boundary && !self.buf.is_empty())
            || self.buf.len() >= RECORDING_CHUNK)
        {
            return None;
        }
        let mut r = info.record(gw, EventKind::SessionOutput);
        r.payload = Some(std::mem::take(&mut self.buf));
        r.ref_seq = self.last_ref;
        r.duration_us = Some(i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX));
        r.bytes_out = Some(i64::try_from(self.total).unwrap_or(i64::MAX));
        if just_truncated {
            r.reason = Some(format!(
                "recording truncated: the limit of {} bytes per session was reached",
                self.max
            ));
        }
        Some(r)
    }
}

/// The policy's verdict on one request, for the relay.
enum Verdict {
    /// Forward. `note`: the deciding rule, when one allowed it.
    Allow { note: Option<String> },
    /// Do not forward: replace by an error raised in PostgreSQL with `message`.
    Refuse {
        decision: Decision,
        note: String,
        message: String,
    },
    /// Hold the statement until request `id` is decided or `timeout` passes; then forward it
    /// (approved) or the refusal.
    Hold {
        id: gatehouse_approvals::RequestId,
        timeout: std::time::Duration,
        note: String,
        message: String,
    },
}

/// A message to forward instead of the client's, possibly only after a held approval.
#[derive(Debug)]
struct Rewrite {
    /// The refusal (or re-encoded) message.
    bytes: BytesMut,
    /// Hold: forward the original message instead if this request is approved in time.
    hold: Option<(gatehouse_approvals::RequestId, std::time::Duration)>,
}

impl Rewrite {
    fn now(bytes: BytesMut) -> Rewrite {
        Rewrite { bytes, hold: None }
    }
}

/// Waits for a held request's decision; `true` when it was approved (and is now marked
/// executed), `false` when denied, expired, timed out or the store failed (fail closed).
async fn await_approval(
    gw: &Gateway,
    id: &gatehouse_approvals::RequestId,
    timeout: std::time::Duration,
) -> (bool, &'static str) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = std::time::SystemTime::now();
        match gw.approvals.get(id) {
            Ok(Some(r)) if r.may_run(now) => {
                return match gw.approvals.mark_executed(id, now) {
                    Ok(_) => (true, "approved"),
                    Err(_) => (false, "approval could not be used"),
                };
            }
            Ok(Some(r)) => match r.status {
                gatehouse_approvals::RequestStatus::Denied => return (false, "denied"),
                gatehouse_approvals::RequestStatus::Pending => {}
                _ => return (false, "expired"),
            },
            Ok(None) | Err(_) => return (false, "approval store unavailable"),
        }
        if tokio::time::Instant::now() >= deadline {
            // The request itself expires at the same instant (its `expires_at`).
            return (false, "not decided in time");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

impl ClientState {
    /// Judges `sql` with the policy in force; no policy allows without parsing.
    fn judge(&mut self, gw: &Gateway, sql: &str) -> Verdict {
        let policy = gw.policy.load();
        let who = self.who.clone();
        let (Some(policy), Some(who)) = (policy.as_ref().as_ref(), who.as_deref()) else {
            return Verdict::Allow { note: None };
        };
        // Nothing can refuse this user on this connection: allow without parsing.
        if !self.restricted(policy, who) {
            return Verdict::Allow { note: None };
        }
        let statements = gatehouse_sql::classify(sql);
        let facts = gatehouse_policy::Facts {
            user: &who.user,
            groups: &who.groups,
            connection: &who.connection,
            tags: &who.tags,
            protocol: "postgres",
            sql,
            statements: &statements,
            prepared: &self.sql_prepared,
            now: std::time::SystemTime::now(),
        };
        let mut decision = policy.evaluate(&facts, &[]);
        if matches!(decision, gatehouse_policy::Decision::RequireApproval { .. }) {
            // A time-boxed grant ("alice may write to orders-prod for 30 minutes") satisfies
            // approval rules (never a deny).
            match gw
                .approvals
                .active_grants(&who.user, &who.connection, facts.now)
            {
                Ok(grants) if !grants.is_empty() => {
                    decision = policy.evaluate(&facts, &grants);
                    if let gatehouse_policy::Decision::Allow {
                        basis: gatehouse_policy::AllowBasis::Grant { grant, .. },
                    } = &decision
                    {
                        match grant.parse::<gatehouse_approvals::GrantId>() {
                            Ok(id) => {
                                if let Err(e) = gw.approvals.record_grant_use(&id, facts.now) {
                                    tracing::error!(error = %e, "could not record a grant use; refusing");
                                    decision = policy.evaluate(&facts, &[]);
                                }
                            }
                            Err(_) => decision = policy.evaluate(&facts, &[]),
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "approvals store unavailable for grants"),
            }
        }
        match decision {
            gatehouse_policy::Decision::Allow { basis } => {
                if let Ok(parts) = &statements {
                    self.sql_prepared.observe(parts);
                }
                let note = match basis {
                    gatehouse_policy::AllowBasis::Default => None,
                    gatehouse_policy::AllowBasis::Rule(r) => Some(format!("allowed by {r}")),
                    gatehouse_policy::AllowBasis::Grant { rule, grant } => {
                        Some(format!("allowed by grant {grant} for {rule}"))
                    }
                    gatehouse_policy::AllowBasis::Unanalyzed => Some(
                        "not analysable by the SQL parser; allowed because nothing restricts this connection"
                            .into(),
                    ),
                };
                Verdict::Allow { note }
            }
            gatehouse_policy::Decision::Deny { rule, reason } => Verdict::Refuse {
                decision: Decision::Deny,
                note: format!("{rule}: {reason}"),
                message: format!("gatehouse: statement blocked by {rule}: {reason}"),
            },
            gatehouse_policy::Decision::RequireApproval {
                rule,
                reason,
                approvers,
                min_approvals,
                mode,
            } => self.ticket(gw, sql, &rule, &reason, approvers, min_approvals, &mode),
        }
    }

    /// Whether the policy can restrict this session (cached per policy hash: the facts it
    /// depends on are fixed for the session).
    fn restricted(&mut self, policy: &gatehouse_policy::Policy, who: &Who) -> bool {
        if let Some((hash, r)) = &self.restricted_cache {
            if hash == policy.hash() {
                return *r;
            }
        }
        let nothing = Ok(Vec::new());
        let facts = gatehouse_policy::Facts {
            user: &who.user,
            groups: &who.groups,
            connection: &who.connection,
            tags: &who.tags,
            protocol: "postgres",
            sql: "",
            statements: &nothing,
            prepared: &self.sql_prepared,
            now: std::time::SystemTime::now(),
        };
        let r = policy.restricts(&facts);
        self.restricted_cache = Some((policy.hash().to_owned(), r));
        r
    }

    /// Just-in-time approval. An approved, unused ticket for exactly this text lets it pass
    /// once. Otherwise, hold mode creates a request and holds the statement (see
    /// [`await_approval`]); ticket mode refuses it naming the (new or pending) request. Fail
    /// closed: if the approvals store cannot be used, the statement is refused.
    #[allow(clippy::too_many_arguments)]
    fn ticket(
        &mut self,
        gw: &Gateway,
        sql: &str,
        rule: &gatehouse_policy::RuleId,
        reason: &str,
        approvers: Vec<String>,
        min_approvals: u32,
        mode: &gatehouse_policy::ApprovalMode,
    ) -> Verdict {
        let Some(who) = self.who.clone() else {
            return Verdict::Allow { note: None };
        };
        let now = std::time::SystemTime::now();
        let refuse = |note: String, message: String| Verdict::Refuse {
            decision: Decision::Deny,
            note,
            message,
        };
        let store = &gw.approvals;
        match store.consume_ticket(&who.user, &who.connection, sql, now) {
            Ok(Some(req)) => {
                if let Ok(parts) = &gatehouse_sql::classify(sql) {
                    self.sql_prepared.observe(parts);
                }
                return Verdict::Allow {
                    note: Some(format!("allowed by approval {} for {rule}", req.id)),
                };
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "approvals store unavailable");
                return refuse(
                    format!("{rule}: approval store unavailable"),
                    format!("gatehouse: statement needs approval under {rule}, and the approvals store is unavailable; refused"),
                );
            }
        }
        let existing = store.pending_for(&who.user, &who.connection, sql, now);
        let req = match existing {
            Ok(Some(r)) => Ok(r),
            Ok(None) => {
                let ttl = match mode {
                    gatehouse_policy::ApprovalMode::Hold { timeout } => {
                        (*timeout).max(APPROVAL_REQUEST_TTL)
                    }
                    gatehouse_policy::ApprovalMode::Ticket => APPROVAL_REQUEST_TTL,
                };
                if let gatehouse_policy::ApprovalMode::Hold { timeout } = mode {
                    let created = store.create_request(gatehouse_approvals::NewRequest {
                        requester: who.user.clone(),
                        requester_groups: who.groups.clone(),
                        connection: who.connection.clone(),
                        statement: sql.to_owned(),
                        rule: rule.as_str().to_owned(),
                        reason: reason.to_owned(),
                        approvers: approvers.clone(),
                        min_approvals: min_approvals.max(1),
                        mode: gatehouse_approvals::RequestMode::Hold,
                        expires_at: now + *timeout,
                        now,
                    });
                    return match created {
                        Ok(r) => Verdict::Hold {
                            id: r.id.clone(),
                            timeout: *timeout,
                            note: format!("{rule}: {reason} (held for approval {})", r.id),
                            message: format!(
                                "gatehouse: statement was held for approval {} under {rule}: {reason}; it was not approved",
                                r.id
                            ),
                        },
                        Err(e) => {
                            tracing::error!(error = %e, "could not create an approval request");
                            refuse(
                                format!("{rule}: approval request could not be created"),
                                format!("gatehouse: statement needs approval under {rule}; the request could not be created; refused"),
                            )
                        }
                    };
                }
                store.create_request(gatehouse_approvals::NewRequest {
                    requester: who.user.clone(),
                    requester_groups: who.groups.clone(),
                    connection: who.connection.clone(),
                    statement: sql.to_owned(),
                    rule: rule.as_str().to_owned(),
                    reason: reason.to_owned(),
                    approvers: approvers.clone(),
                    min_approvals: min_approvals.max(1),
                    mode: gatehouse_approvals::RequestMode::Ticket,
                    expires_at: now + ttl,
                    now,
                })
            }
            Err(e) => Err(e),
        };
        match req {
            Ok(r) => refuse(
                format!("{rule}: {reason} (approval {} pending)", r.id),
                format!(
                    "gatehouse: statement needs approval under {rule}: {reason}. Approval request {} \
                     is waiting for {} of group {}; run the identical statement again once approved",
                    r.id,
                    r.min_approvals,
                    approvers.join(" or ")
                ),
            ),
            Err(e) => {
                tracing::error!(error = %e, "could not create an approval request");
                refuse(
                    format!("{rule}: approval request could not be created"),
                    format!("gatehouse: statement needs approval under {rule}; the request could not be created; refused"),
                )
            }
        }
    }
}

/// How long an approval request waits for a decision.
const APPROVAL_REQUEST_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// SQL that makes PostgreSQL raise `message` with SQLSTATE 42501 (insufficient privilege).
/// The text is kept to printable characters without backslashes or `$`, quoted as a
/// standard string literal inside a dollar-quoted body with a random tag.
fn refusal_sql(message: &str) -> String {
    let lit: String = message
        .chars()
        .filter(|c| !c.is_control() && *c != '\\' && *c != '$')
        .collect::<String>()
        .replace('\'', "''");
    let tag = format!("$gh{}$", hex::encode(rand::random::<[u8; 6]>()));
    format!("DO {tag}BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '{lit}'; END{tag}")
}

pub async fn run(
    gw: &Arc<Gateway>,
    info: &SessionInfo,
    client: &mut ClientStream,
    upstream: UpstreamStream,
    leftover: BytesMut,
) -> Result<SessionStats, (SessionStats, SessionError)> {
    let shared = Mutex::new(Shared::default());
    let who = info.identity.as_ref().map(|id| {
        let connection = info.connection.clone().unwrap_or_default();
        let config = gw.config.load();
        let conn = config
            .config
            .connections
            .iter()
            .find(|c| c.name == connection);
        let tags = conn.map(|c| c.tags.clone()).unwrap_or_default();
        let recording = conn
            .filter(|c| c.record_sessions)
            .map(|c| c.recording_max_bytes);
        let issuer = gatehouse_policy::IssuerId::new(id.issuer.clone());
        Arc::new(Who {
            user: gatehouse_policy::Principal::new(issuer.clone(), id.username.clone()),
            groups: gatehouse_policy::Group::all_of(&issuer, &id.groups),
            connection,
            tags,
            recording,
        })
    });
    let (crd, cwr) = tokio::io::split(client);
    let (urd, uwr) = tokio::io::split(upstream);
    let result = {
        let c2u = client_to_upstream(gw, info, crd, uwr, leftover, &shared, who.clone());
        let u2c = upstream_to_client(gw, info, urd, cwr, &shared, who.clone());
        tokio::pin!(c2u, u2c);
        tokio::select! {
            r = &mut c2u => r,
            r = &mut u2c => r,
        }
    };
    let shared = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    // Statements still waiting for an outcome when the session ended.
    for p in shared
        .pending
        .iter()
        .filter(|p| p.kind != Kind::Boundary && !p.done)
    {
        let mut r = result_record(gw, info, p);
        r.reason = Some("session ended before the statement completed".into());
        let _ = gw.audit.append_nowait(r);
    }
    match result {
        Ok(()) => Ok(shared.stats),
        Err(e) => Err((shared.stats, e)),
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

async fn client_to_upstream<R, W>(
    gw: &Gateway,
    info: &SessionInfo,
    mut rd: R,
    mut wr: W,
    mut buf: BytesMut,
    shared: &Mutex<Shared>,
    who: Option<Arc<Who>>,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut st = ClientState {
        who,
        ..ClientState::default()
    };
    // Bytes of a streamed CopyData message still to pass through.
    let mut streaming = 0usize;
    let mut records: Vec<Record> = Vec::new();
    let mut pending: Vec<(Kind, Option<usize>)> = Vec::new();
    loop {
        let mut pos = 0usize;
        let mut terminate = false;
        // Set once a message of this read is replaced: the bytes to forward instead of
        // `buf[..pos]`, complete up to `copied`.
        let mut out: Option<BytesMut> = None;
        let mut copied = 0usize;
        if streaming > 0 {
            let take = streaming.min(buf.len());
            pos = take;
            streaming -= take;
        }
        while streaming == 0 {
            let Some(h) = peek_header(&buf[pos..], MAX_INSPECTED_MESSAGE)? else {
                break;
            };
            let avail = buf.len() - pos;
            if avail < h.total_len {
                if h.tag == b'd' {
                    streaming = h.total_len - avail;
                    pos = buf.len();
                } else {
                    buf.reserve(h.total_len - avail);
                }
                break;
            }
            let frame = Frame {
                tag: h.tag,
                body: &buf[pos + HEADER_LEN..pos + h.total_len],
            };
            if let Some(rewrite) = inspect(&mut st, gw, info, frame, &mut records, &mut pending)? {
                let approved = match &rewrite.hold {
                    None => false,
                    Some((id, timeout)) => {
                        // Nothing of this read is forwarded while the statement is held.
                        let (ok, why) = await_approval(gw, id, *timeout).await;
                        if let Some(r) = records.last_mut() {
                            if ok {
                                r.decision = Some(Decision::Allow);
                                r.reason = Some(format!("allowed by approval {id} (held)"));
                            } else {
                                r.reason = Some(format!(
                                    "{} — {why}",
                                    r.reason.take().unwrap_or_default()
                                ));
                            }
                        }
                        ok
                    }
                };
                if !approved {
                    let o = out.get_or_insert_with(BytesMut::new);
                    o.extend_from_slice(&buf[copied..pos]);
                    o.extend_from_slice(&rewrite.bytes);
                    copied = pos + h.total_len;
                }
            }
            pos += h.total_len;
            if h.tag == b'X' {
                terminate = true;
                break;
            }
        }
        if pos > 0 {
            let seqs = if records.is_empty() {
                Vec::new()
            } else {
                let seqs = gw
                    .audit
                    .append_batch(&records)
                    .await
                    .map_err(|e| SessionError::AuditUnavailable(e.to_string()))?;
                // Cleared, not replaced: a record is large, and a fresh vector per read cost
                // an allocation per statement.
                records.clear();
                seqs
            };
            if !pending.is_empty() {
                let now = Instant::now();
                let mut s = lock(shared);
                for (kind, rec) in pending.drain(..) {
                    let seq = rec.and_then(|i| seqs.get(i).copied()).unwrap_or(0);
                    if kind != Kind::Boundary {
                        s.stats.statements += 1;
                    }
                    s.pending.push_back(Pending {
                        kind,
                        seq,
                        started: now,
                        rows: 0,
                        sqlstate: None,
                        done: false,
                    });
                }
            }
            let bytes: &[u8] = match out.as_mut() {
                Some(o) => {
                    o.extend_from_slice(&buf[copied..pos]);
                    o
                }
                None => &buf[..pos],
            };
            wr.write_all(bytes)
                .await
                .map_err(|_| SessionError::UpstreamLost)?;
            lock(shared).stats.bytes_in += pos as u64;
            buf.advance(pos);
            if terminate {
                let _ = wr.flush().await;
                return Ok(());
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Looks at one client message; statements that will run get an audit record. Returns the
/// bytes to forward instead of the message when the policy refuses it.
fn inspect(
    st: &mut ClientState,
    gw: &Gateway,
    info: &SessionInfo,
    frame: Frame<'_>,
    records: &mut Vec<Record>,
    pending: &mut Vec<(Kind, Option<usize>)>,
) -> Result<Option<Rewrite>, SessionError> {
    match FrontendMessage::decode(frame)? {
        FrontendMessage::Query { sql } => {
            let mut r = statement_record(gw, info, "simple");
            r.statement = Some(sql.to_owned());
            let replacement = match st.judge(gw, sql) {
                Verdict::Allow { note } => {
                    r.reason = note;
                    None
                }
                Verdict::Refuse {
                    decision,
                    note,
                    message,
                } => {
                    r.decision = Some(decision);
                    r.reason = Some(note);
                    let mut b = BytesMut::new();
                    gatehouse_pgwire::encode_query(&mut b, &refusal_sql(&message));
                    Some(Rewrite::now(b))
                }
                Verdict::Hold {
                    id,
                    timeout,
                    note,
                    message,
                } => {
                    r.decision = Some(Decision::Deny);
                    r.reason = Some(note);
                    let mut b = BytesMut::new();
                    gatehouse_pgwire::encode_query(&mut b, &refusal_sql(&message));
                    Some(Rewrite {
                        bytes: b,
                        hold: Some((id, timeout)),
                    })
                }
            };
            pending.push((Kind::Simple, Some(records.len())));
            records.push(r);
            return Ok(replacement);
        }
        FrontendMessage::Parse {
            statement,
            sql,
            param_types,
        } => {
            let (refused, replacement) = match st.judge(gw, sql) {
                Verdict::Allow { .. } => (None, None),
                Verdict::Refuse {
                    decision,
                    note,
                    message,
                } => {
                    let mut b = BytesMut::new();
                    gatehouse_pgwire::encode_parse(&mut b, statement, &refusal_sql(&message), &[]);
                    (Some(Arc::new((decision, note))), Some(Rewrite::now(b)))
                }
                // Holding the extended protocol would hold Bind/Execute too; a held rule on
                // a prepared statement is refused like a ticket (retry after approval).
                Verdict::Hold { note, message, .. } => {
                    let mut b = BytesMut::new();
                    gatehouse_pgwire::encode_parse(&mut b, statement, &refusal_sql(&message), &[]);
                    (
                        Some(Arc::new((Decision::Deny, note))),
                        Some(Rewrite::now(b)),
                    )
                }
            };
            st.statements.insert(
                statement.to_owned(),
                Prepared {
                    sql: sql.into(),
                    statement: statement.into(),
                    param_count: param_types.len() as i64,
                    refused,
                },
            );
            return Ok(replacement);
        }
        FrontendMessage::Bind {
            portal,
            statement,
            param_count,
        } => {
            // An unknown statement name makes the server fail the Bind; record what we know.
            let p = st
                .statements
                .get(statement)
                .cloned()
                .unwrap_or_else(|| Prepared {
                    sql: "".into(),
                    statement: statement.into(),
                    param_count: 0,
                    refused: None,
                });
            let replacement = p.refused.is_some().then(|| {
                // The replacement statement takes no parameters.
                let mut b = BytesMut::new();
                gatehouse_pgwire::encode_bind(&mut b, portal, statement, &[]);
                Rewrite::now(b)
            });
            st.portals.insert(
                portal.to_owned(),
                Prepared {
                    param_count: i64::from(param_count),
                    ..p
                },
            );
            return Ok(replacement);
        }
        FrontendMessage::Execute { portal, .. } => {
            let mut r = statement_record(gw, info, "extended");
            if let Some(p) = st.portals.get(portal) {
                r.statement = Some(p.sql.to_string());
                r.statement_name = (!p.statement.is_empty()).then(|| p.statement.to_string());
                r.param_count = Some(p.param_count);
                if let Some(refused) = &p.refused {
                    r.decision = Some(refused.0);
                    r.reason = Some(refused.1.clone());
                }
            } else {
                r.reason = Some(format!("execute of unknown portal {portal:?}"));
            }
            pending.push((Kind::Execute, Some(records.len())));
            records.push(r);
        }
        FrontendMessage::Close { kind, name } => {
            if kind == b'S' {
                st.statements.remove(name);
            } else {
                st.portals.remove(name);
            }
        }
        FrontendMessage::Sync => pending.push((Kind::Boundary, None)),
        FrontendMessage::FunctionCall { oid } => {
            let mut r = statement_record(gw, info, "function-call");
            r.statement = Some(format!("fast-path function call, oid {oid}"));
            pending.push((Kind::Simple, Some(records.len())));
            records.push(r);
        }
        FrontendMessage::Describe { .. }
        | FrontendMessage::Flush
        | FrontendMessage::Terminate
        | FrontendMessage::CopyData
        | FrontendMessage::CopyDone
        | FrontendMessage::CopyFail { .. } => {}
        FrontendMessage::Password { .. } => return Err(SessionError::UnexpectedStartupMessage),
    }
    Ok(None)
}

fn statement_record(gw: &Gateway, info: &SessionInfo, protocol: &str) -> Record {
    let mut r = info.record(gw, EventKind::Statement);
    r.protocol = Some(protocol.to_owned());
    r.decision = Some(Decision::Allow);
    r.policy_hash = gw.policy_hash();
    r
}

fn result_record(gw: &Gateway, info: &SessionInfo, p: &Pending) -> Record {
    let mut r = info.record(gw, EventKind::StatementResult);
    r.ref_seq = Some(p.seq);
    r.rows = Some(p.rows as i64);
    r.sqlstate = Some(p.sqlstate.clone().unwrap_or_else(|| "00000".into()));
    r.duration_us = Some(p.started.elapsed().as_micros() as i64);
    r
}

/// Type OIDs whose binary form is their text (`text`, `varchar`, `bpchar`, `name`, `json`,
/// `unknown`, `xml`) or raw bytes (`bytea`): scanned like text values.
const SCANNED_BINARY_TYPES: [i32; 8] = [25, 1043, 1042, 19, 114, 705, 142, 17];
/// `jsonb`: binary form is a version byte (1) and the JSON text.
const JSONB_OID: i32 = 3802;
/// Error/notice fields that carry no data (severity, code, position, file, line, routine).
const PLAIN_ERROR_FIELDS: [u8; 8] = [b'S', b'V', b'C', b'P', b'p', b'F', b'L', b'R'];

/// One result column as the masking sees it.
#[derive(Debug, Clone, Copy)]
struct MaskColumn {
    plan: gatehouse_masking::ColumnPlan,
    binary: bool,
    type_oid: i32,
}

/// In-flight masking of one session's upstream→client stream.
struct Masking {
    /// The masking profile that applies to the session (`None`: `[masking]`).
    profile: Option<String>,
    engine: Arc<gatehouse_masking::Engine>,
    columns: Vec<MaskColumn>,
    copy_binary: bool,
    /// Binary COPY OUT: the file header has been passed.
    copy_header_seen: bool,
    /// Masked since the last statement outcome.
    counts: gatehouse_masking::Counts,
}

fn mask_failed(e: gatehouse_masking::MaskError) -> SessionError {
    SessionError::MaskingFailed(e.to_string())
}

impl Masking {
    /// The largest DataRow / CopyData message assembled for masking.
    fn max_message(&self) -> usize {
        self.engine.max_value_bytes().saturating_add(1 << 20)
    }

    fn text(
        &mut self,
        plan: gatehouse_masking::ColumnPlan,
        v: &[u8],
    ) -> Result<Option<Vec<u8>>, SessionError> {
        match self
            .engine
            .mask_planned(plan, v, &mut self.counts)
            .map_err(mask_failed)?
        {
            std::borrow::Cow::Borrowed(_) => Ok(None),
            std::borrow::Cow::Owned(o) => Ok(Some(o)),
        }
    }

    fn text_str(&mut self, v: &str) -> Result<Option<String>, SessionError> {
        Ok(self
            .text(gatehouse_masking::ColumnPlan::default(), v.as_bytes())?
            .map(|o| String::from_utf8_lossy(&o).into_owned()))
    }

    /// The message to send instead of `tag`/`body`, when masking changed it.
    fn message(&mut self, tag: u8, body: &[u8]) -> Result<Option<BytesMut>, SessionError> {
        let bad =
            |e: gatehouse_pgwire::ProtocolError| SessionError::UpstreamProtocol(e.to_string());
        match tag {
            b'T' => {
                let cols = gatehouse_pgwire::decode_row_description(body).map_err(bad)?;
                self.columns = cols
                    .iter()
                    .map(|c| MaskColumn {
                        plan: self.engine.plan(Some(c.name)),
                        binary: c.format == 1,
                        type_oid: c.type_oid,
                    })
                    .collect();
                Ok(None)
            }
            b'D' => {
                let values = gatehouse_pgwire::decode_data_row(body).map_err(bad)?;
                let mut masked: Vec<Option<Vec<u8>>> = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let col = self.columns.get(i).copied().unwrap_or(MaskColumn {
                        plan: gatehouse_masking::ColumnPlan::default(),
                        binary: false,
                        type_oid: 0,
                    });
                    let out = if !col.binary || SCANNED_BINARY_TYPES.contains(&col.type_oid) {
                        self.text(col.plan, v)?
                    } else if col.type_oid == JSONB_OID && v.first() == Some(&1) {
                        self.text(col.plan, &v[1..])?.map(|o| {
                            let mut b = vec![1u8];
                            b.extend_from_slice(&o);
                            b
                        })
                    } else if col.plan.masks_whole_value() {
                        return Err(SessionError::MaskingFailed(
                            "a masking rule applies to a binary-format column of a type that cannot hold a replacement"
                                .into(),
                        ));
                    } else {
                        None
                    };
                    if let Some(o) = out {
                        masked.resize(values.len(), None);
                        masked[i] = Some(o);
                    }
                }
                if masked.is_empty() {
                    return Ok(None);
                }
                let merged: Vec<Option<&[u8]>> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match masked.get(i) {
                        Some(Some(m)) => Some(&m[..]),
                        _ => *v,
                    })
                    .collect();
                let mut b = BytesMut::with_capacity(body.len() + 64);
                gatehouse_pgwire::encode_data_row(&mut b, &merged);
                Ok(Some(b))
            }
            b'E' | b'N' => {
                let f = gatehouse_pgwire::decode_error_fields(body).map_err(bad)?;
                let mut changed = false;
                let mut fields: Vec<(u8, String)> = Vec::with_capacity(f.all.len());
                for (t, v) in &f.all {
                    let m = if PLAIN_ERROR_FIELDS.contains(t) {
                        None
                    } else {
                        self.text_str(v)?
                    };
                    changed |= m.is_some();
                    fields.push((*t, m.unwrap_or_else(|| (*v).to_owned())));
                }
                if !changed {
                    return Ok(None);
                }
                let refs: Vec<(u8, &str)> = fields.iter().map(|(t, v)| (*t, v.as_str())).collect();
                let mut b = BytesMut::new();
                gatehouse_pgwire::encode_error_fields(&mut b, tag, &refs);
                Ok(Some(b))
            }
            b'A' => {
                let (pid, channel, payload) =
                    gatehouse_pgwire::decode_notification(body).map_err(bad)?;
                let Some(m) = self.text_str(payload)? else {
                    return Ok(None);
                };
                let mut b = BytesMut::new();
                gatehouse_pgwire::encode_notification(&mut b, pid, channel, &m);
                Ok(Some(b))
            }
            b'H' => {
                self.copy_binary = body.first() == Some(&1);
                self.copy_header_seen = false;
                Ok(None)
            }
            b'd' if self.copy_binary => {
                let Some(data) = self.binary_copy(body)? else {
                    return Ok(None);
                };
                let mut b = BytesMut::with_capacity(data.len() + HEADER_LEN);
                gatehouse_pgwire::encode_copy_data(&mut b, &data);
                Ok(Some(b))
            }
            b'd' => {
                // Text COPY OUT: one CopyData per row; the line is scanned as one value.
                let Some(m) = self.text(gatehouse_masking::ColumnPlan::default(), body)? else {
                    return Ok(None);
                };
                let mut b = BytesMut::with_capacity(m.len() + HEADER_LEN);
                gatehouse_pgwire::encode_copy_data(&mut b, &m);
                Ok(Some(b))
            }
            _ => Ok(None),
        }
    }

    /// Binary COPY OUT data: the header once, then whole tuples (PostgreSQL sends one tuple
    /// per CopyData message); every field is scanned as bytes and its length rewritten when
    /// masked. Anything that does not parse as whole tuples is refused (fail closed).
    fn binary_copy(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        let bad = || SessionError::MaskingFailed("binary COPY data not in whole tuples".into());
        let mut pos = 0usize;
        let mut out: Option<Vec<u8>> = None;
        if !self.copy_header_seen {
            if !body.starts_with(SIGNATURE) || body.len() < SIGNATURE.len() + 8 {
                return Err(bad());
            }
            let ext = u32::from_be_bytes(
                body[SIGNATURE.len() + 4..SIGNATURE.len() + 8]
                    .try_into()
                    .map_err(|_| bad())?,
            ) as usize;
            pos = SIGNATURE.len() + 8 + ext;
            if pos > body.len() {
                return Err(bad());
            }
            self.copy_header_seen = true;
        }
        while pos < body.len() {
            let n = i16::from_be_bytes(
                body.get(pos..pos + 2)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            );
            let tuple_start = pos;
            pos += 2;
            if n == -1 {
                // Trailer.
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(&body[tuple_start..pos]);
                }
                continue;
            }
            if let Some(o) = out.as_mut() {
                o.extend_from_slice(&body[tuple_start..pos]);
            }
            for _ in 0..n.max(0) {
                let len = i32::from_be_bytes(
                    body.get(pos..pos + 4)
                        .ok_or_else(bad)?
                        .try_into()
                        .map_err(|_| bad())?,
                );
                let field_start = pos;
                pos += 4;
                if len < 0 {
                    if let Some(o) = out.as_mut() {
                        o.extend_from_slice(&body[field_start..pos]);
                    }
                    continue;
                }
                let v = body.get(pos..pos + len as usize).ok_or_else(bad)?;
                pos += len as usize;
                match self.text(gatehouse_masking::ColumnPlan::default(), v)? {
                    Some(m) => {
                        let o = out.get_or_insert_with(|| body[..field_start].to_vec());
                        o.extend_from_slice(&(m.len() as i32).to_be_bytes());
                        o.extend_from_slice(&m);
                    }
                    None => {
                        if let Some(o) = out.as_mut() {
                            o.extend_from_slice(&body[field_start..pos]);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// `masked: card=2 email=1` for the outcome record, and a fresh count.
    fn take_note(&mut self) -> Option<String> {
        if self.counts.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, n)| match k {
                gatehouse_masking::CountKey::Entity(e) => format!("{}={n}", e.name()),
                gatehouse_masking::CountKey::Rule(r) => format!("rule:{r}={n}"),
            })
            .collect();
        self.counts = gatehouse_masking::Counts::new();
        Some(match &self.profile {
            Some(p) => format!("masked: {} (profile {p})", parts.join(" ")),
            None => format!("masked: {}", parts.join(" ")),
        })
    }
}

async fn upstream_to_client<R, W>(
    gw: &Gateway,
    info: &SessionInfo,
    mut rd: R,
    mut wr: W,
    shared: &Mutex<Shared>,
    who: Option<Arc<Who>>,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut done: Vec<Record> = Vec::new();
    let set = gw.masking.load();
    let (engine, profile) = match &who {
        Some(w) => set.select(&w.groups, &w.connection, &w.tags),
        None => (Arc::clone(&set.default), None),
    };
    drop(set);
    let mut masking = Masking {
        profile,
        engine,
        columns: Vec::new(),
        copy_binary: false,
        copy_header_seen: false,
        counts: gatehouse_masking::Counts::new(),
    };
    let max_message = masking.max_message();
    let mut recorder = who.as_ref().and_then(|w| w.recording).map(Recorder::new);
    loop {
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        let n = rd
            .read_buf(&mut buf)
            .await
            .map_err(|_| SessionError::UpstreamLost)?;
        if n == 0 {
            return Err(SessionError::UpstreamLost);
        }
        let mut pos = 0usize;
        let mut rows = 0u64;
        // Set once a message of this read is masked: the bytes to send instead of
        // `buf[..pos]`, complete up to `copied`.
        let mut out: Option<BytesMut> = None;
        let mut copied = 0usize;
        let mut ready = false;
        loop {
            let h = peek_header(&buf[pos..], PQ_LARGE_MESSAGE_LIMIT)
                .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
            let Some(h) = h else { break };
            if (h.tag == b'D' || h.tag == b'd') && h.total_len > max_message {
                // Fail closed: a row that cannot be assembled for masking is not sent.
                return Err(SessionError::MaskingFailed(format!(
                    "a {}-byte result message exceeds the masking limit",
                    h.total_len
                )));
            }
            let avail = buf.len() - pos;
            if avail < h.total_len {
                buf.reserve(h.total_len - avail);
                break;
            }
            let body = &buf[pos + HEADER_LEN..pos + h.total_len];
            if let Some(replacement) = masking.message(h.tag, body)? {
                let o = out.get_or_insert_with(BytesMut::new);
                o.extend_from_slice(&buf[copied..pos]);
                o.extend_from_slice(&replacement);
                copied = pos + h.total_len;
            }
            ready |= h.tag == b'Z';
            match h.tag {
                b'D' => rows += 1,
                b'C' | b'E' | b'Z' | b'I' | b's' => {
                    let mut s = lock(shared);
                    s.stats.rows += rows;
                    rows = 0;
                    let before = done.len();
                    outcome(gw, info, &mut s, h.tag, body, &mut done)?;
                    if done.len() > before {
                        let hits = masking.counts.vaulted_hits();
                        if let (Some(note), Some(r)) = (masking.take_note(), done.last_mut()) {
                            r.reason = Some(match r.reason.take() {
                                Some(prev) => format!("{prev}; {note}"),
                                None => note,
                            });
                            if hits > 0 {
                                // A leak that was stopped is its own evidence item.
                                let mut leak = info.record(gw, EventKind::SecretMasked);
                                leak.ref_seq = r.ref_seq;
                                leak.rows = Some(i64::try_from(hits).unwrap_or(i64::MAX));
                                leak.decision = Some(Decision::Deny);
                                leak.reason = Some(format!(
                                    "{hits} occurrence(s) of a vaulted credential masked in the response"
                                ));
                                done.push(leak);
                            }
                        }
                    }
                }
                _ => {}
            }
            pos += h.total_len;
        }
        if rows > 0 {
            lock(shared).stats.rows += rows;
        }
        if let Some(rec) = recorder.as_mut() {
            if let Some(r) = done.iter().rev().find_map(|r| r.ref_seq) {
                rec.last_ref = Some(r);
            }
        }
        for r in done.drain(..) {
            // The statement has run: its outcome goes to the client whatever happens here.
            // An outcome the journal cannot take now is kept by the store and written ahead
            // of the next record; the next statement's own write-ahead record decides
            // whether that statement runs (fail closed).
            if let Err(e) = gw.audit.append_nowait(r) {
                tracing::warn!(error = %e, "statement outcome record deferred");
            }
        }
        if pos > 0 {
            let bytes: &[u8] = match out.as_mut() {
                Some(o) => {
                    o.extend_from_slice(&buf[copied..pos]);
                    o
                }
                None => &buf[..pos],
            };
            wr.write_all(bytes).await?;
            lock(shared).stats.bytes_out += bytes.len() as u64;
            if let Some(rec) = recorder.as_mut() {
                let just_truncated = rec.push(bytes);
                if let Some(r) = rec.record(gw, info, ready, just_truncated) {
                    // Like an outcome: written after the fact, never delays the client.
                    if let Err(e) = gw.audit.append_nowait(r) {
                        tracing::warn!(error = %e, "session recording record deferred");
                    }
                }
            }
            buf.advance(pos);
        }
    }
}

/// Applies one outcome message to the pending statements.
fn outcome(
    gw: &Gateway,
    info: &SessionInfo,
    s: &mut Shared,
    tag: u8,
    body: &[u8],
    done: &mut Vec<Record>,
) -> Result<(), SessionError> {
    let bad = |e: gatehouse_pgwire::ProtocolError| SessionError::UpstreamProtocol(e.to_string());
    match tag {
        b'C' => {
            let n = command_tag_rows(decode_command_complete(body).map_err(bad)?);
            if let Some(p) = s.current() {
                // A simple Query may hold several statements: their counts add up.
                p.rows += n.unwrap_or(0);
                if p.kind == Kind::Execute {
                    p.done = true;
                    done.push(result_record(gw, info, p));
                }
            }
        }
        b'I' | b's' => {
            if let Some(p) = s.current() {
                if p.kind == Kind::Execute {
                    p.done = true;
                    done.push(result_record(gw, info, p));
                }
            }
        }
        b'E' => {
            let f = decode_error_fields(body).map_err(bad)?;
            if let Some(p) = s.current() {
                if p.sqlstate.is_none() {
                    p.sqlstate = f.code.map(str::to_owned);
                }
                if p.kind == Kind::Execute {
                    p.done = true;
                    done.push(result_record(gw, info, p));
                }
            }
        }
        b'Z' => {
            while let Some(p) = s.pending.pop_front() {
                match p.kind {
                    Kind::Boundary => break,
                    Kind::Simple => {
                        done.push(result_record(gw, info, &p));
                        break;
                    }
                    Kind::Execute if !p.done => {
                        let mut r = result_record(gw, info, &p);
                        r.sqlstate = None;
                        r.reason =
                            Some("not executed: an earlier message in the batch failed".into());
                        done.push(r);
                    }
                    Kind::Execute => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::LoadedConfig;
    use bytes::BytesMut;
    use gatehouse_pgwire::{encode_command_complete, encode_error, Severity};

    fn gateway(dir: &std::path::Path) -> Gateway {
        let cfg = format!(
            "[gateway]\ndata_dir = \"{}\"\n[identity.dev_issuer]\nenabled = true\n",
            dir.display()
        );
        let loaded =
            LoadedConfig::from_bytes(std::path::Path::new("t.toml"), cfg.as_bytes()).unwrap();
        Gateway::open(loaded).unwrap()
    }

    fn info() -> SessionInfo {
        SessionInfo {
            id: "s".into(),
            listener: "l".into(),
            source: "127.0.0.1:1".into(),
            identity: None,
            claimed_user: Some("alice".into()),
            connection: Some("app".into()),
        }
    }

    fn push(s: &mut Shared, kind: Kind, seq: Seq) {
        s.pending.push_back(Pending {
            kind,
            seq,
            started: Instant::now(),
            rows: 0,
            sqlstate: None,
            done: false,
        });
    }

    fn body(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        f(&mut b);
        b[HEADER_LEN..].to_vec()
    }

    /// (ref_seq, sqlstate, rows, reason present)
    fn summary(done: &[Record]) -> Vec<(i64, Option<String>, i64, bool)> {
        done.iter()
            .map(|r| {
                (
                    r.ref_seq.unwrap(),
                    r.sqlstate.clone(),
                    r.rows.unwrap(),
                    r.reason.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn simple_query_with_several_statements_sums_rows() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let mut s = Shared::default();
        let mut done = Vec::new();
        push(&mut s, Kind::Simple, 7);
        let c1 = body(|b| encode_command_complete(b, "INSERT 0 2"));
        let c2 = body(|b| encode_command_complete(b, "SELECT 3"));
        outcome(&gw, &info(), &mut s, b'C', &c1, &mut done).unwrap();
        outcome(&gw, &info(), &mut s, b'C', &c2, &mut done).unwrap();
        assert!(done.is_empty(), "a simple query completes at ReadyForQuery");
        outcome(&gw, &info(), &mut s, b'Z', b"I", &mut done).unwrap();
        assert_eq!(summary(&done), vec![(7, Some("00000".into()), 5, false)]);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn extended_error_skips_the_rest_of_the_batch_only() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let mut s = Shared::default();
        let mut done = Vec::new();
        // [Execute 1, Execute 2, Sync] [Execute 3, Sync]
        push(&mut s, Kind::Execute, 1);
        push(&mut s, Kind::Execute, 2);
        push(&mut s, Kind::Boundary, 0);
        push(&mut s, Kind::Execute, 3);
        push(&mut s, Kind::Boundary, 0);
        let err =
            body(|b| encode_error(b, Severity::Error, "22012", "division by zero", None, None));
        let ok = body(|b| encode_command_complete(b, "SELECT 1"));
        outcome(&gw, &info(), &mut s, b'E', &err, &mut done).unwrap();
        // The server skips Execute 2 and answers the Sync.
        outcome(&gw, &info(), &mut s, b'Z', b"I", &mut done).unwrap();
        outcome(&gw, &info(), &mut s, b'C', &ok, &mut done).unwrap();
        outcome(&gw, &info(), &mut s, b'Z', b"I", &mut done).unwrap();
        assert_eq!(
            summary(&done),
            vec![
                (1, Some("22012".into()), 0, false),
                (2, None, 0, true),
                (3, Some("00000".into()), 1, false),
            ]
        );
        assert!(s.pending.is_empty());
    }

    #[test]
    fn error_before_any_execute_does_not_leak_into_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let mut s = Shared::default();
        let mut done = Vec::new();
        // [Parse(fails), Sync] [Execute 9, Sync]
        push(&mut s, Kind::Boundary, 0);
        push(&mut s, Kind::Execute, 9);
        push(&mut s, Kind::Boundary, 0);
        let err = body(|b| encode_error(b, Severity::Error, "42601", "syntax error", None, None));
        outcome(&gw, &info(), &mut s, b'E', &err, &mut done).unwrap();
        outcome(&gw, &info(), &mut s, b'Z', b"I", &mut done).unwrap();
        assert!(done.is_empty());
        let ok = body(|b| encode_command_complete(b, "UPDATE 4"));
        outcome(&gw, &info(), &mut s, b'C', &ok, &mut done).unwrap();
        outcome(&gw, &info(), &mut s, b'Z', b"I", &mut done).unwrap();
        assert_eq!(summary(&done), vec![(9, Some("00000".into()), 4, false)]);
    }

    #[test]
    fn inspect_records_execute_with_its_prepared_text() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let mut st = ClientState::default();
        let mut recs = Vec::new();
        let mut pend = Vec::new();
        let mut wire = BytesMut::new();
        gatehouse_pgwire::encode_parse(&mut wire, "s1", "select $1::int + $2::int", &[23, 23]);
        gatehouse_pgwire::encode_bind(&mut wire, "p1", "s1", &[Some(b"1"), Some(b"2")]);
        gatehouse_pgwire::encode_execute(&mut wire, "p1", 0);
        gatehouse_pgwire::encode_sync(&mut wire);
        let mut rest = &wire[..];
        while let Some(f) = gatehouse_pgwire::next_frame(rest, 1 << 20).unwrap() {
            inspect(&mut st, &gw, &info(), f, &mut recs, &mut pend).unwrap();
            rest = &rest[f.wire_len()..];
        }
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].statement.as_deref(),
            Some("select $1::int + $2::int")
        );
        assert_eq!(recs[0].statement_name.as_deref(), Some("s1"));
        assert_eq!(recs[0].param_count, Some(2));
        assert_eq!(recs[0].protocol.as_deref(), Some("extended"));
        assert_eq!(
            pend.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![Kind::Execute, Kind::Boundary]
        );
    }
}
