//! Approver actions shared by every front end: `gatehouse approvals …` (cli.rs) and the REST
//! API (api/). Each takes the identity of a verified token and calls the approvals store, so
//! the rules (approver groups, no self-approval, quorum, grant issuers, no self-grants) are
//! enforced in one place, and the gateway's watcher audits the result the same way whichever
//! front end made it. Also the one JSON rendering of requests and grants (CLI `--json` and API).

use std::time::{Duration, SystemTime};

use gatehouse_approvals::{
    parse_scope, scope_to_string, Actor, ApprovalError, ApprovalStore, Decide, GrantId,
    GrantRecord, Group, IssuerId, Issuers, NewGrant, Principal, Request, RequestId, Verdict,
};
use gatehouse_identity::Identity;
use serde_json::{json, Value};

use crate::config::Config;

/// Longest comment (or deny reason) an approver may attach, in characters.
pub const MAX_COMMENT_CHARS: usize = 1000;

/// The acting person of a verified token: the user and groups at the token's issuer.
#[derive(Debug, Clone)]
pub struct Acting {
    pub user: Principal,
    pub groups: Vec<Group>,
}

impl Acting {
    pub fn of(who: &Identity) -> Acting {
        let issuer = IssuerId::new(who.issuer.clone());
        Acting {
            user: Principal::new(issuer.clone(), who.username.clone()),
            groups: Group::all_of(&issuer, &who.groups),
        }
    }

    pub fn actor(&self) -> Actor<'_> {
        Actor {
            user: &self.user,
            groups: &self.groups,
        }
    }
}

/// The configured issuers (how written names become principals).
pub fn issuers(cfg: &Config) -> Result<Issuers, ApprovalError> {
    cfg.issuers()
        .map_err(|e| ApprovalError::Invalid(format!("identity.issuers: {e}")))
}

/// `approvals.grant_issuers`, resolved.
pub fn grant_issuers(cfg: &Config) -> Result<Vec<Group>, ApprovalError> {
    issuers(cfg)?
        .groups(&cfg.approvals.grant_issuers)
        .map_err(|e| ApprovalError::Invalid(format!("approvals.grant_issuers: {e}")))
}

