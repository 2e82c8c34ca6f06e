//! The policy file: TOML → typed, validated [`Policy`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::principal::{Group, Issuers, Principal};
use crate::PolicyError;

/// A guardrail preset. Presets only ever deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Anything but reads, `SET`/`RESET`/`SHOW`, transaction control, cursors and prepared reads.
    ReadOnly,
    /// `GRANT`/`REVOKE`, role DDL, `SET ROLE`, `SET SESSION AUTHORIZATION`, `ALTER ... OWNER`,
    /// `ALTER ROLE ... RENAME TO`, `ALTER SYSTEM` and other configuration changes, `set_config`
    /// of a setting that matters or of a computed name.
    NoPrivilegeChanges,
    /// Server file functions, `COPY` to/from a server file, `COPY PROGRAM`, large objects,
    /// dblink and foreign servers.
    NoServerFiles,
    /// Signalling backends and administrative functions (replication slots, backups, ...).
    NoAdminFunctions,
    /// `DROP` of anything, `TRUNCATE`, and `ALTER ... DROP COLUMN` / `DROP CONSTRAINT`.
    NoDropTruncate,
    /// `DELETE`/`UPDATE` without a `WHERE` that references a column.
    NoUnboundedWrite,
}

impl Preset {
    /// All presets, in the order they are checked (the first that denies is reported).
    pub const ALL: [Preset; 6] = [
        Preset::ReadOnly,
        Preset::NoPrivilegeChanges,
        Preset::NoServerFiles,
        Preset::NoAdminFunctions,
        Preset::NoDropTruncate,
        Preset::NoUnboundedWrite,
    ];

    /// The name used in policy files and rule ids.
    pub fn name(self) -> &'static str {
        match self {
            Preset::ReadOnly => "read_only",
            Preset::NoPrivilegeChanges => "no_privilege_changes",
            Preset::NoServerFiles => "no_server_files",
            Preset::NoAdminFunctions => "no_admin_functions",
            Preset::NoDropTruncate => "no_drop_truncate",
            Preset::NoUnboundedWrite => "no_unbounded_write",
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Deny,
    RequireApproval,
    Allow,
}

/// What happens to a statement no rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    #[default]
    Allow,
    Deny,
}

/// How an approval is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalMode {
    /// The statement is held on the session until approved, refused, or `timeout` passes.
    Hold { timeout: Duration },
    /// The statement is refused now; an approval creates a [`crate::Grant`] for a later retry.
    Ticket,
}

/// Which connections a preset block or rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Connection names (any of); empty = every connection.
    pub connections: BTreeSet<String>,
    /// Connection tags that must all be equal; empty = no tag condition.
    pub tags: BTreeMap<String, String>,
}

/// Conditions on who is asking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// Users (any of); empty = anyone.
    pub users: BTreeSet<Principal>,
    /// Groups (the user is in any of); empty = anyone.
    pub groups: BTreeSet<Group>,
    /// Protocols (any of, e.g. `postgres`); empty = any.
    pub protocols: BTreeSet<String>,
}

/// Conditions on the statement. Each list is any-of; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementMatch {
    pub kinds: BTreeSet<String>,
    pub tables: Vec<TablePattern>,
    pub writes_to: Vec<TablePattern>,
    pub writes: Option<bool>,
    pub flags: BTreeSet<String>,
    pub dangers: BTreeSet<String>,
    pub functions: BTreeSet<String>,
}

impl StatementMatch {
    /// True if the rule says nothing about the statement (it matches every statement in scope).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `name`, `schema.name` or `schema.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    pub schema: Option<String>,
    /// `None` = any table in `schema`.
    pub name: Option<String>,
}

/// A validated user rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub reason: Option<String>,
    pub scope: Scope,
    pub principal: Who,
    pub statement: StatementMatch,
    /// Present exactly when `action` is `RequireApproval`.
    pub approval: Option<Approval>,
}

/// Who must approve, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The approver groups as the policy writes them (carried into approval requests, which
    /// resolve them again through the configured issuers when a vote is judged).
    pub approvers: Vec<String>,
    /// The same groups, resolved at load: every written name names exactly one issuer's group.
    pub approver_groups: Vec<Group>,
    pub min_approvals: u32,
    pub mode: ApprovalMode,
}

/// Presets enabled for a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetBlock {
    pub enable: BTreeSet<Preset>,
    pub scope: Scope,
}

