//! The audited relay. Two directions run concurrently:
//!
//! - client → upstream: split the byte stream into messages; for every statement that will
//!   run (Query, Execute, FunctionCall) build an audit record; commit the records (one group
//!   commit per read) and only then forward the bytes. If the audit store refuses, nothing of
//!   that read is forwarded and the session ends with SQLSTATE 58030 (fail closed).
//! - upstream → client: every message is matched to the client message it answers (the
//!   *expected responses* queue, [`Shared::pending`]), masked, and forwarded; outcomes
//!   (CommandComplete, ErrorResponse, ReadyForQuery) become `statement.result` records.
//!
//! Guardrails: with a policy loaded, every Query and Parse is classified by PostgreSQL's own
//! parser (`gatehouse-sql`) and judged (`gatehouse-policy`), and so is every fast-path
//! FunctionCall (as a call of the built-in function its OID names; an OID Gatehouse does not
//! know is refused). A refused statement never reaches the target: its message is *replaced*
//! by `DO … RAISE EXCEPTION …`, so that PostgreSQL itself answers with the ErrorResponse naming
//! the rule, aborts the transaction block if one is open, and skips to the next Sync in the
//! extended protocol — the session stays usable and its state matches what the client sees.
//!
//! What the server will execute, exactly:
//! - **Text is read as the server reads it.** The server reports `standard_conforming_strings`,
//!   `client_encoding` and `server_encoding` in ParameterStatus messages; the statement text is
//!   decoded and parsed under those values. A text whose reading depends on them (a backslash,
//!   a byte ≥ 0x80) is judged only once every earlier message has been answered, so that any
//!   change those messages made has been reported; one that follows an unsynchronised
//!   statement in the same pipeline (whose effect cannot be known yet) is refused.
//! - **Prepared statements and portals are tracked from the server's answers.** The client
//!   side keeps a *speculative* map (what exists if every message in flight succeeds — exact
//!   within one batch, because an error makes the server skip to the next Sync); the upstream
//!   side keeps the *confirmed* map (ParseComplete, BindComplete, CloseComplete). A name from
//!   an earlier batch is reconciled with the confirmed map before it is used.
//! - **Each execution is judged.** A statement is judged at Parse; every Bind (one portal,
//!   one execution) reuses that verdict only if it was deterministic and the policy has not
//!   changed since; an approval ticket covers one execution; a grant is checked at each Bind.
//! - **Every result is masked with the plan of the portal it belongs to.** An Execute of a
//!   portal the client did not Describe gets a Describe injected before it (its answer is
//!   kept from the client), so the gateway always knows the columns, formats and types.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use gatehouse_audit::{Decision, EventKind, Record, Seq};
use gatehouse_pgwire::{
    command_tag_rows, decode_command_complete, decode_error_fields, peek_header, Frame,
    FrontendMessage, HEADER_LEN,
};
use gatehouse_sql::{Encoding, TextSettings};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Notify;

use super::error::SessionError;
use super::session::{ClientStream, SessionInfo};
use super::upstream::UpstreamStream;
use crate::state::Gateway;

/// Largest client message Gatehouse reads whole (Query, Parse, Bind ...). PostgreSQL itself
/// allows up to 1 GiB; a message beyond this is refused with 08P01. How much of a statement
/// is *judged* is [`Limits::statement_bytes`].
pub const MAX_INSPECTED_MESSAGE: usize = 256 * 1024 * 1024;

/// The relay's limits (see `[limits]` in docs/configuration.md).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest statement text parsed and judged when the policy can restrict the session;
    /// a longer one is refused (54000).
    pub statement_bytes: usize,
    /// Largest upstream message other than DataRow/CopyData/FunctionCallResponse assembled
    /// (ErrorResponse, NoticeResponse, RowDescription ...); a larger one ends the session
    /// (54000).
    pub upstream_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            statement_bytes: 1024 * 1024,
            upstream_message_bytes: 1024 * 1024,
        }
    }
}

/// Totals for the session record.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rows: u64,
    pub statements: u64,
}

/// The settings that decide how the server reads statement text, as it last reported them.
/// `None`: not reported (or a value Gatehouse does not know), so text that depends on it is
/// refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerSettings {
    standard_conforming_strings: Option<bool>,
    client_encoding: Option<Encoding>,
    server_encoding: Option<Encoding>,
}

impl ServerSettings {
    /// Takes one ParameterStatus.
    pub fn observe(&mut self, name: &str, value: &str) {
        match name {
            "standard_conforming_strings" => {
                self.standard_conforming_strings = match value {
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => None,
                }
            }
            "client_encoding" => self.client_encoding = Encoding::from_pg_name(value),
            "server_encoding" => self.server_encoding = Encoding::from_pg_name(value),
            _ => {}
        }
    }

    /// The ParameterStatus messages in the upstream's startup answer.
    pub fn from_startup(mut tail: &[u8]) -> ServerSettings {
        let mut s = ServerSettings::default();
        while let Ok(Some(f)) = gatehouse_pgwire::next_frame(tail, 1 << 20) {
            if f.tag == b'S' {
                if let Ok((k, v)) = gatehouse_pgwire::decode_parameter_status(f.body) {
                    s.observe(k, v);
                }
            }
            tail = &tail[f.wire_len()..];
        }
        s
    }

    fn text(&self) -> Option<TextSettings> {
        Some(TextSettings {
            standard_conforming_strings: self.standard_conforming_strings?,
            client_encoding: self.client_encoding?,
            server_encoding: self.server_encoding?,
        })
    }
}

/// A client message whose answer the upstream side waits for.
#[derive(Debug)]
enum Kind {
    /// A simple Query: done at ReadyForQuery.
    Simple,
    /// A fast-path FunctionCall: FunctionCallResponse or ErrorResponse, then ReadyForQuery.
    Call,
    /// A Sync: ReadyForQuery.
    Boundary,
    /// ParseComplete. `swallow`: injected by Gatehouse; the client does not expect it.
    Parse {
        name: Arc<str>,
        prepared: Arc<Prepared>,
        swallow: bool,
    },
    /// BindComplete.
    Bind {
        portal: Arc<str>,
        prepared: Arc<Prepared>,
    },
    /// (ParameterDescription and) RowDescription or NoData. `portal`: a portal Describe,
    /// whose answer is that portal's masking plan. `swallow`: injected.
    Describe {
        portal: Option<Arc<str>>,
        swallow: bool,
    },
    /// CloseComplete.
    Close { statement: bool, name: Arc<str> },
    /// DataRows, then CommandComplete / EmptyQueryResponse / PortalSuspended / ErrorResponse.
    Execute { portal: Arc<str> },
}

impl Kind {
    /// Ends with a ReadyForQuery.
    fn is_boundary(&self) -> bool {
        matches!(self, Kind::Simple | Kind::Call | Kind::Boundary)
    }
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    /// The statement record, for Simple, Call and Execute.
    seq: Option<Seq>,
    started: Instant,
    rows: u64,
    sqlstate: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: VecDeque<Pending>,
    stats: SessionStats,
    /// What the server last reported.
    settings: ServerSettings,
    /// Boundaries (Query, FunctionCall, Sync) forwarded whose ReadyForQuery has not come.
    in_flight: usize,
    /// The server is in COPY FROM STDIN: it answers nothing until the client's data ends.
    copy_in: bool,
    /// Confirmed by the server: prepared statements (ParseComplete) and portals
    /// (BindComplete).
    statements: HashMap<Arc<str>, Arc<Prepared>>,
    portals: HashMap<Arc<str>, Arc<Prepared>>,
}

impl Shared {
    /// The expected response at the head of the queue.
    fn front_mut(&mut self) -> Option<&mut Pending> {
        self.pending.front_mut()
    }
}

/// What the policy decided about a prepared statement or portal.
#[derive(Debug, Clone)]
enum Judged {
    /// Allowed. `note`: the deciding rule, for the record.
    Allowed { note: Option<String>, reuse: Reuse },
    /// Refused: the server holds the refusal statement instead (decision, note).
    Refused(Decision, String),
}

/// When an allowing verdict may be reused for a later execution without judging again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reuse {
    /// While the policy in force has this hash (`None`: no policy).
    Policy(Option<String>),
    /// Allowed by a single-use approval ticket: the first execution only.
    Ticket,
    /// Never (a grant: checked, and its use recorded, every time).
    Never,
}

