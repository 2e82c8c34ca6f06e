//! Evaluation: presets, then rules, per statement; strictest over the request.

use gatehouse_sql::{Danger, PreparedStatements, Statement, StatementKind, TableRef};

use crate::model::{Action, DefaultAction, Preset, Rule, Scope, TablePattern};
use crate::{AllowBasis, Decision, Facts, Grant, GrantScope, Policy, RuleId};

pub(crate) fn evaluate(policy: &Policy, facts: &Facts<'_>, grants: &[Grant]) -> Decision {
    let presets = active_presets(policy, facts);
    let statements = match facts.statements {
        Ok(s) => s,
        Err(e) => {
            return unanalyzable(
                policy,
                facts,
                &presets,
                "unparseable",
                &format!("the statement could not be parsed ({e})"),
            )
        }
    };
    let mut decision = Decision::Allow {
        basis: AllowBasis::Default,
    };
    // `PREPARE q ...; EXECUTE q` in one request: the server runs the parts in order, so an
    // EXECUTE resolves against the session's statements plus the PREPARE/DEALLOCATE before it.
    // Copied only when the request itself changes them.
    let mut in_request: Option<PreparedStatements> = None;
    for stmt in statements {
        let d = judge(policy, facts, grants, &presets, stmt);
        if d.severity() > decision.severity()
            || (d.severity() == 0
                && matches!(
                    decision,
                    Decision::Allow {
                        basis: AllowBasis::Default
                    }
                ))
        {
            decision = d;
        }
        if let StatementKind::Execute { name } = &stmt.kind {
            let bodies = in_request.as_ref().unwrap_or(facts.prepared).resolve(name);
            let d = if bodies.is_empty() {
                unanalyzable(
                    policy,
                    facts,
                    &presets,
                    "unknown_prepared",
                    &format!("EXECUTE {name}: no PREPARE for it was seen on this session"),
                )
            } else {
                bodies
                    .iter()
                    .map(|b| judge(policy, facts, grants, &presets, b))
                    .fold(
                        Decision::Allow {
                            basis: AllowBasis::Default,
                        },
                        |acc, d| {
                            if d.severity() > acc.severity() {
                                d
                            } else {
                                acc
                            }
                        },
                    )
            };
            if d.severity() > decision.severity() {
                decision = d;
            }
        }
        if matches!(
            stmt.kind,
            StatementKind::Prepare { .. }
                | StatementKind::Deallocate { .. }
                | StatementKind::Discard { .. }
        ) {
            in_request
                .get_or_insert_with(|| facts.prepared.clone())
                .observe(std::slice::from_ref(stmt));
        }
    }
    decision
}

/// Presets enabled for this connection (deduplicated, in check order).
fn active_presets(policy: &Policy, facts: &Facts<'_>) -> Vec<Preset> {
    if facts.protocol != "postgres" {
        return Vec::new();
    }
    Preset::ALL
        .into_iter()
        .filter(|p| {
            policy
                .presets
                .iter()
                .any(|b| b.enable.contains(p) && scope_matches(&b.scope, facts))
        })
        .collect()
}

fn scope_matches(scope: &Scope, facts: &Facts<'_>) -> bool {
    (scope.connections.is_empty() || scope.connections.contains(facts.connection))
        && scope.tags.iter().all(|(k, v)| facts.tags.get(k) == Some(v))
}

fn principal_matches(rule: &Rule, facts: &Facts<'_>) -> bool {
    let p = &rule.principal;
    (p.users.is_empty() || p.users.contains(facts.user))
        && (p.groups.is_empty() || facts.groups.iter().any(|g| p.groups.contains(g)))
        && (p.protocols.is_empty() || p.protocols.contains(facts.protocol))
}

fn applies(rule: &Rule, facts: &Facts<'_>) -> bool {
    scope_matches(&rule.scope, facts) && principal_matches(rule, facts)
}

/// Whether anything in the policy can refuse or hold a request of this user on this
/// connection (a preset, a deny or approval rule, or a default of deny). Uses only the
/// identity and connection facts, not the statements.
pub(crate) fn restricts(policy: &Policy, facts: &Facts<'_>) -> bool {
    policy.default == DefaultAction::Deny
        || !active_presets(policy, facts).is_empty()
        || policy
            .rules
            .iter()
            .any(|r| r.action != Action::Allow && applies(r, facts))
}

/// Input that cannot be judged: deny if anything restricts this connection and user.
fn unanalyzable(
    policy: &Policy,
    facts: &Facts<'_>,
    presets: &[Preset],
    what: &str,
    why: &str,
) -> Decision {
    let restricting_rule = policy
        .rules
        .iter()
        .find(|r| r.action != Action::Allow && applies(r, facts));
    let restricted =
        !presets.is_empty() || restricting_rule.is_some() || policy.default == DefaultAction::Deny;
    if restricted {
        let by = match (presets.first(), restricting_rule) {
            (Some(p), _) => format!("preset {}", p.name()),
            (None, Some(r)) => format!("rule {}", r.name),
            (None, None) => "the policy default (deny)".to_owned(),
        };
        Decision::Deny {
            rule: RuleId::policy(what),
            reason: format!("{why}; this connection is restricted by {by}, so what cannot be analysed is refused"),
        }
    } else {
        Decision::Allow {
            basis: AllowBasis::Unanalyzed,
        }
    }
}

