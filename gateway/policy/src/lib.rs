//! The Gatehouse policy model: facts in, a decision out.
//!
//! A [`Policy`] is parsed from a small typed TOML format (see `examples/policy.toml` and the
//! crate README for why not Cedar). [`Policy::evaluate`] judges one client request — identity,
//! connection, and the statements [`gatehouse_sql::classify`] found in it — and returns
//! [`Decision::Allow`], [`Decision::Deny`] or [`Decision::RequireApproval`], always naming the
//! rule that decided.
//!
//! # Invariants
//! - Pure: no I/O, no clock, no randomness. Time comes in as [`Facts::now`]; the same facts,
//!   grants and policy always give the same decision.
//! - Parse, don't validate: unknown keys, unknown preset/kind/flag/danger names, approval
//!   settings on non-approval rules, duplicate rule names are all load errors with line and column.
//!   A loaded [`Policy`] cannot be inconsistent.
//! - Evaluation order, per statement: presets (deny) → `deny` rules → `require_approval` rules
//!   (a matching, unexpired [`Grant`] satisfies them) → `allow` rules → the policy `default`.
//!   Deny always overrides; nothing overrides a deny.
//! - Fail closed: input that could not be parsed, and `EXECUTE` of a prepared statement never seen,
//!   are denied wherever the policy restricts anything for that connection and user; they are
//!   allowed (and marked [`AllowBasis::Unanalyzed`]) only where no preset or restricting rule
//!   applies at all.
//! - A multi-statement request gets the strictest decision of its parts (deny > approval > allow;
//!   among equals, the first part's).

#![forbid(unsafe_code)]

mod eval;
mod model;
mod principal;

use std::collections::BTreeMap;
use std::time::SystemTime;

use gatehouse_sql::{ParseError, PreparedStatements, Statement};

pub use model::{
    Action, Approval, ApprovalMode, DefaultAction, Preset, PresetBlock, Rule, Scope,
    StatementMatch, TablePattern, Who, DEFAULT_HOLD, MAX_HOLD,
};
pub use principal::{Group, IssuerId, Issuers, NameError, Principal};

/// Everything known about one request, borrowed from the session.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The authenticated user: the token's username claim at the token's issuer.
    pub user: &'a Principal,
    /// The user's groups from the token, at the same issuer.
    pub groups: &'a [Group],
    /// The configured connection name (the startup `database`).
    pub connection: &'a str,
    /// The connection's tags from configuration (e.g. `environment = "production"`).
    pub tags: &'a BTreeMap<String, String>,
    /// `postgres` for the PostgreSQL proxy.
    pub protocol: &'a str,
    /// The request text as received.
    pub sql: &'a str,
    /// `gatehouse_sql::classify(sql)`.
    pub statements: &'a Result<Vec<Statement>, ParseError>,
    /// SQL-level prepared statements seen on this session, to resolve `EXECUTE`.
    pub prepared: &'a PreparedStatements,
    /// The current time (grants expire against it).
    pub now: SystemTime,
}

/// Names the rule that decided: `preset:<name>`, `rule:<name>`, or `policy:<reason>`
/// (`policy:unparseable`, `policy:unknown_prepared`, `policy:default`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(String);

impl RuleId {
    pub(crate) fn preset(p: Preset) -> Self {
        Self(format!("preset:{}", p.name()))
    }
    pub(crate) fn rule(name: &str) -> Self {
        Self(format!("rule:{name}"))
    }
    pub(crate) fn policy(what: &str) -> Self {
        Self(format!("policy:{what}"))
    }
    /// The id as text, for audit records.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an allowed request was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowBasis {
    /// No rule matched and the policy default is `allow` (or the request had no statements).
    Default,
    /// An `allow` rule matched.
    Rule(RuleId),
    /// An approval rule matched and a grant satisfied it.
    Grant { rule: RuleId, grant: String },
    /// The request could not be analysed, and nothing in the policy restricts this connection
    /// and user. Should be flagged in the audit record.
    Unanalyzed,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        basis: AllowBasis,
    },
    Deny {
        rule: RuleId,
        reason: String,
    },
    RequireApproval {
        rule: RuleId,
        reason: String,
        approvers: Vec<String>,
        min_approvals: u32,
        mode: ApprovalMode,
    },
}

