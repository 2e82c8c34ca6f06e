//! One remote issuer: its configuration, HTTP agent and JWKS cache with rate-limited, coalesced
//! refreshes.
//!
//! Readers take a snapshot of the cached key set (a short `std` lock, never held across an
//! await). Refreshes are serialised by an async mutex: a login that needs fresh keys remembers
//! the generation it saw, takes the mutex, and fetches only if nobody refreshed meanwhile and
//! the last attempt is older than `refresh_min_interval`. So many logins waiting on an unknown
//! `kid` share one fetch, and an attacker sending random `kid`s cannot make us hammer the IdP.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::Mutex;

use crate::config::{discovery_url, IssuerConfig, Transport, VerifierOptions};
use crate::error::AuthError;
use crate::fetch;
use crate::jwks::KeySet;

/// A snapshot of an issuer's keys.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) keys: Arc<KeySet>,
    fetched_at: Instant,
    /// Increases with every successful fetch; 0 means "nothing cached yet".
    pub(crate) generation: u64,
}

#[derive(Debug, Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<AuthError>,
    /// From discovery; forgotten after a failed fetch so the next attempt rediscovers.
    jwks_uri: Option<String>,
    generation: u64,
}

/// The result of asking for a refresh.
#[derive(Debug)]
pub(crate) enum Refresh {
    /// Keys newer than the ones the caller saw (fetched now or by a concurrent caller).
    Fresh(Cached),
    /// The last attempt was too recent and succeeded: nothing new.
    RateLimited,
}

#[derive(Debug)]
pub(crate) struct RemoteIssuer {
    pub(crate) config: IssuerConfig,
    transport: Transport,
    discovery_url: String,
    agent: ureq::Agent,
    opts: VerifierOptions,
    cache: RwLock<Option<Cached>>,
    refresh: Mutex<RefreshState>,
}

impl RemoteIssuer {
    pub(crate) fn new(
        config: IssuerConfig,
        transport: Transport,
        agent: ureq::Agent,
        opts: VerifierOptions,
    ) -> RemoteIssuer {
        RemoteIssuer {
            discovery_url: discovery_url(&config.issuer),
            config,
            transport,
            agent,
            opts,
            cache: RwLock::new(None),
            refresh: Mutex::new(RefreshState::default()),
        }
    }

    fn snapshot(&self) -> Option<Cached> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The keys to verify with: fetched on first use, refetched when older than `jwks_max_age`
    /// (a failed refetch keeps the cached keys and logs a warning).
    pub(crate) async fn keys(&self) -> Result<Cached, AuthError> {
        match self.snapshot() {
            None => match self.refresh(0).await? {
                Refresh::Fresh(c) => Ok(c),
                // Unreachable in practice (a successful attempt fills the cache).
                Refresh::RateLimited => Err(AuthError::IssuerUnavailable(format!(
                    "{}: no keys fetched yet",
                    self.config.issuer
                ))),
            },
            Some(c) if c.fetched_at.elapsed() >= self.opts.jwks_max_age => {
                match self.refresh(c.generation).await {
                    Ok(Refresh::Fresh(new)) => Ok(new),
                    Ok(Refresh::RateLimited) => Ok(c),
                    Err(e) => {
                        tracing::warn!(
                            issuer = %self.config.issuer,
                            error = %e.reason(),
                            "refreshing a stale JWKS failed; using the cached keys"
                        );
                        Ok(c)
                    }
                }
            }
            Some(c) => Ok(c),
        }
    }

    /// Refetches the JWKS unless someone already replaced generation `seen`, or the last attempt
    /// is younger than `refresh_min_interval` (then the last error, if any, is returned again).
    pub(crate) async fn refresh(&self, seen: u64) -> Result<Refresh, AuthError> {
        let mut state = self.refresh.lock().await;
        if let Some(c) = self.snapshot() {
            if c.generation != seen {
                return Ok(Refresh::Fresh(c));
            }
        }
        if let Some(at) = state.last_attempt {
            if at.elapsed() < self.opts.refresh_min_interval {
                return match &state.last_error {
                    Some(e) => Err(e.clone()),
                    None => Ok(Refresh::RateLimited),
                };
            }
        }

        let agent = self.agent.clone();
        let issuer = self.config.issuer.clone();
        let transport = self.transport;
        let discovery_url = self.discovery_url.clone();
        let known_uri = state.jwks_uri.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            let jwks_uri = match known_uri {
                Some(u) => u,
                None => fetch::discover(&agent, &issuer, transport, &discovery_url)?,
            };
            let keys = fetch::fetch_jwks(&agent, &jwks_uri)?;
            Ok::<_, String>((keys, jwks_uri))
        })
        .await
        .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
        // Recorded when the attempt completes: a login cancelled mid-fetch (client gone) leaves
        // no attempt behind, so the next waiter fetches instead of being rate-limited.
        state.last_attempt = Some(Instant::now());

        match fetched {
            Ok((keys, jwks_uri)) => {
                state.generation += 1;
                state.last_error = None;
                tracing::info!(
                    issuer = %self.config.issuer,
                    jwks_uri = %jwks_uri,
                    kids = ?keys.kids(),
                    skipped = keys.skipped,
                    "fetched issuer keys"
                );
                if keys.keys.is_empty() {
                    tracing::warn!(issuer = %self.config.issuer, "issuer JWKS has no usable key");
                }
                state.jwks_uri = Some(jwks_uri);
                let cached = Cached {
                    keys: Arc::new(keys),
                    fetched_at: Instant::now(),
                    generation: state.generation,
                };
                *self
                    .cache
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cached.clone());
                Ok(Refresh::Fresh(cached))
            }
            Err(msg) => {
                state.jwks_uri = None;
                let err = AuthError::IssuerUnavailable(format!("{}: {msg}", self.config.issuer));
                tracing::warn!(issuer = %self.config.issuer, error = %msg, "fetching issuer keys failed");
                state.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Warm-up: fetch discovery and JWKS now (subject to the same rate limit).
    pub(crate) async fn prefetch(&self) -> Result<(), AuthError> {
        let seen = self.snapshot().map_or(0, |c| c.generation);
        self.refresh(seen).await.map(|_| ())
    }
}
