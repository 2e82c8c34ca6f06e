//! The one place where session errors become PostgreSQL ErrorResponses. Every error has a
//! kind (what caused it), a SQLSTATE and a client-safe message: no token, no vaulted secret,
//! no upstream host name, no internal path.

use bytes::BytesMut;
use gatehouse_pgwire::{encode_error, ProtocolError, Severity};

/// Who is to blame, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something wrong or is not allowed in.
    Client,
    /// The upstream database failed or refused.
    Upstream,
    /// Gatehouse itself could not do its job (audit, vault, key store).
    Internal,
    /// A configured limit (`[limits]`) was reached; nobody is at fault.
    Limit,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client protocol violation: {0}")]
    ClientProtocol(#[from] ProtocolError),
    #[error("client sent an unexpected message during startup")]
    UnexpectedStartupMessage,
    #[error("a password was sent without TLS")]
    TlsRequired,
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("token rejected: {reason}")]
    BadToken {
        reason: String,
        client: &'static str,
    },
    #[error("identity provider unavailable: {0}")]
    IdentityUnavailable(String),
    #[error("startup user {user:?} does not match the token's identity {identity:?}")]
    UserMismatch { user: String, identity: String },
    #[error("missing startup parameter {0}")]
    MissingParameter(&'static str),
    #[error("unknown connection {0:?}")]
    UnknownConnection(String),
    #[error("connection {0:?} has no credential in the vault")]
    NoCredential(String),
    #[error("vault error: {0}")]
    Vault(String),
    #[error("cannot reach upstream: {0}")]
    UpstreamConnect(String),
    #[error("upstream login failed: {0}")]
    UpstreamAuth(String),
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(String),
    #[error("upstream connection lost")]
    UpstreamLost,
    #[error("audit store unavailable: {0}")]
    AuditUnavailable(String),
    #[error("masking failed: {0}")]
    MaskingFailed(String),
    #[error("listener {listener:?} is at its limit of {limit} connections")]
    TooManyConnections { listener: String, limit: u32 },
    #[error("user {user:?} is at the limit of {limit} sessions")]
    TooManySessionsForUser { user: String, limit: u32 },
    #[error("gateway shutting down")]
    ShuttingDown,
    #[error("startup timed out")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl SessionError {
    pub fn kind(&self) -> ErrorKind {
        use SessionError::*;
        match self {
            ClientProtocol(_)
            | UnexpectedStartupMessage
            | TlsRequired
            | Unsupported(_)
            | BadToken { .. }
            | UserMismatch { .. }
            | MissingParameter(_)
            | UnknownConnection(_)
            | Timeout
            | Io(_) => ErrorKind::Client,
            IdentityUnavailable(_)
            | UpstreamConnect(_)
            | UpstreamAuth(_)
            | UpstreamProtocol(_)
            | UpstreamLost => ErrorKind::Upstream,
            NoCredential(_) | Vault(_) | AuditUnavailable(_) | MaskingFailed(_) | ShuttingDown => {
                ErrorKind::Internal
            }
            TooManyConnections { .. } | TooManySessionsForUser { .. } => ErrorKind::Limit,
        }
    }

    /// The SQLSTATE the client sees.
    pub fn sqlstate(&self) -> &'static str {
        use SessionError::*;
        match self {
            ClientProtocol(_) | UnexpectedStartupMessage => "08P01",
            TlsRequired | UserMismatch { .. } | MissingParameter(_) => "28000",
            Unsupported(_) => "0A000",
            BadToken { .. } => "28P01",
            IdentityUnavailable(_) => "08004",
            UnknownConnection(_) => "3D000",
            NoCredential(_) | Vault(_) => "08004",
            UpstreamConnect(_) | UpstreamLost => "08006",
            UpstreamAuth(_) | UpstreamProtocol(_) => "08004",
            AuditUnavailable(_) => "58030",
            MaskingFailed(_) => "54000",
            TooManyConnections { .. } | TooManySessionsForUser { .. } => "53300",
            ShuttingDown => "57P01",
            Timeout | Io(_) => "08006",
        }
    }

    /// The message the client sees; never the `Display` text (which may name hosts).
    pub fn client_message(&self) -> String {
        use SessionError::*;
        match self {
            ClientProtocol(e) => format!("protocol violation: {e}"),
            UnexpectedStartupMessage => "unexpected message during startup".into(),
            TlsRequired => {
                "Gatehouse accepts a token only over TLS: connect with sslmode=require".into()
            }
            Unsupported(what) => format!("not supported by Gatehouse: {what}"),
            BadToken { client, .. } => format!("authentication failed: {client}"),
            IdentityUnavailable(_) => "authentication failed: identity provider unavailable".into(),
            UserMismatch { user, .. } => {
                format!("authentication failed: user \"{user}\" does not match the token")
            }
            MissingParameter(p) => format!("startup parameter \"{p}\" is required"),
            UnknownConnection(c) => format!("connection \"{c}\" does not exist"),
            NoCredential(c) => format!("connection \"{c}\" has no credential configured"),
            Vault(_) => "credential vault unavailable".into(),
            UpstreamConnect(_) => "could not connect to the target database".into(),
            UpstreamAuth(_) => "the gateway could not log in to the target database".into(),
            UpstreamProtocol(_) => "the target database sent an invalid response".into(),
            UpstreamLost => "connection to the target database lost".into(),
            AuditUnavailable(_) => "audit store unavailable: statement refused".into(),
            MaskingFailed(_) => {
                "a result could not be masked (too large, malformed, or a binary value of a type \
                 Gatehouse cannot inspect: ask for text format); it was not sent"
                    .into()
            }
            TooManyConnections { listener, limit } => format!(
                "gatehouse: too many connections on listener \"{listener}\" (limit {limit}, limits.sessions_per_listener); try again later"
            ),
            TooManySessionsForUser { user, limit } => format!(
                "gatehouse: too many sessions for user \"{user}\" (limit {limit}, limits.sessions_per_user); close one and try again"
            ),
            ShuttingDown => "gatehouse is shutting down".into(),
            Timeout => "startup timed out".into(),
            Io(_) => "connection error".into(),
        }
    }

    /// Encodes the FATAL ErrorResponse that ends the session.
    pub fn encode(&self, out: &mut BytesMut) {
        encode_error(
            out,
            Severity::Fatal,
            self.sqlstate(),
            &self.client_message(),
            None,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_name_no_host_or_reason() {
        let e = SessionError::UpstreamConnect("db.internal.example:5432 refused".into());
        assert!(!e.client_message().contains("db.internal"));
        assert_eq!(e.sqlstate(), "08006");
        let e = SessionError::BadToken {
            reason: "kid abc unknown at https://idp.internal".into(),
            client: "token rejected",
        };
        assert!(!e.client_message().contains("idp.internal"));
        assert!(e.sqlstate().starts_with("28"));
    }

    #[test]
    fn limits_are_53300_and_name_the_limit() {
        let e = SessionError::TooManyConnections {
            listener: "pg".into(),
            limit: 200,
        };
        assert_eq!((e.sqlstate(), e.kind()), ("53300", ErrorKind::Limit));
        assert!(e
            .client_message()
            .contains("too many connections on listener \"pg\""));
        let e = SessionError::TooManySessionsForUser {
            user: "alice".into(),
            limit: 2,
        };
        assert_eq!(e.sqlstate(), "53300");
        assert!(e.client_message().contains("limits.sessions_per_user"));
    }
}
