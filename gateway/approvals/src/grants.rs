//! Time-boxed grants: issue, look up for the policy, record use, revoke, expire.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, Row, Transaction};

use crate::ids::{from_ms, opt_from_ms, to_ms};
use crate::store::{groups_from_json, groups_to_json};
use crate::{
    parse_scope, scope_to_string, ApprovalError, ApprovalStore, GrantFilter, GrantId, GrantRecord,
    GrantStatus, IssuerId, NewGrant, Principal, MAX_GRANT_DURATION,
};

const GRANT_COLUMNS: &str = "id, grantee, connection, scope, issued_by, issued_by_groups, \
    comment, issued_at, expires_at, status, revoked_by, revoked_at, expired_at, use_count, \
    last_used_at, grantee_issuer, issued_by_issuer, revoked_by_issuer";

struct RawGrant {
    id: String,
    grantee: String,
    connection: String,
    scope: String,
    issued_by: String,
    issued_by_groups: String,
    comment: Option<String>,
    issued_at: i64,
    expires_at: i64,
    status: String,
    revoked_by: Option<String>,
    revoked_at: Option<i64>,
    expired_at: Option<i64>,
    use_count: i64,
    last_used_at: Option<i64>,
    grantee_issuer: String,
    issued_by_issuer: String,
    revoked_by_issuer: Option<String>,
}

impl RawGrant {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            grantee: r.get(1)?,
            connection: r.get(2)?,
            scope: r.get(3)?,
            issued_by: r.get(4)?,
            issued_by_groups: r.get(5)?,
            comment: r.get(6)?,
            issued_at: r.get(7)?,
            expires_at: r.get(8)?,
            status: r.get(9)?,
            revoked_by: r.get(10)?,
            revoked_at: r.get(11)?,
            expired_at: r.get(12)?,
            use_count: r.get(13)?,
            last_used_at: r.get(14)?,
            grantee_issuer: r.get(15)?,
            issued_by_issuer: r.get(16)?,
            revoked_by_issuer: r.get(17)?,
        })
    }

    fn parse(self) -> Result<GrantRecord, ApprovalError> {
        let corrupt = |what: &str| ApprovalError::Corrupt(format!("grant {}: {what}", self.id));
        let issued_by = IssuerId::new(self.issued_by_issuer);
        Ok(GrantRecord {
            id: self.id.parse().map_err(|_| corrupt("id"))?,
            scope: parse_scope(&self.scope).map_err(|_| corrupt("scope"))?,
            issued_by_groups: groups_from_json(&issued_by, &self.issued_by_groups)?,
            issued_at: from_ms(self.issued_at)?,
            expires_at: from_ms(self.expires_at)?,
            status: self.status.parse()?,
            revoked_at: opt_from_ms(self.revoked_at)?,
            expired_at: opt_from_ms(self.expired_at)?,
            use_count: u64::try_from(self.use_count).map_err(|_| corrupt("use count"))?,
            last_used_at: opt_from_ms(self.last_used_at)?,
            user: Principal::new(IssuerId::new(self.grantee_issuer), self.grantee),
            connection: self.connection,
            issued_by: Principal::new(issued_by, self.issued_by),
            comment: self.comment,
            revoked_by: self.revoked_by.map(|n| {
                Principal::new(IssuerId::new(self.revoked_by_issuer.unwrap_or_default()), n)
            }),
        })
    }
}

fn load(tx: &Transaction<'_>, id: &str) -> Result<GrantRecord, ApprovalError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1");
    tx.prepare_cached(&sql)?
        .query_row([id], RawGrant::from_row)
        .optional()?
        .ok_or_else(|| ApprovalError::GrantNotFound { id: id.to_owned() })?
        .parse()
}

fn query<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    where_clause: &str,
    params: P,
) -> Result<Vec<GrantRecord>, ApprovalError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grants {where_clause}");
    let raws: Vec<RawGrant> = tx
        .prepare_cached(&sql)?
        .query_map(params, RawGrant::from_row)?
        .collect::<Result<_, _>>()?;
    raws.into_iter().map(RawGrant::parse).collect()
}

