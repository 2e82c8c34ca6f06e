//! Who may see and do what, for every front end (CLI, REST API, console) alike: the rules that
//! are not a single store transaction live here so that no front end re-implements them.

use std::time::SystemTime;

use crate::{same_user, ApprovalError, ApprovalStore, GrantId, GrantRecord, Request};

/// An authenticated person acting on the store: the user name and groups of a verified token.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub username: &'a str,
    pub groups: &'a [String],
}

impl Actor<'_> {
    /// Member of at least one of `groups`.
    pub fn in_any(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }

    /// May issue and revoke grants (a member of one of the configured issuer groups).
    pub fn is_grant_issuer(&self, grant_issuers: &[String]) -> bool {
        !self.username.trim().is_empty() && self.in_any(grant_issuers)
    }
}

impl Request {
    /// What an approver may see: requests they could decide (a member of one of its approver
    /// groups), and their own requests (to follow them). Nobody else sees the statement text.
    pub fn visible_to(&self, actor: Actor<'_>) -> bool {
        same_user(&self.requester, actor.username) || actor.in_any(&self.approvers)
    }
}

impl GrantRecord {
    /// Grant issuers see every grant; anyone else only the grants made to them.
    pub fn visible_to(&self, actor: Actor<'_>, grant_issuers: &[String]) -> bool {
        actor.is_grant_issuer(grant_issuers) || same_user(&self.user, actor.username)
    }
}

impl ApprovalStore {
    /// Revoke an active grant on behalf of `actor`, who must be a grant issuer (else
    /// [`ApprovalError::NotAnApprover`]); otherwise as [`ApprovalStore::revoke_grant`].
    pub fn revoke_grant_as(
        &self,
        id: &GrantId,
        actor: Actor<'_>,
        grant_issuers: &[String],
        now: SystemTime,
    ) -> Result<GrantRecord, ApprovalError> {
        if !actor.is_grant_issuer(grant_issuers) {
            return Err(ApprovalError::NotAnApprover {
                approver: actor.username.to_owned(),
                id: id.to_string(),
            });
        }
        self.revoke_grant(id, actor.username, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;
    use crate::{GrantScope, GrantStatus, NewGrant, NewRequest, RequestMode};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn requests_are_visible_to_their_approvers_and_requester_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApprovalStore::open(dir.path().join("a.db")).unwrap();
        let now = SystemTime::now();
        let r = store
            .create_request(NewRequest {
                requester: "alice".into(),
                requester_groups: s(&["analysts"]),
                connection: "app".into(),
                statement: "INSERT INTO t VALUES (1)".into(),
                rule: "rule:w".into(),
                reason: "r".into(),
                approvers: s(&["dba"]),
                min_approvals: 1,
                mode: RequestMode::Ticket,
                expires_at: now + Duration::from_secs(60),
                now,
            })
            .unwrap();
        let dba = s(&["dba"]);
        let analysts = s(&["analysts"]);
        let none: Vec<String> = Vec::new();
        let who = |u, g| Actor {
            username: u,
            groups: g,
        };
        assert!(r.visible_to(who("bob", &dba)));
        assert!(r.visible_to(who("ALICE", &none)), "the requester, any case");
        assert!(!r.visible_to(who("eve", &analysts)));
        assert!(!r.visible_to(who("eve", &none)));
    }

    #[test]
    fn only_grant_issuers_revoke_and_see_every_grant() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApprovalStore::open(dir.path().join("a.db")).unwrap();
        let now = SystemTime::now();
        let issuers = s(&["dba"]);
        let dba = s(&["dba"]);
        let analysts = s(&["analysts"]);
        let g = store
            .issue_grant(NewGrant {
                user: "alice",
                connection: "app",
                scope: GrantScope::Writes,
                expires_at: now + Duration::from_secs(600),
                issued_by: "bob",
                issued_by_groups: &dba,
                allowed_issuers: &issuers,
                comment: None,
                now,
            })
            .unwrap();
        let eve = Actor {
            username: "eve",
            groups: &analysts,
        };
        let alice = Actor {
            username: "alice",
            groups: &analysts,
        };
        let bob = Actor {
            username: "bob",
            groups: &dba,
        };
        assert!(g.visible_to(bob, &issuers));
        assert!(g.visible_to(alice, &issuers));
        assert!(!g.visible_to(eve, &issuers));
        let e = store
            .revoke_grant_as(&g.id, eve, &issuers, now)
            .unwrap_err();
        assert!(matches!(e, ApprovalError::NotAnApprover { .. }), "{e}");
        // The grantee cannot revoke either unless an issuer; an empty issuer list: nobody.
        assert!(store.revoke_grant_as(&g.id, alice, &issuers, now).is_err());
        assert!(store.revoke_grant_as(&g.id, bob, &[], now).is_err());
        let r = store.revoke_grant_as(&g.id, bob, &issuers, now).unwrap();
        assert_eq!(r.status, GrantStatus::Revoked);
        assert_eq!(r.revoked_by.as_deref(), Some("bob"));
        let again = store
            .revoke_grant_as(&g.id, bob, &issuers, now)
            .unwrap_err();
        assert!(
            matches!(again, ApprovalError::GrantNotActive { .. }),
            "{again}"
        );
    }
}
