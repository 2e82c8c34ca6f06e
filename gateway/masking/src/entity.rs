//! What can be found ([`Entity`]) and how often it was masked ([`Counts`]).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A kind of sensitive data. `Column` stands for values masked by a column / JSON-field rule,
/// whatever they contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// Payment card number (PAN), Luhn-valid, in a known network's IIN range and length.
    Card,
    /// US social security number `AAA-GG-SSSS` (or nine plain digits in configured columns).
    Ssn,
    /// E-mail address.
    Email,
    /// Telephone number (international `+CC …` or common national formats).
    Phone,
    /// International bank account number, mod-97 valid, country length checked.
    Iban,
    /// IPv4 or IPv6 address.
    IpAddress,
    /// AWS access key id (`AKIA…`, `ASIA…`, …).
    AwsKey,
    /// PEM private-key block.
    PrivateKey,
    /// JSON web token whose header decodes to JSON with `"alg"`.
    Jwt,
    /// The token of an `Authorization: Bearer …` / `Basic …` credential.
    BearerToken,
    /// GitHub token (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// Stripe secret or restricted key.
    StripeKey,
    /// Slack token (`xoxb-`, `xoxp-`, `xapp-`, …).
    SlackToken,
    /// Google API key (`AIza…`).
    GoogleApiKey,
    /// OpenAI-style key (`sk-…`, `sk-proj-…`).
    #[serde(rename = "openai_key")]
    OpenAiKey,
    /// The value assigned to a secret-looking name (`password=…`, `"api_key": "…"`, URL user-info).
    AssignedSecret,
    /// An exact occurrence of a credential held in the Gatehouse vault: a stopped leak.
    VaultedSecret,
    /// A value masked whole because its column / JSON field matched a rule.
    Column,
}

impl Entity {
    /// Every entity, in a fixed order (the order of [`Counts::iter`]).
    pub const ALL: [Entity; 18] = [
        Entity::Card,
        Entity::Ssn,
        Entity::Email,
        Entity::Phone,
        Entity::Iban,
        Entity::IpAddress,
        Entity::AwsKey,
        Entity::PrivateKey,
        Entity::Jwt,
        Entity::BearerToken,
        Entity::GithubToken,
        Entity::StripeKey,
        Entity::SlackToken,
        Entity::GoogleApiKey,
        Entity::OpenAiKey,
        Entity::AssignedSecret,
        Entity::VaultedSecret,
        Entity::Column,
    ];

    /// Number of entity kinds.
    pub const COUNT: usize = Entity::ALL.len();

    /// Stable snake_case name (as in configuration and audit records).
    pub fn name(self) -> &'static str {
        match self {
            Entity::Card => "card",
            Entity::Ssn => "ssn",
            Entity::Email => "email",
            Entity::Phone => "phone",
            Entity::Iban => "iban",
            Entity::IpAddress => "ip_address",
            Entity::AwsKey => "aws_key",
            Entity::PrivateKey => "private_key",
            Entity::Jwt => "jwt",
            Entity::BearerToken => "bearer_token",
            Entity::GithubToken => "github_token",
            Entity::StripeKey => "stripe_key",
            Entity::SlackToken => "slack_token",
            Entity::GoogleApiKey => "google_api_key",
            Entity::OpenAiKey => "openai_key",
            Entity::AssignedSecret => "assigned_secret",
            Entity::VaultedSecret => "vaulted_secret",
            Entity::Column => "column",
        }
    }

    /// Upper-case label used by the default redaction, `[REDACTED:<LABEL>]`.
    pub fn label(self) -> &'static str {
        match self {
            Entity::Card => "CARD",
            Entity::Ssn => "SSN",
            Entity::Email => "EMAIL",
            Entity::Phone => "PHONE",
            Entity::Iban => "IBAN",
            Entity::IpAddress => "IP",
            Entity::AwsKey => "AWS_KEY",
            Entity::PrivateKey => "PRIVATE_KEY",
            Entity::Jwt => "JWT",
            Entity::BearerToken => "BEARER_TOKEN",
            Entity::GithubToken => "GITHUB_TOKEN",
            Entity::StripeKey => "STRIPE_KEY",
            Entity::SlackToken => "SLACK_TOKEN",
            Entity::GoogleApiKey => "GOOGLE_API_KEY",
            Entity::OpenAiKey => "OPENAI_KEY",
            Entity::AssignedSecret => "SECRET",
            Entity::VaultedSecret => "VAULTED_SECRET",
            Entity::Column => "COLUMN",
        }
    }

    /// Position in [`Entity::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a count is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountKey<'a> {
    /// Found by a detector (or [`Entity::Column`] for all column-rule hits together).
    Entity(Entity),
    /// Masked by the named column / JSON-field rule.
    Rule(&'a str),
}

