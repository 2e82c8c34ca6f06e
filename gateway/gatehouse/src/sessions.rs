//! `gatehouse sessions list|show`: session recordings replayed from the audit trail.
//!
//! A recorded session is the ordinary audit records of one `session_id` (login, each
//! statement and its outcome, session end) plus its `session.output` records, whose payloads
//! are the PostgreSQL protocol bytes the client received, after masking. `show` replays them
//! in order with their time offsets and renders the result messages (columns, rows, command
//! tags, errors, notices) as text; `--json` gives the same as one object per line, the form
//! the console will use.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::Subcommand;
use gatehouse_audit::{format_rfc3339_us, EventKind, Filter, StoredRecord};
use gatehouse_pgwire::{
    decode_command_complete, decode_data_row, decode_error_fields, decode_notification,
    decode_row_description, peek_header, HEADER_LEN,
};
use serde_json::{json, Value};

use crate::config::LoadedConfig;

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Sessions in the audit trail, newest last: id, start, user, connection, duration,
    /// statements, recorded bytes.
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Replay one session in order with timings: statements, decisions, outcomes and what
    /// the client received (after masking).
    Show {
        /// The session id (from `sessions list` or any audit record).
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn main(config: &std::path::Path, cmd: SessionsCommand) -> anyhow::Result<()> {
    let loaded = LoadedConfig::load(config)?;
    let reader = crate::cli::audit_reader(&loaded.config)?;
    match cmd {
        SessionsCommand::List { user, limit, json } => {
            let mut sessions: BTreeMap<String, Summary> = BTreeMap::new();
            for kind in [
                EventKind::LoginSuccess,
                EventKind::Statement,
                EventKind::SessionEnd,
                EventKind::SessionOutput,
            ] {
                let filter = Filter {
                    username: user.clone(),
                    event: Some(kind),
                    ..Filter::default()
                };
                for r in reader.search(&filter)? {
                    let Some(id) = r.record.session_id.clone() else {
                        continue;
                    };
                    sessions.entry(id).or_default().add(&r);
                }
            }
            let mut all: Vec<(String, Summary)> = sessions
                .into_iter()
                .filter(|(_, s)| s.start_us.is_some())
                .collect();
            all.sort_by_key(|(_, s)| s.start_us);
            let skip = all.len().saturating_sub(limit);
            for (id, s) in all.into_iter().skip(skip) {
                let v = s.to_json(&id);
                if json {
                    println!("{v}");
                } else {
                    println!(
                        "{id}  {}  {:<12} {:<10} {:>9}  {:>4} stmt  {:>8} B recorded{}",
                        v["start"].as_str().unwrap_or(""),
                        s.user.as_deref().unwrap_or("-"),
                        s.connection.as_deref().unwrap_or("-"),
                        s.duration_us
                            .map(|d| format!("{:.3}s", d as f64 / 1e6))
                            .unwrap_or_else(|| "open".into()),
                        s.statements,
                        s.recorded,
                        if s.truncated { " (truncated)" } else { "" },
                    );
                }
            }
            Ok(())
        }
        SessionsCommand::Show { id, json } => {
            let filter = Filter {
                session_id: Some(id.clone()),
                ..Filter::default()
            };
            let records = reader.search(&filter)?;
            if records.is_empty() {
                bail!("no session {id:?} in the audit trail");
            }
            let start = records[0].record.time_us;
            let mut replay = Replay::default();
            for r in &records {
                for event in replay.events(r, start) {
                    if json {
                        println!("{event}");
                    } else {
                        println!("{}", render(&event));
                    }
                }
            }
            Ok(())
        }
    }
}

#[derive(Default)]
struct Summary {
    start_us: Option<i64>,
    user: Option<String>,
    connection: Option<String>,
    duration_us: Option<i64>,
    statements: u64,
    recorded: u64,
    truncated: bool,
}

impl Summary {
    fn add(&mut self, r: &StoredRecord) {
        let rec = &r.record;
        match rec.event {
            EventKind::LoginSuccess => {
                self.start_us = Some(rec.time_us);
                self.user = rec.username.clone();
                self.connection = rec.connection.clone();
            }
            EventKind::Statement => self.statements += 1,
            EventKind::SessionEnd => self.duration_us = rec.duration_us,
            EventKind::SessionOutput => {
                self.recorded += rec.payload.as_ref().map_or(0, |p| p.len() as u64);
                self.truncated |= rec.reason.is_some();
            }
            _ => {}
        }
    }

    fn to_json(&self, id: &str) -> Value {
        json!({
            "session_id": id,
            "start": self.start_us.map(format_rfc3339_us),
            "user": self.user,
            "connection": self.connection,
            "duration_us": self.duration_us,
            "statements": self.statements,
            "recorded_bytes": self.recorded,
            "truncated": self.truncated,
        })
    }
}

/// Turns a session's records into replay events; carries protocol bytes split across
/// `session.output` records.
#[derive(Default)]
struct Replay {
    carry: Vec<u8>,
    /// Text-format flags of the current result's columns.
    text_columns: Vec<bool>,
}

impl Replay {
    fn events(&mut self, r: &StoredRecord, start_us: i64) -> Vec<Value> {
        let rec = &r.record;
        let t = (rec.time_us - start_us) as f64 / 1e6;
        let base = |kind: &str| json!({ "seq": r.seq, "t": t, "kind": kind });
        let mut out = Vec::new();
        match rec.event {
            EventKind::LoginSuccess => {
                let mut e = base("login");
                e["user"] = json!(rec.username);
                e["groups"] = json!(rec.groups);
                e["connection"] = json!(rec.connection);
                e["source"] = json!(rec.source);
                out.push(e);
            }
            EventKind::Statement => {
                let mut e = base("statement");
                e["sql"] = json!(rec.statement);
                e["decision"] = json!(rec.decision.map(|d| d.as_str()));
                e["reason"] = json!(rec.reason);
                out.push(e);
            }
            EventKind::StatementResult => {
                let mut e = base("outcome");
                e["ref_seq"] = json!(rec.ref_seq);
                e["sqlstate"] = json!(rec.sqlstate);
                e["rows"] = json!(rec.rows);
                e["duration_us"] = json!(rec.duration_us);
                out.push(e);
            }
            EventKind::SessionOutput => {
                if let Some(p) = &rec.payload {
                    self.carry.extend_from_slice(p);
                }
                for (kind, detail) in self.decode() {
                    let mut e = base(kind);
                    e["data"] = detail;
                    out.push(e);
                }
                if let Some(note) = &rec.reason {
                    let mut e = base("truncated");
                    e["note"] = json!(note);
                    out.push(e);
                }
            }
            EventKind::SessionEnd => {
                let mut e = base("end");
                e["duration_us"] = json!(rec.duration_us);
                e["bytes_in"] = json!(rec.bytes_in);
                e["bytes_out"] = json!(rec.bytes_out);
                e["rows"] = json!(rec.rows);
                out.push(e);
            }
            EventKind::SecretMasked => {
                let mut e = base("secret-masked");
                e["note"] = json!(rec.reason);
                out.push(e);
            }
            _ => {}
        }
        out
    }

    /// Decodes the whole messages in `carry`; keeps a trailing partial one.
    fn decode(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        while let Ok(Some(h)) = peek_header(&self.carry[pos..], usize::MAX) {
            if self.carry.len() - pos < h.total_len {
                break;
            }
            let body = &self.carry[pos + HEADER_LEN..pos + h.total_len];
            match h.tag {
                b'T' => {
                    if let Ok(cols) = decode_row_description(body) {
                        self.text_columns = cols.iter().map(|c| c.format == 0).collect();
                        let names: Vec<&str> = cols.iter().map(|c| c.name).collect();
                        out.push(("columns", json!(names)));
                    }
                }
                b'D' => {
                    if let Ok(values) = decode_data_row(body) {
                        let row: Vec<Value> = values
                            .iter()
                            .enumerate()
                            .map(|(i, v)| match v {
                                None => Value::Null,
                                Some(b) if self.text_columns.get(i).copied().unwrap_or(true) => {
                                    json!(String::from_utf8_lossy(b))
                                }
                                Some(b) => json!(format!("\\x{}", hex::encode(b))),
                            })
                            .collect();
                        out.push(("row", json!(row)));
                    }
                }
                b'C' => {
                    if let Ok(tag) = decode_command_complete(body) {
                        out.push(("complete", json!(tag)));
                    }
                }
                b'E' | b'N' => {
                    if let Ok(f) = decode_error_fields(body) {
                        let kind = if h.tag == b'E' { "error" } else { "notice" };
                        out.push((
                            kind,
                            json!({ "sqlstate": f.code, "message": f.message, "severity": f.severity }),
                        ));
                    }
                }
                b'A' => {
                    if let Ok((pid, channel, payload)) = decode_notification(body) {
                        out.push((
                            "notification",
                            json!({ "pid": pid, "channel": channel, "payload": payload }),
                        ));
                    }
                }
                b'd' => out.push(("copy-data", json!(String::from_utf8_lossy(body)))),
                _ => {}
            }
            pos += h.total_len;
        }
        self.carry.drain(..pos);
        out
    }
}

/// One replay event as a text line.
fn render(e: &Value) -> String {
    let t = e["t"].as_f64().unwrap_or(0.0);
    let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
    let body = match e["kind"].as_str().unwrap_or("") {
        "login" => format!(
            "login {} ({}) to {} from {}",
            s("user"),
            e["groups"]
                .as_array()
                .map(|g| g
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            s("connection"),
            s("source")
        ),
        "statement" => {
            let mut line = format!("> {}", s("sql"));
            if s("decision") == "deny" {
                line.push_str(&format!("   [DENIED: {}]", s("reason")));
            }
            line
        }
        "outcome" => format!(
            "  = {} rows {} in {} µs",
            s("sqlstate"),
            e["rows"],
            e["duration_us"]
        ),
        "columns" => format!(
            "  | {}",
            e["data"]
                .as_array()
                .map(|c| c
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" | "))
                .unwrap_or_default()
        ),
        "row" => format!(
            "  | {}",
            e["data"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|x| x.as_str().map_or_else(|| "NULL".to_owned(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
                .unwrap_or_default()
        ),
        "complete" => format!("  ({})", e["data"].as_str().unwrap_or("")),
        "error" | "notice" => format!(
            "  {} {}: {}",
            e["kind"].as_str().unwrap_or("").to_uppercase(),
            e["data"]["sqlstate"].as_str().unwrap_or(""),
            e["data"]["message"].as_str().unwrap_or("")
        ),
        "notification" => format!("  NOTIFY {}", e["data"]),
        "copy-data" => format!("  copy: {}", e["data"].as_str().unwrap_or("").trim_end()),
        "truncated" => format!("  … {}", s("note")),
        "secret-masked" => format!("  ! {}", s("note")),
        "end" => format!(
            "end after {} µs, {} bytes in, {} bytes out",
            e["duration_us"], e["bytes_in"], e["bytes_out"]
        ),
        other => other.to_owned(),
    };
    format!("{:>9.3}s  {body}", t)
}
