//! `gatehouse demo`: a throwaway PostgreSQL (Debian's server binaries, initdb into a temp dir,
//! SCRAM for TCP), registered as connection `demo` with a random vaulted password, a gateway
//! on embedded defaults (software key store, self-signed TLS, local audit store, development
//! token issuer) and a printed `psql` line that works at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use clap::Args;
use gatehouse_vault::{Credential, Secret};

use crate::config::LoadedConfig;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's database, data dir and config (default: a new temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: std::net::SocketAddr,
    /// User the printed token is minted for.
    #[arg(long, default_value = "alice")]
    user: String,
}

fn pg_bindir() -> anyhow::Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            let bin = e.path().join("bin");
            if bin.join("initdb").exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, p)| p)
        .context("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install postgresql")
}

fn random_token(n: usize) -> String {
    let b: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex::encode(b)
}

/// Runs a command, as the `postgres` system user when we are root (initdb refuses root).
fn run_pg(bin: &Path, args: &[&str], as_user: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = match as_user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    crate::serve::init_logging(crate::config::LogFormat::Text);
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("gatehouse-demo-{}", random_token(4))),
    };
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let bindir = pg_bindir()?;
    let pgdata = dir.join("pg");
    let sock = dir.join("pg-socket");
    let owner = if is_root() { Some("postgres") } else { None };
    let pg_port = free_port()?;

    if !pgdata.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&pgdata)?;
        std::fs::create_dir_all(&sock)?;
        if let Some(u) = owner {
            let st = Command::new("chown")
                .args(["-R", u])
                .arg(&pgdata)
                .arg(&sock)
                .status()?;
            if !st.success() {
                bail!("chown to {u} failed (is the postgresql package installed?)");
            }
        }
        eprintln!("demo: initdb into {}", pgdata.display());
        run_pg(
            &bindir.join("initdb"),
            &[
                "-D",
                &pgdata.to_string_lossy(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            owner,
        )?;
    }
    let opts = format!(
        "-c listen_addresses=127.0.0.1 -c port={pg_port} -c unix_socket_directories={} -c password_encryption=scram-sha-256",
        sock.display()
    );
    run_pg(
        &bindir.join("pg_ctl"),
        &[
            "-D",
            &pgdata.to_string_lossy(),
            "-l",
            &sock.join("postgres.log").to_string_lossy(),
            "-o",
            &opts,
            "-w",
            "start",
        ],
        owner,
    )?;
    let stop = PgGuard {
        bindir: bindir.clone(),
        pgdata: pgdata.clone(),
        owner,
    };

    let app_password = format!("demo-{}", random_token(16));
    let psql = bindir.join("psql");
    let sql = format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_app') THEN CREATE ROLE demo_app LOGIN; END IF; END $$;
         ALTER ROLE demo_app PASSWORD '{app_password}';"
    );
    let host = sock.to_string_lossy().into_owned();
    let port = pg_port.to_string();
    run_pg(
        &psql,
        &[
            "-X", "-q", "-h", &host, "-p", &port, "-U", "postgres", "-d", "postgres", "-c", &sql,
        ],
        owner,
    )?;
    let exists = run_pg(
        &psql,
        &[
            "-X",
            "-At",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "SELECT 1 FROM pg_database WHERE datname = 'demo'",
        ],
        owner,
    )?;
    if exists.trim() != "1" {
        run_pg(
            &psql,
            &[
                "-X",
                "-q",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE demo OWNER demo_app",
            ],
            owner,
        )?;
        run_pg(
            &psql,
            &[
                "-X",
                "-q",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                "demo_app",
                "-d",
                "demo",
                "-c",
                "CREATE TABLE customers (id serial PRIMARY KEY, name text, email text, city text);
               INSERT INTO customers (name, email, city) VALUES
               ('Ada Lovelace', 'ada@example.com', 'London'),
               ('Grace Hopper', 'grace@example.com', 'Arlington'),
               ('Alan Turing', 'alan@example.com', 'Wilmslow');",
            ],
            owner,
        )?;
    }

    let data_dir = dir.join("data");
    let config_path = dir.join("gatehouse.toml");
    let config_text = format!(
        r#"# Written by `gatehouse demo`: development defaults.
[gateway]
name = "gatehouse-demo"
data_dir = "{data}"

[[listeners]]
name = "postgres"
protocol = "postgres"
bind = "{listen}"

[identity.dev_issuer]
enabled = true

[[connections]]
name = "demo"
kind = "postgres"
host = "127.0.0.1"
port = {pg_port}
database = "demo"
tls = "disable"
tags = {{ environment = "development" }}
"#,
        data = data_dir.display(),
        listen = args.listen,
    );
    std::fs::write(&config_path, &config_text)?;
    let loaded = LoadedConfig::load(&config_path)?;
    let vault = crate::state::open_vault(&loaded.config)?;
    vault.put(
        "demo",
        &Credential {
            user: "demo_app".into(),
            password: Secret::new(app_password),
        },
    )?;
    let token = crate::state::dev_issuer(&loaded.config)?.mint(
        &args.user,
        &["dba".to_string()],
        Duration::from_secs(8 * 3600),
        SystemTime::now(),
    )?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let pid_file = loaded.config.pid_path();
        let (gw, listeners) = crate::serve::prepare(loaded).await?;
        crate::serve::write_pid_file(&pid_file)?;
        let addr = listeners.first().map(|(l, _)| l.local_addr()).transpose()?.context("no listener")?;
        println!();
        println!("Gatehouse demo is running (development mode: software key store, self-signed TLS, dev token issuer).");
        println!("PostgreSQL target: 127.0.0.1:{pg_port} (data in {}), registered as connection \"demo\".", pgdata.display());
        println!();
        println!("Connect through Gatehouse as {}:", args.user);
        println!();
        println!(
            "  psql \"host={} port={} dbname=demo user={} sslmode=require password={token}\"",
            addr.ip(),
            addr.port(),
            args.user
        );
        println!();
        println!("Mint another token:  gatehouse --config {} token --user bob --groups analysts", config_path.display());
        println!("Watch the audit log: gatehouse --config {} audit tail --follow", config_path.display());
        println!("Check it:            gatehouse --config {} status   /   audit verify", config_path.display());
        println!("Stop with Ctrl-C.");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        crate::serve::run(gw, listeners, crate::serve::shutdown_signal()).await
    });
    drop(stop);
    result
}

/// Stops the demo PostgreSQL when the demo ends, even on error.
struct PgGuard {
    bindir: PathBuf,
    pgdata: PathBuf,
    owner: Option<&'static str>,
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        let _ = run_pg(
            &self.bindir.join("pg_ctl"),
            &["-D", &self.pgdata.to_string_lossy(), "-m", "fast", "stop"],
            self.owner,
        );
    }
}
