//! The configuration file: parsed into types that cannot hold invalid states, unknown keys
//! rejected, everything validated before a port is bound. See `docs/configuration.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
    #[serde(default)]
    pub key_store: KeyStoreConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// In-flight masking (`gatehouse-masking` format). Absent: only vaulted credentials are
    /// masked (that detector can never be switched off).
    pub masking: Option<gatehouse_masking::MaskingConfig>,
    /// Group- and connection-dependent masking: the first profile whose conditions all hold
    /// for a session replaces `[masking]` for it.
    #[serde(default)]
    pub masking_profiles: Vec<MaskingProfile>,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The read-only SFTP server for auditors (`gatehouse-sftp`). Absent: not started.
    pub sftp: Option<gatehouse_sftp::SftpConfig>,
    /// Resource limits: sessions, statement and message sizes, pending approvals.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Resource limits. Every session, statement, upstream message and pending approval request
/// is bounded by one of these (ARCHITECTURE.md, invariants).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent client connections on each PostgreSQL listener, counted from accept (so
    /// including connections that have not logged in yet). Read at start.
    #[serde(default = "default_sessions_per_listener")]
    pub sessions_per_listener: u32,
    /// Concurrent logged-in PostgreSQL sessions of one user (issuer and name) across the
    /// gateway.
    #[serde(default = "default_sessions_per_user")]
    pub sessions_per_user: u32,
    /// Largest statement text the gateway parses and judges, in bytes.
    #[serde(default = "default_statement_bytes")]
    pub statement_bytes: u32,
    /// Largest upstream message other than DataRow, CopyData and FunctionCallResponse
    /// (ErrorResponse, NoticeResponse, RowDescription, …) assembled for masking, in bytes.
    #[serde(default = "default_upstream_message_bytes")]
    pub upstream_message_bytes: u32,
    /// Pending (undecided, unexpired) approval requests of one user.
    #[serde(default = "default_pending_approvals_per_user")]
    pub pending_approvals_per_user: u32,
    /// Statements of one user held on their sessions waiting for an approval at once (each
    /// keeps an upstream connection for up to its rule's hold timeout).
    #[serde(default = "default_held_statements_per_user")]
    pub held_statements_per_user: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            sessions_per_listener: default_sessions_per_listener(),
            sessions_per_user: default_sessions_per_user(),
            statement_bytes: default_statement_bytes(),
            upstream_message_bytes: default_upstream_message_bytes(),
            pending_approvals_per_user: default_pending_approvals_per_user(),
            held_statements_per_user: default_held_statements_per_user(),
        }
    }
}

fn default_sessions_per_listener() -> u32 {
    1000
}
fn default_sessions_per_user() -> u32 {
    100
}
fn default_statement_bytes() -> u32 {
    1 << 20
}
fn default_upstream_message_bytes() -> u32 {
    1 << 20
}
fn default_pending_approvals_per_user() -> u32 {
    20
}
fn default_held_statements_per_user() -> u32 {
    5
}

/// Upper bounds of the limits: beyond them a value is a typo, not a tuning.
const MAX_SESSIONS: u32 = 1_000_000;
/// PostgreSQL's own bound on one message (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB - 1).
const MAX_MESSAGE_BYTES: u32 = (1 << 30) - 1;
/// Each pending request stores up to 1 MiB of statement text; more than this many per user
/// is a typo.
const MAX_PENDING_APPROVALS: u32 = 10_000;
/// Smallest message limit: ErrorResponses of 8 KiB are common (long DETAIL/HINT/CONTEXT).
const MIN_MESSAGE_BYTES: u32 = 8 * 1024;

