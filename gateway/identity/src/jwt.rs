//! Sans-IO JWT handling: split and decode a compact JWS, check its header against the algorithm
//! allow-list, verify a signature with a given key, and turn verified claims into an [`Identity`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::error::{sanitize, AuthError};

/// Longest token accepted, in bytes. Real ID/access tokens are a few KiB; anything larger is
/// refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The verified identity behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `iss` (equal to the configured issuer).
    pub issuer: String,
    /// The token's `sub`.
    pub subject: String,
    /// The value of the issuer's `username_claim`.
    pub username: String,
    /// The value of the issuer's `email_claim`, if present.
    pub email: Option<String>,
    /// The value of the issuer's `groups_claim` (empty when absent).
    pub groups: Vec<String>,
    /// The token's `jti`, if present.
    pub token_id: Option<String>,
    /// The token's `exp`.
    pub expires_at: SystemTime,
}

/// The accepted signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    /// Maps a JOSE `alg` name; everything outside the allow-list is refused.
    pub(crate) fn from_name(name: &str) -> Result<Alg, AuthError> {
        match name {
            "RS256" => Ok(Alg::Rs256),
            "ES256" => Ok(Alg::Es256),
            "EdDSA" => Ok(Alg::EdDsa),
            other => Err(AuthError::UnsupportedAlgorithm(sanitize(other, 32))),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// A split, decoded but *unverified* token.
pub(crate) struct Unverified<'a> {
    pub(crate) alg: Alg,
    pub(crate) kid: Option<String>,
    pub(crate) claims: Map<String, Value>,
    signing_input: &'a str,
    signature: &'a str,
}

impl std::fmt::Debug for Unverified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unverified")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl<'a> Unverified<'a> {
    /// Splits and decodes a compact JWS and checks the header algorithm against the allow-list.
    pub(crate) fn parse(token: &'a str) -> Result<Unverified<'a>, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (header, payload, signature) =
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(h), Some(p), Some(s), None) => (h, p, s),
                _ => return Err(AuthError::Malformed),
            };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let header = decode_object(header)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => Alg::from_name(a)?,
            _ => return Err(AuthError::Malformed),
        };
        // RFC 7515 §4.1.11: a `crit` extension we do not understand makes the token invalid.
        if header.contains_key("crit") {
            return Err(AuthError::Malformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(AuthError::Malformed),
        };
        if signature.is_empty() {
            return Err(AuthError::Malformed);
        }
        let claims = decode_object(payload)?;
        Ok(Unverified {
            alg,
            kid,
            claims,
            signing_input,
            signature,
        })
    }

    /// The unverified `iss`, used only to pick the issuer whose keys then verify the token.
    pub(crate) fn issuer(&self) -> Result<&str, AuthError> {
        match self.claims.get("iss") {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(AuthError::InvalidClaim("iss".to_owned())),
            None => Err(AuthError::MissingClaim("iss".to_owned())),
        }
    }

    /// Verifies the signature with `key`, whose only algorithm is `key_alg`.
    ///
    /// The algorithm check is not optional: `jsonwebtoken::crypto::verify` does not check the key
    /// family itself (an HS* algorithm would use the key bytes as an HMAC secret, and an RSA
    /// component key used with another algorithm panics inside the library).
    pub(crate) fn verify_signature(
        &self,
        key: &DecodingKey,
        key_alg: Alg,
    ) -> Result<(), AuthError> {
        if key_alg != self.alg {
            return Err(AuthError::AlgorithmMismatch(format!(
                "token alg {} but the key is for {}",
                self.alg.name(),
                key_alg.name()
            )));
        }
        match jsonwebtoken::crypto::verify(
            self.signature,
            self.signing_input.as_bytes(),
            key,
            self.alg.jsonwebtoken(),
        ) {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(AuthError::BadSignature),
        }
    }
}

fn decode_object(part: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

/// What a verified token's claims must satisfy.
#[derive(Debug)]
pub(crate) struct ClaimRules<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) audience: &'a [String],
    pub(crate) username_claim: &'a str,
    pub(crate) groups_claim: &'a str,
    pub(crate) email_claim: &'a str,
    pub(crate) leeway: Duration,
}

/// Checks the claims of a token whose signature has been verified and builds the identity.
pub(crate) fn identity_from_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: SystemTime,
) -> Result<Identity, AuthError> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == rules.issuer => {}
        Some(Value::String(_)) => return Err(AuthError::UnknownIssuer),
        Some(_) => return Err(AuthError::InvalidClaim("iss".to_owned())),
        None => return Err(AuthError::MissingClaim("iss".to_owned())),
    }
    check_audience(claims, rules.audience)?;

    let now = unix_seconds(now);
    let leeway = i64::try_from(rules.leeway.as_secs()).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if iat > now.saturating_add(leeway) {
            return Err(AuthError::IssuedInFuture);
        }
    }

    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => return Err(AuthError::MissingClaim("sub".to_owned())),
        Some(_) => return Err(AuthError::InvalidClaim("sub".to_owned())),
    };
    let username = match claims.get(rules.username_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(AuthError::MissingClaim(rules.username_claim.to_owned())),
    };
    let groups = match claims.get(rules.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(g)) => vec![g.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(g) => Ok(g.clone()),
                _ => Err(AuthError::InvalidClaim(rules.groups_claim.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(AuthError::InvalidClaim(rules.groups_claim.to_owned())),
    };
    let email = optional_string(claims, rules.email_claim)?;
    let token_id = optional_string(claims, "jti")?;

    Ok(Identity {
        issuer: rules.issuer.to_owned(),
        subject,
        username,
        email,
        groups,
        token_id,
        expires_at: UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
    })
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), AuthError> {
    let matches = |a: &str| accepted.iter().any(|x| x == a);
    match claims.get("aud") {
        Some(Value::String(a)) if matches(a) => Ok(()),
        Some(Value::Array(items))
            if items
                .iter()
                .any(|v| matches!(v, Value::String(a) if matches(a))) =>
        {
            Ok(())
        }
        Some(Value::String(_) | Value::Array(_)) => Err(AuthError::WrongAudience),
        Some(_) => Err(AuthError::InvalidClaim("aud".to_owned())),
        None => Err(AuthError::MissingClaim("aud".to_owned())),
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthError::InvalidClaim(name.to_owned())),
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional), floored to whole seconds.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    let invalid = || AuthError::InvalidClaim(name.to_owned());
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64() {
                // Only whole-second precision matters; values beyond ±2^62 s are nonsense.
                if f.is_finite() && f.abs() < 4.6e18 {
                    #[allow(clippy::cast_possible_truncation)]
                    Ok(Some(f.floor() as i64))
                } else {
                    Err(invalid())
                }
            } else {
                Err(invalid())
            }
        }
        Some(_) => Err(invalid()),
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
