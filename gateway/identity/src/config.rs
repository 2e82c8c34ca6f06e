//! Plain configuration data and its validation.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::{Host, Url};

use crate::error::ConfigError;

/// One trusted OIDC issuer, as the gateway reads it from its TOML config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// Issuer identifier, e.g. `https://login.example.com/realms/x`. Must equal the token `iss`
    /// and the discovery document's `issuer` exactly. `http` is allowed only for loopback hosts.
    pub issuer: String,
    /// Accepted audiences; one of them must appear in the token `aud`.
    pub audience: Vec<String>,
    /// Claim naming the user (a non-empty string). Default `sub`.
    pub username_claim: String,
    /// Claim holding groups: an array of strings or a single string. Default `groups`.
    pub groups_claim: String,
    /// Claim holding the e-mail address. Default `email`.
    pub email_claim: String,
    /// Extra PEM CA for `https` to the issuer. When set, the issuer's certificate must chain to a
    /// CA in this file (it replaces the built-in web PKI roots for this issuer).
    pub ca_file: Option<PathBuf>,
}

impl IssuerConfig {
    /// An issuer with the default claim names and no extra CA.
    pub fn new(issuer: impl Into<String>, audience: Vec<String>) -> Self {
        IssuerConfig {
            issuer: issuer.into(),
            audience,
            username_claim: "sub".to_owned(),
            groups_claim: "groups".to_owned(),
            email_claim: "email".to_owned(),
            ca_file: None,
        }
    }
}

/// Tuning of the verifier; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierOptions {
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default 30 s.
    pub leeway: Duration,
    /// An issuer's JWKS is fetched at most this often (unknown `kid`, failures). Default 10 s.
    pub refresh_min_interval: Duration,
    /// A cached JWKS older than this is refetched. Default 1 h.
    pub jwks_max_age: Duration,
    /// Timeout of each HTTP request to an issuer. Default 5 s.
    pub http_timeout: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        VerifierOptions {
            leeway: Duration::from_secs(30),
            refresh_min_interval: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(5),
        }
    }
}

/// Transport policy for one issuer, derived from its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `https` only (redirects must stay on https).
    Https,
    /// Plain `http` to a loopback host; the `jwks_uri` must be https or loopback http too.
    LoopbackHttp,
}

/// Checks one issuer and returns its transport policy.
pub(crate) fn validate_issuer(cfg: &IssuerConfig) -> Result<Transport, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidIssuer {
        issuer: cfg.issuer.clone(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(&cfg.issuer).map_err(|e| invalid(&e.to_string()))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("an issuer has no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("an issuer has no user information"));
    }
    let transport = match url.scheme() {
        "https" => Transport::Https,
        "http" if is_loopback_url(&url) => Transport::LoopbackHttp,
        "http" => return Err(ConfigError::InsecureIssuer(cfg.issuer.clone())),
        _ => return Err(invalid("scheme must be https (or http on loopback)")),
    };
    if url.host().is_none() {
        return Err(invalid("no host"));
    }
    if cfg.audience.is_empty() || cfg.audience.iter().any(String::is_empty) {
        return Err(ConfigError::EmptyAudience(cfg.issuer.clone()));
    }
    for (field, value) in [
        ("username_claim", &cfg.username_claim),
        ("groups_claim", &cfg.groups_claim),
        ("email_claim", &cfg.email_claim),
    ] {
        if value.is_empty() {
            return Err(ConfigError::EmptyClaimName {
                issuer: cfg.issuer.clone(),
                field,
            });
        }
    }
    Ok(transport)
}

/// True when the URL's host is `localhost`, in 127.0.0.0/8, or `::1`.
pub(crate) fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => {
            let d = d.strip_suffix('.').unwrap_or(d);
            d.eq_ignore_ascii_case("localhost")
        }
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The discovery URL of an issuer (OIDC Discovery 1.0 §4: a terminating `/` of the issuer is
/// removed before `/.well-known/openid-configuration` is appended).
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}
