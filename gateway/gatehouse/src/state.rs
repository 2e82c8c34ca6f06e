//! Everything a running gateway shares between sessions, built once from a validated config.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use gatehouse_audit::{AuditStore, EventKind, Record, StoreOptions, Synchronous};
use gatehouse_board::{KeyStore, SoftwareKeyStore};
use gatehouse_board_tpm::{TpmKeyStore, TpmOptions};
use gatehouse_identity::{DevIssuer, Verifier, VerifierOptions};
use gatehouse_masking::{Engine, Entity, MaskingConfig};
use gatehouse_policy::Policy;
use gatehouse_vault::Vault;

use crate::config::{AuditSynchronous, Config, KeyStoreBackend, LoadedConfig};
use crate::pg::cancel::CancelRegistry;

/// Shared state of a running gateway.
#[derive(Debug)]
pub struct Gateway {
    pub config: ArcSwap<LoadedConfig>,
    pub verifier: ArcSwap<Verifier>,
    pub vault: Vault,
    pub audit: AuditStore,
    pub cancels: Arc<CancelRegistry>,
    pub keys: Arc<dyn KeyStore>,
    /// The guardrail policy in force (`None`: no policy configured, everything allowed).
    pub policy: ArcSwap<Option<Arc<Policy>>>,
    /// The masking engines in force: the configured rules plus every vaulted credential.
    pub masking: ArcSwap<MaskingSet>,
    /// Just-in-time approval requests and their decisions (shared with the CLI).
    pub approvals: gatehouse_approvals::ApprovalStore,
    /// Logged-in PostgreSQL sessions per user (`limits.sessions_per_user`).
    pub user_sessions: crate::pg::limits::UserSessions,
    /// Statements held for approval per user (`limits.held_statements_per_user`).
    pub held_statements: crate::pg::limits::UserSessions,
    /// Source-column names read from each target's catalog (masking rules follow columns,
    /// not aliases).
    pub catalogs: crate::pg::catalog::Catalogs,
}

/// Opens the approvals store in the data dir, with `limits.pending_approvals_per_user`.
pub fn open_approvals(config: &Config) -> anyhow::Result<gatehouse_approvals::ApprovalStore> {
    // A schema-1 store (users without issuers) is upgraded to the sole issuer, if there is
    // exactly one; otherwise its old rows become inert (docs/decisions.md, "Principals").
    let issuers = config.issuers().context("identity.issuers")?;
    let opts = gatehouse_approvals::StoreOptions {
        max_pending_per_requester: config.limits.pending_approvals_per_user,
        ..gatehouse_approvals::StoreOptions::default()
    };
    gatehouse_approvals::ApprovalStore::open_upgrading(
        config.gateway.data_dir.join("approvals.db"),
        opts,
        issuers.only(),
    )
    .context("opening the approvals store")
}

/// The default masking engine and one per profile.
#[derive(Debug)]
pub struct MaskingSet {
    pub default: Arc<Engine>,
    /// Each profile with its groups resolved (principals at one issuer) and its engine.
    pub profiles: Vec<(
        crate::config::MaskingProfile,
        Vec<gatehouse_policy::Group>,
        Arc<Engine>,
    )>,
}

