//! `gatehouse`: the access gateway binary. One binary, several subcommands: `serve` runs the
//! gateway; the others manage connections, tokens and the audit trail, or start a demo.
#![forbid(unsafe_code)]

mod api;
mod cli;
mod config;
mod decisions;
mod demo;
mod outbox;
mod pg;
mod serve;
mod sessions;
mod sftp;
mod state;
mod tls;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = "Access gateway for AI agents")]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_CONFIG",
        default_value = "/etc/gatehouse/gatehouse.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Serve,
    /// Start a throwaway PostgreSQL and a gateway in front of it, and print how to connect.
    Demo(demo::DemoArgs),
    /// Mint a token from the built-in development issuer.
    Token(cli::TokenArgs),
    /// Manage upstream connections and their vaulted credentials.
    #[command(subcommand)]
    Connection(cli::ConnectionCommand),
    /// Read the audit trail.
    #[command(subcommand)]
    Audit(cli::AuditCommand),
    /// Validate the configuration.
    #[command(subcommand)]
    Config(cli::ConfigCommand),
    /// Key store and board: provision, status, rotation, sealed TLS keys.
    #[command(subcommand)]
    Board(cli::BoardCommand),
    /// Session recordings: list sessions, replay one with timings and what the client saw.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),
    /// Just-in-time approvals: list, approve, deny.
    #[command(subcommand)]
    Approvals(cli::ApprovalsCommand),
    /// The read-only SFTP server for auditors: its host key.
    #[command(subcommand)]
    Sftp(sftp::SftpCommand),
    /// Is the gateway running, which key store, audit durability and checkpoint coverage.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => serve::main(&cli.config),
        Command::Demo(args) => demo::main(args),
        Command::Token(args) => cli::token(&cli.config, args),
        Command::Connection(cmd) => cli::connection(&cli.config, cmd),
        Command::Audit(cmd) => cli::audit(&cli.config, cmd),
        Command::Config(cmd) => cli::config(&cli.config, cmd),
        Command::Board(cmd) => cli::board(&cli.config, cmd),
        Command::Status { json } => cli::status(&cli.config, json),
        Command::Approvals(cmd) => cli::approvals(&cli.config, cmd),
        Command::Sessions(cmd) => sessions::main(&cli.config, cmd),
        Command::Sftp(cmd) => sftp::command(&cli.config, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