// ---- raw TOML shapes ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    version: Spanned<String>,
    #[serde(default)]
    default: DefaultAction,
    #[serde(default)]
    presets: Vec<RawPresetBlock>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPresetBlock {
    enable: Spanned<Vec<Preset>>,
    #[serde(default)]
    connections: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Action,
    reason: Option<String>,
    #[serde(default)]
    connections: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    users: Vec<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    protocols: Vec<String>,
    #[serde(default)]
    kinds: Vec<Spanned<String>>,
    #[serde(default)]
    tables: Vec<Spanned<String>>,
    #[serde(default)]
    writes_to: Vec<Spanned<String>>,
    writes: Option<bool>,
    #[serde(default)]
    flags: Vec<Spanned<String>>,
    #[serde(default)]
    dangers: Vec<Spanned<String>>,
    #[serde(default)]
    functions: Vec<String>,
    approval: Option<Spanned<RawApproval>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    approvers: Vec<Spanned<String>>,
    #[serde(default = "one")]
    min_approvals: u32,
    mode: RawMode,
    hold_timeout_seconds: Option<u64>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawMode {
    Hold,
    Ticket,
}

/// Longest a statement may be held waiting for approval.
pub const MAX_HOLD: Duration = Duration::from_secs(3600);
/// Hold timeout when `hold_timeout_seconds` is not given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(300);

/// The parsed content of a policy file.
pub(crate) struct Parsed {
    pub version: String,
    pub default: DefaultAction,
    pub presets: Vec<PresetBlock>,
    pub rules: Vec<Rule>,
}

pub(crate) fn parse(src: &str, issuers: &Issuers) -> Result<Parsed, PolicyError> {
    let raw: RawPolicy = toml::from_str(src)
        .map_err(|e| PolicyError::at(src, e.span().map(|s| s.start), e.message()))?;
    if raw.version.get_ref().trim().is_empty() {
        return Err(PolicyError::at(
            src,
            Some(raw.version.span().start),
            "version must not be empty",
        ));
    }
    let mut presets = Vec::new();
    for p in raw.presets {
        if p.enable.get_ref().is_empty() {
            return Err(PolicyError::at(
                src,
                Some(p.enable.span().start),
                "enable must name at least one preset",
            ));
        }
        presets.push(PresetBlock {
            enable: p.enable.into_inner().into_iter().collect(),
            scope: Scope {
                connections: p.connections.into_iter().collect(),
                tags: p.tags,
            },
        });
    }
    let mut names = BTreeSet::new();
    let mut rules = Vec::new();
    for r in raw.rules {
        rules.push(rule(src, r, &mut names, issuers)?);
    }
    Ok(Parsed {
        version: raw.version.into_inner(),
        default: raw.default,
        presets,
        rules,
    })
}

fn rule(
    src: &str,
    r: RawRule,
    names: &mut BTreeSet<String>,
    issuers: &Issuers,
) -> Result<Rule, PolicyError> {
    let err =
        |span: std::ops::Range<usize>, msg: String| PolicyError::at(src, Some(span.start), &msg);
    let name = r.name.get_ref().clone();
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(err(
            r.name.span(),
            format!("rule name {name:?} must be non-empty ASCII letters, digits, '-' or '_'"),
        ));
    }
    if !names.insert(name.clone()) {
        return Err(err(r.name.span(), format!("duplicate rule name {name:?}")));
    }
    let names_in = |list: &[Spanned<String>],
                    allowed: &[&str],
                    what: &str|
     -> Result<BTreeSet<String>, PolicyError> {
        let mut out = BTreeSet::new();
        for item in list {
            let v = item.get_ref().to_ascii_lowercase();
            let known = allowed.contains(&v.as_str()) || (what == "kind" && is_detailed_kind(&v));
            if !known {
                return Err(err(
                    item.span(),
                    format!(
                        "unknown {what} {v:?}; expected one of: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            out.insert(v);
        }
        Ok(out)
    };
    let kinds = names_in(&r.kinds, gatehouse_sql::KIND_NAMES, "kind")?;
    let flags = names_in(&r.flags, gatehouse_sql::FLAG_NAMES, "flag")?;
    let dangers = names_in(&r.dangers, gatehouse_sql::DANGER_NAMES, "danger")?;
    let patterns = |list: &[Spanned<String>]| -> Result<Vec<TablePattern>, PolicyError> {
        list.iter()
            .map(|p| {
                table_pattern(p.get_ref()).ok_or_else(|| {
                    err(
                        p.span(),
                        format!(
                            "bad table pattern {:?}; use name, schema.name or schema.*",
                            p.get_ref()
                        ),
                    )
                })
            })
            .collect()
    };
    // Users and groups name a principal at one issuer (`corp:alice`; plain only when one
    // issuer is configured): resolved here, so evaluation compares principals, never text.
    let users = r
        .users
        .iter()
        .map(|u| {
            issuers
                .user(u.get_ref())
                .map_err(|e| err(u.span(), format!("rule {name:?}: {e}")))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    let groups = r
        .groups
        .iter()
        .map(|g| {
            issuers
                .group(g.get_ref())
                .map_err(|e| err(g.span(), format!("rule {name:?}: {e}")))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    let tables = patterns(&r.tables)?;
    let writes_to = patterns(&r.writes_to)?;

    let approval = match (r.action, r.approval) {
        (Action::RequireApproval, None) => {
            return Err(err(r.name.span(), format!("rule {name:?}: action require_approval needs an [rules.approval] table")));
        }
        (Action::RequireApproval, Some(a)) => {
            let span = a.span();
            let a = a.into_inner();
            if a.approvers.is_empty() || a.approvers.iter().any(|g| g.get_ref().trim().is_empty()) {
                return Err(err(span, format!("rule {name:?}: approvers must list at least one group")));
            }
            let approver_groups = a
                .approvers
                .iter()
                .map(|g| issuers.group(g.get_ref()).map_err(|e| err(g.span(), format!("rule {name:?}: approvers: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            if a.min_approvals == 0 {
                return Err(err(span, format!("rule {name:?}: min_approvals must be at least 1")));
            }
            let mode = match (a.mode, a.hold_timeout_seconds) {
                (RawMode::Ticket, Some(_)) => return Err(err(span, format!("rule {name:?}: hold_timeout_seconds is only for mode = \"hold\""))),
                (RawMode::Ticket, None) => ApprovalMode::Ticket,
                (RawMode::Hold, None) => ApprovalMode::Hold { timeout: DEFAULT_HOLD },
                (RawMode::Hold, Some(s)) if s == 0 || Duration::from_secs(s) > MAX_HOLD => {
                    return Err(err(span, format!("rule {name:?}: hold_timeout_seconds must be 1..={}", MAX_HOLD.as_secs())));
                }
                (RawMode::Hold, Some(s)) => ApprovalMode::Hold { timeout: Duration::from_secs(s) },
            };
            Some(Approval { approvers: a.approvers.into_iter().map(Spanned::into_inner).collect(), approver_groups, min_approvals: a.min_approvals, mode })
        }
        (_, Some(a)) => return Err(err(a.span(), format!("rule {name:?}: an approval table is only allowed with action = \"require_approval\""))),
        (_, None) => None,
    };
    Ok(Rule {
        name,
        action: r.action,
        reason: r.reason,
        scope: Scope {
            connections: r.connections.into_iter().collect(),
            tags: r.tags,
        },
        principal: Who {
            users,
            groups,
            protocols: r.protocols.into_iter().collect(),
        },
        statement: StatementMatch {
            kinds,
            tables,
            writes_to,
            writes: r.writes,
            flags,
            dangers,
            functions: r
                .functions
                .into_iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
        },
        approval,
    })
}

/// `drop_table`, `create_index`, `alter_owner`: the detailed kind names of
/// [`gatehouse_sql::StatementKind::names`].
fn is_detailed_kind(v: &str) -> bool {
    ["drop_", "create_", "alter_"].iter().any(|p| {
        v.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    })
}

fn table_pattern(s: &str) -> Option<TablePattern> {
    let ident_ok = |p: &str| !p.is_empty() && !p.contains(char::is_whitespace);
    match s.split_once('.') {
        None if ident_ok(s) && s != "*" => Some(TablePattern {
            schema: None,
            name: Some(s.to_owned()),
        }),
        Some((schema, "*")) if ident_ok(schema) => Some(TablePattern {
            schema: Some(schema.to_owned()),
            name: None,
        }),
        Some((schema, name))
            if ident_ok(schema) && ident_ok(name) && !name.contains('.') && name != "*" =>
        {
            Some(TablePattern {
                schema: Some(schema.to_owned()),
                name: Some(name.to_owned()),
            })
        }
        _ => None,
    }
}