impl MaskingSet {
    /// The engine for a session, and the profile that chose it.
    pub fn select(
        &self,
        groups: &[gatehouse_policy::Group],
        connection: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> (Arc<Engine>, Option<String>) {
        for (p, mine, e) in &self.profiles {
            if p.selects(mine, groups, connection, tags) {
                return (Arc::clone(e), Some(p.name.clone()));
            }
        }
        (Arc::clone(&self.default), None)
    }
}

/// Builds the masking engine: the `[masking]` config (or vaulted secrets only) and every
/// credential in the vault, with a keyed-hash key derived from the vault data key (stable
/// across restarts, so hashed values still join).
pub fn build_masking(
    config: &Config,
    vault: &Vault,
    keys: &dyn KeyStore,
) -> anyhow::Result<MaskingSet> {
    let secrets = vault
        .all_secrets()
        .context("reading the vault for masking")?;
    let patterns: Vec<&[u8]> = secrets.iter().map(|s| s.expose().as_bytes()).collect();
    let dk = keys.data_key(gatehouse_board::KeyPurpose::Vault)?;
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, dk.bytes()),
        b"gatehouse-masking-hash-key/v1",
    );
    let mut hash_key = [0u8; 32];
    hash_key.copy_from_slice(tag.as_ref());
    let build = |cfg: &MaskingConfig| {
        Engine::new(cfg, &patterns, hash_key)
            .map(Arc::new)
            .context("building the masking engine")
    };
    let default = build(&default_masking(config))?;
    let issuers = config.issuers().context("identity.issuers")?;
    let mut profiles = Vec::new();
    for p in &config.masking_profiles {
        let groups = issuers
            .groups(&p.groups)
            .with_context(|| format!("masking_profiles {:?}: groups", p.name))?;
        profiles.push((p.clone(), groups, build(&p.masking)?));
    }
    Ok(MaskingSet { default, profiles })
}

/// `[masking]`, or vaulted credentials only.
fn default_masking(config: &Config) -> MaskingConfig {
    match &config.masking {
        Some(m) => m.clone(),
        None => MaskingConfig {
            disabled: Entity::ALL
                .iter()
                .copied()
                .filter(|e| !matches!(e, Entity::VaultedSecret | Entity::Column))
                .collect(),
            ..MaskingConfig::default()
        },
    }
}

/// Loads and validates the configured policy file (`None` when none is configured).
pub fn load_policy(config: &Config) -> anyhow::Result<Option<Arc<Policy>>> {
    let Some(path) = &config.policy.path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the policy file {}", path.display()))?;
    let issuers = config
        .issuers()
        .context("identity.issuers (the names the policy uses)")?;
    let policy = Policy::from_toml(&text, &issuers)
        .with_context(|| format!("policy file {}", path.display()))?;
    Ok(Some(Arc::new(policy)))
}

impl Gateway {
    pub fn open(loaded: LoadedConfig) -> anyhow::Result<Gateway> {
        let config = &loaded.config;
        std::fs::create_dir_all(&config.gateway.data_dir).with_context(|| {
            format!(
                "creating data dir {}",
                config.gateway.data_dir.to_string_lossy()
            )
        })?;
        let keys = open_keys(config)?;
        let vault = Vault::open(&config.vault_path(), keys.clone()).context("opening the vault")?;
        let verifier = build_verifier(config)?;
        let policy = load_policy(config)?;
        let masking = build_masking(config, &vault, keys.as_ref())?;
        let approvals = open_approvals(config)?;
        let opts = StoreOptions {
            synchronous: match config.audit.synchronous {
                AuditSynchronous::Normal => Synchronous::Normal,
                AuditSynchronous::Full => Synchronous::Full,
            },
            sync_window: Duration::from_millis(config.audit.sync_window_ms),
            checkpoint_every: config.audit.checkpoint_every,
            checkpoint_interval: Duration::from_secs(config.audit.checkpoint_interval_seconds),
            ..StoreOptions::default()
        };
        // Records are sealed with the key store's audit key; checkpoints are signed with its
        // signing key (the TPM's, with the TPM backend).
        let audit = AuditStore::open_with(&config.audit_path(), opts, keys.clone())
            .context("opening the audit store")?;
        Ok(Gateway {
            config: ArcSwap::from_pointee(loaded),
            verifier: ArcSwap::from_pointee(verifier),
            vault,
            audit,
            cancels: Arc::new(CancelRegistry::default()),
            keys,
            policy: ArcSwap::from_pointee(policy),
            masking: ArcSwap::from_pointee(masking),
            approvals,
            catalogs: crate::pg::catalog::Catalogs::default(),
            user_sessions: crate::pg::limits::UserSessions::default(),
            held_statements: crate::pg::limits::UserSessions::default(),
        })
    }

    pub fn name(&self) -> String {
        self.config.load().config.gateway.name.clone()
    }