/// A prepared statement or portal as the gateway knows it.
#[derive(Debug)]
struct Prepared {
    /// The statement text (decoded as the server reads it, or lossily when not judged).
    sql: Arc<str>,
    /// The prepared statement's name (for a portal: the statement it was bound from).
    statement: Arc<str>,
    param_count: i64,
    /// How the text was read (judging it again must read it the same way).
    options: gatehouse_sql::ParseOptions,
    judged: Judged,
}

/// A name in the client side's speculative map.
#[derive(Debug, Clone)]
struct Slot {
    /// The batch (count of boundaries forwarded before it) that last changed this name.
    batch: u64,
    /// Reconciled with the server's answers.
    confirmed: bool,
    /// `None`: closed.
    prepared: Option<Arc<Prepared>>,
    /// Statements: an approval ticket allowed it and no execution has used it yet.
    ticket_unused: bool,
    /// Portals: its columns are known to the upstream side (described).
    described: bool,
}

impl Slot {
    fn new(batch: u64, prepared: Arc<Prepared>) -> Slot {
        Slot {
            batch,
            confirmed: false,
            prepared: Some(prepared),
            ticket_unused: false,
            described: false,
        }
    }
}

#[derive(Debug, Default)]
struct ClientState {
    statements: HashMap<Arc<str>, Slot>,
    portals: HashMap<Arc<str>, Slot>,
    /// Boundaries forwarded so far: the number of the current batch.
    batch: u64,
    /// An Execute was forwarded since the last boundary.
    exec_since_sync: bool,
    /// SQL-level `PREPARE`s forwarded on this session, to judge `EXECUTE`.
    sql_prepared: gatehouse_sql::PreparedStatements,
    /// The session's identity and connection tags, as the policy sees them.
    who: Option<Arc<Who>>,
    /// (policy hash, whether that policy can restrict this session).
    restricted_cache: Option<(String, bool)>,
    limits: Limits,
    /// The last wait for the server's answers could not complete (COPY FROM STDIN in
    /// progress): what needed them is refused instead.
    answers_unavailable: bool,
    /// The session's masking has column rules: COPY TO (whose rows carry no column names)
    /// is refused before it runs.
    column_rules: bool,
    /// The unnamed statement's and portal's name, shared: most clients use only these, and
    /// every Parse, Bind, Describe and Execute needs the name (no allocation per message).
    unnamed: Arc<str>,
}

/// Whether the text holds a `COPY ... TO` (cheap check first: the bytes mention "copy").
/// Read with the reported settings when known; the upstream side refuses any COPY OUT that
/// gets past this anyway.
fn copies_out(bytes: &[u8], settings: Option<TextSettings>) -> bool {
    if !bytes.windows(4).any(|w| w.eq_ignore_ascii_case(b"copy")) {
        return false;
    }
    let settings = settings.unwrap_or_default();
    let Ok(text) = gatehouse_sql::decode_statement(bytes, &settings) else {
        return false;
    };
    let options = gatehouse_sql::ParseOptions {
        standard_conforming_strings: settings.standard_conforming_strings,
    };
    gatehouse_sql::classify_with(&text, options).is_ok_and(|stmts| {
        stmts.iter().any(|s| {
            matches!(
                s.kind,
                gatehouse_sql::StatementKind::Copy {
                    direction: gatehouse_sql::CopyDirection::To,
                    ..
                }
            )
        })
    })
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
    Allow { note: Option<String>, reuse: Reuse },
    /// Do not forward: replace by an error raised in PostgreSQL with `message` and `sqlstate`.
    Refuse {
        decision: Decision,
        sqlstate: &'static str,
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
        /// The user's place in `limits.held_statements_per_user`, until the hold ends.
        slot: super::limits::UserSlot,
    },
}

impl Verdict {
    /// Allowed without a rule, for as long as the policy in force does not change.
    fn allow_reusable(gw: &Gateway) -> Verdict {
        Verdict::Allow {
            note: None,
            reuse: Reuse::Policy(gw.policy_hash()),
        }
    }

    fn refuse_with(sqlstate: &'static str, note: String, message: String) -> Verdict {
        Verdict::Refuse {
            decision: Decision::Deny,
            sqlstate,
            note,
            message,
        }
    }
}

/// Whether the policy in force is the one a reusable verdict was made under.
fn policy_unchanged(gw: &Gateway, hash: Option<&str>) -> bool {
    let policy = gw.policy.load();
    policy.as_ref().as_ref().map(|p| p.hash()) == hash
}

/// A message to forward instead of the client's, possibly only after a held approval.
#[derive(Debug)]
struct Rewrite {
    /// The refusal (or re-encoded) message.
    bytes: BytesMut,
    /// Hold: forward the original message instead if this request is approved in time.
    hold: Option<(
        gatehouse_approvals::RequestId,
        std::time::Duration,
        super::limits::UserSlot,
    )>,
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
    /// Judges a statement text (Query or Parse) as the server will read it. No policy, or a
    /// policy that cannot restrict this session, allows without parsing. Otherwise the text is
    /// decoded with the settings the server reported (`standard_conforming_strings`,
    /// `client_encoding`) and judged; a text the gateway cannot read exactly as the server
    /// will is refused. `pipelined`: a statement of the same unsynchronised pipeline ran
    /// before this one, so the server's settings when it reads the text are not known.
    fn judge_bytes(
        &mut self,
        gw: &Gateway,
        bytes: &[u8],
        settings: Option<gatehouse_sql::TextSettings>,
        pipelined: bool,
    ) -> (Verdict, String, gatehouse_sql::ParseOptions) {
        let lossy = || String::from_utf8_lossy(bytes).into_owned();
        if self.column_rules && copies_out(bytes, settings) {
            let note = "COPY ... TO STDOUT cannot be masked column by column on a connection with \
                        masking column rules; use SELECT"
                .to_owned();
            return (
                Verdict::refuse_with("54000", note.clone(), format!("gatehouse: {note}")),
                lossy(),
                gatehouse_sql::ParseOptions::default(),
            );
        }
        if !self.may_restrict(gw) {
            return (
                Verdict::allow_reusable(gw),
                lossy(),
                gatehouse_sql::ParseOptions::default(),
            );
        }
        if bytes.len() > self.limits.statement_bytes {
            let note = format!(
                "statement of {} bytes is longer than limits.statement_bytes ({}) and cannot be judged",
                bytes.len(),
                self.limits.statement_bytes
            );
            return (
                Verdict::refuse_with("54000", note.clone(), format!("gatehouse: {note}")),
                lossy(),
                gatehouse_sql::ParseOptions::default(),
            );
        }
        let mut options = gatehouse_sql::ParseOptions::default();
        let text = if gatehouse_sql::depends_on_settings(bytes) {
            if pipelined {
                let note = "statement text with backslashes or non-ASCII characters follows an \
                            unsynchronised statement in the same pipeline; how the server will \
                            read it cannot be known: send Sync first"
                    .to_owned();
                return (
                    Verdict::refuse_with("0A000", note.clone(), format!("gatehouse: {note}")),
                    lossy(),
                    gatehouse_sql::ParseOptions::default(),
                );
            }
            let Some(settings) = settings else {
                let note =
                    "the server did not report standard_conforming_strings, client_encoding \
                            and server_encoding; statement text with backslashes or non-ASCII \
                            characters cannot be judged"
                        .to_owned();
                return (
                    Verdict::refuse_with("0A000", note.clone(), format!("gatehouse: {note}")),
                    lossy(),
                    gatehouse_sql::ParseOptions::default(),
                );
            };
            options.standard_conforming_strings = settings.standard_conforming_strings;
            match gatehouse_sql::decode_statement(bytes, &settings) {
                Ok(t) => t.into_owned(),
                Err(e) => {
                    let note = format!("statement text cannot be read as the server will: {e}");
                    return (
                        Verdict::refuse_with(
                            e.sqlstate(),
                            note.clone(),
                            format!("gatehouse: {note}"),
                        ),
                        lossy(),
                        gatehouse_sql::ParseOptions::default(),
                    );
                }
            }
        } else {
            // Only ASCII without backslashes: read the same under every setting.
            lossy()
        };
        let v = self.judge(gw, &text, options);
        (v, text, options)
    }

    /// Whether the policy in force can restrict this session at all.
    fn may_restrict(&mut self, gw: &Gateway) -> bool {
        let policy = gw.policy.load();
        let who = self.who.clone();
        match (policy.as_ref().as_ref(), who.as_deref()) {
            (Some(policy), Some(who)) => self.restricted(policy, who),
            _ => false,
        }
    }

