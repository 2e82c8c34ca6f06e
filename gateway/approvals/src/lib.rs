//! Just-in-time approvals for Gatehouse: a small persistent store of approval requests and
//! time-boxed grants, shared by the running gateway and by CLI/console processes.
//!
//! When [`gatehouse_policy::Policy::evaluate`] answers `RequireApproval`, the gateway records a
//! [`Request`] here ([`ApprovalStore::create_request`]). Approvers decide with
//! [`ApprovalStore::decide`] (from the CLI, the console or the REST API, possibly in another
//! process). In *hold* mode the gateway polls [`ApprovalStore::get`] and, once approved, runs the
//! held statement and calls [`ApprovalStore::mark_executed`]. In *ticket* mode the statement is
//! refused now, and the identical statement retried later by the same user on the same connection
//! passes once ([`ApprovalStore::consume_ticket`]). Approvers can also issue time-boxed
//! [`GrantRecord`]s, which the gateway hands to the policy as [`gatehouse_policy::Grant`]s
//! ([`ApprovalStore::active_grants`]).
//!
//! # Invariants
//! - One SQLite file (WAL, `busy_timeout`), created 0600 in a 0700 directory. Every state change
//!   runs in a `BEGIN IMMEDIATE` transaction that re-reads the row it changes, so concurrent
//!   processes and threads cannot both win a race (two sessions consuming one ticket, two
//!   approvers completing a quorum, a decision on a request that just expired).
//! - Nobody approves their own request or grants to themselves ([`ApprovalError::SelfApproval`]);
//!   only members of one of the request's approver groups decide; each approver counts once.
//!   User names are compared ignoring ASCII case, so `Bob` cannot approve `bob`'s request nor
//!   count twice.
//! - A request is `Approved` once `min_approvals` distinct approvers approved; a single deny makes
//!   it `Denied`. Finished requests (approved, denied, expired, executed) never change again,
//!   except approved → executed (once) and approved → expired (window passed unused).
//! - A ticket matches only the SHA-256 of the exact statement text, the same requester and the
//!   same connection, within `approved_until`, and is consumed at most once.
//! - No hidden clock: every call that depends on time takes `now`. Ids come from the OS random
//!   generator (`ring::rand::SystemRandom`), 80 bits, shown to users (`apr_…`, `grt_…`).
//! - Every state change returns the updated object, so the caller can audit it; the store itself
//!   never performs network I/O (webhook delivery is not built yet).
//! - A requester has at most `max_pending_per_requester` pending, unexpired requests (all
//!   connections together, names compared ignoring ASCII case): counted and inserted in the
//!   same `BEGIN IMMEDIATE` transaction, so concurrent sessions cannot overshoot it.
//! - Tokens are never stored; the statement text is stored (approvers must see it) and webhook
//!   payloads truncate it.

#![forbid(unsafe_code)]

mod access;
mod error;
mod event;
mod grants;
mod ids;
mod requests;
mod store;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

pub use access::Actor;
pub use error::{ApprovalError, ErrorKind};
pub use event::{GrantEvent, RequestEvent};
pub use gatehouse_policy::{GrantScope, Group, IssuerId, Issuers, Principal};
pub use ids::{GrantId, RequestId};
pub use store::{
    ApprovalStore, StoreOptions, DEFAULT_APPROVAL_WINDOW, DEFAULT_BUSY_TIMEOUT,
    DEFAULT_MAX_PENDING_PER_REQUESTER,
};

/// Longest approval window an approver may give (`Decide::approved_for`).
pub const MAX_APPROVAL_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest grant that may be issued (`NewGrant::expires_at - now`).
pub const MAX_GRANT_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How the gateway waits for the decision (mirrors [`gatehouse_policy::ApprovalMode`], without
/// the hold timeout, which becomes [`NewRequest::expires_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestMode {
    /// The statement waits on the session; the gateway runs it once approved.
    Hold,
    /// The statement is refused now; once approved, the identical retry passes once.
    Ticket,
}

impl RequestMode {
    /// `hold` or `ticket`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestMode::Hold => "hold",
            RequestMode::Ticket => "ticket",
        }
    }
}

impl From<&gatehouse_policy::ApprovalMode> for RequestMode {
    fn from(mode: &gatehouse_policy::ApprovalMode) -> Self {
        match mode {
            gatehouse_policy::ApprovalMode::Hold { .. } => RequestMode::Hold,
            gatehouse_policy::ApprovalMode::Ticket => RequestMode::Ticket,
        }
    }
}

