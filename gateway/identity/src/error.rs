//! The two error types of this crate: [`ConfigError`] (refuse to start) and [`AuthError`]
//! (refuse one login).

use std::path::PathBuf;

/// An identity configuration that cannot be used; the gateway must refuse to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither an issuer nor the development issuer is configured: nobody could log in.
    #[error("identity: no issuer is configured and the development issuer is disabled")]
    NoIssuers,
    /// The issuer is not an absolute URL with a host (or has a query or fragment).
    #[error("identity issuer {issuer:?}: not a usable issuer URL: {reason}")]
    InvalidIssuer {
        /// The configured issuer string.
        issuer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The issuer uses plain `http` on a host that is not loopback.
    #[error(
        "identity issuer {0:?}: https is required (plain http is allowed only for loopback hosts)"
    )]
    InsecureIssuer(String),
    /// The issuer's `audience` list is empty or holds an empty string.
    #[error("identity issuer {0:?}: audience must list at least one non-empty value")]
    EmptyAudience(String),
    /// A claim name (`username_claim`, `groups_claim`, `email_claim`) is empty.
    #[error("identity issuer {issuer:?}: {field} must not be empty")]
    EmptyClaimName {
        /// The configured issuer string.
        issuer: String,
        /// Which setting is empty.
        field: &'static str,
    },
    /// The same issuer appears twice.
    #[error("identity issuer {0:?} is configured more than once")]
    DuplicateIssuer(String),
    /// The issuer's `ca_file` cannot be read or holds no PEM certificate.
    #[error("identity issuer {issuer:?}: ca_file {}: {reason}", path.display())]
    CaFile {
        /// The configured issuer string.
        issuer: String,
        /// The configured CA file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Why a token was refused.
///
/// [`reason`](Self::reason) is the precise text for the audit log (it may name an issuer URL,
/// never the token); [`client_message`](Self::client_message) is the short text the client sees;
/// [`is_unavailable`](Self::is_unavailable) separates "the identity provider could not be reached"
/// from "the token is bad".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Not a compact JWS with three base64url parts and JSON header/payload, or too long.
    #[error("malformed token")]
    Malformed,
    /// The header `alg` is not one of RS256, ES256, EdDSA (e.g. `none`, `HS256`).
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The header `alg` does not fit the key named by `kid` (key type or the JWK's `alg`).
    #[error("token algorithm does not match its key: {0}")]
    AlgorithmMismatch(String),
    /// The `iss` claim names no configured issuer.
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    /// No key of the issuer matches the token's `kid` (also after a JWKS refresh).
    #[error("no key of the issuer matches the token")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    /// No `aud` value is an accepted audience.
    #[error("token audience not accepted")]
    WrongAudience,
    /// A required claim is absent (or, for the username, not a non-empty string).
    #[error("token lacks required claim {0:?}")]
    MissingClaim(String),
    /// A claim has the wrong JSON type.
    #[error("token claim {0:?} has an invalid value")]
    InvalidClaim(String),
    /// The issuer's discovery document or JWKS could not be fetched or used.
    #[error("identity provider unavailable: {0}")]
    IssuerUnavailable(String),
}

impl AuthError {
    /// Precise, audit-log text. Names no token material.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// Short text that is safe to send to the client.
    pub fn client_message(&self) -> &'static str {
        match self {
            AuthError::Expired => "token expired",
            AuthError::NotYetValid | AuthError::IssuedInFuture => "token not yet valid",
            AuthError::Malformed => "malformed token",
            AuthError::IssuerUnavailable(_) => "identity provider unavailable",
            AuthError::UnsupportedAlgorithm(_)
            | AuthError::AlgorithmMismatch(_)
            | AuthError::UnknownIssuer
            | AuthError::UnknownKey
            | AuthError::BadSignature
            | AuthError::WrongAudience
            | AuthError::MissingClaim(_)
            | AuthError::InvalidClaim(_) => "token rejected",
        }
    }

    /// True when the identity provider could not be reached or answered unusably: the token
    /// was not judged, and the caller should report a transient failure rather than a bad password.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::IssuerUnavailable(_))
    }
}

/// Keeps at most `max` printable ASCII characters of an attacker-controlled string so that it
/// can go into an error message without spoofing log lines.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}