/// One statement through presets and rules.
fn judge(
    policy: &Policy,
    facts: &Facts<'_>,
    grants: &[Grant],
    presets: &[Preset],
    stmt: &Statement,
) -> Decision {
    for &p in presets {
        if let Some(why) = preset_denies(p, stmt) {
            return Decision::Deny {
                rule: RuleId::preset(p),
                reason: format!("{why} (preset {})", p.name()),
            };
        }
    }
    // Code the classifier cannot see into could do whatever any active preset forbids: the first
    // active preset refuses it.
    if let (Some(&p), Some(d)) = (
        presets.first(),
        stmt.dangerous
            .iter()
            .find(|d| matches!(d, Danger::DynamicSql(_))),
    ) {
        return Decision::Deny {
            rule: RuleId::preset(p),
            reason: format!(
                "{d} runs code that cannot be analysed, so it cannot be checked (preset {})",
                p.name()
            ),
        };
    }
    let matching: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| applies(r, facts) && statement_matches(r, stmt))
        .collect();
    if let Some(r) = matching.iter().find(|r| r.action == Action::Deny) {
        return Decision::Deny {
            rule: RuleId::rule(&r.name),
            reason: rule_reason(r, "denied"),
        };
    }
    for r in matching
        .iter()
        .filter(|r| r.action == Action::RequireApproval)
    {
        let Some(approval) = &r.approval else {
            continue;
        };
        match grants.iter().find(|g| grant_covers(g, r, stmt, facts)) {
            Some(_) => continue,
            None => {
                return Decision::RequireApproval {
                    rule: RuleId::rule(&r.name),
                    reason: rule_reason(r, "needs approval"),
                    approvers: approval.approvers.clone(),
                    min_approvals: approval.min_approvals,
                    mode: approval.mode,
                };
            }
        }
    }
    // Every approval rule that matched is covered by a grant: record the first.
    if let Some(r) = matching
        .iter()
        .find(|r| r.action == Action::RequireApproval)
    {
        if let Some(g) = grants.iter().find(|g| grant_covers(g, r, stmt, facts)) {
            return Decision::Allow {
                basis: AllowBasis::Grant {
                    rule: RuleId::rule(&r.name),
                    grant: g.id.clone(),
                },
            };
        }
    }
    if let Some(r) = matching.iter().find(|r| r.action == Action::Allow) {
        return Decision::Allow {
            basis: AllowBasis::Rule(RuleId::rule(&r.name)),
        };
    }
    match policy.default {
        DefaultAction::Allow => Decision::Allow {
            basis: AllowBasis::Default,
        },
        DefaultAction::Deny => Decision::Deny {
            rule: RuleId::policy("default"),
            reason: format!(
                "no rule allows {} here and the policy default is deny",
                stmt.kind.name()
            ),
        },
    }
}

fn rule_reason(r: &Rule, verb: &str) -> String {
    match &r.reason {
        Some(reason) => format!("{reason} (rule {})", r.name),
        None => format!("{verb} by rule {}", r.name),
    }
}

fn grant_covers(g: &Grant, r: &Rule, stmt: &Statement, facts: &Facts<'_>) -> bool {
    g.user == *facts.user
        && g.connection == facts.connection
        && facts.now < g.expires_at
        && match &g.scope {
            GrantScope::Any => true,
            GrantScope::Writes => stmt.is_write(),
            GrantScope::Rule(name) => name == &r.name,
        }
}

/// The kinds a statement answers to, including what `PREPARE` and `EXPLAIN ANALYZE` would run.
fn kind_names(stmt: &Statement) -> Vec<String> {
    let mut names = stmt.kind.names();
    match &stmt.kind {
        StatementKind::Prepare { inner, .. }
        | StatementKind::Explain {
            analyze: true,
            inner,
        } => names.extend(kind_names(inner)),
        _ => {}
    }
    names
}

fn table_matches(p: &TablePattern, t: &TableRef) -> bool {
    match (&p.schema, &p.name, &t.schema) {
        // `name` matches that name in any schema.
        (None, Some(n), _) => n == &t.name,
        // `schema.name`: an unqualified reference may resolve to that schema through the
        // search_path, so it matches by name (conservative for deny and approval rules).
        (Some(ps), Some(n), ts) => n == &t.name && ts.as_ref().is_none_or(|ts| ts == ps),
        // `schema.*` matches references qualified with that schema only: matching every
        // unqualified name would make the pattern match everything.
        (Some(ps), None, Some(ts)) => ps == ts,
        (Some(_), None, None) | (None, None, _) => false,
    }
}

