//! [`MaskingConfig`]: what to mask and how, as produced by the policy layer per connection and
//! group. Parsed with `deny_unknown_fields`; [`MaskingConfig::validate`] checks the rest before
//! an [`crate::Engine`] is built.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::entity::Entity;
use crate::error::MaskError;

/// Largest value masked by default (16 MiB); larger values are refused (fail closed).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Upper bound of `keep_last` for [`Strategy::Partial`].
pub const MAX_KEEP_LAST: u8 = 8;
/// Bounds of `length` (hex characters) for [`Strategy::KeyedHash`].
pub const KEYED_HASH_LENGTH: std::ops::RangeInclusive<u8> = 8..=64;
/// Longest accepted custom redaction text.
pub const MAX_REPLACEMENT_LEN: usize = 64;

/// How a found value is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Replace with `[REDACTED:<ENTITY>]`, or with `replacement` when given (e.g. `"****"`).
    Redact {
        /// Fixed replacement text (printable ASCII, at most 64 bytes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replacement: Option<String>,
    },
    /// Replace letters and digits with `*`, keeping separators and the last `keep_last` letters
    /// or digits — but never more than half of them (`************4242`).
    Partial {
        /// How many trailing letters/digits stay visible (1..=8).
        keep_last: u8,
    },
    /// `tok_` + the first `length` hex digits of HMAC-SHA256(key, normalized value): stable
    /// under one key, so joins and group-bys still work.
    KeyedHash {
        /// Hex digits kept (8..=64), default 16.
        #[serde(default = "default_hash_length")]
        length: u8,
    },
    /// Same length and shape: digits → digits, letters → letters of the same case, everything
    /// else kept; deterministic under the key. A pseudonym, not reversible.
    FormatPreserving,
}

fn default_hash_length() -> u8 {
    16
}

impl Default for Strategy {
    fn default() -> Strategy {
        Strategy::Redact { replacement: None }
    }
}

