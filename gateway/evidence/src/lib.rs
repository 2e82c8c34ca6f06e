//! `gatehouse-evidence`: audit evidence exports for auditors (AU-6, AU-12).
//!
//! [`export`] writes, for a time range of the audit store, into one directory:
//!
//! | file | content |
//! |---|---|
//! | `records.csv` | RFC 4180 CSV, one row per record, formula injection neutralised |
//! | `records.jsonl` | one JSON object per record ([`gatehouse_audit::StoredRecord::to_json`] plus `controls`) |
//! | `assessment-results.json` | OSCAL 1.2.1 assessment results: per-control observations and findings |
//! | `manifest.json` | SHA-256 of every file, the covering signed checkpoint, the verification result |
//! | `manifest.sig` | the key store's signature over `manifest.json`, and the signer's public key |
//!
//! [`verify_export`] checks a directory offline with only the signer's public key.
//! Every record lists the NIST SP 800-53 Rev 5 controls it evidences ([`controls_for`]);
//! titles come from the catalog file passed at run time.

#![forbid(unsafe_code)]

mod catalog;
pub mod csv;
pub mod oscal;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatehouse_audit::{
    verify, AuditReader, Checkpoint, EventKind, PublicKey, StoredRecord, VerifyOptions,
    VerifyProgress,
};
use gatehouse_board::KeyStore;
use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use catalog::{controls_for, label, Catalog, CONTROLS, STORE_CONTROLS};

/// Errors of exports and their verification. Messages never carry record contents.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// Reading or verifying the audit store failed.
    #[error("audit store: {0}")]
    Audit(#[from] gatehouse_audit::AuditError),
    /// Writing or reading an export file failed.
    #[error("export I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The catalog cannot be read or has no controls.
    #[error("control catalog: {0}")]
    Catalog(String),
    /// A control the export reports on is not in the catalog.
    #[error("control {0} is not in the catalog")]
    UnknownControl(&'static str),
    /// The key store could not sign.
    #[error("key store: {0}")]
    Keys(#[from] gatehouse_board::KeyStoreError),
    /// JSON encoding failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The export range is empty or reversed.
    #[error("invalid export range")]
    Range,
    /// The output directory exists and is not empty.
    #[error("export directory is not empty")]
    NotEmpty,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The audit store file.
    pub store: PathBuf,
    /// Inclusive start (UTC microseconds).
    pub from_us: i64,
    /// Exclusive end (UTC microseconds).
    pub to_us: i64,
    /// The OSCAL 800-53 catalog (e.g. `NIST_SP-800-53_rev5_catalog.json`).
    pub catalog: PathBuf,
    /// Output directory (created; must be empty if it exists).
    pub out_dir: PathBuf,
}

/// Progress of [`export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportProgress {
    /// Verifying the store first.
    Verifying(VerifyProgress),
    /// Records written so far.
    Writing {
        /// Records written.
        records: u64,
    },
}

/// Per-control counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlSummary {
    /// Records evidencing the control.
    pub records: u64,
    /// Of those, decision allow.
    pub allowed: u64,
    /// Of those, decision deny.
    pub denied: u64,
    /// Of those, failed logins.
    pub login_failures: u64,
}

/// What an export contains (also written into the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    /// Range start (UTC microseconds, inclusive).
    pub from_us: i64,
    /// Range end (UTC microseconds, exclusive).
    pub to_us: i64,
    /// Records exported.
    pub records: u64,
    /// First and last seq exported (0 when none).
    pub first_seq: i64,
    /// Last seq exported.
    pub last_seq: i64,
    /// Records exported that no signed checkpoint covers yet.
    pub uncovered: u64,
    /// The key store that sealed the records and signed the export (`tpm2`, or
    /// `software (development only)`: such an export is not production evidence).
    pub key_store: String,
    /// Vaulted credentials found in responses and masked (leaks stopped), from the
    /// `secret.masked` records in the range.
    pub vaulted_secret_hits: u64,
    /// Whether the whole store verified before the export.
    pub verification_ok: bool,
    /// The problems verification found (debug text; no record contents).
    pub verification_problems: Vec<String>,
    /// Checkpoints in the store.
    pub checkpoints: u64,
    /// Size of the covering checkpoint (0 when none).
    pub checkpoint_size: u64,
    /// Root of the covering checkpoint (hex; empty when none).
    pub checkpoint_root: String,
    /// Per-control counts, by OSCAL control id.
    pub controls: BTreeMap<String, ControlSummary>,
    /// Control titles used, by id (from the catalog).
    pub control_titles: BTreeMap<String, String>,
}

