//! Approval requests: create, decide, expire, consume.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, Row, Transaction};

use crate::ids::{from_ms, opt_from_ms, statement_sha256, to_ms};
use crate::store::{groups_from_json, groups_to_json, names_from_json, names_to_json};
use crate::{
    ApprovalError, ApprovalStore, Decide, IssuerId, NewRequest, Principal, Request, RequestFilter,
    RequestId, RequestMode, RequestStatus, Verdict, Vote, MAX_APPROVAL_WINDOW,
};

/// Longest statement text stored with a request (larger requests cannot be approved).
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

const REQUEST_COLUMNS: &str = "id, requester, requester_groups, connection, statement, \
    statement_sha256, rule, reason, approvers, min_approvals, mode, status, created_at, \
    expires_at, decided_at, approved_until, executed_at, expired_at, requester_issuer";

/// A row as stored, before parsing into a [`Request`].
struct RawRequest {
    id: String,
    requester: String,
    requester_groups: String,
    connection: String,
    statement: String,
    statement_sha256: String,
    rule: String,
    reason: String,
    approvers: String,
    min_approvals: i64,
    mode: String,
    status: String,
    created_at: i64,
    expires_at: i64,
    decided_at: Option<i64>,
    approved_until: Option<i64>,
    executed_at: Option<i64>,
    expired_at: Option<i64>,
    requester_issuer: String,
}

impl RawRequest {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            requester: r.get(1)?,
            requester_groups: r.get(2)?,
            connection: r.get(3)?,
            statement: r.get(4)?,
            statement_sha256: r.get(5)?,
            rule: r.get(6)?,
            reason: r.get(7)?,
            approvers: r.get(8)?,
            min_approvals: r.get(9)?,
            mode: r.get(10)?,
            status: r.get(11)?,
            created_at: r.get(12)?,
            expires_at: r.get(13)?,
            decided_at: r.get(14)?,
            approved_until: r.get(15)?,
            executed_at: r.get(16)?,
            expired_at: r.get(17)?,
            requester_issuer: r.get(18)?,
        })
    }

    fn parse(self, votes: Vec<Vote>) -> Result<Request, ApprovalError> {
        let corrupt = |what: &str| ApprovalError::Corrupt(format!("request {}: {what}", self.id));
        let issuer = IssuerId::new(self.requester_issuer);
        Ok(Request {
            id: self.id.parse().map_err(|_| corrupt("id"))?,
            requester_groups: groups_from_json(&issuer, &self.requester_groups)?,
            approvers: names_from_json(&self.approvers)?,
            min_approvals: u32::try_from(self.min_approvals).map_err(|_| corrupt("quorum"))?,
            mode: self.mode.parse().map_err(|_| corrupt("mode"))?,
            status: self.status.parse()?,
            created_at: from_ms(self.created_at)?,
            expires_at: from_ms(self.expires_at)?,
            decided_at: opt_from_ms(self.decided_at)?,
            approved_until: opt_from_ms(self.approved_until)?,
            executed_at: opt_from_ms(self.executed_at)?,
            expired_at: opt_from_ms(self.expired_at)?,
            requester: Principal::new(issuer, self.requester),
            connection: self.connection,
            statement: self.statement,
            statement_sha256: self.statement_sha256,
            rule: self.rule,
            reason: self.reason,
            votes,
        })
    }
}

