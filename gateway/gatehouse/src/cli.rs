//! The management subcommands: tokens, connections (with write-only credentials), audit
//! reading and config checks. They work on the config file and the data dir directly, so they
//! run with or without a gateway serving.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use gatehouse_audit::AuditReader;
use gatehouse_vault::{Credential, Secret};

use crate::config::{LoadedConfig, UpstreamTls};
use crate::{decisions, state};

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// User name (becomes `sub` and `preferred_username`).
    #[arg(long)]
    user: String,
    /// Comma-separated groups.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
}

pub fn token(config: &Path, args: TokenArgs) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    if !loaded.config.identity.dev_issuer.enabled {
        bail!("the development issuer is disabled: set [identity.dev_issuer] enabled = true (development only)");
    }
    let issuer = state::dev_issuer(&loaded.config)?;
    let groups: Vec<String> = args.groups.into_iter().filter(|g| !g.is_empty()).collect();
    let t = issuer
        .mint(
            &args.user,
            &groups,
            Duration::from_secs(args.ttl_seconds),
            SystemTime::now(),
        )
        .context("minting a token")?;
    println!("{t}");
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Add a new connection; the password is read from stdin (first line) unless
    /// --password-env names a variable. It is stored encrypted and never shown again. An
    /// existing name is refused: use `update` or `set-credential`.
    Add(AddArgs),
    /// Change only the given fields of a connection (tags are added or replaced one by one,
    /// --remove-tag drops one); everything else, comments included, stays as it is.
    Update(UpdateArgs),
    /// Replace a connection's vaulted password (stdin, first line, or --password-env);
    /// write-only, like `add`. New logins use it at once.
    SetCredential(SetCredentialArgs),
    /// List connections (never their passwords).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a connection and its credential.
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    name: String,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    database: Option<String>,
    /// Upstream user Gatehouse logs in as (the vaulted password is kept).
    #[arg(long)]
    user: Option<String>,
    #[arg(long, value_enum)]
    tls: Option<TlsArg>,
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Set a tag, key=value (repeatable); other tags are kept.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Remove a tag by key (repeatable).
    #[arg(long = "remove-tag")]
    remove_tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SetCredentialArgs {
    name: String,
    /// Read the password from this environment variable instead of stdin.
    #[arg(long)]
    password_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    name: String,
    #[arg(long)]
    host: String,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    #[arg(long)]
    database: String,
    /// Upstream user Gatehouse logs in as.
    #[arg(long)]
    user: String,
    #[arg(long, value_enum, default_value = "verify-full")]
    tls: TlsArg,
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Tag as key=value (repeatable), e.g. environment=production.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Read the password from this environment variable instead of stdin.
    #[arg(long)]
    password_env: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TlsArg {
    VerifyFull,
    Require,
    Disable,
}

impl From<TlsArg> for UpstreamTls {
    fn from(t: TlsArg) -> Self {
        match t {
            TlsArg::VerifyFull => UpstreamTls::VerifyFull,
            TlsArg::Require => UpstreamTls::Require,
            TlsArg::Disable => UpstreamTls::Disable,
        }
    }
}

pub fn connection(config: &Path, cmd: ConnectionCommand) -> anyhow::Result<()> {
    match cmd {
        ConnectionCommand::Add(a) => add_connection(config, a),
        ConnectionCommand::Update(a) => update_connection(config, a),
        ConnectionCommand::SetCredential(a) => set_credential(config, a),
        ConnectionCommand::List { json } => list_connections(config, json),
        ConnectionCommand::Remove { name } => remove_connection(config, &name),
    }
}

fn read_password(env: Option<&str>) -> anyhow::Result<Secret> {
    let pw = match env {
        Some(var) => {
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(Secret::new(pw))
}

fn add_connection(config: &Path, a: AddArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the config file")?;
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(a.name.clone());
    t["kind"] = toml_edit::value("postgres");
    t["host"] = toml_edit::value(a.host.clone());
    t["port"] = toml_edit::value(i64::from(a.port));
    t["database"] = toml_edit::value(a.database.clone());
    t["tls"] = toml_edit::value(UpstreamTls::from(a.tls).as_str());
    if let Some(ca) = &a.ca_file {
        t["ca_file"] = toml_edit::value(ca.to_string_lossy().into_owned());
    }
    if !a.tags.is_empty() {
        let mut tags = toml_edit::InlineTable::new();
        for kv in &a.tags {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--tag {kv:?}: use key=value"))?;
            tags.insert(k, v.into());
        }
        t["tags"] = toml_edit::value(tags);
    }
    let arr = doc
        .entry("connections")
        .or_insert_with(|| toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .context("`connections` in the config file is not an array of tables")?;
    if arr
        .iter()
        .any(|c| c.get("name").and_then(|n| n.as_str()) == Some(a.name.as_str()))
    {
        bail!(
            "connection {:?} already exists; nothing changed (change fields with `gatehouse connection update`, the password with `gatehouse connection set-credential`, or remove it first)",
            a.name
        );
    }
    arr.push(t);
    let new_text = doc.to_string();
    // Validate the whole result before anything is written.
    let loaded = LoadedConfig::from_bytes(config, new_text.as_bytes())?;
    let password = read_password(a.password_env.as_deref())?;
    let vault = state::open_vault(&loaded.config)?;
    vault
        .put(
            &a.name,
            &Credential {
                user: a.user.clone(),
                password,
            },
        )
        .context("storing the credential")?;
    crate::tls::write_private(config, new_text.as_bytes()).context("writing the config file")?;
    let mut what = vec![
        format!("host={}", a.host),
        format!("port={}", a.port),
        format!("database={}", a.database),
        format!("user={}", a.user),
        format!("tls={}", UpstreamTls::from(a.tls).as_str()),
    ];
    what.extend(a.tags.iter().map(|t| format!("tag {t}")));
    what.push("credential set".into());
    record_change(&loaded.config, &a.name, "added", &what)?;
    eprintln!(
        "connection {:?} saved (credential vaulted). A running gateway picks it up on SIGHUP (kill -HUP <pid>).",
        a.name
    );
    Ok(())
}

/// Records a CLI change of a connection (`connection.changed`): what changed, never a
/// secret, and the local account that ran the command.
fn record_change(
    cfg: &crate::config::Config,
    name: &str,
    verb: &str,
    what: &[String],
) -> anyhow::Result<()> {
    let mut r = gatehouse_audit::Record::new(
        gatehouse_audit::EventKind::ConnectionChanged,
        &cfg.gateway.name,
        state::now_us(),
    );
    r.listener = Some("cli".into());
    r.subject = Some(format!("uid:{}", rustix::process::getuid().as_raw()));
    r.username = std::env::var("USER").ok().filter(|u| !u.is_empty());
    r.connection = Some(name.to_owned());
    r.reason = Some(format!("connection {verb}: {}", what.join(", ")));
    match crate::outbox::deliver(cfg, &r).context("recording the change in the audit trail")? {
        crate::outbox::Delivery::Appended => {}
        crate::outbox::Delivery::Queued => {
            eprintln!("audit: the running gateway records the change within a second")
        }
    }
    Ok(())
}

/// The `[[connections]]` entry named `name`, for an in-place edit.
fn connection_table<'d>(
    doc: &'d mut toml_edit::DocumentMut,
    name: &str,
) -> anyhow::Result<&'d mut toml_edit::Table> {
    doc.get_mut("connections")
        .and_then(|i| i.as_array_of_tables_mut())
        .and_then(|arr| {
            arr.iter_mut()
                .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .with_context(|| format!("no connection named {name:?}"))
}

fn update_connection(config: &Path, a: UpdateArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the config file")?;
    let t = connection_table(&mut doc, &a.name)?;
    let mut what = Vec::new();
    // Assigning through `value_mut` keeps the key's position and the comments around it.
    let mut set = |t: &mut toml_edit::Table, key: &str, v: toml_edit::Value, shown: String| {
        match t.get_mut(key).and_then(|i| i.as_value_mut()) {
            Some(old) => {
                let decor = old.decor().clone();
                *old = v;
                *old.decor_mut() = decor;
            }
            None => t[key] = toml_edit::Item::Value(v),
        }
        what.push(format!("{key}={shown}"));
    };
    if let Some(h) = &a.host {
        set(t, "host", h.as_str().into(), h.clone());
    }
    if let Some(p) = a.port {
        set(t, "port", i64::from(p).into(), p.to_string());
    }
    if let Some(d) = &a.database {
        set(t, "database", d.as_str().into(), d.clone());
    }
    if let Some(tls) = a.tls {
        let v = UpstreamTls::from(tls).as_str();
        set(t, "tls", v.into(), v.to_owned());
    }
    if let Some(ca) = &a.ca_file {
        let v = ca.to_string_lossy().into_owned();
        set(t, "ca_file", v.as_str().into(), v.clone());
    }
    if !a.tags.is_empty() || !a.remove_tags.is_empty() {
        if t.get("tags").is_none() {
            t["tags"] = toml_edit::value(toml_edit::InlineTable::new());
        }
        let tags = t
            .get_mut("tags")
            .and_then(|i| i.as_table_like_mut())
            .context("`tags` of this connection is not a table")?;
        for kv in &a.tags {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--tag {kv:?}: use key=value"))?;
            tags.insert(k, toml_edit::value(v));
            what.push(format!("tag {k}={v}"));
        }
        for k in &a.remove_tags {
            if tags.remove(k).is_none() {
                bail!("connection {:?} has no tag {k:?}; nothing changed", a.name);
            }
            what.push(format!("tag {k} removed"));
        }
    }
    if what.is_empty() && a.user.is_none() {
        bail!("nothing to change: give at least one of --host, --port, --database, --user, --tls, --ca-file, --tag, --remove-tag");
    }
    let new_text = doc.to_string();
    let loaded = LoadedConfig::from_bytes(config, new_text.as_bytes())?;
    if let Some(user) = &a.user {
        let vault = state::open_vault(&loaded.config)?;
        let Some(old) = vault.get(&a.name)? else {
            bail!(
                "connection {:?} has no vaulted credential; set one with `gatehouse connection set-credential`",
                a.name
            );
        };
        vault
            .put(&a.name, &Credential::new(user.clone(), old.password))
            .context("storing the credential")?;
        what.push(format!("user={user}"));
    }
    crate::tls::write_private(config, new_text.as_bytes()).context("writing the config file")?;
    record_change(&loaded.config, &a.name, "updated", &what)?;
    eprintln!(
        "connection {:?} updated ({}). A running gateway picks it up on SIGHUP (kill -HUP <pid>).",
        a.name,
        what.join(", ")
    );
    Ok(())
}

fn set_credential(config: &Path, a: SetCredentialArgs) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    if loaded.config.connection(&a.name).is_none() {
        bail!("no connection named {:?}", a.name);
    }
    let vault = state::open_vault(&loaded.config)?;
    let user = match vault.entries()?.into_iter().find(|(n, _)| *n == a.name) {
        Some((_, user)) => user,
        None => bail!(
            "connection {:?} has no vaulted credential (and so no upstream user); add it again with `gatehouse connection remove` + `add`",
            a.name
        ),
    };
    let password = read_password(a.password_env.as_deref())?;
    vault
        .put(&a.name, &Credential::new(user.clone(), password))
        .context("storing the credential")?;
    record_change(
        &loaded.config,
        &a.name,
        "credential set",
        &[format!("password replaced for upstream user {user}")],
    )?;
    eprintln!(
        "connection {:?}: new credential vaulted; new logins use it. A running gateway masks the new password in results once it has recorded the change (within a second).",
        a.name
    );
    Ok(())
}

fn list_connections(config: &Path, json: bool) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    let vault = state::open_vault(&loaded.config)?;
    let entries: std::collections::HashMap<String, String> = vault.entries()?.into_iter().collect();
    for c in &loaded.config.connections {
        let user = entries.get(&c.name);
        if json {
            let v = serde_json::json!({
                "name": c.name, "kind": "postgres", "host": c.host, "port": c.port,
                "database": c.database, "tls": c.tls.as_str(), "tags": c.tags,
                "upstream_user": user, "credential": if user.is_some() { "vaulted" } else { "missing" },
            });
            println!("{v}");
        } else {
            println!(
                "{}\tpostgres://{}@{}:{}/{}\ttls={}\tcredential={}",
                c.name,
                user.map(String::as_str).unwrap_or("?"),
                c.host,
                c.port,
                c.database,
                c.tls.as_str(),
                if user.is_some() { "vaulted" } else { "missing" }
            );
        }
    }
    Ok(())
}

fn remove_connection(config: &Path, name: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the config file")?;
    let mut found = false;
    if let Some(arr) = doc
        .get_mut("connections")
        .and_then(|i| i.as_array_of_tables_mut())
    {
        let before = arr.len();
        arr.retain(|c| c.get("name").and_then(|n| n.as_str()) != Some(name));
        found = arr.len() != before;
    }
    let new_text = doc.to_string();
    let loaded = LoadedConfig::from_bytes(config, new_text.as_bytes())?;
    let vault = state::open_vault(&loaded.config)?;
    let vaulted = vault.remove(name)?;
    if !found && !vaulted {
        bail!("no connection named {name:?}");
    }
    crate::tls::write_private(config, new_text.as_bytes())?;
    record_change(
        &loaded.config,
        name,
        "removed",
        &["entry and credential removed".into()],
    )?;
    eprintln!("connection {name:?} removed");
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show the newest records.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Keep printing new records.
        #[arg(short, long)]
        follow: bool,
    },
    /// Find records by user, connection, event, decision and time range (all optional,
    /// combined with AND), oldest first.
    Search {
        /// User name (from the token's username claim).
        #[arg(long)]
        user: Option<String>,
        /// Gatehouse connection name.
        #[arg(long)]
        connection: Option<String>,
        /// Event kind, e.g. `statement`, `login.failure`, `approval.approved`.
        #[arg(long)]
        event: Option<String>,
        /// `allow` or `deny`.
        #[arg(long)]
        decision: Option<String>,
        /// From this UTC time (RFC 3339, inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Up to this UTC time (RFC 3339, exclusive).
        #[arg(long)]
        to: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Verify the whole store offline: every record's hash chain and seal, the Merkle tree,
    /// every checkpoint's signature, truncation and rollback. Exits 1 naming the first bad
    /// record or checkpoint.
    Verify {
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
        /// The signing key the first checkpoint must carry (`scheme:hex`, as `gatehouse board
        /// status` prints it). Default: the key store's current key.
        #[arg(long)]
        trusted_key: Option<String>,
        /// Do not open the key store: check links, tree and signatures, not sealed contents
        /// (what an auditor without the appliance's keys can check).
        #[arg(long)]
        no_keys: bool,
    },
    /// Ask the running gateway (SIGUSR1) for a signed checkpoint now, or write one directly
    /// when no gateway runs on this data dir. Prints the checkpoint.
    Checkpoint,
    /// Export the records of a time range as evidence for auditors: records.csv,
    /// records.jsonl, an OSCAL 1.2.1 assessment-results document mapped to NIST SP 800-53
    /// Rev 5 controls, and a manifest signed by the key store. The store is verified first
    /// and the result is part of the evidence.
    Export {
        /// Start, inclusive (RFC 3339 UTC, e.g. 2026-12-01 or 2026-12-01T00:00:00Z).
        /// Default: the beginning.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (RFC 3339 UTC). Default: now.
        #[arg(long)]
        to: Option<String>,
        /// Output directory (created; must be empty).
        #[arg(long)]
        out: PathBuf,
        /// The NIST SP 800-53 Rev 5 OSCAL catalog (control titles). Default: `audit.catalog`.
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Delete records older than the retention period (`audit.retention_seconds`), keeping
    /// what checkpoints and proofs need so that the rest still verifies. The gateway also
    /// does this every hour. A cut-off inside the retention period is refused.
    Prune {
        /// Delete records before this time (RFC 3339 UTC). Default: now − retention.
        #[arg(long)]
        before: Option<String>,
    },
    /// Check an export directory offline: the manifest signature, every file's hash, the
    /// embedded checkpoint's signature. Exits 1 when anything is wrong.
    VerifyExport {
        dir: PathBuf,
        /// The signing key the manifest must carry (`scheme:hex`). Default: this key store's.
        #[arg(long)]
        trusted_key: Option<String>,
    },
    /// Print an inclusion proof of record SEQ in the newest checkpoint's tree, and a
    /// consistency proof between the first and the newest checkpoint (RFC 9162), as JSON.
    Prove {
        #[arg(long)]
        seq: i64,
    },
}

/// Moves into the database what a gateway that crashed (SIGKILL, power loss) left in the
/// audit journal, so that readers see every acknowledged record. A no-op while a gateway
/// runs (it ingests its own journal within milliseconds). Failure is reported, not fatal:
/// reading what the database holds is still worth doing.
fn recover_journal(path: &Path) {
    match gatehouse_audit::recover(path) {
        Ok(0) => {}
        Ok(n) => {
            eprintln!("audit: {n} journaled records of a stopped gateway moved into the store")
        }
        Err(e) => eprintln!(
            "warning: the audit journal could not be ingested ({e}); records written just \
             before the gateway stopped may be missing until it starts again"
        ),
    }
}

pub(crate) fn audit_reader(cfg: &crate::config::Config) -> anyhow::Result<AuditReader> {
    let path = cfg.audit_path();
    if !path.exists() {
        bail!("no audit store at {}", path.display());
    }
    recover_journal(&path);
    let keys = state::open_keys(cfg)?;
    Ok(AuditReader::open_with(&path, keys)?)
}

pub fn audit(config: &Path, cmd: AuditCommand) -> anyhow::Result<()> {
    // An auditor checks a downloaded export with the signer's key alone: no config needed.
    if let AuditCommand::VerifyExport {
        dir,
        trusted_key: Some(t),
    } = &cmd
    {
        return verify_export(dir, t);
    }
    let loaded = LoadedConfig::load(config)?;
    let cfg = &loaded.config;
    match cmd {
        AuditCommand::Tail { n, json, follow } => {
            let reader = audit_reader(cfg)?;
            let mut last = 0;
            for r in reader.tail(n)? {
                last = r.seq;
                print_record(&r, json);
            }
            if !follow {
                return Ok(());
            }
            loop {
                std::thread::sleep(Duration::from_millis(200));
                for r in reader.after(last, 1000)? {
                    last = r.seq;
                    print_record(&r, json);
                }
            }
        }
        AuditCommand::Search {
            user,
            connection,
            event,
            decision,
            from,
            to,
            limit,
            json,
        } => {
            let time = |s: Option<String>, what: &str| -> anyhow::Result<Option<i64>> {
                s.map(|t| {
                    gatehouse_audit::parse_rfc3339_us(&t).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--{what} {t:?} is not an RFC 3339 UTC time (2026-12-01T00:00:00Z)"
                        )
                    })
                })
                .transpose()
            };
            let event = event
                .map(|e| {
                    gatehouse_audit::EventKind::from_name(&e).ok_or_else(|| {
                        let known: Vec<&str> = gatehouse_audit::EventKind::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect();
                        anyhow::anyhow!("unknown --event {e:?}; one of: {}", known.join(", "))
                    })
                })
                .transpose()?;
            let decision = decision
                .map(|d| {
                    gatehouse_audit::Decision::from_name(&d)
                        .ok_or_else(|| anyhow::anyhow!("--decision must be allow or deny"))
                })
                .transpose()?;
            let filter = gatehouse_audit::Filter {
                username: user,
                connection,
                session_id: None,
                event,
                decision,
                from_us: time(from, "from")?,
                to_us: time(to, "to")?,
                after_seq: None,
                limit: Some(limit),
            };
            let reader = audit_reader(cfg)?;
            let found = reader.search(&filter)?;
            for r in &found {
                print_record(r, json);
            }
            if !json {
                eprintln!("{} record(s)", found.len());
            }
            Ok(())
        }
        AuditCommand::Verify {
            json,
            trusted_key,
            no_keys,
        } => audit_verify(cfg, json, trusted_key.as_deref(), no_keys),
        AuditCommand::Checkpoint => audit_checkpoint(cfg),
        AuditCommand::Prove { seq } => audit_prove(cfg, seq),
        AuditCommand::Export {
            from,
            to,
            out,
            catalog,
        } => audit_export(cfg, from.as_deref(), to.as_deref(), out, catalog),
        AuditCommand::Prune { before } => {
            let now = state::now_us();
            let retention = Duration::from_secs(cfg.audit.retention_seconds);
            let before_us = match before {
                Some(b) => gatehouse_audit::parse_rfc3339_us(&b)
                    .ok_or_else(|| anyhow::anyhow!("{b:?} is not an RFC 3339 UTC time"))?,
                None => now - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX),
            };
            let keys = state::open_keys(cfg)?;
            recover_journal(&cfg.audit_path());
            let r = gatehouse_audit::prune(
                &cfg.audit_path(),
                keys.as_ref(),
                before_us,
                retention,
                now,
            )?;
            println!(
                "pruned {} records; the store now starts at record {} ({} leaf hashes kept for proofs); prune checkpoint over {} records",
                r.deleted, r.first_seq, r.kept_leaves, r.checkpoint.size
            );
            Ok(())
        }
        AuditCommand::VerifyExport { dir, trusted_key } => {
            let trusted = match trusted_key {
                Some(t) => gatehouse_audit::PublicKey::from_text(t.trim())
                    .ok_or_else(|| anyhow::anyhow!("--trusted-key must be scheme:hex"))?,
                None => gatehouse_audit::PublicKey::of(state::open_keys(cfg)?.as_ref())?,
            };
            verify_export_with(&dir, &trusted)
        }
    }
}