fn check_comment(comment: Option<&str>) -> Result<(), ApprovalError> {
    match comment {
        Some(c) if c.chars().count() > MAX_COMMENT_CHARS => Err(ApprovalError::Invalid(format!(
            "comment is longer than {MAX_COMMENT_CHARS} characters"
        ))),
        Some(c) if c.chars().any(|ch| ch.is_control() && ch != ' ') => Err(ApprovalError::Invalid(
            "comment must not hold control characters".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// What an approver says about a request.
#[derive(Debug, Clone, Copy)]
pub struct Ballot<'a> {
    pub verdict: Verdict,
    pub comment: Option<&'a str>,
    /// How long an approval may be used.
    pub minutes: Option<u64>,
}

/// An approver's verdict on a request (the store checks approver groups, self-approval,
/// double votes, state and expiry).
pub fn decide(
    store: &ApprovalStore,
    cfg: &Config,
    who: &Identity,
    id: &RequestId,
    ballot: Ballot<'_>,
    now: SystemTime,
) -> Result<Request, ApprovalError> {
    let Ballot {
        verdict,
        comment,
        minutes,
    } = ballot;
    check_comment(comment)?;
    let approved_for = match minutes {
        Some(0) => {
            return Err(ApprovalError::Invalid(
                "minutes must be at least 1".to_owned(),
            ))
        }
        Some(m) => Some(Duration::from_secs(m.saturating_mul(60))),
        None => None,
    };
    let acting = Acting::of(who);
    let issuers = issuers(cfg)?;
    store.decide(
        id,
        Decide {
            approver: &acting.user,
            approver_groups: &acting.groups,
            issuers: &issuers,
            verdict,
            comment,
            approved_for,
            now,
        },
    )
}

/// What an issuer asks for when issuing a grant.
#[derive(Debug, Clone, Copy)]
pub struct GrantOrder<'a> {
    /// As written (`corp:alice`; plain only when it names one issuer).
    pub user: &'a str,
    pub connection: &'a str,
    pub minutes: u64,
    /// `writes`, `any` or `rule:NAME`.
    pub scope: &'a str,
    pub comment: Option<&'a str>,
}

/// Issue a time-boxed grant: the issuer must be in `approvals.grant_issuers` and not the
/// grantee; the connection must be configured.
pub fn issue_grant(
    store: &ApprovalStore,
    cfg: &Config,
    who: &Identity,
    order: GrantOrder<'_>,
    now: SystemTime,
) -> Result<GrantRecord, ApprovalError> {
    check_comment(order.comment)?;
    let scope = parse_scope(order.scope)?;
    if cfg.connection(order.connection).is_none() {
        return Err(ApprovalError::Invalid(format!(
            "no connection named {:?}",
            order.connection
        )));
    }
    if order.minutes == 0 {
        return Err(ApprovalError::Invalid(
            "minutes must be at least 1".to_owned(),
        ));
    }
    let expires_at = now
        .checked_add(Duration::from_secs(order.minutes.saturating_mul(60)))
        .ok_or_else(|| ApprovalError::Invalid("minutes too large".to_owned()))?;
    let user = issuers(cfg)?
        .user(order.user)
        .map_err(|e| ApprovalError::Invalid(e.to_string()))?;
    let acting = Acting::of(who);
    store.issue_grant(NewGrant {
        user: &user,
        connection: order.connection,
        scope,
        expires_at,
        issued_by: &acting.user,
        issued_by_groups: &acting.groups,
        allowed_issuers: &grant_issuers(cfg)?,
        comment: order.comment,
        now,
    })
}

/// Revoke a grant now (grant issuers only).
pub fn revoke_grant(
    store: &ApprovalStore,
    cfg: &Config,
    who: &Identity,
    id: &GrantId,
    now: SystemTime,
) -> Result<GrantRecord, ApprovalError> {
    store.revoke_grant_as(id, Acting::of(who).actor(), &grant_issuers(cfg)?, now)
}

fn rfc3339(t: SystemTime) -> String {
    let us = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    gatehouse_audit::format_rfc3339_us(us)
}

/// Group names (every group of one user is at that user's issuer, given beside it).
pub fn names(groups: &[Group]) -> Vec<&str> {
    groups.iter().map(|g| g.name.as_str()).collect()
}

/// A request as JSON (`approvals list --json`, the API's `Approval` schema).
pub fn request_json(r: &Request) -> Value {
    json!({
        "id": r.id.to_string(),
        "status": r.status.as_str(),
        "mode": r.mode.as_str(),
        "requester": r.requester.name,
        "requester_issuer": r.requester.issuer.as_str(),
        "requester_groups": names(&r.requester_groups),
        "connection": r.connection,
        "statement": r.statement,
        "statement_sha256": r.statement_sha256,
        "rule": r.rule,
        "reason": r.reason,
        "approvers": r.approvers,
        "min_approvals": r.min_approvals,
        "approvals": r.approvals(),
        "created_at": rfc3339(r.created_at),
        "expires_at": rfc3339(r.expires_at),
        "decided_at": r.decided_at.map(rfc3339),
        "approved_until": r.approved_until.map(rfc3339),
        "executed_at": r.executed_at.map(rfc3339),
        "votes": r.votes.iter().map(|v| json!({
            "approver": v.approver.name,
            "approver_issuer": v.approver.issuer.as_str(),
            "approver_groups": names(&v.approver_groups),
            "verdict": v.verdict.as_str(),
            "comment": v.comment,
            "at": rfc3339(v.at),
        })).collect::<Vec<_>>(),
    })
}

/// A grant as JSON (the API's `Grant` schema).
pub fn grant_json(g: &GrantRecord) -> Value {
    json!({
        "id": g.id.to_string(),
        "status": g.status.as_str(),
        "user": g.user.name,
        "user_issuer": g.user.issuer.as_str(),
        "connection": g.connection,
        "scope": scope_to_string(&g.scope),
        "issued_by": g.issued_by.name,
        "issued_by_issuer": g.issued_by.issuer.as_str(),
        "issued_by_groups": names(&g.issued_by_groups),
        "comment": g.comment,
        "issued_at": rfc3339(g.issued_at),
        "expires_at": rfc3339(g.expires_at),
        "revoked_by": g.revoked_by.as_ref().map(|p| p.name.as_str()),
        "revoked_by_issuer": g.revoked_by.as_ref().map(|p| p.issuer.as_str()),
        "revoked_at": g.revoked_at.map(rfc3339),
        "use_count": g.use_count,
        "last_used_at": g.last_used_at.map(rfc3339),
    })
}