/// How many values / spans were masked, per entity and per rule. Never holds a value.
///
/// One `Counts` per statement (or per response) is the usual grain; [`Counts::merge`] folds
/// them into per-session totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    entities: [u64; Entity::COUNT],
    rules: Vec<(Arc<str>, u64)>,
}

impl Counts {
    /// All zero.
    pub fn new() -> Counts {
        Counts::default()
    }

    /// Count for one entity.
    pub fn get(&self, entity: Entity) -> u64 {
        self.entities[entity.index()]
    }

    /// Count for one rule (0 if it never matched).
    pub fn rule(&self, name: &str) -> u64 {
        self.rules
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or(0, |(_, c)| *c)
    }

    /// Exact occurrences of vaulted credentials that were masked: evidence of stopped leaks.
    pub fn vaulted_hits(&self) -> u64 {
        self.get(Entity::VaultedSecret)
    }

    /// Sum over entities (rule hits are included once, as [`Entity::Column`]).
    pub fn total(&self) -> u64 {
        self.entities.iter().sum()
    }

    /// `true` when nothing was masked.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.entities.iter_mut().zip(other.entities.iter()) {
            *a = a.saturating_add(*b);
        }
        for (name, n) in &other.rules {
            self.add_rule(name, *n);
        }
    }

    /// Non-zero counts: entities in [`Entity::ALL`] order, then rules in first-hit order.
    pub fn iter(&self) -> impl Iterator<Item = (CountKey<'_>, u64)> + '_ {
        Entity::ALL
            .iter()
            .map(|e| (CountKey::Entity(*e), self.get(*e)))
            .chain(self.rules.iter().map(|(n, c)| (CountKey::Rule(n), *c)))
            .filter(|(_, c)| *c > 0)
    }

    pub(crate) fn add(&mut self, entity: Entity) {
        let c = &mut self.entities[entity.index()];
        *c = c.saturating_add(1);
    }

    pub(crate) fn add_rule(&mut self, name: &Arc<str>, n: u64) {
        if let Some((_, c)) = self.rules.iter_mut().find(|(r, _)| **r == **name) {
            *c = c.saturating_add(n);
        } else {
            self.rules.push((Arc::clone(name), n));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn order_matches_discriminants() {
        for (i, e) in Entity::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e}");
        }
    }

    #[test]
    fn merge_adds_entities_and_rules() {
        let r1: Arc<str> = Arc::from("ssn-col");
        let r2: Arc<str> = Arc::from("cards");
        let mut a = Counts::new();
        a.add(Entity::Card);
        a.add_rule(&r1, 2);
        let mut b = Counts::new();
        b.add(Entity::Card);
        b.add(Entity::VaultedSecret);
        b.add_rule(&r1, 1);
        b.add_rule(&r2, 5);
        a.merge(&b);
        assert_eq!(a.get(Entity::Card), 2);
        assert_eq!(a.vaulted_hits(), 1);
        assert_eq!(a.rule("ssn-col"), 3);
        assert_eq!(a.rule("cards"), 5);
        assert_eq!(a.rule("nope"), 0);
        let listed: Vec<_> = a.iter().collect();
        assert_eq!(
            listed,
            vec![
                (CountKey::Entity(Entity::Card), 2),
                (CountKey::Entity(Entity::VaultedSecret), 1),
                (CountKey::Rule("ssn-col"), 3),
                (CountKey::Rule("cards"), 5),
            ]
        );
    }
}

#[cfg(test)]
mod serde_name_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The config name of every entity is the name counts and audit records use.
    #[test]
    fn serde_names_are_the_display_names() {
        for e in Entity::ALL {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.name()));
            let back: Entity = serde_json::from_str(&json).unwrap();
            assert_eq!(back, e);
        }
    }
}
