//! What happened to a request or a grant, named for audit records (and, later, webhooks).

use std::fmt;

/// A change in a request's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestEvent {
    /// Created, no decision yet.
    Requested,
    /// An approver approved, the quorum is not reached yet.
    Voted,
    Approved,
    Denied,
    Expired,
    Executed,
}

impl RequestEvent {
    /// The audit event name, e.g. `approval.requested`.
    pub fn audit_name(self) -> &'static str {
        match self {
            RequestEvent::Requested => "approval.requested",
            RequestEvent::Voted => "approval.voted",
            RequestEvent::Approved => "approval.approved",
            RequestEvent::Denied => "approval.denied",
            RequestEvent::Expired => "approval.expired",
            RequestEvent::Executed => "approval.executed",
        }
    }
}

impl fmt::Display for RequestEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.audit_name())
    }
}

/// A change in a grant's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantEvent {
    Issued,
    Revoked,
}

impl GrantEvent {
    /// The audit event name, e.g. `grant.issued`.
    pub fn audit_name(self) -> &'static str {
        match self {
            GrantEvent::Issued => "grant.issued",
            GrantEvent::Revoked => "grant.revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct() {
        let all = [
            RequestEvent::Requested,
            RequestEvent::Voted,
            RequestEvent::Approved,
            RequestEvent::Denied,
            RequestEvent::Expired,
            RequestEvent::Executed,
        ];
        let mut names: Vec<_> = all.iter().map(|e| e.audit_name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_ne!(
            GrantEvent::Issued.audit_name(),
            GrantEvent::Revoked.audit_name()
        );
    }
}
