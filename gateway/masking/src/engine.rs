//! [`Engine`]: configuration, vaulted-secret automaton and hash key, compiled once and shared.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use ring::hmac;

use crate::config::{Glob, MaskingConfig, Strategy, DEFAULT_MAX_VALUE_BYTES};
use crate::detect::{self, Finding, ScanOptions};
use crate::entity::{Counts, Entity};
use crate::error::MaskError;
use crate::strategy;

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    columns: Vec<Glob>,
    strategy: Strategy,
}

/// What the engine does with the values of one column or JSON field; computed once per column
/// with [`Engine::plan`] (e.g. per RowDescription) and reused for every row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColumnPlan {
    rule: Option<usize>,
    plain_ssn: bool,
}

impl ColumnPlan {
    /// This plan where it has a rule, else `other`'s; plain SSNs if either says so. For a
    /// column known by two names (its source column and the client's alias).
    pub fn or(self, other: ColumnPlan) -> ColumnPlan {
        ColumnPlan {
            rule: self.rule.or(other.rule),
            plain_ssn: self.plain_ssn || other.plain_ssn,
        }
    }

    /// `true` when a column rule masks every value of this column whole.
    pub fn masks_whole_value(&self) -> bool {
        self.rule.is_some()
    }
}

/// The masking engine: built once per (config, vaulted secrets, hash key), immutable, `Send +
/// Sync`, cheap to share behind an `Arc`.
///
/// Its `Debug` output shows only sizes, never the vaulted secrets or the key.
pub struct Engine {
    opts: ScanOptions,
    strategies: Vec<Strategy>,
    rules: Vec<Rule>,
    ssn_plain: Vec<Glob>,
    vault: Option<AhoCorasick>,
    vault_len: usize,
    key: hmac::Key,
    max_value: usize,
    /// Some pattern detector is enabled (not only the vault automaton).
    any_detector: bool,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disabled: Vec<&str> = Entity::ALL
            .iter()
            .filter(|e| !self.opts.enabled[e.index()])
            .map(|e| e.name())
            .collect();
        f.debug_struct("Engine")
            .field(
                "rules",
                &self.rules.iter().map(|r| &*r.name).collect::<Vec<_>>(),
            )
            .field("disabled", &disabled)
            .field("vaulted_secrets", &self.vault_len)
            .field("max_value_bytes", &self.max_value)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Validate `cfg` and compile it with the vaulted secrets (exact byte strings; empty ones
    /// are ignored) and the key for [`Strategy::KeyedHash`] / [`Strategy::FormatPreserving`].
    pub fn new(
        cfg: &MaskingConfig,
        vault_secrets: &[&[u8]],
        hash_key: [u8; 32],
    ) -> Result<Engine, MaskError> {
        cfg.validate()?;
        let mut enabled = [true; Entity::COUNT];
        for e in &cfg.disabled {
            enabled[e.index()] = false;
        }
        let strategies = Entity::ALL
            .iter()
            .map(|e| cfg.strategy_for(*e).clone())
            .collect();
        let rules = cfg
            .rules
            .iter()
            .map(|r| Rule {
                name: Arc::from(r.name.as_str()),
                columns: r.columns.iter().map(|c| Glob::new(c)).collect(),
                strategy: r.strategy.clone(),
            })
            .collect();
        let patterns: Vec<&[u8]> = vault_secrets
            .iter()
            .copied()
            .filter(|p| !p.is_empty())
            .collect();
        let vault = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| MaskError::Automaton(e.to_string()))?,
            )
        };
        Ok(Engine {
            opts: ScanOptions {
                enabled,
                plain_ssn: false,
            },
            strategies,
            rules,
            ssn_plain: cfg.ssn_plain_columns.iter().map(|c| Glob::new(c)).collect(),
            vault,
            vault_len: patterns.len(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &hash_key),
            max_value: cfg.max_value_bytes.unwrap_or(DEFAULT_MAX_VALUE_BYTES),
            any_detector: Entity::ALL.iter().any(|e| {
                !matches!(e, Entity::VaultedSecret | Entity::Column) && enabled[e.index()]
            }),
        })
    }

    /// Number of (non-empty) vaulted secrets the engine watches for.
    pub fn vaulted_secret_count(&self) -> usize {
        self.vault_len
    }

    /// Largest value accepted by [`Engine::mask`].
    pub fn max_value_bytes(&self) -> usize {
        self.max_value
    }

    /// Resolve the rules for a column / field name (first matching rule wins).
    pub fn plan(&self, column: Option<&str>) -> ColumnPlan {
        let Some(name) = column else {
            return ColumnPlan::default();
        };
        ColumnPlan {
            rule: self
                .rules
                .iter()
                .position(|r| r.columns.iter().any(|g| g.matches(name))),
            plain_ssn: self.ssn_plain.iter().any(|g| g.matches(name)),
        }
    }

    /// Mask one value (bytes, usually UTF-8; other bytes are scanned as they are, detectors
    /// look at ASCII only). `column` is the column / JSON field name when known. Returns
    /// `Cow::Borrowed` when nothing matched.
    pub fn mask<'a>(
        &self,
        column: Option<&str>,
        value: &'a [u8],
        counts: &mut Counts,
    ) -> Result<Cow<'a, [u8]>, MaskError> {
        self.mask_planned(self.plan(column), value, counts)
    }

    /// [`Engine::mask`] with a plan computed earlier by [`Engine::plan`].
    pub fn mask_planned<'a>(
        &self,
        plan: ColumnPlan,
        value: &'a [u8],
        counts: &mut Counts,
    ) -> Result<Cow<'a, [u8]>, MaskError> {
        if value.len() > self.max_value {
            return Err(MaskError::TooLarge {
                len: value.len(),
                limit: self.max_value,
            });
        }
        if let Some(r) = plan.rule.and_then(|k| self.rules.get(k)) {
            let mut out = Vec::with_capacity(value.len().max(16));
            strategy::apply(&r.strategy, Entity::Column, value, &self.key, &mut out);
            counts.add(Entity::Column);
            counts.add_rule(&r.name, 1);
            return Ok(Cow::Owned(out));
        }
        let mut findings = Vec::new();
        self.find_into(plan, value, &mut findings);
        if findings.is_empty() {
            return Ok(Cow::Borrowed(value));
        }
        let mut out = Vec::with_capacity(value.len() + 16 * findings.len());
        let mut pos = 0;
        for f in &findings {
            out.extend_from_slice(&value[pos..f.range.start]);
            let strategy = &self.strategies[f.entity.index()];
            strategy::apply(
                strategy,
                f.entity,
                &value[f.range.clone()],
                &self.key,
                &mut out,
            );
            counts.add(f.entity);
            pos = f.range.end;
        }
        out.extend_from_slice(&value[pos..]);
        Ok(Cow::Owned(out))
    }

    /// What would be masked in `value` (detectors and vaulted secrets; column rules are not
    /// applied). Sorted, disjoint. For tests, previews and accuracy measurements.
    pub fn find(&self, plan: ColumnPlan, value: &[u8]) -> Vec<Finding> {
        let mut out = Vec::new();
        self.find_into(plan, value, &mut out);
        out
    }

    fn find_into(&self, plan: ColumnPlan, value: &[u8], out: &mut Vec<Finding>) {
        // With every detector off (a vaulted-credentials-only engine) only the automaton runs.
        if self.any_detector && detect::prefilter(value) {
            let opts = ScanOptions {
                plain_ssn: plan.plain_ssn,
                ..self.opts
            };
            detect::scan(value, &opts, out);
        }
        if let Some(ac) = &self.vault {
            let mut hits = ac.find_iter(value).map(|m| Finding {
                entity: Entity::VaultedSecret,
                range: m.start()..m.end(),
            });
            if let Some(first) = hits.next() {
                let vaulted: Vec<Finding> = std::iter::once(first).chain(hits).collect();
                let detected = std::mem::take(out);
                *out = merge(detected, vaulted);
            }
        }
    }

    /// Mask the string (and number) values of a JSON document, using field names for column
    /// rules; see [`crate::json`]. Malformed JSON is an error, never passed through.
    pub fn mask_json<'a>(
        &self,
        doc: &'a [u8],
        counts: &mut Counts,
    ) -> Result<Cow<'a, [u8]>, MaskError> {
        self.mask_json_in(None, doc, counts)
    }

    /// [`Engine::mask_json`] for a document stored in column `column`: a rule matching the
    /// column masks every scalar in it.
    pub fn mask_json_in<'a>(
        &self,
        column: Option<&str>,
        doc: &'a [u8],
        counts: &mut Counts,
    ) -> Result<Cow<'a, [u8]>, MaskError> {
        self.mask_json_planned(self.plan(column), doc, counts)
    }

    /// [`Engine::mask_json_in`] with a plan computed earlier by [`Engine::plan`].
    pub fn mask_json_planned<'a>(
        &self,
        plan: ColumnPlan,
        doc: &'a [u8],
        counts: &mut Counts,
    ) -> Result<Cow<'a, [u8]>, MaskError> {
        if doc.len() > self.max_value {
            return Err(MaskError::TooLarge {
                len: doc.len(),
                limit: self.max_value,
            });
        }
        crate::json::mask_document(self, plan, doc, counts)
    }

    /// Whether any column rule or plain-SSN column is configured (column names matter).
    pub fn has_column_rules(&self) -> bool {
        !self.rules.is_empty() || !self.ssn_plain.is_empty()
    }
}

