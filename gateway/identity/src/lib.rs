//! `gatehouse-identity`: OIDC bearer-token (JWT) validation for Gatehouse logins, plus a
//! built-in development issuer.
//!
//! A client sends an OIDC JWT as its PostgreSQL password; [`Verifier::verify`] turns it into an
//! [`Identity`] or an [`AuthError`]. Issuers are configured as [`IssuerConfig`]s; their keys are
//! found by OIDC discovery (`{issuer}/.well-known/openid-configuration` → `jwks_uri` → JWKS) and
//! cached per issuer. [`DevIssuer`] is a local Ed25519 issuer for development that the verifier
//! trusts statically, without HTTP.
//!
//! # Invariants
//! - Only `RS256`, `ES256` and `EdDSA` signatures are accepted. `none` and every `HS*` are refused
//!   before any key is looked up, and the header `alg` must agree with the key type (and the JWK
//!   `alg`, when present) *before* the signature is checked: a token "signed" with an HMAC over a
//!   public key can never verify.
//! - The issuer is chosen from the token's `iss` claim, which is read before the signature is
//!   checked but is then required to equal the configured issuer exactly, and no other claim is
//!   trusted until the signature has been verified.
//! - `exp` is required; `nbf` and `iat` are checked when present, all with the configured leeway,
//!   against the time the caller passes in (time is injected, never read inside validation).
//! - Tokens are bounded ([`MAX_TOKEN_LEN`]) and so are HTTP responses from issuers
//!   ([`MAX_HTTP_RESPONSE`]); HTTP uses `https` except for loopback issuers.
//! - Tokens, signatures and private keys never appear in `Debug`/`Display` output, logs or error
//!   messages. [`AuthError::reason`] is for the audit log; [`AuthError::client_message`] is the
//!   only text meant for the client.
//! - One crypto backend: `ring` (through `jsonwebtoken` 9 and `ureq`'s rustls).
#![forbid(unsafe_code)]

mod config;
mod dev;
mod error;
mod fetch;
mod issuer;
mod jwks;
mod jwt;
mod verifier;

#[cfg(test)]
mod tests;

pub use config::{IssuerConfig, VerifierOptions};
pub use dev::{DevIssuer, DevIssuerError, DEV_ISSUER};
pub use error::{AuthError, ConfigError};
pub use fetch::MAX_HTTP_RESPONSE;
pub use jwt::{Identity, MAX_TOKEN_LEN};
pub use verifier::Verifier;