    /// A record stamped with the current time and this gateway's name.
    pub fn record(&self, event: EventKind) -> Record {
        Record::new(event, &self.name(), now_us())
    }

    /// SHA-256 (hex) of the policy in force, for decision records (`None`: no policy).
    pub fn policy_hash(&self) -> Option<String> {
        self.policy
            .load()
            .as_ref()
            .as_ref()
            .map(|p| p.hash().to_owned())
    }

    /// Rebuilds the masking engines from the config in force and the vault as it is now
    /// (after a credential was replaced).
    pub fn rebuild_masking(&self) -> anyhow::Result<()> {
        let config = self.config.load();
        let masking = build_masking(&config.config, &self.vault, self.keys.as_ref())?;
        self.masking.store(Arc::new(masking));
        Ok(())
    }

    /// Re-reads the config file; on any error the running config stays in force.
    pub fn reload(&self) -> anyhow::Result<String> {
        let path = self.config.load().path.clone();
        let loaded = LoadedConfig::load(&path)?;
        let verifier = build_verifier(&loaded.config)?;
        // A broken policy refuses the whole reload: the last good config and policy stay.
        let policy = load_policy(&loaded.config)?;
        let masking = build_masking(&loaded.config, &self.vault, self.keys.as_ref())?;
        let hash = loaded.hash.clone();
        self.verifier.store(Arc::new(verifier));
        self.policy.store(Arc::new(policy));
        self.masking.store(Arc::new(masking));
        // `sessions_per_user` is read at each login; `sessions_per_listener` only at start.
        self.approvals
            .set_max_pending_per_requester(loaded.config.limits.pending_approvals_per_user);
        self.config.store(Arc::new(loaded));
        Ok(hash)
    }
}

pub fn open_keys(config: &Config) -> anyhow::Result<Arc<dyn KeyStore>> {
    Ok(match config.key_store.backend {
        KeyStoreBackend::Software => Arc::new(
            SoftwareKeyStore::open_or_create(&config.keys_dir())
                .context("opening the software key store")?,
        ),
        KeyStoreBackend::Tpm => Arc::new(open_tpm(config)?),
    })
}

pub fn open_tpm(config: &Config) -> anyhow::Result<TpmKeyStore> {
    let opts = TpmOptions::with_pcr_policy(&config.key_store.pcrs);
    TpmKeyStore::open_or_provision_with(&config.key_store.tcti, &config.keys_dir(), &opts)
        .context("opening the TPM key store")
}

pub fn open_vault(config: &Config) -> anyhow::Result<Vault> {
    let keys = open_keys(config)?;
    Vault::open(&config.vault_path(), keys).context("opening the vault")
}

pub fn dev_issuer(config: &Config) -> anyhow::Result<DevIssuer> {
    DevIssuer::load_or_create(
        &config.dev_issuer_dir(),
        &config.identity.dev_issuer.audience,
    )
    .context("opening the development issuer key")
}

pub fn build_verifier(config: &Config) -> anyhow::Result<Verifier> {
    let issuers = config
        .identity
        .issuers
        .iter()
        .map(|i| gatehouse_identity::IssuerConfig {
            issuer: i.issuer.clone(),
            audience: i.audience.clone(),
            username_claim: i.username_claim.clone(),
            groups_claim: i.groups_claim.clone(),
            email_claim: i.email_claim.clone(),
            ca_file: i.ca_file.clone(),
        })
        .collect();
    let dev = if config.identity.dev_issuer.enabled {
        Some(dev_issuer(config)?)
    } else {
        None
    };
    let opts = VerifierOptions {
        leeway: Duration::from_secs(config.identity.leeway_seconds),
        refresh_min_interval: Duration::from_secs(
            config.identity.jwks_refresh_min_interval_seconds,
        ),
        jwks_max_age: Duration::from_secs(config.identity.jwks_max_age_seconds),
        ..VerifierOptions::default()
    };
    Verifier::new(issuers, dev, opts).context("identity configuration")
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