    /// Judges decoded `sql` with the policy in force.
    fn judge(&mut self, gw: &Gateway, sql: &str, options: gatehouse_sql::ParseOptions) -> Verdict {
        let policy = gw.policy.load();
        let who = self.who.clone();
        let (Some(policy), Some(who)) = (policy.as_ref().as_ref(), who.as_deref()) else {
            return Verdict::allow_reusable(gw);
        };
        // Nothing can refuse this user on this connection: allow without parsing.
        if !self.restricted(policy, who) {
            return Verdict::allow_reusable(gw);
        }
        let statements = gatehouse_sql::classify_with(sql, options);
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
                // Deterministic for this policy and session: the verdict holds until the
                // policy changes. A grant is checked (and its use recorded) every time.
                let reuse = match basis {
                    gatehouse_policy::AllowBasis::Grant { .. } => Reuse::Never,
                    _ => Reuse::Policy(Some(policy.hash().to_owned())),
                };
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
                Verdict::Allow { note, reuse }
            }
            gatehouse_policy::Decision::Deny { rule, reason } => Verdict::Refuse {
                decision: Decision::Deny,
                sqlstate: "42501",
                note: format!("{rule}: {reason}"),
                message: format!("gatehouse: statement blocked by {rule}: {reason}"),
            },
            gatehouse_policy::Decision::RequireApproval {
                rule,
                reason,
                approvers,
                min_approvals,
                mode,
            } => self.ticket(
                gw,
                sql,
                options,
                &rule,
                &reason,
                approvers,
                min_approvals,
                &mode,
            ),
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
        options: gatehouse_sql::ParseOptions,
        rule: &gatehouse_policy::RuleId,
        reason: &str,
        approvers: Vec<String>,
        min_approvals: u32,
        mode: &gatehouse_policy::ApprovalMode,
    ) -> Verdict {
        let Some(who) = self.who.clone() else {
            return Verdict::allow_reusable(gw);
        };
        let now = std::time::SystemTime::now();
        let refuse = |note: String, message: String| Verdict::Refuse {
            decision: Decision::Deny,
            sqlstate: "42501",
            note,
            message,
        };
        let store = &gw.approvals;
        match store.consume_ticket(&who.user, &who.connection, sql, now) {
            Ok(Some(req)) => {
                if let Ok(parts) = &gatehouse_sql::classify_with(sql, options) {
                    self.sql_prepared.observe(parts);
                }
                // Single use: the approval covers this one execution.
                return Verdict::Allow {
                    note: Some(format!("allowed by approval {} for {rule}", req.id)),
                    reuse: Reuse::Ticket,
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
                    // A held statement keeps its session and upstream connection busy for
                    // up to the hold timeout: bounded per user.
                    let limit = gw.config.load().config.limits.held_statements_per_user;
                    let Some(slot) = gw.held_statements.try_acquire(
                        who.user.issuer.as_str(),
                        &who.user.name,
                        limit,
                    ) else {
                        let note = format!(
                            "{rule}: {reason}; not held: {limit} statements of this user are already held for approval (limits.held_statements_per_user)"
                        );
                        return Verdict::refuse_with(
                            "53400",
                            note.clone(),
                            format!("gatehouse: {note}"),
                        );
                    };
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
                            slot,
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
                                format!("{rule}: approval request could not be created: {e}"),
                                format!("gatehouse: statement needs approval under {rule}; the request could not be created: {}; refused", e.client_message()),
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
                    format!("{rule}: approval request could not be created: {e}"),
                    format!("gatehouse: statement needs approval under {rule}; the request could not be created: {}; refused", e.client_message()),
                )
            }
        }
    }
}

/// How long an approval request waits for a decision.
const APPROVAL_REQUEST_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// SQL that makes PostgreSQL raise `message` with `sqlstate`. The text is kept to printable
/// ASCII without backslashes or `$` (so it reads the same under every `client_encoding` and
/// `standard_conforming_strings`), quoted as a standard string literal inside a dollar-quoted
/// body with a random tag.
fn refusal_sql(sqlstate: &str, message: &str) -> String {
    let lit: String = message
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .filter(|c| !c.is_ascii_control() && *c != '\\' && *c != '$')
        .collect::<String>()
        .replace('\'', "''");
    let code: String = sqlstate
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect();
    let tag = format!("$gh{}$", hex::encode(rand::random::<[u8; 6]>()));
    format!("DO {tag}BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{lit}'; END{tag}")
}

/// A Query that raises the refusal.
fn refusal_query(sqlstate: &str, message: &str) -> BytesMut {
    let mut b = BytesMut::new();
    gatehouse_pgwire::encode_query(&mut b, &refusal_sql(sqlstate, message));
    b
}

/// The prepared statement that stands for a refused one on the server.
fn refused_prepared(statement: &str, sql: &str, decision: Decision, note: String) -> Arc<Prepared> {
    Arc::new(Prepared {
        sql: sql.into(),
        statement: statement.into(),
        param_count: 0,
        options: gatehouse_sql::ParseOptions::default(),
        judged: Judged::Refused(decision, note),
    })
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    gw: &Arc<Gateway>,
    info: &SessionInfo,
    client: &mut ClientStream,
    upstream: UpstreamStream,
    leftover: BytesMut,
    settings: ServerSettings,
    limits: Limits,
) -> Result<SessionStats, (SessionStats, SessionError)> {
    let shared = Mutex::new(Shared {
        settings,
        ..Shared::default()
    });
    let answered = Notify::new();
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
        let c2u = client_to_upstream(
            gw,
            info,
            crd,
            uwr,
            leftover,
            &shared,
            &answered,
            who.clone(),
            limits,
        );
        let u2c = upstream_to_client(gw, info, urd, cwr, &shared, &answered, who.clone(), limits);
        tokio::pin!(c2u, u2c);
        tokio::select! {
            r = &mut c2u => r,
            r = &mut u2c => r,
        }
    };
    let shared = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    // Statements still waiting for an outcome when the session ended.
    for p in shared.pending.iter().filter(|p| p.seq.is_some()) {
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

/// Waits until every boundary forwarded has been answered (every ParameterStatus and
/// ParseComplete they caused has been seen). `false` when that cannot happen now: the server
/// waits for COPY data from this very client.
async fn wait_for_answers(shared: &Mutex<Shared>, answered: &Notify) -> bool {
    loop {
        let notified = answered.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let s = lock(shared);
            if s.in_flight == 0 {
                return true;
            }
            if s.copy_in {
                return false;
            }
        }
        notified.await;
    }
}

/// What one read of client bytes becomes before it is forwarded.
#[derive(Debug, Default)]
struct Outbox {
    records: Vec<Record>,
    /// Expected answers, with the index of their record in `records`.
    pending: Vec<(Kind, Option<usize>)>,
    /// Set once a message is replaced: the bytes to forward instead of `buf[..pos]`,
    /// complete up to `copied`.
    out: Option<BytesMut>,
    copied: usize,
}

impl Outbox {
    /// Forward `bytes` instead of the message at `buf[at..at + len]`.
    fn replace(&mut self, buf: &[u8], at: usize, len: usize, bytes: &[u8]) {
        let o = self.out.get_or_insert_with(BytesMut::new);
        o.extend_from_slice(&buf[self.copied..at]);
        o.extend_from_slice(bytes);
        self.copied = at + len;
    }
}

