//! The OSCAL 1.2.1 assessment-results document of an export.
//!
//! Schema traps handled here: UUIDs are v4 (document) or v5 (everything derived from it);
//! times carry an explicit `Z`; arrays are omitted rather than empty; tokens have no spaces;
//! `import-ap` points at a back-matter resource describing the (implicit) assessment plan.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};

use crate::catalog::{label, Catalog, CONTROLS, STORE_CONTROLS};
use crate::{ControlSummary, EvidenceError, ExportSummary};

/// OSCAL version the document claims.
pub const OSCAL_VERSION: &str = "1.2.1";
/// Namespace of Gatehouse's own property names.
pub const PROP_NS: &str = "urn:gatehouse:evidence";

/// A random (version 4) UUID.
pub fn uuid_v4() -> Result<String, EvidenceError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| EvidenceError::Random)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format_uuid(&b))
}

/// A name-based (version 5, SHA-1) UUID per RFC 4122 section 4.3.
pub fn uuid_v5(namespace: &str, name: &str) -> String {
    let ns: Vec<u8> = hex::decode(namespace.replace('-', "")).unwrap_or_default();
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&ns);
    ctx.update(name.as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn prop(name: &str, value: impl ToString) -> Value {
    json!({"name": name, "ns": PROP_NS, "value": value.to_string()})
}

/// Builds the document. `doc_uuid` is a v4 UUID; every other UUID is derived from it.
pub fn document(
    summary: &ExportSummary,
    catalog: &Catalog,
    doc_uuid: &str,
    now: &str,
) -> Result<Value, EvidenceError> {
    let plan_uuid = uuid_v5(doc_uuid, "assessment-plan");
    let party_uuid = uuid_v5(doc_uuid, "party/gatehouse");
    let start = gatehouse_audit::format_rfc3339_us(summary.from_us);
    let end = gatehouse_audit::format_rfc3339_us(summary.to_us);
    let verified = summary.verification_ok;

    let mut observations = Vec::new();
    let mut findings = Vec::new();
    let mut selected = Vec::new();
    for id in CONTROLS {
        let title = catalog.title(id).ok_or(EvidenceError::UnknownControl(id))?;
        let c = summary.controls.get(*id).cloned().unwrap_or_default();
        let store_level = STORE_CONTROLS.contains(id);
        if c.records == 0 && !store_level {
            continue;
        }
        selected.push(json!({"control-id": id}));
        let obs_uuid = uuid_v5(doc_uuid, &format!("observation/{id}"));
        let mut props = vec![
            prop("control-title", title),
            prop("records", c.records),
            prop("allowed", c.allowed),
            prop("denied", c.denied),
            prop("login-failures", c.login_failures),
        ];
        if store_level {
            props.push(prop(
                "verification",
                if verified { "passed" } else { "failed" },
            ));
        }
        let description = if store_level {
            format!(
                "{} ({}): the audit store verified {} (hash chain, Merkle roots of {} signed \
                 checkpoints, signatures, high-water mark; records sealed with AES-256-GCM). \
                 {} records in the range.",
                label(id),
                title,
                if verified { "clean" } else { "with problems" },
                summary.checkpoints,
                c.records
            )
        } else {
            format!(
                "{} ({}): {} audit records in the range evidence this control ({} allowed, \
                 {} denied, {} failed logins). Each record in records.jsonl and records.csv \
                 lists the controls it evidences.",
                label(id),
                title,
                c.records,
                c.allowed,
                c.denied,
                c.login_failures
            )
        };
        observations.push(json!({
            "uuid": obs_uuid,
            "title": format!("{} evidence from the Gatehouse audit store", label(id)),
            "description": description,
            "props": props,
            "methods": ["EXAMINE", "TEST"],
            "types": ["control-objective"],
            "origins": [{"actors": [{"type": "party", "actor-uuid": party_uuid}]}],
            "relevant-evidence": [
                {"href": "records.jsonl", "description": "Audit records (JSON Lines), each with its controls."},
                {"href": "manifest.json", "description": "Signed manifest: file hashes and the covering audit checkpoint."}
            ],
            "collected": now,
        }));
        let satisfied = verified && (c.records > 0 || store_level);
        findings.push(json!({
            "uuid": uuid_v5(doc_uuid, &format!("finding/{id}")),
            "title": format!("{} {}", label(id), title),
            "description": format!(
                "Determined from {} audit records and store verification.",
                c.records
            ),
            "target": {
                "type": "objective-id",
                "target-id": format!("{id}_obj"),
                "status": {"state": if satisfied { "satisfied" } else { "not-satisfied" }}
            },
            "related-observations": [{"observation-uuid": obs_uuid}],
        }));
    }

    let mut result = Map::new();
    result.insert("uuid".into(), json!(uuid_v5(doc_uuid, "result")));
    result.insert(
        "title".into(),
        json!("Gatehouse audit evidence for NIST SP 800-53 Rev 5"),
    );
    result.insert(
        "description".into(),
        json!(format!(
            "Automated assessment from {} audit records between {} and {} (seq {} to {}).",
            summary.records, start, end, summary.first_seq, summary.last_seq
        )),
    );
    result.insert("start".into(), json!(start));
    result.insert("end".into(), json!(end));
    result.insert(
        "props".into(),
        json!([
            prop("records", summary.records),
            prop("checkpoint-size", summary.checkpoint_size),
            prop("checkpoint-root", &summary.checkpoint_root),
        ]),
    );
    result.insert(
        "reviewed-controls".into(),
        json!({"control-selections": [{"include-controls": selected}]}),
    );
    if !observations.is_empty() {
        result.insert("observations".into(), Value::Array(observations));
    }
    if !findings.is_empty() {
        result.insert("findings".into(), Value::Array(findings));
    }

    Ok(json!({
        "assessment-results": {
            "uuid": doc_uuid,
            "metadata": {
                "title": "Gatehouse audit evidence export",
                "last-modified": now,
                "version": "1",
                "oscal-version": OSCAL_VERSION,
                "props": [
                    prop("catalog-version", if catalog.version.is_empty() { "unknown" } else { &catalog.version }),
                    prop("key-store", &summary.key_store),
                    prop("vaulted-secret-hits", summary.vaulted_secret_hits),
                ],
                "roles": [{"id": "assessor", "title": "Automated assessor"}],
                "parties": [{"uuid": party_uuid, "type": "organization", "name": "Gatehouse gateway"}],
            },
            "import-ap": {
                "href": format!("#{plan_uuid}"),
                "remarks": "Continuous automated assessment by the Gatehouse gateway; the plan is the control mapping documented in the back-matter resource."
            },
            "results": [Value::Object(result)],
            "back-matter": {
                "resources": [{
                    "uuid": plan_uuid,
                    "title": "Gatehouse continuous assessment plan",
                    "description": "Every audit record is mapped to the NIST SP 800-53 Rev 5 controls it evidences (login: IA-2, AC-2; statement: AC-3, AU-2, AU-3, AU-3(1), AU-12, SC-8; denied statement: AC-6, IR-4; configuration: CM-2; evidence read by auditors over SFTP: AU-6, AU-9(4), AC-3; a refused SFTP operation: AC-3, AU-9, AU-9(4), IR-4); the store's integrity (AU-9, AU-10), retention (AU-11) and encryption (SC-28) are assessed by offline verification."
                }]
            }
        }
    }))
}

/// A summary, for callers that only need the per-control numbers.
pub fn control_rows(summary: &ExportSummary) -> Vec<(&'static str, ControlSummary)> {
    CONTROLS
        .iter()
        .map(|id| (*id, summary.controls.get(*id).cloned().unwrap_or_default()))
        .collect()
}
