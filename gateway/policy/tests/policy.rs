//! Policy loading, grants, defaults and evaluation order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use gatehouse_policy::{
    AllowBasis, ApprovalMode, Decision, Facts, Grant, GrantScope, Group, IssuerId, Issuers, Policy,
    PolicyError, Principal,
};
use gatehouse_sql::{classify, PreparedStatements};

const BASE: &str = r#"
version = "t1"

[[presets]]
enable = ["no_drop_truncate"]
connections = ["prod"]

[[rules]]
name = "writes"
action = "require_approval"
connections = ["prod"]
writes = true
[rules.approval]
approvers = ["dba"]
min_approvals = 2
mode = "hold"
hold_timeout_seconds = 60

[[rules]]
name = "no-secrets"
action = "deny"
tables = ["vault.*"]
"#;

/// The one issuer of most tests: plain names resolve to it.
const IDP: &str = "https://idp.test";

fn one() -> Issuers {
    Issuers::single(IssuerId::new(IDP))
}

fn alice() -> Principal {
    Principal::new(IssuerId::new(IDP), "alice")
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

fn decide_with(
    policy: &Policy,
    sql: &str,
    connection: &str,
    grants: &[Grant],
    now: SystemTime,
) -> Decision {
    let tags = BTreeMap::new();
    let groups = vec![Group::new(IssuerId::new(IDP), "agents")];
    let user = alice();
    let statements = classify(sql);
    let prepared = PreparedStatements::new();
    let facts = Facts {
        user: &user,
        groups: &groups,
        connection,
        tags: &tags,
        protocol: "postgres",
        sql,
        statements: &statements,
        prepared: &prepared,
        now,
    };
    policy.evaluate(&facts, grants)
}

fn decide(policy: &Policy, sql: &str, connection: &str) -> Decision {
    decide_with(policy, sql, connection, &[], t0())
}

fn err(src: &str) -> PolicyError {
    Policy::from_toml(src, &one()).expect_err("must be refused")
}

#[test]
fn load_errors_have_positions() {
    let cases: &[(&str, usize, &str)] = &[
        ("version = \"1\"\nbogus = 1\n", 2, "unknown field"),
        ("version = \"1\"\n[[presets]]\nenable = [\"no_drops\"]\n", 3, "unknown variant"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"deny\"\nkinds = [\"dropp\"]\n", 5, "unknown kind"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"deny\"\ndangers = [\"files\"]\n", 5, "unknown danger"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"deny\"\nflags = [\"unbounded\"]\n", 5, "unknown flag"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"require_approval\"\n", 3, "needs an [rules.approval]"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"deny\"\n[rules.approval]\napprovers = [\"x\"]\nmode = \"hold\"\n", 5, "only allowed with"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"deny\"\n[[rules]]\nname = \"a\"\naction = \"allow\"\n", 6, "duplicate rule name"),
        ("version = \"1\"\n[[rules]]\nname = \"a b\"\naction = \"deny\"\n", 3, "must be non-empty"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"require_approval\"\n[rules.approval]\napprovers = []\nmode = \"hold\"\n", 5, "at least one group"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"require_approval\"\n[rules.approval]\napprovers = [\"x\"]\nmode = \"ticket\"\nhold_timeout_seconds = 5\n", 5, "only for mode"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"require_approval\"\n[rules.approval]\napprovers = [\"x\"]\nmode = \"hold\"\nhold_timeout_seconds = 99999\n", 5, "hold_timeout_seconds must be"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"deny\"\ntables = [\"a.b.c\"]\n", 5, "bad table pattern"),
        ("version = \"\"\n", 1, "must not be empty"),
        ("default = \"allow\"\n", 1, "missing field `version`"),
        ("version = \"1\"\n[[presets]]\nenable = []\n", 3, "at least one preset"),
        ("version = \"1\"\n[[rules]]\nname = \"a\"\naction = \"maybe\"\n", 4, "unknown variant"),
    ];
    for (src, line, needle) in cases {
        let e = err(src);
        assert_eq!(e.line, *line, "{src}\n{e}");
        assert!(e.column >= 1, "{e}");
        assert!(e.message.contains(needle), "{src}\n{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("policy line {line}, column")),
            "{e}"
        );
    }
}

#[test]
fn hash_and_version() {
    let p = Policy::from_toml(BASE, &one()).unwrap();
    assert_eq!(p.version(), "t1");
    assert_eq!(p.hash().len(), 64);
    let same = Policy::from_toml(BASE, &one()).unwrap();
    assert_eq!(p.hash(), same.hash());
    let other = Policy::from_toml(&format!("{BASE}\n# comment"), &one()).unwrap();
    assert_ne!(p.hash(), other.hash(), "the hash is of the source bytes");
    // Known vector: SHA-256 of this exact text.
    let tiny = Policy::from_toml("version = \"1\"\n", &one()).unwrap();
    assert_eq!(
        tiny.hash(),
        "47a465cdf1ac00306666d3b73f0b2382a5b92088b3db8cd9e1c4d641eb2a81f5"
    );
}

#[test]
fn approval_carries_the_rule_settings() {
    let p = Policy::from_toml(BASE, &one()).unwrap();
    match decide(&p, "INSERT INTO t VALUES (1)", "prod") {
        Decision::RequireApproval {
            rule,
            approvers,
            min_approvals,
            mode,
            reason,
        } => {
            assert_eq!(rule.as_str(), "rule:writes");
            assert_eq!(approvers, vec!["dba".to_owned()]);
            assert_eq!(min_approvals, 2);
            assert_eq!(
                mode,
                ApprovalMode::Hold {
                    timeout: Duration::from_secs(60)
                }
            );
            assert!(reason.contains("writes"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decide(&p, "INSERT INTO t VALUES (1)", "dev"),
        Decision::Allow {
            basis: AllowBasis::Default
        }
    );
}

#[test]
fn grants_turn_approval_into_allow_until_they_expire() {
    let p = Policy::from_toml(BASE, &one()).unwrap();
    let grant = |scope: GrantScope, user: &str, conn: &str| Grant {
        id: "g-1".into(),
        user: Principal::new(IssuerId::new(IDP), user),
        connection: conn.into(),
        expires_at: t0() + Duration::from_secs(1800),
        scope,
    };
    let allowed = Decision::Allow {
        basis: AllowBasis::Grant {
            rule: decide(&p, "INSERT INTO t VALUES (1)", "prod")
                .rule()
                .cloned()
                .unwrap(),
            grant: "g-1".into(),
        },
    };
    for scope in [
        GrantScope::Writes,
        GrantScope::Any,
        GrantScope::Rule("writes".into()),
    ] {
        let g = [grant(scope.clone(), "alice", "prod")];
        assert_eq!(
            decide_with(&p, "INSERT INTO t VALUES (1)", "prod", &g, t0()),
            allowed,
            "{scope:?}"
        );
        // Expired: at and after expires_at.
        assert_eq!(
            decide_with(
                &p,
                "INSERT INTO t VALUES (1)",
                "prod",
                &g,
                t0() + Duration::from_secs(1800)
            )
            .label(),
            "approval"
        );
        // A grant never overrides a deny.
        assert_eq!(
            decide_with(&p, "DROP TABLE t", "prod", &g, t0()).label(),
            "deny"
        );
    }
    for g in [
        grant(GrantScope::Any, "bob", "prod"),
        grant(GrantScope::Any, "alice", "other"),
        grant(GrantScope::Rule("nope".into()), "alice", "prod"),
    ] {
        assert_eq!(
            decide_with(&p, "INSERT INTO t VALUES (1)", "prod", &[g], t0()).label(),
            "approval"
        );
    }
    // Multi-statement: every write part needs the grant; the deny part still denies.
    let g = [grant(GrantScope::Writes, "alice", "prod")];
    assert_eq!(
        decide_with(
            &p,
            "INSERT INTO t VALUES (1); UPDATE t SET a = 1 WHERE id = 1",
            "prod",
            &g,
            t0()
        )
        .label(),
        "allow"
    );
    assert_eq!(
        decide_with(&p, "INSERT INTO t VALUES (1); TRUNCATE t", "prod", &g, t0()).label(),
        "deny"
    );
}

#[test]
fn deny_overrides_approval_and_allow() {
    let src = r#"
version = "x"
[[rules]]
name = "ok"
action = "allow"
groups = ["agents"]
[[rules]]
name = "hold"
action = "require_approval"
kinds = ["select"]
[rules.approval]
approvers = ["dba"]
mode = "ticket"
[[rules]]
name = "secret"
action = "deny"
tables = ["secret"]
"#;
    let p = Policy::from_toml(src, &one()).unwrap();
    assert_eq!(
        decide(&p, "SELECT * FROM secret", "c")
            .rule()
            .unwrap()
            .as_str(),
        "rule:secret"
    );
    let d = decide(&p, "SELECT 1", "c");
    assert_eq!(d.rule().unwrap().as_str(), "rule:hold");
    assert!(matches!(
        d,
        Decision::RequireApproval {
            mode: ApprovalMode::Ticket,
            min_approvals: 1,
            ..
        }
    ));
    assert_eq!(
        decide(&p, "SHOW x", "c"),
        Decision::Allow {
            basis: AllowBasis::Rule(decide(&p, "SHOW y", "c").rule().cloned().unwrap())
        }
    );
}

#[test]
fn default_deny_and_allow_rules() {
    let src = r#"
version = "x"
default = "deny"
[[rules]]
name = "reads"
action = "allow"
kinds = ["select", "show", "set"]
"#;
    let p = Policy::from_toml(src, &one()).unwrap();
    assert_eq!(decide(&p, "SELECT 1", "c").label(), "allow");
    let d = decide(&p, "INSERT INTO t VALUES (1)", "c");
    assert_eq!(d.rule().unwrap().as_str(), "policy:default");
    // With a deny default, unparseable text is refused even without presets.
    assert_eq!(
        decide(&p, "SELEC 1", "c").rule().unwrap().as_str(),
        "policy:unparseable"
    );
}

#[test]
fn unparseable_is_allowed_only_where_nothing_restricts() {
    let p = Policy::from_toml(BASE, &one()).unwrap();
    // `no-secrets` applies everywhere, so every connection is restricted.
    assert_eq!(decide(&p, "SELEC 1", "dev").label(), "deny");
    let open = Policy::from_toml(
        "version = \"1\"\n[[presets]]\nenable = [\"read_only\"]\nconnections = [\"ro\"]\n",
        &one(),
    )
    .unwrap();
    assert_eq!(
        decide(&open, "SELEC 1", "dev"),
        Decision::Allow {
            basis: AllowBasis::Unanalyzed
        }
    );
    assert_eq!(
        decide(&open, "SELEC 1", "ro").rule().unwrap().as_str(),
        "policy:unparseable"
    );
    assert_eq!(
        decide(&open, "", "ro"),
        Decision::Allow {
            basis: AllowBasis::Default
        }
    );
}

#[test]
fn tag_scoped_presets_and_rule_conditions() {
    let src = r#"
version = "x"
[[presets]]
enable = ["no_unbounded_write"]
tags = { environment = "production", tier = "1" }
[[rules]]
name = "fn"
action = "deny"
functions = ["pg_sleep"]
users = ["alice"]
[[rules]]
name = "flagged"
action = "deny"
flags = ["data_modifying_cte"]
protocols = ["postgres"]
[[rules]]
name = "orders-writes"
action = "deny"
writes_to = ["public.orders"]
"#;
    let p = Policy::from_toml(src, &one()).unwrap();
    let groups: Vec<Group> = vec![];
    let user = alice();
    let prepared = PreparedStatements::new();
    let run = |sql: &str, tags: &[(&str, &str)]| {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let statements = classify(sql);
        let facts = Facts {
            user: &user,
            groups: &groups,
            connection: "c",
            tags: &tags,
            protocol: "postgres",
            sql,
            statements: &statements,
            prepared: &prepared,
            now: t0(),
        };
        p.evaluate(&facts, &[])
            .rule()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        run(
            "DELETE FROM t",
            &[("environment", "production"), ("tier", "1")]
        ),
        "preset:no_unbounded_write"
    );
    assert_eq!(
        run("DELETE FROM t", &[("environment", "production")]),
        "",
        "all tags must match"
    );
    assert_eq!(run("SELECT pg_catalog.PG_SLEEP(1)", &[]), "rule:fn");
    assert_eq!(
        run(
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT 1",
            &[]
        ),
        "rule:flagged"
    );
    assert_eq!(
        run("UPDATE orders SET a = 1 WHERE id = 1", &[]),
        "rule:orders-writes",
        "unqualified matches by name"
    );
    assert_eq!(
        run("UPDATE public.orders SET a = 1 WHERE id = 1", &[]),
        "rule:orders-writes"
    );
    assert_eq!(
        run("UPDATE archive.orders SET a = 1 WHERE id = 1", &[]),
        "",
        "other schema"
    );
    assert_eq!(
        run("SELECT * FROM public.orders", &[]),
        "",
        "reads are not writes_to"
    );
}

#[test]
fn example_policy_loads() {
    let p = Policy::from_toml(include_str!("../examples/policy.toml"), &one()).unwrap();
    assert_eq!(p.presets().len(), 2);
    assert_eq!(p.rules().len(), 4);
    assert!(
        matches!(p.rules()[2].approval.as_ref().unwrap().mode, ApprovalMode::Hold { timeout } if timeout == Duration::from_secs(300))
    );
}

/// The production guardrails of issue 14.
const GUARDRAILS: &str = r#"
version = "g1"

[[presets]]
enable = ["no_drop_truncate", "no_unbounded_write", "no_privilege_changes", "no_server_files", "no_admin_functions"]
"#;

fn guardrail_decision(sql: &str) -> Decision {
    decide(&Policy::from_toml(GUARDRAILS, &one()).unwrap(), sql, "prod")
}

#[test]
fn guardrails_catch_column_and_constraint_drops() {
    for sql in [
        "ALTER TABLE orders DROP COLUMN total",
        "ALTER TABLE orders DROP total",
        "ALTER TABLE orders ADD COLUMN x int, DROP COLUMN IF EXISTS total",
        "ALTER TABLE orders DROP CONSTRAINT orders_pkey",
        "ALTER DOMAIN positive DROP CONSTRAINT positive_check",
    ] {
        let d = guardrail_decision(sql);
        assert_eq!(
            d.rule().map(|r| r.as_str()),
            Some("preset:no_drop_truncate"),
            "{sql}: {d:?}"
        );
    }
    assert_eq!(
        guardrail_decision("ALTER TABLE orders ADD COLUMN note text").label(),
        "allow"
    );
}

#[test]
fn guardrails_catch_role_renames() {
    for sql in [
        "ALTER ROLE admin RENAME TO old_admin",
        "ALTER USER alice RENAME TO admin",
        "ALTER GROUP dba RENAME TO agents",
    ] {
        let d = guardrail_decision(sql);
        assert_eq!(
            d.rule().map(|r| r.as_str()),
            Some("preset:no_privilege_changes"),
            "{sql}: {d:?}"
        );
    }
}

#[test]
fn harmless_set_config_is_not_refused() {
    for sql in [
        "SELECT set_config('application_name', 'agent-7', false)",
        "SELECT set_config('search_path', 'public', true)",
        "SELECT pg_catalog.set_config('TimeZone', 'UTC', false)",
    ] {
        assert_eq!(guardrail_decision(sql).label(), "allow", "{sql}");
    }
    for sql in [
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('client_encoding', 'GBK', false)",
        "SELECT set_config('backslash_quote', 'on', false)",
        "SELECT set_config('app.tenant_id', '2', false)",
        "SELECT set_config(lower('ROLE'), 'postgres', false)",
    ] {
        let d = guardrail_decision(sql);
        assert_eq!(
            d.rule().map(|r| r.as_str()),
            Some("preset:no_privilege_changes"),
            "{sql}: {d:?}"
        );
    }
}

#[test]
fn prepare_and_execute_in_one_request() {
    let policy = Policy::from_toml(GUARDRAILS, &one()).unwrap();
    // Nothing prepared on the session before: the PREPARE earlier in the same string counts.
    let d = decide(
        &policy,
        "PREPARE q(int) AS SELECT $1 + 1; EXECUTE q(3); DEALLOCATE q",
        "prod",
    );
    assert_eq!(d.label(), "allow", "{d:?}");
    // The body is judged through the EXECUTE too (and at the PREPARE).
    let d = decide(
        &policy,
        "PREPARE w AS DELETE FROM orders; EXECUTE w",
        "prod",
    );
    assert_eq!(
        d.rule().map(|r| r.as_str()),
        Some("preset:no_unbounded_write"),
        "{d:?}"
    );
    // Order matters: EXECUTE before its PREPARE, or after its DEALLOCATE, is unknown.
    for sql in [
        "EXECUTE q(3); PREPARE q(int) AS SELECT $1",
        "PREPARE q AS SELECT 1; DEALLOCATE q; EXECUTE q",
        "PREPARE q AS SELECT 1; DEALLOCATE ALL; EXECUTE q",
        "PREPARE q AS SELECT 1; DISCARD ALL; EXECUTE q",
    ] {
        let d = decide(&policy, sql, "prod");
        assert_eq!(
            d.rule().map(|r| r.as_str()),
            Some("policy:unknown_prepared"),
            "{sql}: {d:?}"
        );
    }
}

/// Two issuers, `corp` and `partner`, both with an `alice` and an `agents` group.
mod two_issuers {
    use super::*;

    const CORP: &str = "https://corp.example";
    const PARTNER: &str = "https://partner.example";

    fn issuers() -> Issuers {
        Issuers::new([
            (Some("corp".to_owned()), IssuerId::new(CORP)),
            (Some("partner".to_owned()), IssuerId::new(PARTNER)),
        ])
        .unwrap()
    }

    const SRC: &str = r#"
version = "2"
default = "deny"
[[rules]]
name = "alice-reads"
action = "allow"
users = ["corp:alice"]
kinds = ["select"]
[[rules]]
name = "agents-insert"
action = "allow"
groups = ["corp:agents"]
kinds = ["insert"]
[[rules]]
name = "writes"
action = "require_approval"
kinds = ["update"]
[rules.approval]
approvers = ["corp:dba"]
mode = "ticket"
"#;

    fn judge(p: &Policy, iss: &str, sql: &str, grants: &[Grant]) -> Decision {
        let user = Principal::new(IssuerId::new(iss), "alice");
        let groups = vec![Group::new(IssuerId::new(iss), "agents")];
        let tags = BTreeMap::new();
        let statements = classify(sql);
        let prepared = PreparedStatements::new();
        let facts = Facts {
            user: &user,
            groups: &groups,
            connection: "prod",
            tags: &tags,
            protocol: "postgres",
            sql,
            statements: &statements,
            prepared: &prepared,
            now: t0(),
        };
        p.evaluate(&facts, grants)
    }

    #[test]
    fn user_and_group_rules_match_only_their_issuer() {
        let p = Policy::from_toml(SRC, &issuers()).unwrap();
        assert_eq!(judge(&p, CORP, "SELECT 1", &[]).label(), "allow");
        assert_eq!(
            judge(&p, CORP, "INSERT INTO t VALUES (1)", &[]).label(),
            "allow"
        );
        // The same names at the other issuer are other principals.
        assert_eq!(judge(&p, PARTNER, "SELECT 1", &[]).label(), "deny");
        assert_eq!(
            judge(&p, PARTNER, "INSERT INTO t VALUES (1)", &[]).label(),
            "deny"
        );
    }

    #[test]
    fn a_grant_covers_its_issuers_user_only() {
        let p = Policy::from_toml(SRC, &issuers()).unwrap();
        let grant = Grant {
            id: "g-1".into(),
            user: Principal::new(IssuerId::new(CORP), "alice"),
            connection: "prod".into(),
            expires_at: t0() + Duration::from_secs(60),
            scope: GrantScope::Any,
        };
        let sql = "UPDATE t SET a = 1 WHERE id = 1";
        assert_eq!(
            judge(&p, CORP, sql, std::slice::from_ref(&grant)).label(),
            "allow"
        );
        assert_eq!(judge(&p, PARTNER, sql, &[grant]).label(), "approval");
    }

    #[test]
    fn approvers_are_resolved_at_load() {
        let p = Policy::from_toml(SRC, &issuers()).unwrap();
        let a = p.rules()[2].approval.as_ref().unwrap();
        assert_eq!(a.approvers, vec!["corp:dba".to_owned()]);
        assert_eq!(
            a.approver_groups,
            vec![Group::new(IssuerId::new(CORP), "dba")]
        );
    }

    #[test]
    fn plain_or_unknown_names_are_refused_with_two_issuers() {
        for bad in [
            SRC.replace("\"corp:alice\"", "\"alice\""),
            SRC.replace("\"corp:agents\"", "\"agents\""),
            SRC.replace("\"corp:dba\"", "\"dba\""),
            SRC.replace("\"corp:dba\"", "\"other:dba\""),
        ] {
            let e = Policy::from_toml(&bad, &issuers()).expect_err("ambiguous name");
            assert!(e.message.contains("ambiguous"), "{e}");
            assert!(e.line > 0, "{e}");
        }
    }
}