fn verify_export(dir: &Path, trusted_key: &str) -> anyhow::Result<()> {
    let trusted = gatehouse_audit::PublicKey::from_text(trusted_key.trim())
        .ok_or_else(|| anyhow::anyhow!("--trusted-key must be scheme:hex"))?;
    verify_export_with(dir, &trusted)
}

fn verify_export_with(dir: &Path, trusted: &gatehouse_audit::PublicKey) -> anyhow::Result<()> {
    let check = gatehouse_evidence::verify_export(dir, Some(trusted))?;
    for p in &check.problems {
        println!("PROBLEM: {p:?}");
    }
    if let Some(m) = &check.manifest {
        println!(
            "{} records (seq {}..{}), {} files, store verification {}, key store {}",
            m.summary.records,
            m.summary.first_seq,
            m.summary.last_seq,
            m.files.len(),
            if m.summary.verification_ok {
                "passed"
            } else {
                "FAILED"
            },
            m.summary.key_store
        );
    }
    println!("{}", if check.is_ok() { "OK" } else { "FAILED" });
    if !check.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}

fn audit_export(
    cfg: &crate::config::Config,
    from: Option<&str>,
    to: Option<&str>,
    out: PathBuf,
    catalog: Option<PathBuf>,
) -> anyhow::Result<()> {
    let parse = |s: &str| {
        gatehouse_audit::parse_rfc3339_us(s).ok_or_else(|| {
            anyhow::anyhow!("{s:?} is not an RFC 3339 UTC time (2026-12-01T00:00:00Z)")
        })
    };
    let from_us = from.map(parse).transpose()?.unwrap_or(0);
    let to_us = match to {
        Some(t) => parse(t)?,
        None => {
            i64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)?
                    .as_micros(),
            )? + 1
        }
    };
    let store = cfg.audit_path();
    if !store.exists() {
        bail!("no audit store at {}", store.display());
    }
    recover_journal(&store);
    let opts = gatehouse_evidence::ExportOptions {
        store,
        from_us,
        to_us,
        catalog: catalog.unwrap_or_else(|| cfg.audit.catalog.clone()),
        out_dir: out.clone(),
    };
    let keys = state::open_keys(cfg)?;
    let summary = gatehouse_evidence::export(&opts, keys, |p| match p {
        gatehouse_evidence::ExportProgress::Verifying(v) if v.done % 65_536 == 0 => {
            eprintln!("export: verifying {}/{} records", v.done, v.total)
        }
        gatehouse_evidence::ExportProgress::Writing { records } if records % 65_536 == 0 => {
            eprintln!("export: {records} records written")
        }
        _ => {}
    })?;
    println!(
        "exported {} records (seq {}..{}) to {}; store verification {}; {} not yet covered by a checkpoint",
        summary.records,
        summary.first_seq,
        summary.last_seq,
        out.display(),
        if summary.verification_ok { "passed" } else { "FAILED (see manifest.json)" },
        summary.uncovered
    );
    Ok(())
}