impl LimitsConfig {
    fn validate(&self) -> Result<(), String> {
        for (key, v, lo, hi) in [
            (
                "sessions_per_listener",
                self.sessions_per_listener,
                1,
                MAX_SESSIONS,
            ),
            ("sessions_per_user", self.sessions_per_user, 1, MAX_SESSIONS),
            (
                "statement_bytes",
                self.statement_bytes,
                MIN_MESSAGE_BYTES,
                MAX_MESSAGE_BYTES,
            ),
            (
                "upstream_message_bytes",
                self.upstream_message_bytes,
                MIN_MESSAGE_BYTES,
                MAX_MESSAGE_BYTES,
            ),
            (
                "pending_approvals_per_user",
                self.pending_approvals_per_user,
                1,
                MAX_PENDING_APPROVALS,
            ),
            (
                "held_statements_per_user",
                self.held_statements_per_user,
                1,
                MAX_PENDING_APPROVALS,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("limits.{key} must be {lo}-{hi} (got {v})"));
            }
        }
        Ok(())
    }
}

/// Just-in-time approvals.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Notified on each new request and each decision.
    pub webhook: Option<WebhookConfig>,
    /// Groups whose members may issue time-boxed grants (none: grants cannot be issued).
    #[serde(default)]
    pub grant_issuers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…`, or `http://` to a loopback address only.
    pub url: url::Url,
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// A generic JSON object.
    #[default]
    Json,
    /// Slack's incoming-webhook shape, `{"text": …}`.
    Slack,
}

/// A masking configuration for the sessions it selects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingProfile {
    pub name: String,
    /// Any of these groups (empty: any user).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Any of these connections (empty: any connection).
    #[serde(default)]
    pub connections: Vec<String>,
    /// All of these connection tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The masking configuration (same keys as `[masking]`).
    pub masking: gatehouse_masking::MaskingConfig,
}

impl MaskingProfile {
    /// Whether the profile applies to a session of a user in `groups` on `connection`;
    /// `mine` is [`MaskingProfile::groups`] resolved through the configured issuers.
    pub fn selects(
        &self,
        mine: &[gatehouse_policy::Group],
        groups: &[gatehouse_policy::Group],
        connection: &str,
        tags: &BTreeMap<String, String>,
    ) -> bool {
        (self.groups.is_empty() || mine.iter().any(|g| groups.contains(g)))
            && (self.connections.is_empty() || self.connections.iter().any(|c| c == connection))
            && self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// The guardrail policy (`gatehouse-policy` format). Without a file every statement is
/// allowed and recorded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub path: Option<PathBuf>,
}

/// Where keys live: the TPM on an appliance, files in the data dir for development.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyStoreBackend {
    #[default]
    Software,
    Tpm,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStoreConfig {
    #[serde(default)]
    pub backend: KeyStoreBackend,
    /// TSS2 TCTI string of the TPM.
    #[serde(default = "default_tcti")]
    pub tcti: String,
    /// SHA-256 PCRs the sealed keys are bound to (empty: no PCR policy).
    #[serde(default)]
    pub pcrs: Vec<u8>,
}

impl Default for KeyStoreConfig {
    fn default() -> Self {
        KeyStoreConfig {
            backend: KeyStoreBackend::Software,
            tcti: default_tcti(),
            pcrs: Vec::new(),
        }
    }
}

fn default_tcti() -> String {
    "device:/dev/tpmrm0".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default = "default_gateway_name")]
    pub name: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Pet the board's watchdog (`/dev/watchdog`) when the board has one (the appliance).
    #[serde(default)]
    pub watchdog: bool,
    /// Threads of the runtime that runs sessions, the API and the console (`None`: one per
    /// CPU). The audit store's background thread comes on top.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// More runtime threads than this is a typo, not a tuning.
const MAX_WORKER_THREADS: usize = 256;

fn default_gateway_name() -> String {
    "gatehouse".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// PostgreSQL wire protocol v3: the data path.
    Postgres,
    /// The REST API for approvals and grants (HTTPS, OIDC bearer tokens), `/v1/...`.
    Api,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: ListenerProtocol,
    pub bind: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub dangerous_allow_plaintext_on_loopback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default = "default_refresh")]
    pub jwks_refresh_min_interval_seconds: u64,
    #[serde(default = "default_max_age")]
    pub jwks_max_age_seconds: u64,
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    #[serde(default)]
    pub dev_issuer: DevIssuerConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            leeway_seconds: default_leeway(),
            jwks_refresh_min_interval_seconds: default_refresh(),
            jwks_max_age_seconds: default_max_age(),
            issuers: Vec::new(),
            dev_issuer: DevIssuerConfig::default(),
        }
    }
}

fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    10
}
fn default_max_age() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name of the issuer (`corp`): users and groups of this issuer are written
    /// `corp:alice` wherever configuration, the CLI or the API names them. Needed to name
    /// anyone when several issuers (the development issuer included, whose name is `dev`)
    /// are configured.
    pub name: Option<String>,
    pub issuer: String,
    pub audience: Vec<String>,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    pub ca_file: Option<PathBuf>,
}

fn default_username_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_email_claim() -> String {
    "email".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_dev_audience")]
    pub audience: String,
}

impl Default for DevIssuerConfig {
    fn default() -> Self {
        DevIssuerConfig {
            enabled: false,
            audience: default_dev_audience(),
        }
    }
}

fn default_dev_audience() -> String {
    "gatehouse".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub synchronous: AuditSynchronous,
    /// Bounded mode: the most milliseconds between a commit and the WAL fsync.
    #[serde(default = "default_sync_window_ms")]
    pub sync_window_ms: u64,
    /// A signed checkpoint after this many records.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// A signed checkpoint when this many seconds passed since the last one (and records
    /// were added).
    #[serde(default = "default_checkpoint_interval_seconds")]
    pub checkpoint_interval_seconds: u64,
    /// The NIST SP 800-53 Rev 5 OSCAL catalog that exports take control titles from.
    #[serde(default = "default_catalog")]
    pub catalog: PathBuf,
    /// Records younger than this are never deleted (AU-11); older ones are pruned hourly.
    #[serde(default = "default_retention_seconds")]
    pub retention_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            synchronous: AuditSynchronous::default(),
            sync_window_ms: default_sync_window_ms(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval_seconds: default_checkpoint_interval_seconds(),
            catalog: default_catalog(),
            retention_seconds: default_retention_seconds(),
        }
    }
}

fn default_retention_seconds() -> u64 {
    365 * 24 * 3600
}

fn default_catalog() -> PathBuf {
    PathBuf::from("/usr/share/gatehouse/oscal/NIST_SP-800-53_rev5_catalog.json")
}

fn default_sync_window_ms() -> u64 {
    10
}

fn default_checkpoint_every() -> u64 {
    10_000
}

fn default_checkpoint_interval_seconds() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditSynchronous {
    #[default]
    Normal,
    Full,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Postgres,
}

/// TLS toward an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Verify the certificate chain and the host name.
    #[default]
    VerifyFull,
    /// Encrypt, verify nothing.
    Require,
    /// No TLS.
    Disable,
}

impl UpstreamTls {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamTls::VerifyFull => "verify-full",
            UpstreamTls::Require => "require",
            UpstreamTls::Disable => "disable",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub name: String,
    pub kind: ConnectionKind,
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub database: String,
    #[serde(default)]
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Record each session: what the client received (after masking), sealed and chained
    /// in the audit store as `session.output` records (`gatehouse sessions show`).
    #[serde(default)]
    pub record_sessions: bool,
    /// Most bytes recorded per session; the rest is not recorded and the truncation is.
    #[serde(default = "default_recording_max_bytes")]
    pub recording_max_bytes: u64,
}

fn default_recording_max_bytes() -> u64 {
    1 << 20
}

fn default_pg_port() -> u16 {
    5432
}

/// A validated configuration with the hash of the file it came from (CM-2).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub path: PathBuf,
    /// Hex SHA-256 of the file bytes.
    pub hash: String,
}

impl LoadedConfig {
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<LoadedConfig, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            message: "not UTF-8".into(),
        })?;
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
        Ok(LoadedConfig {
            config,
            path: path.to_owned(),
            hash,
        })
    }
}

