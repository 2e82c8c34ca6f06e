//! Blocking HTTP to issuers (discovery document and JWKS) with `ureq`. Callers run these
//! functions inside `tokio::task::spawn_blocking`.

use std::time::Duration;

use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Agent;
use url::Url;

use crate::config::{is_loopback_url, Transport};
use crate::error::ConfigError;
use crate::jwks::KeySet;

/// Largest discovery document or JWKS read from an issuer, in bytes.
pub const MAX_HTTP_RESPONSE: u64 = 1024 * 1024;

/// Reads the PEM certificates of an issuer's `ca_file`.
pub(crate) fn load_ca_file(
    issuer: &str,
    path: &std::path::Path,
) -> Result<Vec<Certificate<'static>>, ConfigError> {
    let err = |reason: String| ConfigError::CaFile {
        issuer: issuer.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(err(format!("invalid PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(err("no PEM certificate found".to_owned()));
    }
    Ok(certs)
}

/// The HTTP agent for one issuer: global timeout, no proxy from the environment, and for https
/// issuers https-only (also across redirects) with the web PKI roots or the issuer's `ca_file`.
pub(crate) fn agent(
    transport: Transport,
    ca: Option<Vec<Certificate<'static>>>,
    timeout: Duration,
) -> Agent {
    let roots = match ca {
        Some(certs) => RootCerts::new_with_certs(&certs),
        None => RootCerts::WebPki,
    };
    let (https_only, max_redirects) = match transport {
        Transport::Https => (true, 3),
        // A redirect could leave loopback over plain http: follow none.
        Transport::LoopbackHttp => (false, 0),
    };
    Agent::config_builder()
        .timeout_global(Some(timeout))
        .https_only(https_only)
        .max_redirects(max_redirects)
        .proxy(None)
        .user_agent("gatehouse-identity")
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build()
        .new_agent()
}

/// GET `url` and read at most [`MAX_HTTP_RESPONSE`] bytes of a 2xx body.
fn get(agent: &Agent, url: &str) -> Result<Vec<u8>, String> {
    let mut response = agent
        .get(url)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_HTTP_RESPONSE)
        .read_to_vec()
        .map_err(|e| format!("GET {url}: reading body: {e}"))
}

/// Fetches the discovery document and returns its `jwks_uri` after checking that its `issuer`
/// equals the configured issuer exactly.
pub(crate) fn discover(
    agent: &Agent,
    issuer: &str,
    transport: Transport,
    discovery_url: &str,
) -> Result<String, String> {
    let body = get(agent, discovery_url)?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("discovery document {discovery_url} is not JSON: {e}"))?;
    match doc.get("issuer").and_then(Value::as_str) {
        Some(i) if i == issuer => {}
        Some(other) => {
            return Err(format!(
                "discovery document {discovery_url} names issuer {:?}, expected {issuer:?}",
                crate::error::sanitize(other, 200)
            ))
        }
        None => return Err(format!("discovery document {discovery_url} has no issuer")),
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("discovery document {discovery_url} has no jwks_uri"))?;
    let url = Url::parse(jwks_uri).map_err(|e| {
        format!(
            "discovery document {discovery_url}: jwks_uri {:?} is not a URL: {e}",
            crate::error::sanitize(jwks_uri, 200)
        )
    })?;
    let allowed = match url.scheme() {
        "https" => true,
        "http" => transport == Transport::LoopbackHttp && is_loopback_url(&url),
        _ => false,
    };
    if !allowed {
        return Err(format!(
            "discovery document {discovery_url}: jwks_uri {:?} must be https",
            crate::error::sanitize(jwks_uri, 200)
        ));
    }
    Ok(url.into())
}

/// Fetches and parses a JWKS.
pub(crate) fn fetch_jwks(agent: &Agent, jwks_uri: &str) -> Result<KeySet, String> {
    let body = get(agent, jwks_uri)?;
    KeySet::parse(&body).map_err(|e| format!("{jwks_uri}: {e}"))
}
