//! Who may see and do what, for every front end (CLI, REST API, console) alike: the rules that
//! are not a single store transaction live here so that no front end re-implements them.

use std::time::SystemTime;

use crate::{
    ApprovalError, ApprovalStore, GrantId, GrantRecord, Group, Issuers, Principal, Request,
};

/// An authenticated person acting on the store: the user and groups of a verified token.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub user: &'a Principal,
    /// The token's groups, at the user's issuer.
    pub groups: &'a [Group],
}

impl Actor<'_> {
    /// Member of at least one of `groups` (same issuer and name).
    pub fn in_any(&self, groups: &[Group]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }

    /// May issue and revoke grants (a member of one of the configured issuer groups,
    /// `approvals.grant_issuers` resolved).
    pub fn is_grant_issuer(&self, grant_issuers: &[Group]) -> bool {
        !self.user.name.trim().is_empty() && self.in_any(grant_issuers)
    }
}

impl Request {
    /// What an approver may see: requests they could decide (a member of one of its approver
    /// groups, resolved through `issuers`), and their own requests (to follow them). Nobody
    /// else sees the statement text.
    pub fn visible_to(&self, actor: Actor<'_>, issuers: &Issuers) -> bool {
        self.requester.same_person(actor.user) || actor.in_any(&self.approver_groups(issuers))
    }
}

impl GrantRecord {
    /// Grant issuers see every grant; anyone else only the grants made to them.
    pub fn visible_to(&self, actor: Actor<'_>, grant_issuers: &[Group]) -> bool {
        actor.is_grant_issuer(grant_issuers) || self.user.same_person(actor.user)
    }
}

impl ApprovalStore {
    /// Revoke an active grant on behalf of `actor`, who must be a grant issuer (else
    /// [`ApprovalError::NotAnApprover`]); otherwise as [`ApprovalStore::revoke_grant`].
    pub fn revoke_grant_as(
        &self,
        id: &GrantId,
        actor: Actor<'_>,
        grant_issuers: &[Group],
        now: SystemTime,
    ) -> Result<GrantRecord, ApprovalError> {
        if !actor.is_grant_issuer(grant_issuers) {
            return Err(ApprovalError::NotAnApprover {
                approver: actor.user.to_string(),
                id: id.to_string(),
            });
        }
        self.revoke_grant(id, actor.user, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;
    use crate::{
        Decide, GrantScope, GrantStatus, IssuerId, NewGrant, NewRequest, RequestMode,
        RequestStatus, Verdict,
    };

    const CORP: &str = "https://corp.example";
    const PARTNER: &str = "https://partner.example";

    fn user(iss: &str, name: &str) -> Principal {
        Principal::new(IssuerId::new(iss), name)
    }

    fn groups(iss: &str, v: &[&str]) -> Vec<Group> {
        v.iter()
            .map(|g| Group::new(IssuerId::new(iss), *g))
            .collect()
    }

    /// `corp` and `partner`, both with an alias, as the gateway configures them.
    fn issuers() -> Issuers {
        Issuers::new([
            (Some("corp".to_owned()), IssuerId::new(CORP)),
            (Some("partner".to_owned()), IssuerId::new(PARTNER)),
        ])
        .unwrap()
    }

    fn request(store: &ApprovalStore, now: SystemTime, mode: RequestMode) -> Request {
        store
            .create_request(NewRequest {
                requester: user(CORP, "alice"),
                requester_groups: groups(CORP, &["analysts"]),
                connection: "app".into(),
                statement: "INSERT INTO t VALUES (1)".into(),
                rule: "rule:w".into(),
                reason: "r".into(),
                approvers: vec!["corp:dba".to_owned()],
                min_approvals: 1,
                mode,
                expires_at: now + Duration::from_secs(60),
                now,
            })
            .unwrap()
    }

    #[test]
    fn requests_are_visible_to_their_approvers_and_requester_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApprovalStore::open(dir.path().join("a.db")).unwrap();
        let now = SystemTime::now();
        let r = request(&store, now, RequestMode::Ticket);
        assert_eq!(r.requester, user(CORP, "alice"));
        assert_eq!(r.requester_groups, groups(CORP, &["analysts"]));
        let i = issuers();
        let (bob, alice_upper, eve) = (user(CORP, "bob"), user(CORP, "ALICE"), user(CORP, "eve"));
        let p_alice = user(PARTNER, "alice");
        let (dba, p_dba) = (groups(CORP, &["dba"]), groups(PARTNER, &["dba"]));
        let (none, analysts): (Vec<Group>, _) = (Vec::new(), groups(CORP, &["analysts"]));
        let who = |u, g| Actor { user: u, groups: g };
        assert!(r.visible_to(who(&bob, &dba), &i));
        assert!(
            r.visible_to(who(&alice_upper, &none), &i),
            "the requester, any case"
        );
        assert!(!r.visible_to(who(&eve, &analysts), &i));
        assert!(!r.visible_to(who(&eve, &none), &i));
        // The same names at the other issuer are other principals.
        assert!(!r.visible_to(who(&p_alice, &none), &i));
        assert!(!r.visible_to(who(&bob, &p_dba), &i));
    }

    #[test]
    fn a_namesake_at_another_issuer_cannot_approve_and_self_approval_is_by_principal() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApprovalStore::open(dir.path().join("a.db")).unwrap();
        let now = SystemTime::now();
        let i = issuers();
        let r = request(&store, now, RequestMode::Ticket);
        let vote = |approver: &Principal, g: &[Group]| {
            store.decide(
                &r.id,
                Decide {
                    approver,
                    approver_groups: g,
                    issuers: &i,
                    verdict: Verdict::Approve,
                    comment: None,
                    approved_for: None,
                    now,
                },
            )
        };
        // `dba` at partner is not the policy's `corp:dba`.
        let e = vote(&user(PARTNER, "bob"), &groups(PARTNER, &["dba"])).unwrap_err();
        assert!(matches!(e, ApprovalError::NotAnApprover { .. }), "{e}");
        // The requester (any case) cannot approve their own request.
        let e = vote(&user(CORP, "Alice"), &groups(CORP, &["dba"])).unwrap_err();
        assert!(matches!(e, ApprovalError::SelfApproval { .. }), "{e}");
        // `alice` at partner is somebody else: not self-approval, but not a corp dba either.
        let e = vote(&user(PARTNER, "alice"), &groups(PARTNER, &["dba"])).unwrap_err();
        assert!(matches!(e, ApprovalError::NotAnApprover { .. }), "{e}");
        let done = vote(&user(CORP, "bob"), &groups(CORP, &["dba"])).unwrap();
        assert_eq!(done.status, RequestStatus::Approved);
        assert_eq!(done.votes[0].approver, user(CORP, "bob"));
        assert_eq!(done.votes[0].approver_groups, groups(CORP, &["dba"]));
        // The approved ticket is the requester's: her namesake at partner cannot use it.
        let sql = "INSERT INTO t VALUES (1)";
        assert!(store
            .consume_ticket(&user(PARTNER, "alice"), "app", sql, now)
            .unwrap()
            .is_none());
        assert!(store
            .consume_ticket(&user(CORP, "alice"), "app", sql, now)
            .unwrap()
            .is_some());
    }