fn audit_verify(
    cfg: &crate::config::Config,
    json: bool,
    trusted_key: Option<&str>,
    no_keys: bool,
) -> anyhow::Result<()> {
    let path = cfg.audit_path();
    if !path.exists() {
        bail!("no audit store at {}", path.display());
    }
    let keys = if no_keys {
        None
    } else {
        Some(state::open_keys(cfg)?)
    };
    let trusted = match (trusted_key, &keys) {
        (Some(t), _) => Some(
            gatehouse_audit::PublicKey::from_text(t.trim())
                .ok_or_else(|| anyhow::anyhow!("--trusted-key must be scheme:hex"))?,
        ),
        (None, Some(k)) => Some(gatehouse_audit::PublicKey::of(k.as_ref())?),
        (None, None) => None,
    };
    let opts = gatehouse_audit::VerifyOptions {
        keys,
        trusted_key: trusted,
        hwm_path: None,
        known_checkpoint: None,
    };
    let started = std::time::Instant::now();
    recover_journal(&path);
    let v = gatehouse_audit::verify(&path, &opts, |p| {
        eprintln!("verify: {}/{} records", p.done, p.total);
    })?;
    let problems: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    let first_bad = v.first_bad_record().map(|b| b.seq);
    if json {
        let cp = v.last_checkpoint.as_ref().map(|c| {
            serde_json::json!({
                "id": c.id,
                "size": c.size,
                "root": hex::encode(c.root),
                "time": gatehouse_audit::format_rfc3339_us(c.time_us),
                "kind": c.kind.as_str(),
                "signer": c.signer.to_text(),
                "key_id": c.signer.key_id().as_str(),
                "config_hash": c.config_hash,
                "policy_hash": c.policy_hash,
            })
        });
        println!(
            "{}",
            serde_json::json!({
                "ok": v.is_ok(),
                "records": v.records,
                "first_seq": v.first_seq,
                "last_seq": v.last_seq,
                "checkpoints": v.checkpoints,
                "last_checkpoint": cp,
                "uncovered": v.uncovered,
                "content_checked": v.content_checked,
                "signing_keys": v.signing_keys,
                "first_bad_record": first_bad,
                "problems": problems,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!(
            "records {}..{} ({} checked{}), {} checkpoints, {} after the newest checkpoint",
            v.first_seq,
            v.last_seq,
            v.records,
            if v.content_checked {
                ", sealed contents opened"
            } else {
                ", sealed contents not opened"
            },
            v.checkpoints,
            v.uncovered
        );
        if let Some(c) = &v.last_checkpoint {
            println!(
                "newest checkpoint: {} records, root {}, {} by {} ({})",
                c.size,
                hex::encode(c.root),
                gatehouse_audit::format_rfc3339_us(c.time_us),
                c.signer.key_id().as_str(),
                c.signer.scheme.as_str()
            );
        }
        for p in &problems {
            println!("PROBLEM: {p}");
        }
        println!("{}", if v.is_ok() { "OK" } else { "FAILED" });
    }
    if !v.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}

fn audit_checkpoint(cfg: &crate::config::Config) -> anyhow::Result<()> {
    let path = cfg.audit_path();
    if let Some(pid) = crate::serve::running_pid(cfg) {
        let reader = audit_reader(cfg)?;
        let before = reader.checkpoints()?.last().map(|c| c.id).unwrap_or(0);
        crate::serve::signal_checkpoint(pid)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = reader
                .checkpoints()?
                .into_iter()
                .rev()
                .find(|c| c.id > before)
            {
                print!("{}", c.to_text());
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the running gateway (pid {pid}) wrote no checkpoint within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let keys = state::open_keys(cfg)?;
    let store = gatehouse_audit::AuditStore::open_with(
        &path,
        gatehouse_audit::StoreOptions::default(),
        keys,
    )?;
    let cp = store.checkpoint_now();
    store.shutdown()?;
    print!("{}", cp?.to_text());
    Ok(())
}

fn audit_prove(cfg: &crate::config::Config, seq: i64) -> anyhow::Result<()> {
    let reader = audit_reader(cfg)?;
    let cps = reader.checkpoints()?;
    let Some(newest) = cps.last() else {
        bail!("the store has no checkpoint yet (gatehouse audit checkpoint makes one)");
    };
    let Some(record) = reader.after(seq - 1, 1)?.into_iter().find(|r| r.seq == seq) else {
        bail!("record {seq} is not in the store (pruned or not written)");
    };
    let Some(inclusion) = reader.inclusion_proof(seq, newest.size)? else {
        bail!(
            "record {seq} is not covered by the newest checkpoint ({} records); make a checkpoint first",
            newest.size
        );
    };
    let leaf = record.leaf_hash();
    let ok = gatehouse_audit::merkle::verify_inclusion(
        u64::try_from(seq - 1).unwrap_or(0),
        newest.size,
        &leaf,
        &inclusion,
        &newest.root,
    );
    let first = &cps[0];
    let consistency = reader.consistency_proof(first.size, newest.size)?;
    let consistency_ok = consistency.as_ref().is_some_and(|p| {
        gatehouse_audit::merkle::verify_consistency(
            first.size,
            newest.size,
            &first.root,
            &newest.root,
            p,
        )
    });
    let hexes = |v: &[[u8; 32]]| v.iter().map(hex::encode).collect::<Vec<_>>();
    println!(
        "{}",
        serde_json::json!({
            "seq": seq,
            "leaf_index": seq - 1,
            "record_hash": hex::encode(record.hash),
            "leaf_hash": hex::encode(leaf),
            "checkpoint": newest.to_text(),
            "tree_size": newest.size,
            "root": hex::encode(newest.root),
            "inclusion_proof": hexes(&inclusion),
            "inclusion_verified": ok,
            "consistency": {
                "from_size": first.size,
                "from_root": hex::encode(first.root),
                "to_size": newest.size,
                "to_root": hex::encode(newest.root),
                "proof": consistency.as_deref().map(hexes),
                "verified": consistency_ok,
            },
        })
    );
    if !ok || !consistency_ok {
        std::process::exit(1);
    }
    Ok(())
}

fn print_record(r: &gatehouse_audit::StoredRecord, json: bool) {
    let v = r.to_json();
    if json {
        println!("{v}");
        return;
    }
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let mut line = format!(
        "{:>6} {} {:<16} {:<10} {:<8}",
        r.seq,
        s("time"),
        s("event"),
        s("username"),
        s("connection")
    );
    for k in ["decision", "sqlstate", "reason", "statement"] {
        let val = s(k);
        if !val.is_empty() {
            line.push_str(&format!(" {k}={val}"));
        }
    }
    if let Some(rows) = v.get("rows").and_then(|x| x.as_i64()) {
        line.push_str(&format!(" rows={rows}"));
    }
    println!("{line}");
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration file and print its hash.
    Check,
}

pub fn config(config: &Path, cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check => {
            let loaded = LoadedConfig::load(config)?;
            for l in &loaded.config.listeners {
                if let (Some(c), Some(k)) = (&l.tls_cert, &l.tls_key) {
                    for p in [c, k] {
                        if !p.exists() {
                            bail!("listener {:?}: {} does not exist", l.name, p.display());
                        }
                    }
                }
            }
            state::build_verifier(&loaded.config)?;
            if let Some(p) = state::load_policy(&loaded.config)? {
                println!("policy ok: version {} sha256 {}", p.version(), p.hash());
            }
            println!("ok {}", loaded.hash);
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BoardCommand {
    /// Provision the key store (first boot): data keys and the signing key.
    Init,
    /// Show the key-store backend, the TPM, key ids and the signing public key.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rotate a data key: new data is sealed under a new key, older data stays readable
    /// (the old key is kept). `vault` also re-seals every vaulted credential at once;
    /// `audit` takes effect for new records when the gateway (re)starts.
    Rotate {
        #[arg(long, value_parser = ["vault", "audit"])]
        purpose: String,
    },
    /// Seal a PEM private key (stdin) with the key store, for `listeners[].tls_key`: the
    /// listener's key then never rests in the clear.
    SealTlsKey {
        /// Where to write the sealed key (0600).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn board(config: &Path, cmd: BoardCommand) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    let cfg = &loaded.config;
    match &cmd {
        BoardCommand::Rotate { purpose } => {
            let keys = state::open_keys(cfg)?;
            let purpose: gatehouse_board::KeyPurpose = purpose.parse()?;
            let old = keys.data_key(purpose)?.id();
            let new = keys.rotate_data_key(purpose)?;
            println!(
                "{purpose} data key rotated: {} -> {}",
                old.as_str(),
                new.as_str()
            );
            if purpose == gatehouse_board::KeyPurpose::Vault {
                let vault = gatehouse_vault::Vault::open(&cfg.vault_path(), keys)?;
                println!("vault: {} credentials re-sealed", vault.rekey()?);
            }
            return Ok(());
        }
        BoardCommand::SealTlsKey { out } => {
            let keys = state::open_keys(cfg)?;
            let mut pem = zeroize::Zeroizing::new(Vec::new());
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut pem)?;
            if rustls_pemfile::private_key(&mut &pem[..])?.is_none() {
                bail!("stdin holds no PEM private key");
            }
            let sealed = crate::tls::seal_private_key(keys.as_ref(), &pem)?;
            crate::tls::write_private(out, sealed.as_bytes())?;
            eprintln!("sealed private key written to {}", out.display());
            return Ok(());
        }
        BoardCommand::Init | BoardCommand::Status { .. } => {}
    }
    let json = matches!(cmd, BoardCommand::Status { json: true });
    let tpm_info = match cfg.key_store.backend {
        crate::config::KeyStoreBackend::Tpm => Some(state::open_tpm(cfg)?.info()),
        crate::config::KeyStoreBackend::Software => None,
    };
    let keys = state::open_keys(cfg)?;
    let mut data_keys = serde_json::Map::new();
    for p in gatehouse_board::KeyPurpose::ALL {
        let k = keys.data_key(p)?;
        data_keys.insert(p.as_str().into(), k.id().as_str().into());
    }
    let facts = gatehouse_board::facts::BoardFacts::detect();
    let v = serde_json::json!({
        "backend": keys.backend().to_string(),
        "hardware_backed": keys.backend().is_hardware_backed(),
        "key_dir": cfg.keys_dir(),
        "tpm": tpm_info.as_ref().map(|i| serde_json::json!({
            "manufacturer": i.manufacturer,
            "vendor": i.vendor,
            "firmware_version": i.firmware_version,
            "spec_revision": i.spec_revision,
            "tcti": cfg.key_store.tcti,
            "pcrs": cfg.key_store.pcrs,
        })),
        "data_keys": data_keys,
        "signing_key": {
            "id": keys.signing_key_id()?.as_str(),
            "scheme": keys.signature_scheme().as_str(),
            "public_key": hex::encode(keys.signing_public_key()?),
        },
        "board": {
            "tpm_device": facts.tpm_device,
            "watchdog_device": facts.watchdog_device,
            "nics": facts.nics.iter().map(|(n, r)| serde_json::json!({"name": n, "role": r.as_str()})).collect::<Vec<_>>(),
        },
    });
    if json {
        println!("{v}");
    } else {
        println!("key store:   {}", keys.backend());
        if let Some(i) = &tpm_info {
            println!(
                "tpm:         {} {} firmware {} (TPM 2.0 rev {}) via {}",
                i.manufacturer, i.vendor, i.firmware_version, i.spec_revision, cfg.key_store.tcti
            );
        }
        for (p, id) in &data_keys {
            println!("data key:    {p} {}", id.as_str().unwrap_or(""));
        }
        println!(
            "signing key: {} ({}) {}",
            keys.signing_key_id()?.as_str(),
            keys.signature_scheme().as_str(),
            hex::encode(keys.signing_public_key()?)
        );
    }
    Ok(())
}

/// `gatehouse status`: what an operator checks first — is it running, which key store (a
/// software one is flagged as development-only), how durable the audit trail is, and how much
/// of it is covered by a signed checkpoint.
pub fn status(config: &Path, json: bool) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    let cfg = &loaded.config;
    let keys = state::open_keys(cfg)?;
    let backend = keys.backend();
    let pid = crate::serve::running_pid(cfg);
    let (durability, window_ms) = match cfg.audit.synchronous {
        crate::config::AuditSynchronous::Normal => ("bounded", Some(cfg.audit.sync_window_ms)),
        crate::config::AuditSynchronous::Full => ("strict", None),
    };
    let path = cfg.audit_path();
    let (records, checkpoint) = if path.exists() {
        recover_journal(&path);
        let reader = AuditReader::open_with(&path, keys.clone())?;
        (reader.tree_size()?, reader.checkpoints()?.pop())
    } else {
        (0, None)
    };
    let uncovered = records - checkpoint.as_ref().map_or(0, |c| c.size.min(records));
    let v = serde_json::json!({
        "running": pid.is_some(),
        "pid": pid,
        "config_hash": loaded.hash,
        "key_store": {
            "backend": backend.to_string(),
            "hardware_backed": backend.is_hardware_backed(),
            "development_only": !backend.is_hardware_backed(),
        },
        "audit": {
            "path": path,
            "durability": durability,
            "power_loss_window_ms": window_ms,
            "records": records,
            "last_checkpoint": checkpoint.as_ref().map(|c| serde_json::json!({
                "size": c.size,
                "time": gatehouse_audit::format_rfc3339_us(c.time_us),
                "kind": c.kind.as_str(),
                "key_id": c.signer.key_id().as_str(),
            })),
            "uncovered_records": uncovered,
        },
    });
    if json {
        println!("{v}");
        return Ok(());
    }
    if !backend.is_hardware_backed() {
        println!("WARNING: SOFTWARE KEY STORE: DEVELOPMENT ONLY. Keys are plain files; use key_store.backend = \"tpm\" in production.");
    }
    match pid {
        Some(p) => println!("gateway:     running (pid {p})"),
        None => println!("gateway:     not running"),
    }
    println!("config:      {}", loaded.hash);
    println!("key store:   {backend}");
    match window_ms {
        Some(ms) => println!(
            "audit:       bounded durability: a record survives a gateway crash once acknowledged, power loss after at most {ms} ms"
        ),
        None => println!(
            "audit:       strict durability: every record is fsynced before its statement runs"
        ),
    }
    println!("records:     {records}");
    match &checkpoint {
        Some(c) => println!(
            "checkpoint:  {} records, {} ({}), signed by {}; {} records not yet covered",
            c.size,
            gatehouse_audit::format_rfc3339_us(c.time_us),
            c.kind.as_str(),
            c.signer.key_id().as_str(),
            uncovered
        ),
        None => println!("checkpoint:  none yet"),
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Approval requests (pending by default).
    List {
        /// Every request, not only pending ones.
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request. The approver is the holder of `--token` (an OIDC token Gatehouse
    /// accepts); they must be in one of the request's approver groups and not its requester.
    Approve {
        id: String,
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        comment: Option<String>,
        /// How long the approval may be used (default 15 minutes, at most 24 hours).
        #[arg(long)]
        minutes: Option<u64>,
    },
    /// Issue a time-boxed grant: USER may run what approval rules would hold, on CONNECTION,
    /// for MINUTES (never what a deny rule or preset refuses). The issuer is the holder of
    /// `--token`, a member of `approvals.grant_issuers`, and not the grantee.
    Grant {
        #[arg(long)]
        user: String,
        #[arg(long)]
        connection: String,
        #[arg(long)]
        minutes: u64,
        /// `writes` (any approval for a writing statement), `any`, or `rule:NAME`.
        #[arg(long, default_value = "writes")]
        scope: String,
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Revoke a grant now (the holder of `--token` must be a grant issuer).
    RevokeGrant {
        id: String,
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Grants (effective ones by default).
    Grants {
        #[arg(long)]
        all: bool,
    },
    /// Deny a request (one deny decides it).
    Deny {
        id: String,
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

/// The identity behind an OIDC token given on the command line, validated exactly as the
/// gateway validates a login. `role` names the holder in the error (never the token).
fn cli_identity(
    cfg: &crate::config::Config,
    token: &str,
    now: SystemTime,
    role: &str,
) -> anyhow::Result<gatehouse_identity::Identity> {
    let verifier = state::build_verifier(cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(verifier.verify(token.trim(), now))
        .map_err(|e| anyhow::anyhow!("{role} token rejected: {}", e.reason()))
}

pub fn approvals(config: &Path, cmd: ApprovalsCommand) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    let cfg = &loaded.config;
    let store = state::open_approvals(cfg)?;
    let now = SystemTime::now();
    store.expire(now)?;
    // People as configuration writes them: `corp:alice`, or plain for the sole real issuer.
    let issuers = cfg.issuers().unwrap_or_default();
    let show = |p: &gatehouse_approvals::Principal| issuers.show_user(p);
    let decide = |id: &str, token: &str, verdict, comment: Option<String>, minutes: Option<u64>| {
        let who = cli_identity(cfg, token, now, "approver")?;
        let id: gatehouse_approvals::RequestId = id.parse()?;
        let r = decisions::decide(
            &store,
            cfg,
            &who,
            &id,
            decisions::Ballot {
                verdict,
                comment: comment.as_deref(),
                minutes,
            },
            now,
        )?;
        println!("{}", decisions::request_json(&r));
        anyhow::Ok(())
    };
    match cmd {
        ApprovalsCommand::List { all, json } => {
            let filter = if all {
                gatehouse_approvals::RequestFilter::All
            } else {
                gatehouse_approvals::RequestFilter::Pending
            };
            for r in store.list(filter, 1000)? {
                if json {
                    println!("{}", decisions::request_json(&r));
                } else {
                    println!(
                        "{} {:<8} {} on {} by {} ({}): {}",
                        r.id,
                        r.status.as_str(),
                        r.rule,
                        r.connection,
                        show(&r.requester),
                        r.approvers.join("|"),
                        r.statement
                    );
                }
            }
            Ok(())
        }
        ApprovalsCommand::Approve {
            id,
            token,
            comment,
            minutes,
        } => decide(
            &id,
            &token,
            gatehouse_approvals::Verdict::Approve,
            comment,
            minutes,
        ),
        ApprovalsCommand::Deny { id, token, comment } => decide(
            &id,
            &token,
            gatehouse_approvals::Verdict::Deny,
            comment,
            None,
        ),
        ApprovalsCommand::Grant {
            user,
            connection,
            minutes,
            scope,
            token,
            comment,
        } => {
            let who = cli_identity(cfg, &token, now, "issuer")?;
            let g = decisions::issue_grant(
                &store,
                cfg,
                &who,
                decisions::GrantOrder {
                    user: &user,
                    connection: &connection,
                    minutes,
                    scope: &scope,
                    comment: comment.as_deref(),
                },
                now,
            )?;
            println!(
                "{} grants {} on {} ({:?}), issued by {}",
                g.id,
                show(&g.user),
                g.connection,
                g.scope,
                show(&g.issued_by)
            );
            Ok(())
        }
        ApprovalsCommand::RevokeGrant { id, token } => {
            let who = cli_identity(cfg, &token, now, "revoker")?;
            let id: gatehouse_approvals::GrantId = id.parse()?;
            let g = decisions::revoke_grant(&store, cfg, &who, &id, now)?;
            println!("{} revoked by {}", g.id, who.username);
            Ok(())
        }
        ApprovalsCommand::Grants { all } => {
            let filter = if all {
                gatehouse_approvals::GrantFilter::All
            } else {
                gatehouse_approvals::GrantFilter::Effective(now)
            };
            for g in store.list_grants(filter, 1000)? {
                println!(
                    "{} {:?} {} on {} ({:?}) by {} used {}x",
                    g.id,
                    g.status,
                    show(&g.user),
                    g.connection,
                    g.scope,
                    show(&g.issued_by),
                    g.use_count
                );
            }
            Ok(())
        }
    }
}