/// Commits the records of `buf[..pos]`, queues the answers they expect, forwards the bytes
/// (with replacements) and drops them from `buf`. Write-ahead: nothing is forwarded unless
/// its records are in the journal.
async fn forward<W: AsyncWrite + Unpin>(
    gw: &Gateway,
    shared: &Mutex<Shared>,
    wr: &mut W,
    buf: &mut BytesMut,
    pos: usize,
    ob: &mut Outbox,
) -> Result<(), SessionError> {
    let seqs = if ob.records.is_empty() {
        Vec::new()
    } else {
        let seqs = gw
            .audit
            .append_batch(&ob.records)
            .await
            .map_err(|e| SessionError::AuditUnavailable(e.to_string()))?;
        // Cleared, not replaced: a record is large, and a fresh vector per read cost an
        // allocation per statement.
        ob.records.clear();
        seqs
    };
    if !ob.pending.is_empty() {
        let now = Instant::now();
        let mut s = lock(shared);
        for (kind, rec) in ob.pending.drain(..) {
            let seq = rec.and_then(|i| seqs.get(i).copied());
            if seq.is_some() {
                s.stats.statements += 1;
            }
            if kind.is_boundary() {
                s.in_flight += 1;
            }
            s.pending.push_back(Pending {
                kind,
                seq,
                started: now,
                rows: 0,
                sqlstate: None,
            });
        }
    }
    let bytes: &[u8] = match ob.out.as_mut() {
        Some(o) => {
            o.extend_from_slice(&buf[ob.copied..pos]);
            o
        }
        None => &buf[..pos],
    };
    wr.write_all(bytes)
        .await
        .map_err(|_| SessionError::UpstreamLost)?;
    lock(shared).stats.bytes_in += pos as u64;
    buf.advance(pos);
    ob.out = None;
    ob.copied = 0;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn client_to_upstream<R, W>(
    gw: &Gateway,
    info: &SessionInfo,
    mut rd: R,
    mut wr: W,
    mut buf: BytesMut,
    shared: &Mutex<Shared>,
    answered: &Notify,
    who: Option<Arc<Who>>,
    limits: Limits,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let column_rules = who.as_deref().is_some_and(|w| {
        let set = gw.masking.load();
        set.select(&w.groups, &w.connection, &w.tags)
            .0
            .has_column_rules()
    });
    let mut st = ClientState {
        who,
        limits,
        column_rules,
        ..ClientState::default()
    };
    // Bytes of a streamed CopyData message still to pass through.
    let mut streaming = 0usize;
    let mut ob = Outbox::default();
    loop {
        let mut pos = 0usize;
        let mut terminate = false;
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
            let rewrite = match inspect(&mut st, gw, info, frame, &mut ob, shared)? {
                Step::Forward(r) => r,
                Step::WaitForAnswers => {
                    // Forward what came before, let the server answer it, then look at this
                    // message again knowing what the server now holds.
                    if pos > 0 {
                        forward(gw, shared, &mut wr, &mut buf, pos, &mut ob).await?;
                        pos = 0;
                    }
                    st.answers_unavailable = !wait_for_answers(shared, answered).await;
                    st.reconcile(shared);
                    continue;
                }
            };
            st.answers_unavailable = false;
            if let Some(rewrite) = rewrite {
                let approved = match &rewrite.hold {
                    None => false,
                    Some((id, timeout, _slot)) => {
                        // Nothing of this read is forwarded while the statement is held.
                        let (ok, why) = await_approval(gw, id, *timeout).await;
                        if let Some(r) = ob.records.last_mut() {
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
                    ob.replace(&buf, pos, h.total_len, &rewrite.bytes);
                }
            }
            pos += h.total_len;
            if h.tag == b'X' {
                terminate = true;
                break;
            }
        }
        if pos > 0 {
            forward(gw, shared, &mut wr, &mut buf, pos, &mut ob).await?;
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

/// What to do with one client message.
#[derive(Debug)]
enum Step {
    /// Forward it, or the rewrite instead.
    Forward(Option<Rewrite>),
    /// Its meaning depends on answers the server has not sent yet: forward what came
    /// before, wait for those answers, and inspect it again. Nothing was changed.
    WaitForAnswers,
}

/// The server's answers to earlier messages are needed first (see [`Step::WaitForAnswers`]).
#[derive(Debug)]
struct NeedAnswers;

/// The message as it came, re-encoded (tag, length, body).
fn original(frame: &Frame<'_>, out: &mut BytesMut) {
    out.extend_from_slice(&[frame.tag]);
    out.extend_from_slice(&((frame.body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(frame.body);
}

impl ClientState {
    /// `name` as the maps and the expected answers keep it.
    fn name(&self, name: &str) -> Arc<str> {
        if name.is_empty() {
            Arc::clone(&self.unnamed)
        } else {
            Arc::from(name)
        }
    }

    /// Brings names changed in earlier (answered) batches in line with the server's answers.
    fn reconcile(&mut self, shared: &Mutex<Shared>) {
        let s = lock(shared);
        let batch = self.batch;
        for (map, confirmed) in [
            (&mut self.statements, &s.statements),
            (&mut self.portals, &s.portals),
        ] {
            for (name, slot) in map.iter_mut() {
                if slot.confirmed || slot.batch >= batch {
                    continue;
                }
                let c = confirmed.get(name);
                let same = match (&slot.prepared, c) {
                    (Some(p), Some(c)) => Arc::ptr_eq(p, c),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    slot.prepared = c.cloned();
                    slot.ticket_unused = false;
                    slot.described = false;
                }
                slot.confirmed = true;
            }
            // A name the server does not hold needs no slot.
            map.retain(|_, slot| slot.prepared.is_some() || !slot.confirmed);
        }
    }

    /// A slot from an earlier batch whose answer has not been taken in yet.
    fn stale(&self, slot: Option<&Slot>) -> bool {
        slot.is_some_and(|s| !s.confirmed && s.batch < self.batch) && !self.answers_unavailable
    }

    /// The settings to read a statement text with; `WaitForAnswers` first when they may be
    /// about to change.
    fn settings_for(
        &mut self,
        gw: &Gateway,
        sql: &[u8],
        shared: &Mutex<Shared>,
        unforwarded: &[(Kind, Option<usize>)],
    ) -> Result<Option<TextSettings>, NeedAnswers> {
        if !gatehouse_sql::depends_on_settings(sql) || !self.may_restrict(gw) {
            return Ok(None);
        }
        // A boundary earlier in this very read, not forwarded yet, is in flight too.
        let ahead = unforwarded.iter().any(|(k, _)| k.is_boundary());
        let s = lock(shared);
        if (s.in_flight > 0 || ahead) && !self.answers_unavailable {
            return Err(NeedAnswers);
        }
        Ok(s.settings.text())
    }
}

/// Looks at one client message; statements that will run get an audit record. Returns the
/// bytes to forward instead of the message when the policy refuses it.
fn inspect(
    st: &mut ClientState,
    gw: &Gateway,
    info: &SessionInfo,
    frame: Frame<'_>,
    ob: &mut Outbox,
    shared: &Mutex<Shared>,
) -> Result<Step, SessionError> {
    let msg = FrontendMessage::decode(frame)?;
    let records = &mut ob.records;
    let pending = &mut ob.pending;
    match msg {
        FrontendMessage::Query { sql } => {
            let settings = match st.settings_for(gw, sql, shared, pending) {
                Ok(s) => s,
                Err(NeedAnswers) => return Ok(Step::WaitForAnswers),
            };
            let pipelined = st.exec_since_sync || st.answers_unavailable;
            let (verdict, text, _) = st.judge_bytes(gw, sql, settings, pipelined);
            let mut r = statement_record(gw, info, "simple");
            r.statement = Some(text);
            let replacement = simple_rewrite(verdict, &mut r);
            pending.push((Kind::Simple, Some(records.len())));
            records.push(r);
            // A simple Query drops the unnamed prepared statement.
            st.statements.remove("");
            st.batch += 1;
            st.exec_since_sync = false;
            Ok(Step::Forward(replacement))
        }
        FrontendMessage::Parse {
            statement,
            sql,
            param_types,
        } => {
            let settings = match st.settings_for(gw, sql, shared, pending) {
                Ok(s) => s,
                Err(NeedAnswers) => return Ok(Step::WaitForAnswers),
            };
            let pipelined = st.exec_since_sync || st.answers_unavailable;
            let (verdict, text, options) = st.judge_bytes(gw, sql, settings, pipelined);
            let mut ticket = false;
            let (prepared, replacement) = match verdict {
                Verdict::Allow { note, reuse } => {
                    ticket = reuse == Reuse::Ticket;
                    (
                        Arc::new(Prepared {
                            sql: text.into(),
                            statement: statement.into(),
                            param_count: param_types.len() as i64,
                            options,
                            judged: Judged::Allowed { note, reuse },
                        }),
                        None,
                    )
                }
                Verdict::Refuse {
                    decision,
                    sqlstate,
                    note,
                    message,
                } => {
                    let mut b = BytesMut::new();
                    gatehouse_pgwire::encode_parse(
                        &mut b,
                        statement,
                        &refusal_sql(sqlstate, &message),
                        &[],
                    );
                    (
                        refused_prepared(statement, &text, decision, note),
                        Some(Rewrite::now(b)),
                    )
                }
                // Holding the extended protocol would hold Bind/Execute too; a held rule on
                // a prepared statement is refused like a ticket (retry after approval).
                Verdict::Hold { note, message, .. } => {
                    let mut b = BytesMut::new();
                    gatehouse_pgwire::encode_parse(
                        &mut b,
                        statement,
                        &refusal_sql("42501", &message),
                        &[],
                    );
                    (
                        refused_prepared(statement, &text, Decision::Deny, note),
                        Some(Rewrite::now(b)),
                    )
                }
            };
            let name = st.name(statement);
            let mut slot = Slot::new(st.batch, Arc::clone(&prepared));
            slot.ticket_unused = ticket;
            st.statements.insert(Arc::clone(&name), slot);
            pending.push((
                Kind::Parse {
                    name,
                    prepared,
                    swallow: false,
                },
                None,
            ));
            Ok(Step::Forward(replacement))
        }
        FrontendMessage::Bind {
            portal,
            statement,
            param_count,
        } => {
            if st.stale(st.statements.get(statement)) {
                return Ok(Step::WaitForAnswers);
            }
            let slot = st.statements.get_mut(statement);
            // A name this side forgot (closed) may still be on the server if its Close was
            // skipped after an error: the server's answers say.
            let known = match &slot {
                Some(s) => s.prepared.clone(),
                None => lock(shared).statements.get(statement).cloned(),
            };
            let ticket = slot
                .map(|s| std::mem::take(&mut s.ticket_unused))
                .unwrap_or(false);
            // (statement text, verdict for this execution)
            let options = known.as_ref().map(|p| p.options).unwrap_or_default();
            let (sql, judged) = match &known {
                Some(p) => match &p.judged {
                    Judged::Refused(d, n) => (Arc::clone(&p.sql), Judged::Refused(*d, n.clone())),
                    Judged::Allowed { note, reuse } => {
                        let reusable = match reuse {
                            Reuse::Policy(h) => policy_unchanged(gw, h.as_deref()),
                            Reuse::Ticket => ticket,
                            Reuse::Never => false,
                        };
                        if reusable {
                            (
                                Arc::clone(&p.sql),
                                Judged::Allowed {
                                    note: note.clone(),
                                    reuse: reuse.clone(),
                                },
                            )
                        } else {
                            // Judged again: the policy changed, or the verdict rested on a
                            // ticket already used or a grant that may have ended.
                            let v = st.judge(gw, &p.sql, p.options);
                            (Arc::clone(&p.sql), st.execution(v))
                        }
                    }
                },
                None => {
                    // Not a statement this gateway saw parsed: an SQL-level PREPARE (judged
                    // as `EXECUTE name`), or unknown.
                    if st.sql_prepared.resolve(statement).is_empty() {
                        let sql: Arc<str> = Arc::from("");
                        if st.may_restrict(gw) {
                            let note = format!(
                                "Bind of prepared statement {statement:?}, which the gateway does not know; refused"
                            );
                            (sql, Judged::Refused(Decision::Deny, note))
                        } else {
                            (
                                sql,
                                Judged::Allowed {
                                    note: Some(format!(
                                        "Bind of prepared statement {statement:?}, which the gateway does not know"
                                    )),
                                    reuse: Reuse::Never,
                                },
                            )
                        }
                    } else {
                        let sql = format!("EXECUTE \"{}\"", statement.replace('"', "\"\""));
                        let v = st.judge(gw, &sql, gatehouse_sql::ParseOptions::default());
                        (Arc::from(sql.as_str()), st.execution(v))
                    }
                }
            };
            let portal_name = st.name(portal);
            let mut replacement = None;
            if let Judged::Refused(decision, note) = &judged {
                let mut b = BytesMut::new();
                if known
                    .as_ref()
                    .is_some_and(|p| matches!(p.judged, Judged::Refused(..)))
                {
                    // The server holds the refusal under this name; it takes no parameters.
                    gatehouse_pgwire::encode_bind(&mut b, portal, statement, &[]);
                } else {
                    // Refused for this execution: bind the portal to a refusal instead (in
                    // the unnamed statement, whose ParseComplete the client does not expect).
                    let message = format!("gatehouse: statement blocked: {note}");
                    gatehouse_pgwire::encode_parse(
                        &mut b,
                        "",
                        &refusal_sql("42501", &message),
                        &[],
                    );
                    gatehouse_pgwire::encode_bind(&mut b, portal, "", &[]);
                    let stand_in = refused_prepared("", &sql, *decision, note.clone());
                    st.statements
                        .insert(st.name(""), Slot::new(st.batch, Arc::clone(&stand_in)));
                    pending.push((
                        Kind::Parse {
                            name: st.name(""),
                            prepared: stand_in,
                            swallow: true,
                        },
                        None,
                    ));
                }
                replacement = Some(Rewrite::now(b));
            }
            let prepared = Arc::new(Prepared {
                sql,
                statement: statement.into(),
                param_count: i64::from(param_count),
                options,
                judged,
            });
            st.portals.insert(
                Arc::clone(&portal_name),
                Slot::new(st.batch, Arc::clone(&prepared)),
            );
            pending.push((
                Kind::Bind {
                    portal: portal_name,
                    prepared,
                },
                None,
            ));
            Ok(Step::Forward(replacement))
        }
        FrontendMessage::Execute { portal, .. } => {
            if st.stale(st.portals.get(portal)) {
                return Ok(Step::WaitForAnswers);
            }
            let mut r = statement_record(gw, info, "extended");
            let name = st.name(portal);
            let slot = st.portals.get_mut(portal);
            let described = slot.as_ref().is_some_and(|s| s.described);
            match slot.as_ref().and_then(|s| s.prepared.as_ref()) {
                Some(p) => {
                    r.statement = Some(p.sql.to_string());
                    r.statement_name = (!p.statement.is_empty()).then(|| p.statement.to_string());
                    r.param_count = Some(p.param_count);
                    match &p.judged {
                        Judged::Refused(d, n) => {
                            r.decision = Some(*d);
                            r.reason = Some(n.clone());
                        }
                        Judged::Allowed { note, .. } => r.reason = note.clone(),
                    }
                }
                None => {
                    r.reason = Some(format!(
                    "execute of portal {portal:?} not bound by this client (a cursor, or unknown)"
                ))
                }
            }
            if let Some(s) = slot {
                s.described = true;
            }
            let mut replacement = None;
            if !described {
                // The client did not Describe this portal: ask the server for its columns
                // (the answer is kept from the client) so its rows are masked with their own
                // plan, never with a previous statement's.
                let mut b = BytesMut::new();
                gatehouse_pgwire::encode_describe(&mut b, b'P', portal);
                original(&frame, &mut b);
                pending.push((
                    Kind::Describe {
                        portal: Some(Arc::clone(&name)),
                        swallow: true,
                    },
                    None,
                ));
                replacement = Some(Rewrite::now(b));
            }
            pending.push((Kind::Execute { portal: name }, Some(records.len())));
            records.push(r);
            st.exec_since_sync = true;
            Ok(Step::Forward(replacement))
        }
        FrontendMessage::Describe { kind, name } => {
            let portal = (kind == b'P').then(|| st.name(name));
            if kind == b'P' {
                if let Some(s) = st.portals.get_mut(name) {
                    s.described = true;
                }
            }
            pending.push((
                Kind::Describe {
                    portal,
                    swallow: false,
                },
                None,
            ));
            Ok(Step::Forward(None))
        }
        FrontendMessage::Close { kind, name } => {
            let statement = kind == b'S';
            let map = if statement {
                &mut st.statements
            } else {
                &mut st.portals
            };
            // Forgotten at once (no tombstone, so a session that prepares and closes many
            // names keeps no memory of them). Should the Close not take effect (skipped after
            // an error), a later Bind of the name finds it in the confirmed map.
            map.remove(name);
            let name = st.name(name);
            pending.push((Kind::Close { statement, name }, None));
            Ok(Step::Forward(None))
        }
        FrontendMessage::Sync => {
            pending.push((Kind::Boundary, None));
            st.batch += 1;
            st.exec_since_sync = false;
            Ok(Step::Forward(None))
        }
        FrontendMessage::FunctionCall { oid, .. } => {
            let mut r = statement_record(gw, info, "function-call");
            let name = gatehouse_sql::builtin_function_name(oid);
            r.statement = Some(match name {
                Some(n) => format!("fast-path call of pg_catalog.{n} (oid {oid})"),
                None => format!("fast-path call of function oid {oid}"),
            });
            let verdict = if !st.may_restrict(gw) {
                Verdict::allow_reusable(gw)
            } else {
                match gatehouse_sql::fast_path_call_sql(oid) {
                    Some(sql) => st.judge(gw, &sql, gatehouse_sql::ParseOptions::default()),
                    None => {
                        let note = format!(
                            "fast-path call of function oid {oid}, which is not a built-in function Gatehouse knows; refused"
                        );
                        Verdict::refuse_with("42501", note.clone(), format!("gatehouse: {note}"))
                    }
                }
            };
            // The server answers a FunctionCall with FunctionCallResponse or ErrorResponse,
            // then ReadyForQuery: a refusing Query has the same shape.
            let replacement = simple_rewrite(verdict, &mut r);
            pending.push((Kind::Call, Some(records.len())));
            records.push(r);
            st.batch += 1;
            st.exec_since_sync = false;
            Ok(Step::Forward(replacement))
        }
        FrontendMessage::Flush
        | FrontendMessage::Terminate
        | FrontendMessage::CopyData
        | FrontendMessage::CopyDone
        | FrontendMessage::CopyFail { .. } => Ok(Step::Forward(None)),
        FrontendMessage::Password { .. } => Err(SessionError::UnexpectedStartupMessage),
    }
}

impl ClientState {
    /// A verdict for one execution (Bind) as the portal keeps it.
    fn execution(&self, v: Verdict) -> Judged {
        match v {
            Verdict::Allow { note, reuse } => Judged::Allowed { note, reuse },
            Verdict::Refuse { decision, note, .. } => Judged::Refused(decision, note),
            // An execution cannot be held in the extended protocol: refused like a ticket.
            Verdict::Hold { note, .. } => Judged::Refused(Decision::Deny, note),
        }
    }
}

/// A simple-protocol message (Query, FunctionCall) under `verdict`: the record's decision and
/// reason, and the refusing Query to forward instead (held until a decision for `Hold`).
fn simple_rewrite(verdict: Verdict, r: &mut Record) -> Option<Rewrite> {
    match verdict {
        Verdict::Allow { note, .. } => {
            r.reason = note;
            None
        }
        Verdict::Refuse {
            decision,
            sqlstate,
            note,
            message,
        } => {
            r.decision = Some(decision);
            r.reason = Some(note);
            Some(Rewrite::now(refusal_query(sqlstate, &message)))
        }
        Verdict::Hold {
            id,
            timeout,
            note,
            message,
            slot,
        } => {
            r.decision = Some(Decision::Deny);
            r.reason = Some(note);
            Some(Rewrite {
                bytes: refusal_query("42501", &message),
                hold: Some((id, timeout, slot)),
            })
        }
    }
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
    r.ref_seq = p.seq;
    r.rows = Some(p.rows as i64);
    r.sqlstate = Some(p.sqlstate.clone().unwrap_or_else(|| "00000".into()));
    r.duration_us = Some(p.started.elapsed().as_micros() as i64);
    r
}

/// Error/notice fields that carry no data (severity, code, position, file, line, routine).
const PLAIN_ERROR_FIELDS: [u8; 8] = [b'S', b'V', b'C', b'P', b'p', b'F', b'L', b'R'];

/// One result column as the masking sees it.
#[derive(Debug, Clone, Copy)]
struct MaskColumn {
    plan: gatehouse_masking::ColumnPlan,
    binary: bool,
    type_oid: u32,
}

/// In-flight masking of one session's upstream→client stream.
struct Masking {
    /// The masking profile that applies to the session (`None`: `[masking]`).
    profile: Option<String>,
    engine: Arc<gatehouse_masking::Engine>,
    copy_binary: bool,
    /// Binary COPY OUT: the file header has been passed.
    copy_header_seen: bool,
    /// Masked since the last statement outcome.
    counts: gatehouse_masking::Counts,
}

/// One value (or piece of a binary value) of type `type_oid` under `plan`; `None` when
/// nothing was masked. JSON built in SQL (`row_to_json`, `json_agg`, `to_jsonb`) is masked as
/// a document whose field names meet the column rules; anything else as text.
fn mask_value(
    engine: &gatehouse_masking::Engine,
    plan: gatehouse_masking::ColumnPlan,
    type_oid: u32,
    v: &[u8],
    counts: &mut gatehouse_masking::Counts,
) -> Result<Option<Vec<u8>>, gatehouse_masking::MaskError> {
    let masked = if gatehouse_pgwire::binary::is_json_type(type_oid) {
        engine.mask_json_planned(plan, v, counts)?
    } else {
        engine.mask_planned(plan, v, counts)?
    };
    Ok(match masked {
        Cow::Borrowed(_) => None,
        Cow::Owned(o) => Some(o),
    })
}

fn mask_failed(e: gatehouse_masking::MaskError) -> SessionError {
    SessionError::MaskingFailed(e.to_string())
}

impl Masking {
    /// The largest DataRow / CopyData / FunctionCallResponse message assembled for masking.
    fn max_message(&self) -> usize {
        self.engine.max_value_bytes().saturating_add(1 << 20)
    }

    fn text(
        &mut self,
        plan: gatehouse_masking::ColumnPlan,
        v: &[u8],
    ) -> Result<Option<Vec<u8>>, SessionError> {
        mask_value(&self.engine, plan, 0, v, &mut self.counts).map_err(mask_failed)
    }

    fn text_str(&mut self, v: &str) -> Result<Option<String>, SessionError> {
        Ok(self
            .text(gatehouse_masking::ColumnPlan::default(), v.as_bytes())?
            .map(|o| String::from_utf8_lossy(&o).into_owned()))
    }

    /// One value of a binary-format column: every piece of text in it is masked; a value
    /// whose layout Gatehouse does not know, or a non-text value that would need masking,
    /// is refused (the session ends with 54000), never passed unseen.
    fn binary(&mut self, col: MaskColumn, v: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        if col.plan.masks_whole_value() && !gatehouse_pgwire::binary::is_text_type(col.type_oid) {
            return Err(SessionError::MaskingFailed(
                "a masking rule applies to a binary-format column of a type that cannot hold a replacement"
                    .into(),
            ));
        }
        let engine = &self.engine;
        let counts = &mut self.counts;
        let mut visit = |oid: u32, t: &[u8]| mask_value(engine, col.plan, oid, t, counts);
        gatehouse_pgwire::binary::rewrite(col.type_oid, v, &mut visit).map_err(|e| match e {
            gatehouse_pgwire::binary::BinaryError::Visitor(m) => mask_failed(m),
            other => SessionError::MaskingFailed(other.to_string()),
        })
    }

    /// The message to send instead of `tag`/`body`, when masking changed it. `columns`: the
    /// plan of the result the message belongs to (DataRow only).
    fn message(
        &mut self,
        tag: u8,
        body: &[u8],
        columns: &[MaskColumn],
    ) -> Result<Option<BytesMut>, SessionError> {
        let bad =
            |e: gatehouse_pgwire::ProtocolError| SessionError::UpstreamProtocol(e.to_string());
        match tag {
            b'D' => {
                let values = gatehouse_pgwire::decode_data_row(body).map_err(bad)?;
                let mut masked: Vec<Option<Vec<u8>>> = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let Some(v) = v else { continue };
                    // A row wider than its description is scanned as text with no rule: the
                    // server never sends one; if it did, nothing passes unscanned.
                    let col = columns.get(i).copied().unwrap_or(MaskColumn {
                        plan: gatehouse_masking::ColumnPlan::default(),
                        binary: false,
                        type_oid: 0,
                    });
                    let out = if col.binary {
                        self.binary(col, v)?
                    } else {
                        mask_value(&self.engine, col.plan, col.type_oid, v, &mut self.counts)
                            .map_err(mask_failed)?
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
            b'S' => {
                // `SET application_name = '<secret>'` is echoed back by the server.
                let (name, value) = gatehouse_pgwire::decode_parameter_status(body).map_err(bad)?;
                let Some(m) = self.text_str(value)? else {
                    return Ok(None);
                };
                let mut b = BytesMut::new();
                gatehouse_pgwire::encode_parameter_status(&mut b, name, &m);
                Ok(Some(b))
            }
            b'V' => {
                // A fast-path function's result: its type is not said; the bytes are scanned
                // as they are (text, bytea, and the raw bytes of anything else).
                let Some(v) = gatehouse_pgwire::decode_function_call_response(body).map_err(bad)?
                else {
                    return Ok(None);
                };
                let Some(m) = self.text(gatehouse_masking::ColumnPlan::default(), v)? else {
                    return Ok(None);
                };
                let mut b = BytesMut::new();
                gatehouse_pgwire::encode_function_call_response(&mut b, Some(&m));
                Ok(Some(b))
            }
            b'H' => {
                // COPY OUT says nothing about its columns: column rules cannot be applied to
                // its rows. Where any are configured, the COPY is not sent (use SELECT).
                if self.engine.has_column_rules() {
                    return Err(SessionError::MaskingFailed(
                        "COPY TO STDOUT cannot be masked column by column on a connection with \
                         masking column rules; use SELECT"
                            .into(),
                    ));
                }
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

#[allow(clippy::too_many_arguments)]
async fn upstream_to_client<R, W>(
    gw: &Gateway,
    info: &SessionInfo,
    mut rd: R,
    mut wr: W,
    shared: &Mutex<Shared>,
    answered: &Notify,
    who: Option<Arc<Who>>,
    limits: Limits,
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
        copy_binary: false,
        copy_header_seen: false,
        counts: gatehouse_masking::Counts::new(),
    };
    let max_message = masking.max_message();
    let mut recorder = who.as_ref().and_then(|w| w.recording).map(Recorder::new);
    // Masking plans: of each described portal, of the current simple-Query result, and the
    // one DataRows are masked with now (chosen again whenever the expected answer changes).
    let mut portal_plans: HashMap<Arc<str>, Arc<[MaskColumn]>> = HashMap::new();
    let mut simple_plan: Arc<[MaskColumn]> = Arc::from(Vec::new());
    let mut rows_plan: Arc<[MaskColumn]> = Arc::from(Vec::new());
    let mut plan_stale = true;
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
        // Set once a message of this read is masked or kept back: the bytes to send instead
        // of `buf[..pos]`, complete up to `copied`.
        let mut out: Option<BytesMut> = None;
        let mut copied = 0usize;
        let mut ready = false;
        loop {
            let h = peek_header(&buf[pos..], gatehouse_pgwire::PQ_LARGE_MESSAGE_LIMIT)
                .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
            let Some(h) = h else { break };
            // Every message is assembled whole before it is masked: bound each kind.
            let limit = match h.tag {
                b'D' | b'd' | b'V' => max_message,
                _ => limits.upstream_message_bytes,
            };
            if h.total_len > limit {
                // Fail closed: a message that cannot be assembled for masking is not sent.
                return Err(SessionError::MaskingFailed(format!(
                    "a {}-byte upstream message ({}) exceeds the limit of {limit} bytes",
                    h.total_len, h.tag as char
                )));
            }
            let avail = buf.len() - pos;
            if avail < h.total_len {
                buf.reserve(h.total_len - avail);
                break;
            }
            let body = &buf[pos + HEADER_LEN..pos + h.total_len];
            let mut keep_back = false;
            match h.tag {
                b'D' => {
                    if plan_stale {
                        rows_plan = {
                            let s = lock(shared);
                            match s.pending.front().map(|p| &p.kind) {
                                Some(Kind::Execute { portal }) => {
                                    portal_plans.get(portal).cloned().ok_or_else(|| {
                                        SessionError::MaskingFailed(
                                            "rows of a portal whose columns are not known".into(),
                                        )
                                    })?
                                }
                                Some(Kind::Simple) => Arc::clone(&simple_plan),
                                _ => {
                                    return Err(SessionError::UpstreamProtocol(
                                        "a DataRow that answers no statement".into(),
                                    ))
                                }
                            }
                        };
                        plan_stale = false;
                    }
                    rows += 1;
                }
                b'S' => {
                    // The unmasked value: what the server will read statements with.
                    if let Ok((k, v)) = gatehouse_pgwire::decode_parameter_status(body) {
                        lock(shared).settings.observe(k, v);
                    }
                }
                b'G' => {
                    lock(shared).copy_in = true;
                    answered.notify_waiters();
                }
                b'T' | b'n' | b't' | b'1' | b'2' | b'3' | b'C' | b'E' | b'Z' | b'I' | b's' => {
                    let effect = {
                        let mut s = lock(shared);
                        s.stats.rows += rows;
                        rows = 0;
                        let before = done.len();
                        let effect = outcome(gw, info, &mut s, h.tag, body, &mut done)?;
                        if done.len() > before {
                            note_masked(gw, info, &mut masking, &mut done);
                        }
                        effect
                    };
                    plan_stale = true;
                    match effect {
                        Effect::Forward => {}
                        Effect::KeepBack => keep_back = true,
                        Effect::SimpleColumns => {
                            simple_plan =
                                plan_columns(gw, &masking.engine, who.as_deref(), body).await?
                        }
                        Effect::PortalColumns { portal, swallow } => {
                            let plan = if h.tag == b'T' {
                                plan_columns(gw, &masking.engine, who.as_deref(), body).await?
                            } else {
                                Arc::from(Vec::new())
                            };
                            portal_plans.insert(portal, plan);
                            keep_back = swallow;
                        }
                        Effect::NewPortal(p) => {
                            portal_plans.remove(&p);
                        }
                        Effect::Ready => answered.notify_waiters(),
                    }
                }
                _ => {}
            }
            if keep_back {
                let o = out.get_or_insert_with(BytesMut::new);
                o.extend_from_slice(&buf[copied..pos]);
                copied = pos + h.total_len;
            } else if let Some(replacement) = masking.message(h.tag, body, &rows_plan)? {
                let o = out.get_or_insert_with(BytesMut::new);
                o.extend_from_slice(&buf[copied..pos]);
                o.extend_from_slice(&replacement);
                copied = pos + h.total_len;
            }
            ready |= h.tag == b'Z';
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
            if !bytes.is_empty() {
                wr.write_all(bytes).await?;
            }
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

/// The masking plan of a RowDescription. Column rules follow the source column (table OID
/// and attribute number, named from the target's catalog) as well as the client's alias.
async fn plan_columns(
    gw: &Gateway,
    engine: &gatehouse_masking::Engine,
    who: Option<&Who>,
    body: &[u8],
) -> Result<Arc<[MaskColumn]>, SessionError> {
    let cols = gatehouse_pgwire::decode_row_description(body)
        .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
    let mut sources: HashMap<super::catalog::SourceColumn, Arc<str>> = HashMap::new();
    if engine.has_column_rules() {
        let keys: Vec<super::catalog::SourceColumn> = cols
            .iter()
            .filter(|c| c.table_oid != 0 && c.column > 0)
            .map(|c| (c.table_oid as u32, c.column))
            .collect();
        if let (false, Some(w)) = (keys.is_empty(), who) {
            sources = gw.catalogs.names(gw, &w.connection, &keys).await?;
        }
    }
    Ok(cols
        .iter()
        .map(|c| {
            let alias = engine.plan(Some(c.name));
            let plan = match sources.get(&(c.table_oid as u32, c.column)) {
                Some(source) => engine.plan(Some(source)).or(alias),
                None => alias,
            };
            MaskColumn {
                plan,
                binary: c.format == 1,
                type_oid: c.type_oid as u32,
            }
        })
        .collect())
}

/// Adds what was masked since the last outcome to the newest outcome record (and a
/// `secret.masked` record when a vaulted credential was caught).
fn note_masked(gw: &Gateway, info: &SessionInfo, masking: &mut Masking, done: &mut Vec<Record>) {
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

/// What the upstream side does with a message after the expected answers took it in.
#[derive(Debug)]
enum Effect {
    Forward,
    /// An answer to a message Gatehouse injected: the client does not expect it.
    KeepBack,
    /// The RowDescription of a simple Query's next result.
    SimpleColumns,
    /// A portal's columns (RowDescription or NoData).
    PortalColumns {
        portal: Arc<str>,
        swallow: bool,
    },
    /// A portal was (re)bound: its old columns no longer apply.
    NewPortal(Arc<str>),
    /// ReadyForQuery: a boundary was answered.
    Ready,
}

/// Applies one answer to the expected answers and the confirmed maps.
fn outcome(
    gw: &Gateway,
    info: &SessionInfo,
    s: &mut Shared,
    tag: u8,
    body: &[u8],
    done: &mut Vec<Record>,
) -> Result<Effect, SessionError> {
    let bad = |e: gatehouse_pgwire::ProtocolError| SessionError::UpstreamProtocol(e.to_string());
    let front = s.pending.front().map(|p| &p.kind);
    match tag {
        b'T' | b'n' => match front {
            Some(Kind::Describe { portal, swallow }) => {
                let effect = match portal {
                    Some(p) => Effect::PortalColumns {
                        portal: Arc::clone(p),
                        swallow: *swallow,
                    },
                    None if *swallow => Effect::KeepBack,
                    None => Effect::Forward,
                };
                s.pending.pop_front();
                Ok(effect)
            }
            Some(Kind::Simple) if tag == b'T' => Ok(Effect::SimpleColumns),
            _ => Ok(Effect::Forward),
        },
        b't' => match front {
            Some(Kind::Describe { swallow: true, .. }) => Ok(Effect::KeepBack),
            _ => Ok(Effect::Forward),
        },
        b'1' => {
            if let Some(Kind::Parse { .. }) = front {
                if let Some(Pending {
                    kind:
                        Kind::Parse {
                            name,
                            prepared,
                            swallow,
                        },
                    ..
                }) = s.pending.pop_front()
                {
                    s.statements.insert(name, prepared);
                    if swallow {
                        return Ok(Effect::KeepBack);
                    }
                }
            }
            Ok(Effect::Forward)
        }
        b'2' => {
            if let Some(Kind::Bind { .. }) = front {
                if let Some(Pending {
                    kind: Kind::Bind { portal, prepared },
                    ..
                }) = s.pending.pop_front()
                {
                    s.portals.insert(Arc::clone(&portal), prepared);
                    return Ok(Effect::NewPortal(portal));
                }
            }
            Ok(Effect::Forward)
        }
        b'3' => {
            if let Some(Kind::Close { .. }) = front {
                if let Some(Pending {
                    kind: Kind::Close { statement, name },
                    ..
                }) = s.pending.pop_front()
                {
                    if statement {
                        s.statements.remove(&name);
                    } else {
                        s.portals.remove(&name);
                    }
                }
            }
            Ok(Effect::Forward)
        }
        b'C' => {
            s.copy_in = false;
            let n = command_tag_rows(decode_command_complete(body).map_err(bad)?);
            match front {
                // A simple Query may hold several statements: their counts add up.
                Some(Kind::Simple) => {
                    if let Some(p) = s.pending.front_mut() {
                        p.rows += n.unwrap_or(0);
                    }
                }
                Some(Kind::Execute { .. }) => {
                    if let Some(mut p) = s.pending.pop_front() {
                        p.rows += n.unwrap_or(0);
                        done.push(result_record(gw, info, &p));
                    }
                }
                _ => {}
            }
            Ok(Effect::Forward)
        }
        b'I' | b's' => {
            if let Some(Kind::Execute { .. }) = front {
                if let Some(p) = s.pending.pop_front() {
                    done.push(result_record(gw, info, &p));
                }
            }
            Ok(Effect::Forward)
        }
        b'E' => {
            s.copy_in = false;
            let f = decode_error_fields(body).map_err(bad)?;
            let code = f.code.map(str::to_owned);
            match front {
                None | Some(Kind::Boundary) => {}
                Some(Kind::Simple | Kind::Call) => {
                    if let Some(p) = s.front_mut() {
                        if p.sqlstate.is_none() {
                            p.sqlstate = code;
                        }
                    }
                }
                Some(_) => {
                    // Extended protocol: this message failed and the server skips every
                    // message up to the next Sync.
                    if let Some(mut p) = s.pending.pop_front() {
                        if let Kind::Execute { .. } = p.kind {
                            p.sqlstate = code;
                            done.push(result_record(gw, info, &p));
                        }
                    }
                    while s.pending.front().is_some_and(|p| !p.kind.is_boundary()) {
                        if let Some(p) = s.pending.pop_front() {
                            if p.seq.is_some() {
                                let mut r = result_record(gw, info, &p);
                                r.sqlstate = None;
                                r.reason = Some(
                                    "not executed: an earlier message in the batch failed".into(),
                                );
                                done.push(r);
                            }
                        }
                    }
                }
            }
            Ok(Effect::Forward)
        }
        b'Z' => {
            s.copy_in = false;
            while let Some(p) = s.pending.pop_front() {
                match p.kind {
                    Kind::Boundary => break,
                    Kind::Simple => {
                        done.push(result_record(gw, info, &p));
                        // A simple Query drops the unnamed prepared statement.
                        s.statements.remove("");
                        break;
                    }
                    Kind::Call => {
                        done.push(result_record(gw, info, &p));
                        break;
                    }
                    _ if p.seq.is_some() => {
                        let mut r = result_record(gw, info, &p);
                        r.sqlstate = None;
                        r.reason =
                            Some("not executed: an earlier message in the batch failed".into());
                        done.push(r);
                    }
                    _ => {}
                }
            }
            s.in_flight = s.in_flight.saturating_sub(1);
            if body == b"I" {
                // Outside a transaction block no portal survives.
                s.portals.clear();
            }
            Ok(Effect::Ready)
        }
        _ => Ok(Effect::Forward),
    }
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
            seq: (seq != 0).then_some(seq),
            started: Instant::now(),
            rows: 0,
            sqlstate: None,
        });
    }

    fn exec() -> Kind {
        Kind::Execute {
            portal: Arc::from(""),
        }
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
        push(&mut s, exec(), 1);
        push(&mut s, exec(), 2);
        push(&mut s, Kind::Boundary, 0);
        push(&mut s, exec(), 3);
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
        push(&mut s, exec(), 9);
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
    fn closed_names_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let mut st = ClientState::default();
        let mut ob = Outbox::default();
        let shared = Mutex::new(Shared::default());
        let mut wire = BytesMut::new();
        for i in 0..1000 {
            let name = format!("s{i}");
            gatehouse_pgwire::encode_parse(&mut wire, &name, "select 1", &[]);
            gatehouse_pgwire::encode_describe(&mut wire, b'S', &name);
            let mut close = BytesMut::new();
            close.extend_from_slice(b"C");
            close.extend_from_slice(&((4 + 1 + name.len() + 1) as i32).to_be_bytes());
            close.extend_from_slice(b"S");
            close.extend_from_slice(name.as_bytes());
            close.extend_from_slice(b"\0");
            wire.extend_from_slice(&close);
        }
        let mut rest = &wire[..];
        while let Some(f) = gatehouse_pgwire::next_frame(rest, 1 << 20).unwrap() {
            inspect(&mut st, &gw, &info(), f, &mut ob, &shared).unwrap();
            rest = &rest[f.wire_len()..];
        }
        assert!(
            st.statements.is_empty(),
            "{} names kept",
            st.statements.len()
        );
    }

    #[test]
    fn inspect_records_execute_with_its_prepared_text() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let mut st = ClientState::default();
        let mut ob = Outbox::default();
        let shared = Mutex::new(Shared::default());
        let mut wire = BytesMut::new();
        gatehouse_pgwire::encode_parse(&mut wire, "s1", "select $1::int + $2::int", &[23, 23]);
        gatehouse_pgwire::encode_bind(&mut wire, "p1", "s1", &[Some(b"1"), Some(b"2")]);
        gatehouse_pgwire::encode_execute(&mut wire, "p1", 0);
        gatehouse_pgwire::encode_sync(&mut wire);
        let mut rest = &wire[..];
        while let Some(f) = gatehouse_pgwire::next_frame(rest, 1 << 20).unwrap() {
            inspect(&mut st, &gw, &info(), f, &mut ob, &shared).unwrap();
            rest = &rest[f.wire_len()..];
        }
        let recs = &ob.records;
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].statement.as_deref(),
            Some("select $1::int + $2::int")
        );
        assert_eq!(recs[0].statement_name.as_deref(), Some("s1"));
        assert_eq!(recs[0].param_count, Some(2));
        assert_eq!(recs[0].protocol.as_deref(), Some("extended"));
        let kinds: Vec<&str> = ob
            .pending
            .iter()
            .map(|p| match p.0 {
                Kind::Parse { .. } => "parse",
                Kind::Bind { .. } => "bind",
                Kind::Describe { swallow: true, .. } => "describe (injected)",
                Kind::Execute { .. } => "execute",
                Kind::Boundary => "sync",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            vec!["parse", "bind", "describe (injected)", "execute", "sync"]
        );
    }
}