/// One file listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the export directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `gatehouse-evidence/v1`.
    pub format: String,
    /// When the export was made (RFC 3339).
    pub created: String,
    /// The files and their hashes.
    pub files: Vec<ManifestFile>,
    /// The covering checkpoint in its signed text form (verifiable on its own).
    pub checkpoint: Option<String>,
    /// The summary.
    pub summary: ExportSummary,
}

const FORMAT: &str = "gatehouse-evidence/v1";
const FILES: [&str; 3] = ["records.csv", "records.jsonl", "assessment-results.json"];

/// CSV columns (after `seq`, `time`: the record fields, then `controls`, `hash`).
const CSV_FIELDS: &[&str] = &[
    "seq",
    "time",
    "event",
    "gateway",
    "listener",
    "session_id",
    "source",
    "subject",
    "username",
    "email",
    "groups",
    "token_id",
    "issuer",
    "connection",
    "protocol",
    "statement",
    "statement_name",
    "param_count",
    "decision",
    "reason",
    "sqlstate",
    "rows",
    "bytes_in",
    "bytes_out",
    "duration_us",
    "ref_seq",
    "config_hash",
    "policy_hash",
    "controls",
    "prev_hash",
    "hash",
];

/// The CSV cell of a JSON value: strings as they are, numbers in decimal, arrays joined
/// with `;`, absent as empty.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(";"),
        Some(other) => other.to_string(),
    }
}

/// The JSON object of a record in an export: `to_json()` plus `controls`.
pub fn record_json(r: &StoredRecord) -> Value {
    let mut v = r.to_json();
    if let Value::Object(m) = &mut v {
        m.insert(
            "controls".into(),
            Value::Array(
                controls_for(&r.record)
                    .into_iter()
                    .map(Value::from)
                    .collect(),
            ),
        );
    }
    v
}

fn sha256_file(path: &Path) -> Result<(u64, String), EvidenceError> {
    let bytes = std::fs::read(path)?;
    Ok((
        bytes.len() as u64,
        hex::encode(digest::digest(&digest::SHA256, &bytes)),
    ))
}