impl ApprovalStore {
    /// Issue a grant. The issuer must be in one of `allowed_issuers` (else
    /// [`ApprovalError::NotAnApprover`]) and must not be the grantee
    /// ([`ApprovalError::SelfApproval`]); `expires_at` must be after `now` and at most
    /// [`MAX_GRANT_DURATION`] later.
    pub fn issue_grant(&self, g: NewGrant<'_>) -> Result<GrantRecord, ApprovalError> {
        let invalid = |m: &str| Err(ApprovalError::Invalid(m.to_owned()));
        if g.user.name.trim().is_empty() || g.connection.trim().is_empty() {
            return invalid("grant user and connection must not be empty");
        }
        if g.expires_at <= g.now {
            return invalid("grant expires_at must be after now");
        }
        if g.expires_at
            .duration_since(g.now)
            .map_or(true, |d| d > MAX_GRANT_DURATION)
        {
            return invalid("grants last at most 7 days");
        }
        if g.issued_by.same_person(g.user) {
            return Err(ApprovalError::SelfApproval {
                user: g.issued_by.to_string(),
            });
        }
        let member = g
            .issued_by_groups
            .iter()
            .any(|grp| g.allowed_issuers.contains(grp));
        if g.issued_by.name.trim().is_empty() || !member {
            return Err(ApprovalError::NotAnApprover {
                approver: g.issued_by.to_string(),
                id: "a grant".to_owned(),
            });
        }
        let id = GrantId::random()?;
        let groups = groups_to_json(&g.issued_by.issuer, g.issued_by_groups)?;
        let (issued, expires) = (to_ms(g.now)?, to_ms(g.expires_at)?);
        let out = self.write(|tx| {
            tx.execute(
                "INSERT INTO grants (id, grantee, connection, scope, issued_by, issued_by_groups,
                    comment, issued_at, expires_at, status, grantee_issuer, issued_by_issuer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'active', ?10, ?11)",
                params![
                    id.as_str(),
                    g.user.name,
                    g.connection,
                    scope_to_string(&g.scope),
                    g.issued_by.name,
                    groups,
                    g.comment,
                    issued,
                    expires,
                    g.user.issuer.as_str(),
                    g.issued_by.issuer.as_str()
                ],
            )?;
            load(tx, id.as_str())
        })?;
        tracing::info!(id = %out.id, user = %out.user, connection = %out.connection,
            issued_by = %out.issued_by, scope = %scope_to_string(&out.scope), "grant issued");
        Ok(out)
    }

    /// The grants in effect for `user` on `connection` at `now`, ready for
    /// [`gatehouse_policy::Policy::evaluate`].
    pub fn active_grants(
        &self,
        user: &Principal,
        connection: &str,
        now: SystemTime,
    ) -> Result<Vec<gatehouse_policy::Grant>, ApprovalError> {
        let at = to_ms(now)?;
        let records = self.read(|tx| {
            query(
                tx,
                "WHERE grantee_issuer = ?4 AND grantee = ?1 AND connection = ?2
                   AND status = 'active' AND expires_at > ?3
                 ORDER BY issued_at, id",
                params![user.name, connection, at, user.issuer.as_str()],
            )
        })?;
        Ok(records.iter().map(GrantRecord::to_policy).collect())
    }

    /// One grant.
    pub fn grant(&self, id: &GrantId) -> Result<GrantRecord, ApprovalError> {
        self.read(|tx| load(tx, id.as_str()))
    }

    /// Newest first, at most `limit`.
    pub fn list_grants(
        &self,
        filter: GrantFilter,
        limit: usize,
    ) -> Result<Vec<GrantRecord>, ApprovalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| match filter {
            GrantFilter::Effective(now) => query(
                tx,
                "WHERE status = 'active' AND expires_at > ?1
                 ORDER BY issued_at DESC, id LIMIT ?2",
                params![to_ms(now)?, limit],
            ),
            GrantFilter::All => query(tx, "ORDER BY issued_at DESC, id LIMIT ?1", [limit]),
        })
    }

    /// Count a use of a grant (call when a grant let a statement pass: `AllowBasis::Grant`).
    /// Fails if the grant is revoked/expired or past `expires_at`.
    pub fn record_grant_use(
        &self,
        id: &GrantId,
        now: SystemTime,
    ) -> Result<GrantRecord, ApprovalError> {
        let at = to_ms(now)?;
        self.write(|tx| {
            let g = load(tx, id.as_str())?;
            if g.status != GrantStatus::Active {
                return Err(ApprovalError::GrantNotActive {
                    id: id.to_string(),
                    status: g.status,
                });
            }
            if now >= g.expires_at {
                return Err(ApprovalError::GrantExpired { id: id.to_string() });
            }
            tx.execute(
                "UPDATE grants SET use_count = use_count + 1, last_used_at = ?2 WHERE id = ?1",
                params![id.as_str(), at],
            )?;
            load(tx, id.as_str())
        })
    }

    /// Revoke an active grant (who may revoke is the caller's decision; revoking only takes
    /// access away). Revoking a grant that is no longer active is
    /// [`ApprovalError::GrantNotActive`].
    pub fn revoke_grant(
        &self,
        id: &GrantId,
        by: &Principal,
        now: SystemTime,
    ) -> Result<GrantRecord, ApprovalError> {
        let at = to_ms(now)?;
        let out = self.write(|tx| {
            let g = load(tx, id.as_str())?;
            if g.status != GrantStatus::Active {
                return Err(ApprovalError::GrantNotActive {
                    id: id.to_string(),
                    status: g.status,
                });
            }
            tx.execute(
                "UPDATE grants SET status = 'revoked', revoked_by = ?2, revoked_at = ?3,
                    revoked_by_issuer = ?4
                 WHERE id = ?1",
                params![id.as_str(), by.name, at, by.issuer.as_str()],
            )?;
            load(tx, id.as_str())
        })?;
        tracing::info!(id = %out.id, %by, "grant revoked");
        Ok(out)
    }

    /// Mark active grants past `expires_at` as `expired`; returns the grants it changed.
    /// (Expired grants are already ignored by [`Self::active_grants`]; this records the event.)
    pub fn expire_grants(&self, now: SystemTime) -> Result<Vec<GrantRecord>, ApprovalError> {
        let at = to_ms(now)?;
        let out = self.write(|tx| {
            let due = query(
                tx,
                "WHERE status = 'active' AND expires_at <= ?1 ORDER BY issued_at, id",
                [at],
            )?;
            let mut changed = Vec::with_capacity(due.len());
            for g in due {
                tx.execute(
                    "UPDATE grants SET status = 'expired', expired_at = ?2 WHERE id = ?1",
                    params![g.id.as_str(), at],
                )?;
                changed.push(load(tx, g.id.as_str())?);
            }
            Ok(changed)
        })?;
        for g in &out {
            tracing::info!(id = %g.id, "grant expired");
        }
        Ok(out)
    }
}
