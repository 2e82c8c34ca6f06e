//! The NIST SP 800-53 Rev 5 catalog (OSCAL JSON), read at run time for control titles, and
//! which controls each kind of audit record evidences.

use std::collections::HashMap;
use std::path::Path;

use gatehouse_audit::{Decision, EventKind, Record};
use serde_json::Value;

use crate::EvidenceError;

/// Control ids (OSCAL form: lowercase, enhancements with a dot) and titles from a catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    titles: HashMap<String, String>,
    /// `metadata.version` of the catalog (e.g. `5.0.1`).
    pub version: String,
    /// `metadata.title` of the catalog.
    pub title: String,
}

impl Catalog {
    /// Reads an OSCAL catalog (the full 800-53 Rev 5 catalog or a resolved profile catalog).
    pub fn load(path: &Path) -> Result<Catalog, EvidenceError> {
        let text = std::fs::read(path).map_err(|e| EvidenceError::Catalog(e.to_string()))?;
        let doc: Value =
            serde_json::from_slice(&text).map_err(|e| EvidenceError::Catalog(e.to_string()))?;
        let cat = doc
            .get("catalog")
            .ok_or_else(|| EvidenceError::Catalog("no `catalog` object".into()))?;
        let meta = |k: &str| {
            cat.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let mut titles = HashMap::new();
        collect(cat, &mut titles);
        if titles.is_empty() {
            return Err(EvidenceError::Catalog("no controls".into()));
        }
        Ok(Catalog {
            titles,
            version: meta("version"),
            title: meta("title"),
        })
    }

    /// The title of a control (`"au-3.1"` → `"Additional Audit Information"`).
    pub fn title(&self, id: &str) -> Option<&str> {
        self.titles.get(id).map(String::as_str)
    }
}

fn collect(node: &Value, out: &mut HashMap<String, String>) {
    for key in ["groups", "controls"] {
        if let Some(items) = node.get(key).and_then(Value::as_array) {
            for item in items {
                if key == "controls" {
                    if let (Some(id), Some(t)) = (
                        item.get("id").and_then(Value::as_str),
                        item.get("title").and_then(Value::as_str),
                    ) {
                        out.insert(id.to_owned(), t.to_owned());
                    }
                }
                collect(item, out);
            }
        }
    }
}

/// Every control an export reports on, in report order.
pub const CONTROLS: &[&str] = &[
    "ac-2", "ac-3", "ac-6", "au-2", "au-3", "au-3.1", "au-6", "au-8", "au-9", "au-9.4", "au-10",
    "au-11", "au-12", "cm-2", "ia-2", "ir-4", "sc-8", "sc-28", "si-4",
];

/// Controls that the store as a whole evidences (protection, non-repudiation, retention,
/// encryption at rest), judged by verification rather than by individual records.
pub const STORE_CONTROLS: &[&str] = &["au-9", "au-10", "au-11", "sc-28"];

/// The 800-53 controls one record evidences (OSCAL ids).
///
/// Every record is a time-stamped audit event (AU-2 event type, AU-3 content, AU-8 time,
/// AU-12 generation). On top: a login is identification and authentication (IA-2) of an
/// account (AC-2); a statement is access enforcement (AC-3) with the statement text as
/// additional content (AU-3(1)) relayed over TLS (SC-8); a denied statement is also least
/// privilege (AC-6) and an incident-handling input (IR-4), as is a failed login; a loaded
/// configuration is the baseline configuration (CM-2); a vaulted credential masked in a
/// response is system monitoring (SI-4) and an incident-handling input (IR-4). An auditor
/// opening or downloading evidence over SFTP is audit record review (AU-6) by the subset of
/// users allowed to read audit information (AU-9(4)), access enforced (AC-3, AU-9(4) for a
/// file opened); a refused SFTP operation (a write, a path escape, a shell) is access
/// enforcement (AC-3) protecting audit information (AU-9) and an incident input (IR-4).
pub fn controls_for(r: &Record) -> Vec<&'static str> {
    let mut c = vec!["au-2", "au-3", "au-8", "au-12"];
    let denied = r.decision == Some(Decision::Deny);
    match r.event {
        EventKind::LoginSuccess => c.extend(["ia-2", "ac-2"]),
        EventKind::LoginFailure => c.extend(["ia-2", "ac-2", "ir-4"]),
        EventKind::Statement => {
            c.extend(["ac-3", "au-3.1", "sc-8"]);
            if denied {
                c.extend(["ac-6", "ir-4"]);
            }
        }
        EventKind::StatementResult => c.push("au-3.1"),
        // Session recordings: full content of what the user received (AU-3(1)), captured
        // after masking and sealed like the rest.
        EventKind::SessionOutput => c.extend(["au-3.1", "sc-28"]),
        EventKind::SessionEnd => c.push("ac-2"),
        EventKind::ConfigLoaded => c.push("cm-2"),
        EventKind::ConnectionChanged => c.push("cm-2"),
        // A vaulted credential stopped on its way out: monitoring (SI-4) and an incident
        // input (IR-4).
        EventKind::SecretMasked => c.extend(["si-4", "ir-4"]),
        // Just-in-time approval: access enforcement with a human in the loop, least privilege.
        EventKind::ApprovalRequested
        | EventKind::ApprovalApproved
        | EventKind::ApprovalDenied
        | EventKind::ApprovalExpired
        | EventKind::ApprovalExecuted
        | EventKind::GrantIssued
        | EventKind::GrantEnded => c.extend(["ac-3", "ac-6"]),
        EventKind::SftpOpen => c.extend(["ac-3", "au-6", "au-9.4"]),
        EventKind::SftpDownload => c.extend(["au-6", "au-9.4"]),
        EventKind::SftpDenied => c.extend(["ac-3", "au-9", "au-9.4", "ir-4"]),
        EventKind::GatewayStart | EventKind::GatewayStop | EventKind::Cancel => {}
    }
    if denied && r.event != EventKind::Statement && !c.contains(&"ac-3") {
        c.push("ac-3");
    }
    c.sort_by_key(|id| CONTROLS.iter().position(|x| x == id));
    c
}

/// The label form of an id: `au-3.1` → `AU-3(1)`.
pub fn label(id: &str) -> String {
    let upper = id.to_ascii_uppercase();
    match upper.split_once('.') {
        Some((base, enh)) => format!("{base}({enh})"),
        None => upper,
    }
}
