//! [`Verifier`]: picks the issuer of a token, finds its key, verifies it and its claims.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use jsonwebtoken::DecodingKey;

use crate::config::{validate_issuer, IssuerConfig, VerifierOptions};
use crate::dev::{DevIssuer, DEV_ISSUER};
use crate::error::{AuthError, ConfigError};
use crate::fetch;
use crate::issuer::{Refresh, RemoteIssuer};
use crate::jwks::{Key, KeySet, Lookup};
use crate::jwt::{identity_from_claims, Alg, ClaimRules, Identity, Unverified};

/// The public half of the development issuer, trusted without HTTP.
struct DevTrust {
    kid: String,
    audience: Vec<String>,
    key: DecodingKey,
}

/// Validates login tokens against the configured issuers. `Send + Sync`; share it in an `Arc`.
pub struct Verifier {
    issuers: Vec<RemoteIssuer>,
    dev: Option<DevTrust>,
    leeway: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self
            .issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        f.debug_struct("Verifier")
            .field("issuers", &issuers)
            .field("dev_issuer", &self.dev.as_ref().map(|d| &d.kid))
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Verifier {
    /// Validates the configuration (URLs, audiences, claim names, CA files). Does no network I/O:
    /// keys are fetched on first use or by [`prefetch`](Self::prefetch). Only the public key of
    /// `dev` is kept.
    pub fn new(
        issuers: Vec<IssuerConfig>,
        dev: Option<DevIssuer>,
        opts: VerifierOptions,
    ) -> Result<Verifier, ConfigError> {
        if issuers.is_empty() && dev.is_none() {
            return Err(ConfigError::NoIssuers);
        }
        let mut seen = HashSet::new();
        let mut remote = Vec::with_capacity(issuers.len());
        for cfg in issuers {
            let transport = validate_issuer(&cfg)?;
            if !seen.insert(cfg.issuer.clone()) {
                return Err(ConfigError::DuplicateIssuer(cfg.issuer));
            }
            let ca = match &cfg.ca_file {
                Some(path) => Some(fetch::load_ca_file(&cfg.issuer, path)?),
                None => None,
            };
            let agent = fetch::agent(transport, ca, opts.http_timeout);
            remote.push(RemoteIssuer::new(cfg, transport, agent, opts));
        }
        let dev = dev.map(|d| {
            tracing::warn!(
                issuer = DEV_ISSUER,
                kid = d.kid(),
                audience = d.audience(),
                "DEVELOPMENT ISSUER ENABLED: tokens minted with the local development key are \
                 trusted. Never enable this in production."
            );
            DevTrust {
                kid: d.kid().to_owned(),
                audience: vec![d.audience().to_owned()],
                key: DecodingKey::from_ed_der(d.public_key()),
            }
        });
        Ok(Verifier {
            issuers: remote,
            dev,
            leeway: opts.leeway,
        })
    }

    /// Verifies `token` at time `now` and returns the identity it carries.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let token = Unverified::parse(token)?;
        let iss = token.issuer()?;
        if let Some(dev) = self.dev.as_ref().filter(|_| iss == DEV_ISSUER) {
            return self.verify_dev(dev, &token, now);
        }
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(AuthError::UnknownIssuer)?;

        let cached = issuer.keys().await?;
        let kid = token.kid.as_deref();
        let verified = match check_key(&cached.keys, kid, token.alg) {
            Ok(Some(key)) => token.verify_signature(&key.decoding, key.alg),
            Ok(None) => match issuer.refresh(cached.generation).await? {
                // Retry once with the new keys.
                Refresh::Fresh(fresh) => match check_key(&fresh.keys, kid, token.alg)? {
                    Some(key) => token.verify_signature(&key.decoding, key.alg),
                    None => Err(AuthError::UnknownKey),
                },
                Refresh::RateLimited => Err(AuthError::UnknownKey),
            },
            Err(e) => Err(e),
        };
        verified?;

        let cfg = &issuer.config;
        let rules = ClaimRules {
            issuer: &cfg.issuer,
            audience: &cfg.audience,
            username_claim: &cfg.username_claim,
            groups_claim: &cfg.groups_claim,
            email_claim: &cfg.email_claim,
            leeway: self.leeway,
        };
        identity_from_claims(&token.claims, &rules, now)
    }

    fn verify_dev(
        &self,
        dev: &DevTrust,
        token: &Unverified<'_>,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        if token.kid.as_deref().is_some_and(|k| k != dev.kid) {
            return Err(AuthError::UnknownKey);
        }
        token.verify_signature(&dev.key, Alg::EdDsa)?;
        let rules = ClaimRules {
            issuer: DEV_ISSUER,
            audience: &dev.audience,
            username_claim: "sub",
            groups_claim: "groups",
            email_claim: "email",
            leeway: self.leeway,
        };
        identity_from_claims(&token.claims, &rules, now)
    }

    /// Fetches discovery and JWKS of every remote issuer now. Failures are reported, not fatal:
    /// the issuer is tried again on the next login (subject to `refresh_min_interval`).
    pub async fn prefetch(&self) -> Vec<(String, Result<(), AuthError>)> {
        let mut out = Vec::with_capacity(self.issuers.len());
        for issuer in &self.issuers {
            out.push((issuer.config.issuer.clone(), issuer.prefetch().await));
        }
        out
    }

    /// The configured remote issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.config.issuer.as_str())
    }

    /// Whether the development issuer is trusted.
    pub fn dev_issuer_enabled(&self) -> bool {
        self.dev.is_some()
    }
}

/// `Ok(Some)`: the key to verify with; `Ok(None)`: not known yet (worth a refresh);
/// `Err`: the token cannot be verified with these keys whatever a refresh brings.
fn check_key<'a>(
    keys: &'a KeySet,
    kid: Option<&str>,
    alg: Alg,
) -> Result<Option<&'a Key>, AuthError> {
    match keys.select(kid, alg) {
        Lookup::Found(k) => Ok(Some(k)),
        Lookup::NotFound => Ok(None),
        Lookup::Ambiguous => Err(AuthError::UnknownKey),
        Lookup::Mismatch(m) => Err(AuthError::AlgorithmMismatch(m)),
    }
}