fn load_votes(tx: &Transaction<'_>, id: &str) -> Result<Vec<Vote>, ApprovalError> {
    let mut stmt = tx.prepare_cached(
        "SELECT approver, approver_groups, verdict, comment, at, approver_issuer FROM votes
         WHERE request_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut votes = Vec::new();
    for row in rows {
        let (approver, groups, verdict, comment, at, issuer) = row?;
        let issuer = IssuerId::new(issuer);
        votes.push(Vote {
            approver_groups: groups_from_json(&issuer, &groups)?,
            approver: Principal::new(issuer, approver),
            verdict: verdict
                .parse()
                .map_err(|_| ApprovalError::Corrupt(format!("vote on {id}: verdict")))?,
            comment,
            at: from_ms(at)?,
        });
    }
    Ok(votes)
}

fn load(tx: &Transaction<'_>, id: &str) -> Result<Option<Request>, ApprovalError> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1");
    let raw = tx
        .prepare_cached(&sql)?
        .query_row([id], RawRequest::from_row)
        .optional()?;
    match raw {
        Some(raw) => {
            let votes = load_votes(tx, id)?;
            Ok(Some(raw.parse(votes)?))
        }
        None => Ok(None),
    }
}

fn load_existing(tx: &Transaction<'_>, id: &str) -> Result<Request, ApprovalError> {
    load(tx, id)?.ok_or_else(|| ApprovalError::RequestNotFound { id: id.to_owned() })
}

/// Load every request whose id the query (with `params`) returns, in that order.
fn load_ids<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    params: P,
) -> Result<Vec<Request>, ApprovalError> {
    let ids: Vec<String> = tx
        .prepare_cached(sql)?
        .query_map(params, |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter().map(|id| load_existing(tx, id)).collect()
}

fn validate(req: &NewRequest) -> Result<(), ApprovalError> {
    let invalid = |m: &str| Err(ApprovalError::Invalid(m.to_owned()));
    if req.requester.name.trim().is_empty() {
        return invalid("requester is empty");
    }
    if req.connection.trim().is_empty() {
        return invalid("connection is empty");
    }
    if req.approvers.is_empty() || req.approvers.iter().any(|g| g.trim().is_empty()) {
        return invalid("a request needs at least one non-empty approver group");
    }
    if req.min_approvals == 0 {
        return invalid("min_approvals must be at least 1");
    }
    if req.expires_at <= req.now {
        return invalid("expires_at must be after now");
    }
    if req.statement.len() > MAX_STATEMENT_BYTES {
        return invalid("statement is longer than 1 MiB");
    }
    Ok(())
}

impl ApprovalStore {
    /// Record a new pending request. The returned request is the event `requested`.
    ///
    /// Refused with [`ApprovalError::TooManyPending`] when the requester already has the
    /// store's `max_pending_per_requester` pending, unexpired requests (any connection).
    pub fn create_request(&self, req: NewRequest) -> Result<Request, ApprovalError> {
        validate(&req)?;
        let id = RequestId::random()?;
        let sha = statement_sha256(&req.statement);
        let requester_groups = groups_to_json(&req.requester.issuer, &req.requester_groups)?;
        let approvers = names_to_json(&req.approvers)?;
        let (created, expires) = (to_ms(req.now)?, to_ms(req.expires_at)?);
        let limit = self.max_pending();
        let out = self.write(|tx| {
            // Counted in the write transaction: no other writer can add one in between.
            // `lower()` folds ASCII only, like `same_user`.
            let pending: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM requests
                     WHERE requester_issuer = ?3 AND lower(requester) = lower(?1)
                       AND status = 'pending' AND expires_at > ?2",
                )?
                .query_row(
                    params![req.requester.name, created, req.requester.issuer.as_str()],
                    |r| r.get(0),
                )?;
            if pending >= i64::from(limit) {
                return Err(ApprovalError::TooManyPending {
                    user: req.requester.to_string(),
                    limit,
                });
            }
            tx.execute(
                "INSERT INTO requests (id, requester, requester_groups, connection, statement,
                    statement_sha256, rule, reason, approvers, min_approvals, mode, status,
                    created_at, expires_at, requester_issuer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', ?12, ?13, ?14)",
                params![
                    id.as_str(),
                    req.requester.name,
                    requester_groups,
                    req.connection,
                    req.statement,
                    sha,
                    req.rule,
                    req.reason,
                    approvers,
                    req.min_approvals,
                    req.mode.as_str(),
                    created,
                    expires,
                    req.requester.issuer.as_str()
                ],
            )?;
            load_existing(tx, id.as_str())
        })?;
        tracing::info!(id = %out.id, requester = %out.requester, connection = %out.connection,
            rule = %out.rule, mode = %out.mode, "approval requested");
        Ok(out)
    }

    /// One request, with its votes; `None` if there is no such id. A primary-key lookup, cheap
    /// enough to poll.
    pub fn get(&self, id: &RequestId) -> Result<Option<Request>, ApprovalError> {
        self.read(|tx| load(tx, id.as_str()))
    }

    /// Newest first, at most `limit`.
    pub fn list(&self, filter: RequestFilter, limit: usize) -> Result<Vec<Request>, ApprovalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| match filter {
            RequestFilter::Pending => load_ids(
                tx,
                "SELECT id FROM requests WHERE status = 'pending'
                 ORDER BY created_at DESC, id LIMIT ?1",
                [limit],
            ),
            RequestFilter::All => load_ids(
                tx,
                "SELECT id FROM requests ORDER BY created_at DESC, id LIMIT ?1",
                [limit],
            ),
        })
    }

    /// Record an approver's decision.
    ///
    /// Errors, checked in this order: [`ApprovalError::RequestNotFound`],
    /// [`ApprovalError::NotPending`] (already approved, denied, expired or executed),
    /// [`ApprovalError::Expired`] (pending but past `expires_at`; [`Self::expire`] will mark
    /// it), [`ApprovalError::SelfApproval`], [`ApprovalError::NotAnApprover`],
    /// [`ApprovalError::AlreadyDecided`], [`ApprovalError::Invalid`] (window too long).
    ///
    /// A deny finishes the request as `denied`; the approval that reaches `min_approvals`
    /// distinct approvers makes it `approved` until `now + approved_for` (or the store
    /// default). Otherwise it stays pending with one more vote ([`Request::event`] =
    /// `voted`).
    pub fn decide(&self, id: &RequestId, d: Decide<'_>) -> Result<Request, ApprovalError> {
        let window = d.approved_for.unwrap_or(self.opts.approval_window);
        if window.is_zero() || window > MAX_APPROVAL_WINDOW {
            return Err(ApprovalError::Invalid(
                "approval window must be between 1 ms and 24 h".to_owned(),
            ));
        }
        let now = to_ms(d.now)?;
        let until = to_ms(
            d.now
                .checked_add(window)
                .ok_or_else(|| ApprovalError::Invalid("approval window too far".to_owned()))?,
        )?;
        let groups = groups_to_json(&d.approver.issuer, d.approver_groups)?;
        let out = self.write(|tx| {
            let req = load_existing(tx, id.as_str())?;
            if req.status != RequestStatus::Pending {
                return Err(ApprovalError::NotPending {
                    id: id.to_string(),
                    status: req.status,
                });
            }
            if d.now >= req.expires_at {
                return Err(ApprovalError::Expired { id: id.to_string() });
            }
            if d.approver.same_person(&req.requester) {
                return Err(ApprovalError::SelfApproval {
                    user: d.approver.to_string(),
                });
            }
            // Groups are principals too: `dba` at another issuer is not the policy's `dba`.
            let approvers = req.approver_groups(d.issuers);
            let member = d.approver_groups.iter().any(|g| approvers.contains(g));
            if d.approver.name.trim().is_empty() || !member {
                return Err(ApprovalError::NotAnApprover {
                    approver: d.approver.to_string(),
                    id: id.to_string(),
                });
            }
            if req.votes.iter().any(|v| v.approver.same_person(d.approver)) {
                return Err(ApprovalError::AlreadyDecided {
                    approver: d.approver.to_string(),
                    id: id.to_string(),
                });
            }
            tx.execute(
                "INSERT INTO votes (request_id, seq, approver, approver_groups, verdict, comment, at,
                    approver_issuer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.as_str(),
                    req.votes.len() as i64,
                    d.approver.name,
                    groups,
                    d.verdict.as_str(),
                    d.comment,
                    now,
                    d.approver.issuer.as_str()
                ],
            )?;
            let approvals = req.approvals() + u32::from(d.verdict == Verdict::Approve);
            match d.verdict {
                Verdict::Deny => {
                    tx.execute(
                        "UPDATE requests SET status = 'denied', decided_at = ?2 WHERE id = ?1",
                        params![id.as_str(), now],
                    )?;
                }
                Verdict::Approve if approvals >= req.min_approvals => {
                    tx.execute(
                        "UPDATE requests SET status = 'approved', decided_at = ?2,
                            approved_until = ?3 WHERE id = ?1",
                        params![id.as_str(), now, until],
                    )?;
                }
                Verdict::Approve => {}
            }
            load_existing(tx, id.as_str())
        })?;
        tracing::info!(id = %out.id, approver = %d.approver, verdict = d.verdict.as_str(),
            status = %out.status, "approval decision recorded");
        Ok(out)
    }

    /// Mark overdue requests `expired`: pending ones past `expires_at`, and approved ones
    /// whose window (`approved_until`) passed unused. Returns the requests it changed.
    pub fn expire(&self, now: SystemTime) -> Result<Vec<Request>, ApprovalError> {
        let at = to_ms(now)?;
        let out = self.write(|tx| {
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM requests
                     WHERE (status = 'pending' AND expires_at <= ?1)
                        OR (status = 'approved' AND approved_until <= ?1)
                     ORDER BY created_at, id",
                )?
                .query_map([at], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut changed = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    "UPDATE requests SET status = 'expired', expired_at = ?2 WHERE id = ?1",
                    params![id, at],
                )?;
                changed.push(load_existing(tx, &id)?);
            }
            Ok(changed)
        })?;
        for r in &out {
            tracing::info!(id = %r.id, "approval request expired");
        }
        Ok(out)
    }

    /// Ticket mode: if `user` has an approved, unused ticket for exactly this statement text
    /// on `connection` and `now` is within its window, mark it `executed` and return it (the
    /// statement may pass, once). `None` means no usable ticket. Atomic across threads and
    /// processes: of two concurrent callers, at most one gets the ticket.
    pub fn consume_ticket(
        &self,
        user: &Principal,
        connection: &str,
        statement: &str,
        now: SystemTime,
    ) -> Result<Option<Request>, ApprovalError> {
        let sha = statement_sha256(statement);
        let at = to_ms(now)?;
        let out = self.write(|tx| {
            let candidates: Vec<(String, String)> = tx
                .prepare_cached(
                    "SELECT id, statement FROM requests
                     WHERE requester_issuer = ?5 AND requester = ?1 AND connection = ?2
                       AND statement_sha256 = ?3
                       AND mode = 'ticket' AND status = 'approved' AND approved_until > ?4
                     ORDER BY decided_at, id",
                )?
                .query_map(
                    params![user.name, connection, sha, at, user.issuer.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<Result<_, _>>()?;
            // The hash selects; the text must also be identical.
            let Some((id, _)) = candidates.into_iter().find(|(_, s)| s == statement) else {
                return Ok(None);
            };
            let n = tx.execute(
                "UPDATE requests SET status = 'executed', executed_at = ?2
                 WHERE id = ?1 AND status = 'approved'",
                params![id, at],
            )?;
            if n != 1 {
                return Ok(None);
            }
            load_existing(tx, &id).map(Some)
        })?;
        if let Some(r) = &out {
            tracing::info!(id = %r.id, %user, connection, "approval ticket consumed");
        }
        Ok(out)
    }

    /// Hold mode: record that the approved, held statement is being forwarded upstream. Call
    /// it when releasing the statement (its outcome belongs in the audit record). Fails with
    /// [`ApprovalError::NotApproved`] unless the request is an approved hold request within
    /// its window, so a held statement is released at most once.
    pub fn mark_executed(&self, id: &RequestId, now: SystemTime) -> Result<Request, ApprovalError> {
        let at = to_ms(now)?;
        let out = self.write(|tx| {
            let req = load_existing(tx, id.as_str())?;
            if req.mode != RequestMode::Hold || !req.may_run(now) {
                return Err(ApprovalError::NotApproved { id: id.to_string() });
            }
            tx.execute(
                "UPDATE requests SET status = 'executed', executed_at = ?2 WHERE id = ?1",
                params![id.as_str(), at],
            )?;
            load_existing(tx, id.as_str())
        })?;
        tracing::info!(id = %out.id, "held statement released");
        Ok(out)
    }

    /// The newest pending, unexpired request from `user` on `connection` for exactly this
    /// statement text, if any — so a retried ticket statement can point at the request that
    /// already exists instead of creating another.
    pub fn pending_for(
        &self,
        user: &Principal,
        connection: &str,
        statement: &str,
        now: SystemTime,
    ) -> Result<Option<Request>, ApprovalError> {
        let sha = statement_sha256(statement);
        let at = to_ms(now)?;
        self.read(|tx| {
            let found = load_ids(
                tx,
                "SELECT id FROM requests
                 WHERE requester_issuer = ?5 AND requester = ?1 AND connection = ?2
                   AND statement_sha256 = ?3 AND status = 'pending' AND expires_at > ?4
                 ORDER BY created_at DESC, id",
                params![user.name, connection, sha, at, user.issuer.as_str()],
            )?;
            Ok(found.into_iter().find(|r| r.statement == statement))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use crate::{ApprovalError, ApprovalStore, ErrorKind, NewRequest, RequestFilter, RequestMode};
    use crate::{Decide, StoreOptions, Verdict};

    const IDP: &str = "https://idp.example";

    fn new(requester: &str, connection: &str, sql: &str, now: std::time::SystemTime) -> NewRequest {
        let idp = gatehouse_policy::IssuerId::new(IDP);
        NewRequest {
            requester: gatehouse_policy::Principal::new(idp.clone(), requester),
            requester_groups: vec![gatehouse_policy::Group::new(idp, "analysts")],
            connection: connection.into(),
            statement: sql.into(),
            rule: "rule:w".into(),
            reason: "r".into(),
            approvers: vec!["dba".into()],
            min_approvals: 1,
            mode: RequestMode::Ticket,
            expires_at: now + Duration::from_secs(60),
            now,
        }
    }

    #[test]
    fn pending_requests_per_requester_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            max_pending_per_requester: 2,
            ..StoreOptions::default()
        };
        let store = ApprovalStore::open_with(dir.path().join("a.db"), opts).unwrap();
        let now = std::time::SystemTime::now();
        let first = store
            .create_request(new("alice", "app", "DELETE 1", now))
            .unwrap();
        store
            .create_request(new("alice", "other", "DELETE 2", now))
            .unwrap();
        // A third, on any connection and in any ASCII case, is refused and not stored.
        for (user, conn) in [("alice", "app"), ("ALICE", "third")] {
            let e = store
                .create_request(new(user, conn, "DELETE 3", now))
                .unwrap_err();
            assert!(
                matches!(e, ApprovalError::TooManyPending { limit: 2, .. }),
                "{e:?}"
            );
            assert_eq!(e.kind(), ErrorKind::Limit);
            assert!(e.client_message().contains("pending_approvals_per_user"));
        }
        assert_eq!(store.list(RequestFilter::All, 100).unwrap().len(), 2);
        // Other users are not affected.
        store
            .create_request(new("bob", "app", "DELETE 3", now))
            .unwrap();
        // A decided request frees its place.
        store
            .decide(
                &first.id,
                Decide {
                    approver: &gatehouse_policy::Principal::new(
                        gatehouse_policy::IssuerId::new(IDP),
                        "carol",
                    ),
                    approver_groups: &[gatehouse_policy::Group::new(
                        gatehouse_policy::IssuerId::new(IDP),
                        "dba",
                    )],
                    issuers: &gatehouse_policy::Issuers::single(gatehouse_policy::IssuerId::new(
                        IDP,
                    )),
                    verdict: Verdict::Deny,
                    comment: None,
                    approved_for: None,
                    now,
                },
            )
            .unwrap();
        store
            .create_request(new("alice", "app", "DELETE 3", now))
            .unwrap();
        // So does an expired one (still `pending` until `expire` runs), and a raised limit.
        let later = now + Duration::from_secs(61);
        store
            .create_request(new("alice", "app", "DELETE 4", later))
            .unwrap();
        store
            .create_request(new("alice", "app", "DELETE 5", later))
            .unwrap();
        assert!(store
            .create_request(new("alice", "app", "DELETE 6", later))
            .is_err());
        store.set_max_pending_per_requester(3);
        assert_eq!(store.options().max_pending_per_requester, 3);
        store
            .create_request(new("alice", "app", "DELETE 6", later))
            .unwrap();
    }
}
