//! The one error type of the crate, with a kind for mapping to HTTP statuses / CLI exit codes.

use crate::{GrantStatus, RequestStatus};

/// Who is at fault, for mapping to a response (HTTP status, CLI message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such request or grant (HTTP 404).
    NotFound,
    /// The caller may not do this (HTTP 403).
    Forbidden,
    /// The object is not in a state that allows this (HTTP 409).
    Conflict,
    /// The input is malformed (HTTP 400).
    Invalid,
    /// A configured limit is reached; retry once something is decided or expired (HTTP 429).
    Limit,
    /// The store failed (HTTP 500); details go to the log, not to clients.
    Internal,
}

/// Everything that can go wrong. Messages name ids, users and states, never statement text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    #[error("no approval request {id}")]
    RequestNotFound { id: String },
    #[error("no grant {id}")]
    GrantNotFound { id: String },
    #[error("{approver} is not in an approver group of {id}")]
    NotAnApprover { approver: String, id: String },
    #[error("{user} may not approve their own request or grant to themselves")]
    SelfApproval { user: String },
    #[error("{approver} already decided on {id}")]
    AlreadyDecided { approver: String, id: String },
    #[error("approval request {id} is {status}, not pending")]
    NotPending { id: String, status: RequestStatus },
    #[error("approval request {id} expired")]
    Expired { id: String },
    #[error("approval request {id} is not approved and usable")]
    NotApproved { id: String },
    #[error("grant {id} is {status}")]
    GrantNotActive { id: String, status: GrantStatus },
    #[error("grant {id} expired")]
    GrantExpired { id: String },
    #[error(
        "{user} already has {limit} pending approval requests (the limit, \
         limits.pending_approvals_per_user); wait until some are decided or expire"
    )]
    TooManyPending { user: String, limit: u32 },
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("approval store is corrupt: {0}")]
    Corrupt(String),
    #[error("approval store schema version {found} is newer than this build ({supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
    #[error("approval store is not in WAL mode (journal_mode={mode})")]
    NotWal { mode: String },
    #[error("the system random generator failed")]
    Random,
    #[error("approval store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("approval store: {0}")]
    Io(#[from] std::io::Error),
}

impl ApprovalError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApprovalError::RequestNotFound { .. } | ApprovalError::GrantNotFound { .. } => {
                ErrorKind::NotFound
            }
            ApprovalError::NotAnApprover { .. } | ApprovalError::SelfApproval { .. } => {
                ErrorKind::Forbidden
            }
            ApprovalError::AlreadyDecided { .. }
            | ApprovalError::NotPending { .. }
            | ApprovalError::Expired { .. }
            | ApprovalError::NotApproved { .. }
            | ApprovalError::GrantNotActive { .. }
            | ApprovalError::GrantExpired { .. } => ErrorKind::Conflict,
            ApprovalError::Invalid(_) => ErrorKind::Invalid,
            ApprovalError::TooManyPending { .. } => ErrorKind::Limit,
            ApprovalError::Corrupt(_)
            | ApprovalError::UnsupportedSchema { .. }
            | ApprovalError::NotWal { .. }
            | ApprovalError::Random
            | ApprovalError::Sqlite(_)
            | ApprovalError::Io(_) => ErrorKind::Internal,
        }
    }

    /// A message safe to show a client: the error itself for non-internal kinds, a generic
    /// text for internal ones (paths and SQLite details stay in the log).
    pub fn client_message(&self) -> String {
        match self.kind() {
            ErrorKind::Internal => "the approval store failed; see the gateway log".to_owned(),
            _ => self.to_string(),
        }
    }
}