/// Exports the records with `from_us <= time < to_us`. The store is verified first (its
/// result is part of the evidence, not a reason to refuse: an auditor needs to see a failed
/// verification). Signs the manifest with `keys`; the same key store opens sealed records.
pub fn export(
    opts: &ExportOptions,
    keys: Arc<dyn KeyStore>,
    mut progress: impl FnMut(ExportProgress),
) -> Result<ExportSummary, EvidenceError> {
    if opts.from_us >= opts.to_us {
        return Err(EvidenceError::Range);
    }
    let catalog = Catalog::load(&opts.catalog)?;
    let mut control_titles = BTreeMap::new();
    for id in CONTROLS {
        let t = catalog.title(id).ok_or(EvidenceError::UnknownControl(id))?;
        control_titles.insert((*id).to_owned(), t.to_owned());
    }
    if opts.out_dir.exists() && std::fs::read_dir(&opts.out_dir)?.next().is_some() {
        return Err(EvidenceError::NotEmpty);
    }
    std::fs::create_dir_all(&opts.out_dir)?;

    let vopts = VerifyOptions {
        keys: Some(Arc::clone(&keys)),
        trusted_key: Some(PublicKey::of(keys.as_ref())?),
        ..VerifyOptions::default()
    };
    let verification = verify(&opts.store, &vopts, |p| {
        progress(ExportProgress::Verifying(p))
    })?;
    let checkpoint: Option<Checkpoint> = verification.last_checkpoint.clone();
    let covered = checkpoint.as_ref().map_or(0, |c| c.size);

    let reader = AuditReader::open_with(&opts.store, Arc::clone(&keys))?;
    let mut csv_out = BufWriter::new(File::create(opts.out_dir.join("records.csv"))?);
    let mut jsonl_out = BufWriter::new(File::create(opts.out_dir.join("records.jsonl"))?);
    csv_out.write_all(csv::line(CSV_FIELDS.iter().copied()).as_bytes())?;
    let mut summary = ExportSummary {
        from_us: opts.from_us,
        to_us: opts.to_us,
        records: 0,
        first_seq: 0,
        last_seq: 0,
        uncovered: 0,
        key_store: keys.backend().to_string(),
        vaulted_secret_hits: 0,
        verification_ok: verification.is_ok(),
        verification_problems: verification
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect(),
        checkpoints: verification.checkpoints,
        checkpoint_size: covered,
        checkpoint_root: checkpoint
            .as_ref()
            .map(|c| hex::encode(c.root))
            .unwrap_or_default(),
        controls: BTreeMap::new(),
        control_titles,
    };
    let mut io_error: Option<std::io::Error> = None;
    reader.for_each_in_time_range(opts.from_us, opts.to_us, |r| {
        let v = record_json(&r);
        let row: Vec<String> = CSV_FIELDS.iter().map(|f| cell(v.get(*f))).collect();
        let written = csv_out
            .write_all(csv::line(row.iter().map(String::as_str)).as_bytes())
            .and_then(|()| serde_json::to_writer(&mut jsonl_out, &v).map_err(std::io::Error::from))
            .and_then(|()| jsonl_out.write_all(b"\n"));
        if let Err(e) = written {
            io_error = Some(e);
            return false;
        }
        if summary.first_seq == 0 {
            summary.first_seq = r.seq;
        }
        summary.last_seq = r.seq;
        summary.records += 1;
        if u64::try_from(r.seq).unwrap_or(0) > covered {
            summary.uncovered += 1;
        }
        let denied = r.record.decision == Some(gatehouse_audit::Decision::Deny);
        let allowed = r.record.decision == Some(gatehouse_audit::Decision::Allow);
        let failed_login = r.record.event == EventKind::LoginFailure;
        if r.record.event == EventKind::SecretMasked {
            summary.vaulted_secret_hits += u64::try_from(r.record.rows.unwrap_or(1)).unwrap_or(0);
        }
        let mut ids = controls_for(&r.record);
        ids.extend(STORE_CONTROLS.iter().copied());
        // A record may name a store-level control itself (a refused SFTP write: AU-9).
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let c = summary.controls.entry(id.to_owned()).or_default();
            c.records += 1;
            c.allowed += u64::from(allowed);
            c.denied += u64::from(denied);
            c.login_failures += u64::from(failed_login);
        }
        if summary.records % 65_536 == 0 {
            progress(ExportProgress::Writing {
                records: summary.records,
            });
        }
        true
    })?;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    csv_out
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    jsonl_out
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    progress(ExportProgress::Writing {
        records: summary.records,
    });

    let now = gatehouse_audit::format_rfc3339_us(now_us());
    let doc = oscal::document(&summary, &catalog, &oscal::uuid_v4()?, &now)?;
    std::fs::write(
        opts.out_dir.join("assessment-results.json"),
        serde_json::to_vec_pretty(&doc)?,
    )?;

    let mut files = Vec::new();
    for name in FILES {
        let (bytes, sha256) = sha256_file(&opts.out_dir.join(name))?;
        files.push(ManifestFile {
            name: name.to_owned(),
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        created: now,
        files,
        checkpoint: checkpoint.as_ref().map(Checkpoint::to_text),
        summary: summary.clone(),
    };
    let body = serde_json::to_vec_pretty(&manifest)?;
    std::fs::write(opts.out_dir.join("manifest.json"), &body)?;
    let signature = keys.sign(&body)?;
    let signer = PublicKey::of(keys.as_ref())?;
    std::fs::write(
        opts.out_dir.join("manifest.sig"),
        format!(
            "signer {}\nsignature {}\n",
            signer.to_text(),
            hex::encode(signature)
        ),
    )?;
    Ok(summary)
}

/// What [`verify_export`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCheck {
    /// The manifest (present when its signature verified).
    pub manifest: Option<Manifest>,
    /// Key id of the manifest's signer.
    pub signer_key_id: Option<String>,
    /// Everything wrong; empty when the export is intact.
    pub problems: Vec<ExportProblem>,
}

