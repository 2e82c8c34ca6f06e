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
    use super::*;

    #[test]
    fn names_sort_by_time() {
        assert_eq!(dir_name(1_796_400_000_000_000), "evidence-20261204T160000Z");
        assert!(dir_name(1_796_400_000_000_000) < dir_name(1_796_400_001_000_000));
    }
}