/// Union two sorted, disjoint finding lists. Overlapping findings become one span covering both;
/// a vaulted-secret hit wins the label (it is the stronger evidence).
fn merge(a: Vec<Finding>, b: Vec<Finding>) -> Vec<Finding> {
    let mut all: Vec<Finding> = a.into_iter().chain(b).collect();
    all.sort_by_key(|f| f.range.start);
    let mut out: Vec<Finding> = Vec::with_capacity(all.len());
    for f in all {
        if let Some(last) = out.last_mut() {
            if f.range.start < last.range.end {
                last.range.end = last.range.end.max(f.range.end);
                if f.entity == Entity::VaultedSecret {
                    last.entity = Entity::VaultedSecret;
                }
                continue;
            }
        }
        out.push(f);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::ColumnRule;

    fn engine(cfg: &MaskingConfig, vault: &[&[u8]]) -> Engine {
        Engine::new(cfg, vault, [3u8; 32]).unwrap()
    }

    fn mask(e: &Engine, col: Option<&str>, v: &str, c: &mut Counts) -> String {
        String::from_utf8(e.mask(col, v.as_bytes(), c).unwrap().into_owned()).unwrap()
    }

    #[test]
    fn vault_only_engine_masks_only_vaulted_secrets_and_rules() {
        let cfg = MaskingConfig {
            disabled: Entity::ALL
                .iter()
                .copied()
                .filter(|e| !matches!(e, Entity::VaultedSecret | Entity::Column))
                .collect(),
            rules: vec![ColumnRule {
                name: "ssn".into(),
                columns: vec!["ssn".into()],
                strategy: Strategy::Redact { replacement: None },
            }],
            ..MaskingConfig::default()
        };
        let e = engine(&cfg, &[b"Sup3rS3cret!"]);
        assert!(!e.any_detector);
        let mut c = Counts::new();
        let v = "mail a@b.example, card 4111 1111 1111 1111, pw Sup3rS3cret!";
        let out = mask(&e, None, v, &mut c);
        assert!(out.contains("a@b.example") && out.contains("4111 1111 1111 1111"));
        assert!(!out.contains("Sup3rS3cret!"), "{out}");
        assert_eq!(c.vaulted_hits(), 1);
        assert_ne!(mask(&e, Some("ssn"), "078-05-1120", &mut c), "078-05-1120");
    }

    #[test]
    fn clean_values_are_borrowed() {
        let e = engine(&MaskingConfig::default(), &[b"Sup3rS3cret!"]);
        let mut c = Counts::new();
        for v in [
            "Alice Smith",
            "42",
            "2024-01-05",
            "order 1234567890",
            "",
            "héllo wörld",
        ] {
            assert!(
                matches!(
                    e.mask(Some("name"), v.as_bytes(), &mut c).unwrap(),
                    Cow::Borrowed(_)
                ),
                "{v}"
            );
        }
        assert!(c.is_empty());
    }

    #[test]
    fn masks_with_default_and_configured_strategies() {
        let mut cfg = MaskingConfig::default();
        cfg.entities
            .insert(Entity::Card, Strategy::Partial { keep_last: 4 });
        let e = engine(&cfg, &[]);
        let mut c = Counts::new();
        assert_eq!(
            mask(
                &e,
                None,
                "card 4242 4242 4242 4242 for bob@example.com",
                &mut c
            ),
            "card **** **** **** 4242 for [REDACTED:EMAIL]"
        );
        assert_eq!(c.get(Entity::Card), 1);
        assert_eq!(c.get(Entity::Email), 1);
    }

    #[test]
    fn vaulted_secrets_are_found_anywhere_and_counted() {
        let e = engine(&MaskingConfig::default(), &[b"pg-Pa55word", b"", b"zebra"]);
        assert_eq!(e.vaulted_secret_count(), 2);
        let mut c = Counts::new();
        assert_eq!(
            mask(&e, None, "conn=host:pg-Pa55word;zebrazebra password=pg-Pa55word", &mut c),
            "conn=host:[REDACTED:VAULTED_SECRET];[REDACTED:VAULTED_SECRET][REDACTED:VAULTED_SECRET] password=[REDACTED:VAULTED_SECRET]"
        );
        assert_eq!(c.vaulted_hits(), 4);
        assert_eq!(c.get(Entity::AssignedSecret), 0);
        let dbg = format!("{e:?}");
        assert!(!dbg.contains("Pa55") && !dbg.contains("zebra"), "{dbg}");
    }

    #[test]
    fn vaulted_hit_overlapping_a_detection_masks_the_union() {
        // The vaulted secret is the tail of an e-mail address.
        let e = engine(&MaskingConfig::default(), &[b"example.com and"]);
        let mut c = Counts::new();
        assert_eq!(
            mask(&e, None, "x bob@example.com and y", &mut c),
            "x [REDACTED:VAULTED_SECRET] y"
        );
        assert_eq!(c.vaulted_hits(), 1);
    }

    #[test]
    fn column_rules_mask_whole_values_case_insensitively() {
        let mut cfg = MaskingConfig::default();
        cfg.rules.push(ColumnRule {
            name: "ssn-col".into(),
            columns: vec!["ssn".into(), "*social*".into()],
            strategy: Strategy::Partial { keep_last: 4 },
        });
        cfg.ssn_plain_columns.push("tax_id".into());
        let e = engine(&cfg, &[]);
        let mut c = Counts::new();
        assert_eq!(mask(&e, Some("SSN"), "123456789", &mut c), "*****6789");
        assert_eq!(mask(&e, Some("customer_social_no"), "n/a", &mut c), "*/a");
        assert_eq!(
            mask(&e, Some("tax_id"), "123456789", &mut c),
            "[REDACTED:SSN]"
        );
        assert_eq!(mask(&e, Some("other"), "123456789", &mut c), "123456789");
        assert_eq!(c.rule("ssn-col"), 2);
        assert_eq!(c.get(Entity::Column), 2);
        assert_eq!(c.get(Entity::Ssn), 1);
        assert!(e.plan(Some("Ssn")).masks_whole_value());
    }

    #[test]
    fn disabled_detector_and_size_limit() {
        let cfg = MaskingConfig {
            disabled: vec![Entity::Email],
            max_value_bytes: Some(32),
            ..MaskingConfig::default()
        };
        let e = engine(&cfg, &[]);
        let mut c = Counts::new();
        assert_eq!(mask(&e, None, "bob@example.com", &mut c), "bob@example.com");
        let big = vec![b'a'; 33];
        assert_eq!(
            e.mask(None, &big, &mut c),
            Err(MaskError::TooLarge { len: 33, limit: 32 })
        );
    }

    #[test]
    fn non_utf8_values_are_scanned_bytewise() {
        let e = engine(&MaskingConfig::default(), &[]);
        let mut c = Counts::new();
        let v = b"\xff\xfe card 4111111111111111 \xc3";
        let out = e.mask(None, v, &mut c).unwrap();
        assert_eq!(&*out, b"\xff\xfe card [REDACTED:CARD] \xc3");
    }

    #[test]
    fn engine_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
        check::<Arc<Engine>>();
    }

    #[test]
    fn invalid_config_is_refused() {
        let cfg = MaskingConfig {
            disabled: vec![Entity::VaultedSecret],
            ..MaskingConfig::default()
        };
        assert!(matches!(
            Engine::new(&cfg, &[], [0; 32]),
            Err(MaskError::Config(_))
        ));
    }
}