impl fmt::Display for RequestMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestMode {
    type Err = ApprovalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hold" => Ok(RequestMode::Hold),
            "ticket" => Ok(RequestMode::Ticket),
            other => Err(ApprovalError::Invalid(format!(
                "mode must be hold or ticket, not {other:?}"
            ))),
        }
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// Waiting for approvers.
    Pending,
    /// Quorum reached; may run (hold) or be consumed (ticket) until `approved_until`.
    Approved,
    /// An approver refused it.
    Denied,
    /// Nobody decided before `expires_at`, or the approval window passed unused.
    Expired,
    /// The approved statement ran (hold) or its ticket was consumed.
    Executed,
}

impl RequestStatus {
    /// Lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
            RequestStatus::Executed => "executed",
        }
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestStatus {
    type Err = ApprovalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => RequestStatus::Pending,
            "approved" => RequestStatus::Approved,
            "denied" => RequestStatus::Denied,
            "expired" => RequestStatus::Expired,
            "executed" => RequestStatus::Executed,
            other => return Err(ApprovalError::Corrupt(format!("request status {other:?}"))),
        })
    }
}

/// An approver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Deny,
}

impl Verdict {
    /// `approve` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
}

impl FromStr for Verdict {
    type Err = ApprovalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(Verdict::Approve),
            "deny" => Ok(Verdict::Deny),
            other => Err(ApprovalError::Invalid(format!(
                "decision must be approve or deny, not {other:?}"
            ))),
        }
    }
}

/// What the gateway knows when a statement needs approval.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// The authenticated user whose statement waits.
    pub requester: Principal,
    /// The requester's groups from the token (shown to approvers).
    pub requester_groups: Vec<Group>,
    /// The configured connection name.
    pub connection: String,
    /// The exact statement text as received; its SHA-256 identifies ticket retries.
    pub statement: String,
    /// The deciding rule (`RuleId::as_str()`, e.g. `rule:prod_writes`).
    pub rule: String,
    /// The rule's reason, shown to approvers.
    pub reason: String,
    /// Groups whose members may decide (at least one).
    pub approvers: Vec<String>,
    /// Distinct approvals needed (at least 1).
    pub min_approvals: u32,
    pub mode: RequestMode,
    /// Undecided at this instant, the request expires (hold: `now + timeout`).
    pub expires_at: SystemTime,
    pub now: SystemTime,
}

/// One approver's recorded decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub approver: Principal,
    /// The approver's groups when deciding (evidence of why they were allowed to).
    pub approver_groups: Vec<Group>,
    pub verdict: Verdict,
    pub comment: Option<String>,
    pub at: SystemTime,
}

/// An approval request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub requester: Principal,
    pub requester_groups: Vec<Group>,
    pub connection: String,
    /// The exact statement text.
    pub statement: String,
    /// Hex SHA-256 of `statement`.
    pub statement_sha256: String,
    pub rule: String,
    pub reason: String,
    pub approvers: Vec<String>,
    pub min_approvals: u32,
    pub mode: RequestMode,
    pub status: RequestStatus,
    pub created_at: SystemTime,
    /// Pending past this instant means expired.
    pub expires_at: SystemTime,
    /// When it became approved or denied.
    pub decided_at: Option<SystemTime>,
    /// Approved: the statement may run / the ticket may be consumed before this instant.
    pub approved_until: Option<SystemTime>,
    pub executed_at: Option<SystemTime>,
    pub expired_at: Option<SystemTime>,
    /// Decisions in the order they were made.
    pub votes: Vec<Vote>,
}

impl Request {
    /// Distinct approvers who approved so far.
    pub fn approvals(&self) -> u32 {
        let n = self
            .votes
            .iter()
            .filter(|v| v.verdict == Verdict::Approve)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// True while approved, not yet executed, and `now` is before `approved_until`.
    /// The approver groups, resolved through `issuers` as the policy wrote them (a name that
    /// no longer resolves names nobody: fail closed).
    pub fn approver_groups(&self, issuers: &Issuers) -> Vec<Group> {
        self.approvers
            .iter()
            .filter_map(|g| issuers.group(g).ok())
            .collect()
    }

    pub fn may_run(&self, now: SystemTime) -> bool {
        self.status == RequestStatus::Approved && self.approved_until.is_some_and(|t| now < t)
    }

    /// The event that produced this state (for audit records and webhooks after a call that
    /// returned this request): a pending request with votes is [`RequestEvent::Voted`].
    pub fn event(&self) -> RequestEvent {
        match self.status {
            RequestStatus::Pending if self.votes.is_empty() => RequestEvent::Requested,
            RequestStatus::Pending => RequestEvent::Voted,
            RequestStatus::Approved => RequestEvent::Approved,
            RequestStatus::Denied => RequestEvent::Denied,
            RequestStatus::Expired => RequestEvent::Expired,
            RequestStatus::Executed => RequestEvent::Executed,
        }
    }
}

/// An approver's decision, for [`ApprovalStore::decide`].
#[derive(Debug, Clone, Copy)]
pub struct Decide<'a> {
    pub approver: &'a Principal,
    /// The approver's groups from their token; one must be among the request's approvers.
    pub approver_groups: &'a [Group],
    /// How the request's approver groups (written as the policy writes them) are resolved.
    pub issuers: &'a Issuers,
    pub verdict: Verdict,
    pub comment: Option<&'a str>,
    /// How long an approval stays usable once the quorum is reached; `None` = the store's
    /// default ([`StoreOptions::approval_window`]). At most [`MAX_APPROVAL_WINDOW`].
    pub approved_for: Option<Duration>,
    pub now: SystemTime,
}