/// The name of the development issuer in `dev:alice` (reserved).
pub const DEV_ISSUER_NAME: &str = "dev";

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Config {
    fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.gateway.name) {
            return Err(format!(
                "gateway.name {:?}: use 1-63 letters, digits, '_', '-', '.'",
                self.gateway.name
            ));
        }
        if let Some(n) = self.gateway.worker_threads {
            if !(1..=MAX_WORKER_THREADS).contains(&n) {
                return Err(format!(
                    "gateway.worker_threads must be 1-{MAX_WORKER_THREADS} (got {n})"
                ));
            }
        }
        self.limits.validate()?;
        let mut seen = std::collections::HashSet::new();
        for l in &self.listeners {
            if !valid_name(&l.name) {
                return Err(format!("listeners: invalid name {:?}", l.name));
            }
            if !seen.insert(&l.name) {
                return Err(format!("listeners: duplicate name {:?}", l.name));
            }
            if l.tls_cert.is_some() != l.tls_key.is_some() {
                return Err(format!(
                    "listener {:?}: tls_cert and tls_key go together",
                    l.name
                ));
            }
            if l.dangerous_allow_plaintext_on_loopback && !l.bind.ip().is_loopback() {
                return Err(format!(
                    "listener {:?}: dangerous_allow_plaintext_on_loopback needs a loopback bind address, not {}",
                    l.name, l.bind
                ));
            }
        }
        let binds: std::collections::HashSet<_> = self.listeners.iter().map(|l| l.bind).collect();
        if binds.len() != self.listeners.len() {
            return Err("listeners: two listeners bind the same address".into());
        }
        let mut issuers = std::collections::HashSet::new();
        for i in &self.identity.issuers {
            if !issuers.insert(&i.issuer) {
                return Err(format!("identity.issuers: duplicate issuer {:?}", i.issuer));
            }
            if i.audience.is_empty() || i.audience.iter().any(|a| a.is_empty()) {
                return Err(format!(
                    "identity issuer {:?}: audience must list at least one non-empty value",
                    i.issuer
                ));
            }
            for (k, v) in [
                ("username_claim", &i.username_claim),
                ("groups_claim", &i.groups_claim),
                ("email_claim", &i.email_claim),
            ] {
                if v.is_empty() {
                    return Err(format!("identity issuer {:?}: {k} is empty", i.issuer));
                }
            }
        }
        if self
            .identity
            .issuers
            .iter()
            .any(|i| i.name.as_deref() == Some(DEV_ISSUER_NAME))
        {
            return Err(format!(
                "identity.issuers: the name {DEV_ISSUER_NAME:?} is reserved for the development issuer"
            ));
        }
        let issuers = self
            .issuers()
            .map_err(|e| format!("identity.issuers: {e}"))?;
        issuers
            .groups(&self.approvals.grant_issuers)
            .map_err(|e| format!("approvals.grant_issuers: {e}"))?;
        if self.key_store.pcrs.iter().any(|p| *p > 23) {
            return Err("key_store.pcrs: PCR indexes are 0-23".into());
        }
        if !(1..=1000).contains(&self.audit.sync_window_ms) {
            return Err("audit.sync_window_ms must be 1-1000".into());
        }
        if self.audit.retention_seconds == 0 {
            return Err("audit.retention_seconds must be at least 1".into());
        }
        if self.audit.checkpoint_every == 0 {
            return Err("audit.checkpoint_every must be at least 1".into());
        }
        if !(1..=86_400).contains(&self.audit.checkpoint_interval_seconds) {
            return Err("audit.checkpoint_interval_seconds must be 1-86400".into());
        }
        if let Some(m) = &self.masking {
            m.validate().map_err(|e| format!("masking: {e}"))?;
        }
        if let Some(w) = &self.approvals.webhook {
            let loopback = matches!(
                w.url.host_str(),
                Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
            );
            if !(w.url.scheme() == "https" || (w.url.scheme() == "http" && loopback)) {
                return Err(
                    "approvals.webhook.url must be https:// (http:// only to a loopback address)"
                        .into(),
                );
            }
        }
        let mut profile_names = std::collections::HashSet::new();
        for p in &self.masking_profiles {
            if !valid_name(&p.name) || !profile_names.insert(&p.name) {
                return Err(format!(
                    "masking_profiles: invalid or duplicate name {:?}",
                    p.name
                ));
            }
            p.masking
                .validate()
                .map_err(|e| format!("masking_profiles {:?}: {e}", p.name))?;
            self.issuers()
                .and_then(|i| i.groups(&p.groups))
                .map_err(|e| format!("masking_profiles {:?}: groups: {e}", p.name))?;
        }
        if let Some(sftp) = &self.sftp {
            sftp.validate()?;
            if self.listeners.iter().any(|l| l.bind == sftp.bind) {
                return Err("sftp.bind: a listener binds the same address".into());
            }
        }
        if self.key_store.tcti.is_empty() {
            return Err("key_store.tcti is empty".into());
        }
        if self.identity.leeway_seconds > 300 {
            return Err("identity.leeway_seconds: at most 300".into());
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.connections {
            if !valid_name(&c.name) {
                return Err(format!("connections: invalid name {:?}", c.name));
            }
            if !names.insert(&c.name) {
                return Err(format!("connections: duplicate name {:?}", c.name));
            }
            if c.host.is_empty() || c.database.is_empty() {
                return Err(format!(
                    "connection {:?}: host and database are required",
                    c.name
                ));
            }
            if c.port == 0 {
                return Err(format!("connection {:?}: port 0", c.name));
            }
        }
        Ok(())
    }

    /// The configured issuers and their names (`dev` for the development issuer): how
    /// users and groups written in configuration, the CLI and the API become principals.
    pub fn issuers(&self) -> Result<gatehouse_policy::Issuers, gatehouse_policy::NameError> {
        let remote = self.identity.issuers.iter().map(|i| {
            (
                i.name.clone(),
                gatehouse_policy::IssuerId::new(i.issuer.clone()),
            )
        });
        let issuers = gatehouse_policy::Issuers::new(remote)?;
        if self.identity.dev_issuer.enabled {
            issuers.with_development(
                DEV_ISSUER_NAME,
                gatehouse_policy::IssuerId::new(gatehouse_identity::DEV_ISSUER),
            )
        } else {
            Ok(issuers)
        }
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// Where `gatehouse serve` writes its pid.
    pub fn pid_path(&self) -> PathBuf {
        self.gateway.data_dir.join("gatehouse.pid")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.audit
            .path
            .clone()
            .unwrap_or_else(|| self.gateway.data_dir.join("audit.db"))
    }

    pub fn vault_path(&self) -> PathBuf {
        self.gateway.data_dir.join("vault.bin")
    }

    pub fn keys_dir(&self) -> PathBuf {
        match self.key_store.backend {
            KeyStoreBackend::Software => self.gateway.data_dir.join("keys"),
            KeyStoreBackend::Tpm => self.gateway.data_dir.join("tpm"),
        }
    }

    /// The directory the SFTP server serves and scheduled exports are written to.
    pub fn exports_dir(&self) -> PathBuf {
        self.gateway.data_dir.join("exports")
    }

    pub fn dev_issuer_dir(&self) -> PathBuf {
        self.gateway.data_dir.join("dev-issuer")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(s: &str) -> Result<LoadedConfig, ConfigError> {
        LoadedConfig::from_bytes(Path::new("t.toml"), s.as_bytes())
    }

    const BASE: &str = r#"
[gateway]
data_dir = "/tmp/x"
[[listeners]]
name = "pg"
protocol = "postgres"
bind = "127.0.0.1:6432"
[[connections]]
name = "app"
kind = "postgres"
host = "db"
database = "app"
tags = { environment = "production" }
"#;

    #[test]
    fn base_config_loads_with_defaults() {
        let c = load(BASE).unwrap();
        let conn = c.config.connection("app").unwrap();
        assert_eq!(conn.port, 5432);
        assert_eq!(conn.tls, UpstreamTls::VerifyFull);
        assert_eq!(conn.tags["environment"], "production");
        assert_eq!(c.config.gateway.name, "gatehouse");
        assert_eq!(c.config.gateway.worker_threads, None);
        assert_eq!(c.hash.len(), 64);
    }

    #[test]
    fn worker_threads_are_bounded() {
        let with = |n: &str| {
            load(&BASE.replace(
                "data_dir = \"/tmp/x\"",
                &format!("data_dir = \"/tmp/x\"\nworker_threads = {n}"),
            ))
        };
        assert_eq!(with("1").unwrap().config.gateway.worker_threads, Some(1));
        assert_eq!(with("8").unwrap().config.gateway.worker_threads, Some(8));
        let e = with("0").unwrap_err();
        assert!(e.to_string().contains("worker_threads"), "{e}");
        assert!(with("100000").is_err());
        assert!(with("-1").is_err());
    }

    #[test]
    fn limits_have_defaults_and_bounds() {
        let l = load(BASE).unwrap().config.limits;
        assert_eq!(l, LimitsConfig::default());
        assert_eq!(l.sessions_per_listener, 1000);
        assert_eq!(l.sessions_per_user, 100);
        assert_eq!(l.statement_bytes, 1 << 20);
        assert_eq!(l.upstream_message_bytes, 1 << 20);
        assert_eq!(l.pending_approvals_per_user, 20);
        let with = |extra: &str| load(&format!("{BASE}\n[limits]\n{extra}\n"));
        let l = with(
            "sessions_per_listener = 200\nsessions_per_user = 2\npending_approvals_per_user = 3",
        )
        .unwrap()
        .config
        .limits;
        assert_eq!(
            (
                l.sessions_per_listener,
                l.sessions_per_user,
                l.pending_approvals_per_user
            ),
            (200, 2, 3)
        );
        assert_eq!(l.statement_bytes, 1 << 20);
        for bad in [
            "sessions_per_listener = 0",
            "sessions_per_user = 0",
            "pending_approvals_per_user = 0",
            "statement_bytes = 100",
            "upstream_message_bytes = 1073741824",
            "sessions_per_listener = -1",
        ] {
            assert!(with(bad).is_err(), "{bad} accepted");
        }
        let e = with("sessions_per_usr = 5").unwrap_err();
        assert!(e.to_string().contains("sessions_per_usr"), "{e}");
        let e = with("sessions_per_user = 0").unwrap_err();
        assert!(e.to_string().contains("limits.sessions_per_user"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = load(&BASE.replace("host = \"db\"", "host = \"db\"\nhots = 1")).unwrap_err();
        assert!(e.to_string().contains("hots"), "{e}");
        // A typo in a masking or policy table must not fail open.
        let e = load(&format!("{BASE}\n[masking]\nx = 1\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = load(&format!("{BASE}\n[masking]\ndisabled = [\"crad\"]\n")).unwrap_err();
        assert!(e.to_string().contains("crad"), "{e}");
        let e = load(&format!("{BASE}\n[policy]\npaht = \"p.toml\"\n")).unwrap_err();
        assert!(e.to_string().contains("paht"), "{e}");
        // Approval webhooks: https, or plain http only to loopback.
        let hook = |u: &str| load(&format!("{BASE}\n[approvals.webhook]\nurl = \"{u}\"\n"));
        assert!(hook("https://hooks.example.com/x").is_ok());
        assert!(hook("http://127.0.0.1:9/x").is_ok());
        assert!(hook("http://hooks.example.com/x").is_err());
        assert!(hook("ftp://127.0.0.1/x").is_err());
    }

    #[test]
    fn api_listeners_parse_and_share_the_listener_rules() {
        let api = |extra: &str| {
            load(&format!(
                "{BASE}\n[[listeners]]\nname = \"api\"\nprotocol = \"api\"\nbind = \"127.0.0.1:8443\"\n{extra}"
            ))
        };
        let c = api("").unwrap();
        assert_eq!(c.config.listeners[1].protocol, ListenerProtocol::Api);
        assert!(api("dangerous_allow_plaintext_on_loopback = true\n").is_ok());
        assert!(api("tls_cert = \"c.pem\"\n").is_err());
        assert!(api("routes = 1\n").is_err());
        let e = load(&BASE.replace("protocol = \"postgres\"", "protocol = \"http\"")).unwrap_err();
        assert!(e.to_string().contains("http"), "{e}");
    }

    #[test]
    fn plaintext_only_on_loopback() {
        let s = BASE.replace(
            "bind = \"127.0.0.1:6432\"",
            "bind = \"0.0.0.0:6432\"\ndangerous_allow_plaintext_on_loopback = true",
        );
        let e = load(&s).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn issuer_names_make_principals_unambiguous() {
        let two = format!(
            "{BASE}\n[[identity.issuers]]\nname = \"corp\"\nissuer = \"https://corp.example\"\naudience = [\"g\"]\n\n[[identity.issuers]]\nname = \"partner\"\nissuer = \"https://partner.example\"\naudience = [\"g\"]\n"
        );
        let c = load(&two).unwrap();
        let issuers = c.config.issuers().unwrap();
        let a = issuers.user("corp:alice").unwrap();
        let b = issuers.user("partner:alice").unwrap();
        assert_eq!(a.issuer.as_str(), "https://corp.example");
        assert!(!a.same_person(&b));
        assert!(
            issuers.user("alice").is_err(),
            "plain name with two issuers"
        );
        // The development issuer is named `dev`.
        let with_dev = format!("{two}\n[identity.dev_issuer]\nenabled = true\n");
        let i = load(&with_dev).unwrap().config.issuers().unwrap();
        assert_eq!(
            i.user("dev:alice").unwrap().issuer.as_str(),
            "gatehouse-dev"
        );
        // Beside one real issuer, a plain name is the real issuer's, never the dev issuer's.
        let one_dev = format!(
            "{BASE}\n[[identity.issuers]]\nissuer = \"https://corp.example\"\naudience = [\"g\"]\n\n[identity.dev_issuer]\nenabled = true\n"
        );
        let i = load(&one_dev).unwrap().config.issuers().unwrap();
        assert_eq!(
            i.user("alice").unwrap().issuer.as_str(),
            "https://corp.example"
        );
        assert_eq!(
            i.user("dev:alice").unwrap().issuer.as_str(),
            "gatehouse-dev"
        );
        // One issuer without a name: plain names, as before.
        let one = format!(
            "{BASE}\n[[identity.issuers]]\nissuer = \"https://corp.example\"\naudience = [\"g\"]\n"
        );
        let i = load(&one).unwrap().config.issuers().unwrap();
        assert_eq!(
            i.user("alice").unwrap().issuer.as_str(),
            "https://corp.example"
        );
        // Duplicate, reserved and malformed names are refused.
        assert!(load(&two.replace("\"partner\"", "\"corp\"")).is_err());
        assert!(load(&two.replace("\"partner\"", "\"dev\"")).is_err());
        assert!(load(&two.replace("\"partner\"", "\"a:b\"")).is_err());
    }

    #[test]
    fn duplicates_and_bad_values_are_errors() {
        let dup = format!(
            "{BASE}\n[[connections]]\nname = \"app\"\nkind = \"postgres\"\nhost = \"h\"\ndatabase = \"d\"\n"
        );
        assert!(load(&dup).unwrap_err().to_string().contains("duplicate"));
        assert!(load(&BASE.replace("kind = \"postgres\"", "kind = \"mysql\"")).is_err());
        let tls = BASE.replace("database = \"app\"", "database = \"app\"\ntls = \"allow\"");
        assert!(load(&tls).is_err());
    }
}