    #[test]
    fn grants_belong_to_one_principal() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApprovalStore::open(dir.path().join("a.db")).unwrap();
        let now = SystemTime::now();
        let allowed = groups(CORP, &["dba"]);
        let alice = user(CORP, "alice");
        let issue = |issued_by: Principal, g: Vec<Group>| {
            store.issue_grant(NewGrant {
                user: &alice,
                connection: "app",
                scope: GrantScope::Writes,
                expires_at: now + Duration::from_secs(600),
                issued_by: &issued_by,
                issued_by_groups: &g,
                allowed_issuers: &allowed,
                comment: None,
                now,
            })
        };
        // A partner `dba` may not issue; the grantee may not issue to herself.
        let e = issue(user(PARTNER, "bob"), groups(PARTNER, &["dba"])).unwrap_err();
        assert!(matches!(e, ApprovalError::NotAnApprover { .. }), "{e}");
        let e = issue(user(CORP, "ALICE"), groups(CORP, &["dba"])).unwrap_err();
        assert!(matches!(e, ApprovalError::SelfApproval { .. }), "{e}");
        let g = issue(user(CORP, "bob"), groups(CORP, &["dba"])).unwrap();
        assert_eq!(g.user, user(CORP, "alice"));
        assert_eq!(g.issued_by, user(CORP, "bob"));
        let active = store
            .active_grants(&user(CORP, "alice"), "app", now)
            .unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].user, user(CORP, "alice"));
        assert!(store
            .active_grants(&user(PARTNER, "alice"), "app", now)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn only_grant_issuers_revoke_and_see_every_grant() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApprovalStore::open(dir.path().join("a.db")).unwrap();
        let now = SystemTime::now();
        let issuers = groups(CORP, &["dba"]);
        let dba = groups(CORP, &["dba"]);
        let analysts = groups(CORP, &["analysts"]);
        let (u_alice, u_bob, u_eve) = (user(CORP, "alice"), user(CORP, "bob"), user(CORP, "eve"));
        let g = store
            .issue_grant(NewGrant {
                user: &u_alice,
                connection: "app",
                scope: GrantScope::Writes,
                expires_at: now + Duration::from_secs(600),
                issued_by: &u_bob,
                issued_by_groups: &dba,
                allowed_issuers: &issuers,
                comment: None,
                now,
            })
            .unwrap();
        let eve = Actor {
            user: &u_eve,
            groups: &analysts,
        };
        let alice = Actor {
            user: &u_alice,
            groups: &analysts,
        };
        let bob = Actor {
            user: &u_bob,
            groups: &dba,
        };
        let p_bob_user = user(PARTNER, "bob");
        let p_dba = groups(PARTNER, &["dba"]);
        let p_bob = Actor {
            user: &p_bob_user,
            groups: &p_dba,
        };
        assert!(g.visible_to(bob, &issuers));
        assert!(g.visible_to(alice, &issuers));
        assert!(!g.visible_to(eve, &issuers));
        assert!(
            !g.visible_to(p_bob, &issuers),
            "a partner dba is no grant issuer"
        );
        let e = store
            .revoke_grant_as(&g.id, eve, &issuers, now)
            .unwrap_err();
        assert!(matches!(e, ApprovalError::NotAnApprover { .. }), "{e}");
        assert!(store.revoke_grant_as(&g.id, p_bob, &issuers, now).is_err());
        // The grantee cannot revoke either unless an issuer; an empty issuer list: nobody.
        assert!(store.revoke_grant_as(&g.id, alice, &issuers, now).is_err());
        assert!(store.revoke_grant_as(&g.id, bob, &[], now).is_err());
        let r = store.revoke_grant_as(&g.id, bob, &issuers, now).unwrap();
        assert_eq!(r.status, GrantStatus::Revoked);
        assert_eq!(r.revoked_by, Some(user(CORP, "bob")));
        let again = store
            .revoke_grant_as(&g.id, bob, &issuers, now)
            .unwrap_err();
        assert!(
            matches!(again, ApprovalError::GrantNotActive { .. }),
            "{again}"
        );
    }
}