/// Which requests [`ApprovalStore::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFilter {
    /// Status `pending` (call [`ApprovalStore::expire`] first to drop the overdue ones).
    Pending,
    /// Every request.
    All,
}

/// Where a grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    /// Issued; effective until `expires_at`.
    Active,
    /// Revoked before it expired.
    Revoked,
    /// Marked by [`ApprovalStore::expire_grants`] after `expires_at`.
    Expired,
}

impl GrantStatus {
    /// Lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::Revoked => "revoked",
            GrantStatus::Expired => "expired",
        }
    }
}

impl fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GrantStatus {
    type Err = ApprovalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "active" => GrantStatus::Active,
            "revoked" => GrantStatus::Revoked,
            "expired" => GrantStatus::Expired,
            other => return Err(ApprovalError::Corrupt(format!("grant status {other:?}"))),
        })
    }
}

/// A request to issue a grant, for [`ApprovalStore::issue_grant`].
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    /// The grantee.
    pub user: &'a Principal,
    pub connection: &'a str,
    pub scope: GrantScope,
    /// Strictly after `now`, at most [`MAX_GRANT_DURATION`] later.
    pub expires_at: SystemTime,
    pub issued_by: &'a Principal,
    /// The issuer's groups from their token.
    pub issued_by_groups: &'a [Group],
    /// Groups allowed to issue grants for this connection (from configuration/policy); the
    /// issuer must be in one of them.
    pub allowed_issuers: &'a [Group],
    /// Why (a ticket number, an incident); shown in lists and audit.
    pub comment: Option<&'a str>,
    pub now: SystemTime,
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: GrantId,
    pub user: Principal,
    pub connection: String,
    pub scope: GrantScope,
    pub issued_by: Principal,
    pub issued_by_groups: Vec<Group>,
    pub comment: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub status: GrantStatus,
    pub revoked_by: Option<Principal>,
    pub revoked_at: Option<SystemTime>,
    pub expired_at: Option<SystemTime>,
    /// How many times [`ApprovalStore::record_grant_use`] was called.
    pub use_count: u64,
    pub last_used_at: Option<SystemTime>,
}

impl GrantRecord {
    /// Active and not past `expires_at`.
    pub fn is_effective(&self, now: SystemTime) -> bool {
        self.status == GrantStatus::Active && now < self.expires_at
    }

    /// The policy's view of this grant.
    pub fn to_policy(&self) -> gatehouse_policy::Grant {
        gatehouse_policy::Grant {
            id: self.id.to_string(),
            user: self.user.clone(),
            connection: self.connection.clone(),
            expires_at: self.expires_at,
            scope: self.scope.clone(),
        }
    }
}

/// Which grants [`ApprovalStore::list_grants`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantFilter {
    /// Status active and not past `expires_at` at this instant.
    Effective(SystemTime),
    /// Every grant.
    All,
}

/// `writes`, `any` or `rule:<name>` (the stored and CLI form of a [`GrantScope`]).
pub fn scope_to_string(scope: &GrantScope) -> String {
    match scope {
        GrantScope::Writes => "writes".to_owned(),
        GrantScope::Any => "any".to_owned(),
        GrantScope::Rule(name) => format!("rule:{name}"),
    }
}

/// Parse `writes`, `any` or `rule:<name>` (a leading `rule:` on the name is required, so a typo
/// is an error rather than a broader grant).
pub fn parse_scope(s: &str) -> Result<GrantScope, ApprovalError> {
    match s {
        "writes" => Ok(GrantScope::Writes),
        "any" => Ok(GrantScope::Any),
        _ => match s.strip_prefix("rule:") {
            Some(name) if !name.is_empty() && !name.chars().any(char::is_whitespace) => {
                Ok(GrantScope::Rule(name.to_owned()))
            }
            _ => Err(ApprovalError::Invalid(format!(
                "grant scope must be writes, any or rule:<name>, not {s:?}"
            ))),
        },
    }
}