impl Strategy {
    fn validate(&self, what: &str) -> Result<(), MaskError> {
        match self {
            Strategy::Redact {
                replacement: Some(r),
            } => {
                if r.is_empty()
                    || r.len() > MAX_REPLACEMENT_LEN
                    || !r.bytes().all(|b| (0x20..0x7f).contains(&b))
                {
                    return Err(MaskError::Config(format!(
                        "{what}: replacement must be 1..={MAX_REPLACEMENT_LEN} printable ASCII characters"
                    )));
                }
            }
            Strategy::Redact { replacement: None } | Strategy::FormatPreserving => {}
            Strategy::Partial { keep_last } => {
                if *keep_last == 0 || *keep_last > MAX_KEEP_LAST {
                    return Err(MaskError::Config(format!(
                        "{what}: keep_last must be 1..={MAX_KEEP_LAST}"
                    )));
                }
            }
            Strategy::KeyedHash { length } => {
                if !KEYED_HASH_LENGTH.contains(length) {
                    return Err(MaskError::Config(format!(
                        "{what}: length must be {}..={}",
                        KEYED_HASH_LENGTH.start(),
                        KEYED_HASH_LENGTH.end()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Mask a whole value when its column or JSON field name matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// Rule name, used in counts and audit records (`[A-Za-z0-9_.-]`, 1..=64).
    pub name: String,
    /// Column / field names: exact or glob (`*` any run, `?` one character), case-insensitive.
    pub columns: Vec<String>,
    /// How matching values are replaced.
    #[serde(default)]
    pub strategy: Strategy,
}

/// Masking configuration for one (connection, group).
///
/// Every detector is on by default with [`Strategy::Redact`]. Example (TOML):
///
/// ```toml
/// default_strategy = { kind = "redact" }
/// disabled = ["ip_address"]
/// ssn_plain_columns = ["tax_id"]
///
/// [entities]
/// card = { kind = "partial", keep_last = 4 }
/// email = { kind = "keyed_hash" }
///
/// [[rules]]
/// name = "ssn-columns"
/// columns = ["ssn", "*social*"]
/// strategy = { kind = "redact", replacement = "****" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Strategy for entities without an entry in `entities`.
    #[serde(default)]
    pub default_strategy: Strategy,
    /// Per-entity strategies (`column` and `vaulted_secret` are not allowed here; vaulted
    /// secrets are always redacted).
    #[serde(default)]
    pub entities: BTreeMap<Entity, Strategy>,
    /// Detectors switched off (`vaulted_secret` cannot be switched off).
    #[serde(default)]
    pub disabled: Vec<Entity>,
    /// Column / JSON-field rules, first match wins.
    #[serde(default)]
    pub rules: Vec<ColumnRule>,
    /// Columns / fields (exact or glob) where nine plain digits are taken as an SSN.
    #[serde(default)]
    pub ssn_plain_columns: Vec<String>,
    /// Values longer than this are refused with [`MaskError::TooLarge`]; default 16 MiB.
    #[serde(default)]
    pub max_value_bytes: Option<usize>,
}

impl MaskingConfig {
    /// Check everything serde cannot: strategy parameters, rule names and patterns, entity
    /// entries. Call before binding a port; [`crate::Engine::new`] calls it too.
    pub fn validate(&self) -> Result<(), MaskError> {
        self.default_strategy.validate("default_strategy")?;
        if matches!(self.default_strategy, Strategy::Partial { .. }) {
            // Partial on secrets would reveal part of a key; only per-entity choice allows it.
            return Err(MaskError::Config(
                "default_strategy: partial is only allowed per entity or per rule".into(),
            ));
        }
        for (entity, strategy) in &self.entities {
            if matches!(entity, Entity::Column | Entity::VaultedSecret) {
                return Err(MaskError::Config(format!(
                    "entities.{entity}: not configurable here (column rules have their own strategy; vaulted secrets are always redacted)"
                )));
            }
            strategy.validate(&format!("entities.{entity}"))?;
            if is_secret_entity(*entity) && matches!(strategy, Strategy::Partial { .. }) {
                return Err(MaskError::Config(format!(
                    "entities.{entity}: partial would reveal part of a secret"
                )));
            }
        }
        for entity in &self.disabled {
            if matches!(entity, Entity::VaultedSecret | Entity::Column) {
                return Err(MaskError::Config(format!(
                    "disabled: {entity} cannot be disabled"
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let ok_name = !rule.name.is_empty()
                && rule.name.len() <= 64
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok_name {
                return Err(MaskError::Config(format!(
                    "rules[{i}].name must be 1..=64 characters of [A-Za-z0-9_.-]"
                )));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(MaskError::Config(format!(
                    "rules[{i}].name {:?} is not unique",
                    rule.name
                )));
            }
            if rule.columns.is_empty() {
                return Err(MaskError::Config(format!("rules[{i}].columns is empty")));
            }
            for c in &rule.columns {
                validate_pattern(c, &format!("rules[{i}].columns"))?;
            }
            rule.strategy.validate(&format!("rules[{i}].strategy"))?;
        }
        for c in &self.ssn_plain_columns {
            validate_pattern(c, "ssn_plain_columns")?;
        }
        if self.max_value_bytes == Some(0) {
            return Err(MaskError::Config("max_value_bytes must be > 0".into()));
        }
        Ok(())
    }

    /// Strategy for an entity found by a detector.
    pub fn strategy_for(&self, entity: Entity) -> &Strategy {
        if entity == Entity::VaultedSecret {
            return &VAULTED;
        }
        self.entities.get(&entity).unwrap_or(&self.default_strategy)
    }
}

static VAULTED: Strategy = Strategy::Redact { replacement: None };

/// Entities that are credentials: no part may ever be shown.
pub(crate) fn is_secret_entity(e: Entity) -> bool {
    matches!(
        e,
        Entity::AwsKey
            | Entity::PrivateKey
            | Entity::Jwt
            | Entity::BearerToken
            | Entity::GithubToken
            | Entity::StripeKey
            | Entity::SlackToken
            | Entity::GoogleApiKey
            | Entity::OpenAiKey
            | Entity::AssignedSecret
            | Entity::VaultedSecret
    )
}

fn validate_pattern(p: &str, what: &str) -> Result<(), MaskError> {
    if p.is_empty() || p.len() > 128 || p.bytes().any(|b| b.is_ascii_control()) {
        return Err(MaskError::Config(format!(
            "{what}: pattern must be 1..=128 characters without control characters"
        )));
    }
    Ok(())
}

/// A compiled, lower-cased column pattern.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    pattern: Vec<u8>,
}

impl Glob {
    pub(crate) fn new(p: &str) -> Glob {
        Glob {
            pattern: p.bytes().map(|b| b.to_ascii_lowercase()).collect(),
        }
    }

    /// Case-insensitive (ASCII) glob match, `*` and `?`; backtracks only to the last `*`, so the
    /// cost is at most pattern length × name length (both short).
    pub(crate) fn matches(&self, name: &str) -> bool {
        let p = &self.pattern;
        let s = name.as_bytes();
        let (mut pi, mut si) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            let c = s[si].to_ascii_lowercase();
            if pi < p.len() && (p[pi] == b'?' || p[pi] == c) {
                pi += 1;
                si += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == b'*' {
            pi += 1;
        }
        pi == p.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        let cases = [
            ("ssn", "SSN", true),
            ("ssn", "ssn_x", false),
            ("*card*", "CreditCardNumber", true),
            ("*card*", "cad", false),
            ("card_?", "card_1", true),
            ("card_?", "card_12", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*_ssn", "customer_ssn", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(Glob::new(p).matches(s), want, "{p} vs {s}");
        }
    }

    #[test]
    fn parses_documented_example_and_rejects_unknown_keys() {
        let text = r#"
default_strategy = { kind = "redact" }
disabled = ["ip_address"]
ssn_plain_columns = ["tax_id"]

[entities]
card = { kind = "partial", keep_last = 4 }
email = { kind = "keyed_hash" }

[[rules]]
name = "ssn-columns"
columns = ["ssn", "*social*"]
strategy = { kind = "redact", replacement = "****" }
"#;
        let cfg: MaskingConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.strategy_for(Entity::Card),
            &Strategy::Partial { keep_last: 4 }
        );
        assert_eq!(
            cfg.strategy_for(Entity::Email),
            &Strategy::KeyedHash { length: 16 }
        );
        assert_eq!(cfg.strategy_for(Entity::Phone), &Strategy::default());

        for bad in [
            "colour = 1\n",
            "[entities]\ncard = { kind = \"partial\", keep_last = 4, extra = 1 }\n",
            "[entities]\ncard = { kind = \"shred\" }\n",
            "[entities]\ncredit = { kind = \"redact\" }\n",
            "[[rules]]\nname = \"x\"\ncolumns = [\"a\"]\nstrat = { kind = \"redact\" }\n",
        ] {
            assert!(toml::from_str::<MaskingConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_rejects_unsafe_or_malformed_settings() {
        let base = MaskingConfig::default();
        base.validate().unwrap();
        let mut cases: Vec<MaskingConfig> = Vec::new();
        let mut c = base.clone();
        c.entities
            .insert(Entity::AwsKey, Strategy::Partial { keep_last: 4 });
        cases.push(c);
        let mut c = base.clone();
        c.entities.insert(
            Entity::VaultedSecret,
            Strategy::Redact { replacement: None },
        );
        cases.push(c);
        let mut c = base.clone();
        c.disabled.push(Entity::VaultedSecret);
        cases.push(c);
        let mut c = base.clone();
        c.entities
            .insert(Entity::Card, Strategy::Partial { keep_last: 9 });
        cases.push(c);
        let mut c = base.clone();
        c.entities
            .insert(Entity::Card, Strategy::KeyedHash { length: 4 });
        cases.push(c);
        let mut c = base.clone();
        c.default_strategy = Strategy::Partial { keep_last: 2 };
        cases.push(c);
        let mut c = base.clone();
        c.entities.insert(
            Entity::Email,
            Strategy::Redact {
                replacement: Some("a\nb".into()),
            },
        );
        cases.push(c);
        let rule = ColumnRule {
            name: "r".into(),
            columns: vec!["ssn".into()],
            strategy: Strategy::default(),
        };
        let mut c = base.clone();
        c.rules = vec![rule.clone(), rule.clone()];
        cases.push(c);
        let mut c = base.clone();
        c.rules = vec![ColumnRule {
            columns: vec![],
            ..rule.clone()
        }];
        cases.push(c);
        let mut c = base.clone();
        c.rules = vec![ColumnRule {
            name: "bad name".into(),
            ..rule.clone()
        }];
        cases.push(c);
        let mut c = base.clone();
        c.max_value_bytes = Some(0);
        cases.push(c);
        for (i, c) in cases.iter().enumerate() {
            assert!(
                matches!(c.validate(), Err(MaskError::Config(_))),
                "case {i} should be rejected"
            );
        }
    }
}
