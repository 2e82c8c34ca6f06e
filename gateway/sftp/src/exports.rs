//! Scheduled evidence exports into the directory the SFTP server serves.
//!
//! Each run exports the records since the previous scheduled export (the `to` of the newest
//! `evidence-*` manifest; the beginning of the store the first time) into
//! `evidence-YYYYMMDDTHHMMSSZ/`, so consecutive exports cover the trail without gaps or
//! overlaps. An export is written into a hidden `.partial-*` directory and renamed when
//! complete: an auditor never sees a half-written export.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatehouse_board::KeyStore;
use gatehouse_evidence::{EvidenceError, ExportOptions, ExportSummary, Manifest};

/// Prefix of the directories the scheduler writes.
pub const PREFIX: &str = "evidence-";

/// What a scheduled export needs.
#[derive(Clone)]
pub struct ScheduledExports {
    /// The served directory (`data_dir/exports`).
    pub dir: PathBuf,
    /// The audit store.
    pub store: PathBuf,
    /// The 800-53 catalog.
    pub catalog: PathBuf,
    /// Opens sealed records and signs manifests.
    pub keys: Arc<dyn KeyStore>,
}

impl std::fmt::Debug for ScheduledExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduledExports")
            .field("dir", &self.dir)
            .field("store", &self.store)
            .finish()
    }
}

/// The end (`to_us`) of the newest scheduled export in `dir`, 0 when there is none.
pub fn covered_until(dir: &Path) -> i64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
        .filter_map(|e| std::fs::read(e.path().join("manifest.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .map(|m| m.summary.to_us)
        .max()
        .unwrap_or(0)
}

/// `evidence-20261204T160000Z` for a time in microseconds.
pub fn dir_name(time_us: i64) -> String {
    let t = gatehouse_audit::format_rfc3339_us(time_us);
    // "2026-12-04T16:00:00.000000Z"
    let compact: String = t[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{PREFIX}{compact}Z")
}

impl ScheduledExports {
    /// Removes `.partial-*` directories left by an interrupted export.
    pub fn clean_partials(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with(".partial-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Deletes scheduled exports (`evidence-*` with a readable manifest) whose range ended
    /// before `cutoff_us`: they follow the audit store's retention (AU-11), whose records they
    /// copy. Other directories (operators' exports) are never touched. Returns how many went.
    pub fn prune_before(&self, cutoff_us: i64) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.filter_map(Result::ok) {
            if !e.file_name().to_string_lossy().starts_with(PREFIX) {
                continue;
            }
            let ended = std::fs::read(e.path().join("manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                .map(|m| m.summary.to_us);
            if ended.is_some_and(|t| t < cutoff_us) && std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Exports the records in `[covered_until, now_us)`. `None` when there were none.
    /// Blocking: run it off the async runtime.
    pub fn run_once(&self, now_us: i64) -> Result<Option<(PathBuf, ExportSummary)>, EvidenceError> {
        std::fs::create_dir_all(&self.dir)?;
        let from_us = covered_until(&self.dir);
        if from_us >= now_us {
            return Ok(None);
        }
        let mut name = dir_name(now_us);
        let mut n = 2;
        while self.dir.join(&name).exists() {
            name = format!("{}-{n}", dir_name(now_us));
            n += 1;
        }
        let partial = self.dir.join(format!(".partial-{name}"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        let opts = ExportOptions {
            store: self.store.clone(),
            from_us,
            to_us: now_us,
            catalog: self.catalog.clone(),
            out_dir: partial.clone(),
        };
        let summary = match gatehouse_evidence::export(&opts, Arc::clone(&self.keys), |_| {}) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        if summary.records == 0 {
            std::fs::remove_dir_all(&partial)?;
            return Ok(None);
        }
        let done = self.dir.join(&name);
        std::fs::rename(&partial, &done)?;
        Ok(Some((done, summary)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use gatehouse_audit::{AuditStore, EventKind, Record, StoreOptions};
    use gatehouse_board::SoftwareKeyStore;

    fn catalog() -> PathBuf {
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
            .join("../../../shared/oscal/NIST_SP-800-53_rev5_catalog.json")
    }

    /// Consecutive scheduled exports chain without gaps or overlaps, skip empty ranges, and
    /// are pruned by their end time; other directories are left alone.
    #[tokio::test]
    async fn exports_chain_and_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let keys: Arc<dyn KeyStore> =
            Arc::new(SoftwareKeyStore::open_or_create(&tmp.path().join("keys")).unwrap());
        let store_path = tmp.path().join("audit.db");
        let store =
            AuditStore::open_with(&store_path, StoreOptions::default(), keys.clone()).unwrap();
        for t in [1_000, 2_000, 3_000] {
            store
                .append(Record::new(EventKind::GatewayStart, "gw", t))
                .await
                .unwrap();
        }
        store.flush().await.unwrap();
        let sched = ScheduledExports {
            dir: tmp.path().join("exports"),
            store: store_path,
            catalog: catalog(),
            keys,
        };
        std::fs::create_dir_all(sched.dir.join("manual")).unwrap();
        let (a, s1) = sched.run_once(2_500).unwrap().unwrap();
        assert_eq!((s1.from_us, s1.to_us, s1.records), (0, 2_500, 2));
        assert!(
            sched.run_once(2_800).unwrap().is_none(),
            "no records in [2500, 2800)"
        );
        let (b, s2) = sched.run_once(4_000).unwrap().unwrap();
        assert_eq!((s2.from_us, s2.to_us, s2.records), (2_500, 4_000, 1));
        assert_ne!(a, b);
        assert!(gatehouse_evidence::verify_export(&b, None).unwrap().is_ok());
        assert_eq!(covered_until(&sched.dir), 4_000);
        assert_eq!(sched.prune_before(3_000), 1);
        assert!(!a.exists() && b.exists() && sched.dir.join("manual").exists());
        store.shutdown().unwrap();
    }

    #[test]
    fn names_sort_by_time() {
        assert_eq!(dir_name(1_796_400_000_000_000), "evidence-20261204T160000Z");
        assert!(dir_name(1_796_400_000_000_000) < dir_name(1_796_400_001_000_000));
    }
}