impl ExportCheck {
    /// True when the export is intact and signed by the trusted key.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One thing wrong with an export directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportProblem {
    /// `manifest.sig` is missing or malformed.
    SignatureMissing,
    /// The manifest's signature does not verify.
    BadSignature,
    /// Signed by a key other than the trusted one.
    UntrustedSigner,
    /// `manifest.json` does not parse or has the wrong format.
    BadManifest,
    /// A listed file is missing.
    MissingFile(String),
    /// A listed file's hash or size differs.
    FileChanged(String),
    /// The covering checkpoint in the manifest does not verify.
    BadCheckpoint,
}

/// Checks an export directory offline: the manifest signature (by `trusted` when given,
/// else by the key it names), every file's size and SHA-256, and the embedded checkpoint's
/// own signature.
pub fn verify_export(
    dir: &Path,
    trusted: Option<&PublicKey>,
) -> Result<ExportCheck, EvidenceError> {
    let mut check = ExportCheck {
        manifest: None,
        signer_key_id: None,
        problems: Vec::new(),
    };
    let body = std::fs::read(dir.join("manifest.json"))?;
    let sig = std::fs::read_to_string(dir.join("manifest.sig")).unwrap_or_default();
    let mut lines = sig.lines();
    let signer = lines
        .next()
        .and_then(|l| l.strip_prefix("signer "))
        .and_then(PublicKey::from_text);
    let signature = lines
        .next()
        .and_then(|l| l.strip_prefix("signature "))
        .and_then(|h| hex::decode(h).ok());
    let (Some(signer), Some(signature)) = (signer, signature) else {
        check.problems.push(ExportProblem::SignatureMissing);
        return Ok(check);
    };
    check.signer_key_id = Some(signer.key_id().to_string());
    if trusted.is_some_and(|t| *t != signer) {
        check.problems.push(ExportProblem::UntrustedSigner);
    }
    if !signer.scheme.verify(&signer.key, &body, &signature) {
        check.problems.push(ExportProblem::BadSignature);
        return Ok(check);
    }
    let manifest: Manifest = match serde_json::from_slice(&body) {
        Ok(m) if matches!(&m, Manifest { format, .. } if format == FORMAT) => m,
        _ => {
            check.problems.push(ExportProblem::BadManifest);
            return Ok(check);
        }
    };
    for f in &manifest.files {
        let path = dir.join(&f.name);
        if f.name.contains('/') || f.name.contains("..") {
            check.problems.push(ExportProblem::BadManifest);
            continue;
        }
        match sha256_file(&path) {
            Ok((bytes, sha)) if bytes == f.bytes && sha == f.sha256 => {}
            Ok(_) => check
                .problems
                .push(ExportProblem::FileChanged(f.name.clone())),
            Err(_) => check
                .problems
                .push(ExportProblem::MissingFile(f.name.clone())),
        }
    }
    if let Some(text) = &manifest.checkpoint {
        match Checkpoint::from_text(text) {
            Some(cp) if cp.signature_valid() && cp.signer == signer => {}
            _ => check.problems.push(ExportProblem::BadCheckpoint),
        }
    }
    check.manifest = Some(manifest);
    Ok(check)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