fn statement_matches(r: &Rule, stmt: &Statement) -> bool {
    let m = &r.statement;
    let any_table = |pats: &[TablePattern], refs: &[TableRef]| {
        pats.is_empty()
            || refs
                .iter()
                .any(|t| pats.iter().any(|p| table_matches(p, t)))
    };
    (m.kinds.is_empty() || kind_names(stmt).iter().any(|k| m.kinds.contains(k)))
        && any_table(&m.tables, &stmt.tables)
        && any_table(&m.writes_to, &stmt.writes)
        && m.writes.is_none_or(|w| w == stmt.is_write())
        && (m.flags.is_empty()
            || stmt
                .flags
                .named()
                .iter()
                .any(|(n, on)| *on && m.flags.contains(*n)))
        && (m.dangers.is_empty() || stmt.dangerous.iter().any(|d| m.dangers.contains(d.name())))
        && (m.functions.is_empty()
            || stmt.functions.iter().any(|f| {
                let f = f.to_ascii_lowercase();
                let last = f.rsplit('.').next().unwrap_or(&f).to_owned();
                m.functions.contains(&f) || m.functions.contains(&last)
            }))
}

/// Why a preset refuses the statement, or `None`. (Dynamic SQL is handled by the caller.)
fn preset_denies(p: Preset, stmt: &Statement) -> Option<String> {
    use StatementKind as K;
    match p {
        Preset::ReadOnly => read_only_denies(stmt),
        Preset::NoDropTruncate => match &stmt.kind {
            K::Drop { object } => Some(format!("DROP {object} is not allowed")),
            K::DropRole => Some("DROP ROLE is not allowed".into()),
            K::Truncate => Some("TRUNCATE is not allowed".into()),
            _ if stmt.flags.drops_column => Some("ALTER ... DROP COLUMN is not allowed".into()),
            _ if stmt.flags.drops_constraint => {
                Some("ALTER ... DROP CONSTRAINT is not allowed".into())
            }
            _ => None,
        },
        Preset::NoUnboundedWrite => stmt.flags.unbounded_write.then(|| {
            "DELETE/UPDATE without a WHERE clause that names a column is not allowed".into()
        }),
        Preset::NoPrivilegeChanges => {
            let kind = match &stmt.kind {
                K::Grant => Some("GRANT"),
                K::Revoke => Some("REVOKE"),
                K::CreateRole => Some("CREATE ROLE"),
                K::AlterRole => Some("ALTER ROLE"),
                K::DropRole => Some("DROP ROLE"),
                K::SetRole => Some("SET ROLE"),
                K::SetSessionAuthorization => Some("SET SESSION AUTHORIZATION"),
                K::AlterOther(o) if o == "OWNER" => Some("ALTER ... OWNER TO"),
                K::AlterOther(o) if o == "SYSTEM" => Some("ALTER SYSTEM"),
                _ => None,
            };
            if let Some(k) = kind {
                return Some(format!("{k} changes privileges and is not allowed"));
            }
            stmt.dangerous
                .iter()
                .find(|d| matches!(d, Danger::RoleChange(_) | Danger::ConfigChange(_)))
                .map(|d| {
                    format!("{d} changes privileges or server configuration and is not allowed")
                })
        }
        Preset::NoServerFiles => stmt
            .dangerous
            .iter()
            .find(|d| {
                matches!(
                    d,
                    Danger::ServerFileAccess(_)
                        | Danger::CopyProgram
                        | Danger::LargeObject(_)
                        | Danger::Dblink(_)
                )
            })
            .map(|d| {
                format!("{d} reaches server files, programs or other servers and is not allowed")
            }),
        Preset::NoAdminFunctions => stmt
            .dangerous
            .iter()
            .find(|d| matches!(d, Danger::ProcessSignal(_) | Danger::AdminFunction(_)))
            .map(|d| format!("{d} is an administrative operation and is not allowed")),
    }
}

fn read_only_denies(stmt: &Statement) -> Option<String> {
    use StatementKind as K;
    if let Some(d) = stmt.dangerous.first() {
        return Some(format!("{d} is not allowed on a read-only connection"));
    }
    if let Some(t) = stmt.writes.first() {
        return Some(format!(
            "writing to {t} is not allowed on a read-only connection"
        ));
    }
    let read = match &stmt.kind {
        K::Select
        | K::Set { .. }
        | K::Reset { .. }
        | K::Show
        | K::Begin
        | K::Commit
        | K::Rollback
        | K::Savepoint
        | K::Execute { .. }
        | K::Deallocate { .. }
        | K::DeclareCursor
        | K::Fetch
        | K::ClosePortal
        | K::Discard { .. }
        | K::Listen
        | K::Unlisten
        | K::ResetRole
        | K::Copy {
            direction: gatehouse_sql::CopyDirection::To,
            program: false,
        } => true,
        K::Explain { inner, .. } | K::Prepare { inner, .. } => read_only_denies(inner).is_none(),
        _ => false,
    };
    let flagged = stmt.flags.named().iter().any(|(_, on)| *on);
    if read && !flagged {
        None
    } else {
        Some(format!(
            "{} is not allowed on a read-only connection",
            stmt.kind.name().to_ascii_uppercase().replace('_', " ")
        ))
    }
}