impl Decision {
    /// 0 = allow, 1 = approval, 2 = deny.
    pub fn severity(&self) -> u8 {
        match self {
            Decision::Allow { .. } => 0,
            Decision::RequireApproval { .. } => 1,
            Decision::Deny { .. } => 2,
        }
    }

    /// The deciding rule, if any (a default allow has none).
    pub fn rule(&self) -> Option<&RuleId> {
        match self {
            Decision::Allow {
                basis: AllowBasis::Rule(r) | AllowBasis::Grant { rule: r, .. },
            } => Some(r),
            Decision::Allow { .. } => None,
            Decision::Deny { rule, .. } | Decision::RequireApproval { rule, .. } => Some(rule),
        }
    }

    /// `allow`, `deny` or `approval` (the vocabulary of the evasion corpus and audit records).
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::RequireApproval { .. } => "approval",
        }
    }
}

/// A time-boxed just-in-time approval: "alice may write to orders-prod for 30 minutes".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Recorded in [`AllowBasis::Grant`] (e.g. the approval request id).
    pub id: String,
    /// Only this principal (issuer and name, exactly) is covered.
    pub user: Principal,
    pub connection: String,
    /// The grant satisfies nothing at or after this instant.
    pub expires_at: SystemTime,
    pub scope: GrantScope,
}

/// What a grant covers. Grants satisfy `require_approval` rules only, never a deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantScope {
    /// Any approval required for a statement that writes.
    Writes,
    /// Any approval required by the named rule (the rule's name, without `rule:`).
    Rule(String),
    /// Any approval on that connection.
    Any,
}

/// A policy file that could not be loaded. `line`/`column` are 1-based; 0 when unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}, column {column}: {message}")]
pub struct PolicyError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl PolicyError {
    pub(crate) fn at(src: &str, offset: Option<usize>, message: &str) -> Self {
        let (line, column) = match offset {
            Some(off) => {
                let before = src.get(..off.min(src.len())).unwrap_or("");
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                (line, column)
            }
            None => (0, 0),
        };
        Self {
            line,
            column,
            message: message.trim().to_owned(),
        }
    }
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    version: String,
    hash: String,
    default: DefaultAction,
    presets: Vec<PresetBlock>,
    rules: Vec<Rule>,
}

impl Policy {
    /// Parse and validate a policy file. Users, groups and approvers are resolved through
    /// `issuers` (see [`Issuers::user`]): a name that is ambiguous or names no configured
    /// issuer is a load error.
    pub fn from_toml(src: &str, issuers: &Issuers) -> Result<Policy, PolicyError> {
        let parsed = model::parse(src, issuers)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, src.as_bytes());
        Ok(Policy {
            version: parsed.version,
            hash: hex::encode(digest.as_ref()),
            default: parsed.default,
            presets: parsed.presets,
            rules: parsed.rules,
        })
    }

    /// Hex SHA-256 of the source bytes (for the audit trail, CM-2).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The policy's own `version` string.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The preset blocks, in file order.
    pub fn presets(&self) -> &[PresetBlock] {
        &self.presets
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The default for statements no rule matched.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    /// Whether anything can refuse or hold a request of `facts.user` on `facts.connection`
    /// (statements in `facts` are not looked at). When `false`, every request is allowed and
    /// callers may skip classification.
    pub fn restricts(&self, facts: &Facts<'_>) -> bool {
        eval::restricts(self, facts)
    }

    /// Judge one request. See the crate docs for the order.
    pub fn evaluate(&self, facts: &Facts<'_>, grants: &[Grant]) -> Decision {
        eval::evaluate(self, facts, grants)
    }
}
