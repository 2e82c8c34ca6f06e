//! Table-driven classification tests: `check(sql, expect)` where `expect` is a compact rendering
//! of the facts of every statement in `sql`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_sql::{classify, Danger, ParseError, PreparedStatements, Statement, StatementKind};

/// One line per statement: `kind [w=a,b] [t=a,b] [f=x,y] [d=...] [flags...]`.
fn render(s: &Statement) -> String {
    let mut out = kind(&s.kind);
    let list = |v: Vec<String>| v.join(",");
    if !s.writes.is_empty() {
        out += &format!(
            " w={}",
            list(s.writes.iter().map(ToString::to_string).collect())
        );
    }
    if !s.tables.is_empty() {
        out += &format!(
            " t={}",
            list(s.tables.iter().map(ToString::to_string).collect())
        );
    }
    if !s.functions.is_empty() {
        out += &format!(" f={}", list(s.functions.clone()));
    }
    if !s.dangerous.is_empty() {
        out += &format!(
            " d={}",
            list(s.dangerous.iter().map(ToString::to_string).collect())
        );
    }
    for (name, on) in s.flags.named() {
        if on {
            out += &format!(" +{name}");
        }
    }
    out
}

fn kind(k: &StatementKind) -> String {
    match k {
        StatementKind::Explain { analyze, inner } => format!(
            "explain{}({})",
            if *analyze { "_analyze" } else { "" },
            kind(&inner.kind)
        ),
        StatementKind::Prepare { name, inner } => format!("prepare:{name}({})", kind(&inner.kind)),
        StatementKind::Execute { name } => format!("execute:{name}"),
        StatementKind::Set { name } => format!("set:{name}"),
        StatementKind::Reset { name } => format!("reset:{name}"),
        other => other.names().last().cloned().unwrap_or_default(),
    }
}

fn check(sql: &str, expect: &str) {
    let got = match classify(sql) {
        Ok(stmts) => stmts.iter().map(render).collect::<Vec<_>>().join("\n"),
        Err(e) => format!("error: {e}"),
    };
    assert_eq!(got, expect.trim(), "\nsql: {sql}");
}

#[test]
fn reads() {
    check("SELECT 1", "select");
    check(
        "select * from orders o join public.customers c on c.id = o.cid",
        "select t=orders,public.customers",
    );
    check("TABLE orders", "select t=orders");
    check("VALUES (1), (2)", "select");
    check("SELECT 'DROP TABLE x'", "select");
    check("SELECT $$DROP TABLE x$$", "select");
    check(
        "select count(*) from (select * from a where b in (select id from c)) s",
        "select t=a,c f=count",
    );
    check(r#"SELECT * FROM "Orders""#, "select t=Orders");
    check(r#"SELECT * FROM U&"\006Frders""#, "select t=orders");
    check("SELECT 1 -- ; DROP TABLE x", "select");
    check("SELECT /* ; DROP TABLE x; */ 1", "select");
    check("SELECT * FROM orders FOR UPDATE", "select t=orders");
}

#[test]
fn writes() {
    check("INSERT INTO orders VALUES (1)", "insert w=orders t=orders");
    check(
        "UPDATE orders SET x = 1 WHERE id = 2",
        "update w=orders t=orders",
    );
    check(
        "UPDATE orders SET x = 1",
        "update w=orders t=orders +unbounded_write",
    );
    check(
        "DELETE FROM orders",
        "delete w=orders t=orders +unbounded_write",
    );
    check(
        "DELETE FROM orders WHERE true",
        "delete w=orders t=orders +unbounded_write",
    );
    check(
        "DELETE FROM orders WHERE 1 = 1",
        "delete w=orders t=orders +unbounded_write",
    );
    check(
        "DELETE FROM orders WHERE id = 1",
        "delete w=orders t=orders",
    );
    check(
        "DELETE FROM orders WHERE CURRENT OF c",
        "delete w=orders t=orders",
    );
    check(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v",
        "merge w=t t=s,t",
    );
    check(
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
        "select w=orders t=orders,x +unbounded_write +data_modifying_cte",
    );
    check(
        "WITH x AS (UPDATE a SET v = 1 WHERE id = 1 RETURNING id) INSERT INTO log SELECT id FROM x",
        "insert w=a,log t=a,log,x +data_modifying_cte",
    );
    check(
        "SELECT * INTO newtab FROM orders",
        "create_table w=newtab t=newtab,orders +select_into",
    );
    check(
        "CREATE TABLE t2 AS SELECT * FROM orders",
        "create_table w=t2 t=orders,t2",
    );
    check("TRUNCATE a, s.b", "truncate w=a,s.b t=a,s.b");
    check(
        "INSERT INTO t SELECT * FROM s ON CONFLICT (id) DO UPDATE SET v = excluded.v",
        "insert w=t t=s,t",
    );
}

#[test]
fn ddl() {
    check("DROP TABLE orders", "drop_table w=orders t=orders");
    check(
        "drop table if exists a, b.c cascade",
        "drop_table w=a,b.c t=a,b.c",
    );
    check("DROP SCHEMA public CASCADE", "drop_schema");
    check("DROP DATABASE prod", "drop_database");
    check("DROP VIEW v", "drop_view w=v t=v");
    check("DROP FUNCTION f(int)", "drop_function");
    check("CREATE TABLE t (id int)", "create_table w=t t=t");
    check("ALTER TABLE t ADD COLUMN c int", "alter_table w=t t=t");
    check("CREATE INDEX i ON t (c)", "create_index w=t t=t");
    check("CREATE SCHEMA s", "create_schema");
    check("CREATE VIEW v AS SELECT * FROM t", "create_view w=v t=t,v");
    check("ALTER TABLE t RENAME TO u", "alter_rename w=t t=t");
    check(
        "ALTER TABLE t OWNER TO bob",
        "alter_table w=t t=t d=role_change(OWNER TO)",
    );
    check(
        "ALTER FUNCTION f() OWNER TO bob",
        "alter_owner d=role_change(OWNER TO)",
    );
    check(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ DELETE FROM t; SELECT 1 $$",
        "create_function d=dynamic_sql(CREATE FUNCTION)",
    );
    check(
        "CREATE EXTENSION dblink",
        "create_extension d=admin_function(CREATE EXTENSION dblink)",
    );
    check(
        "ALTER SYSTEM SET work_mem = '1GB'",
        "alter_system d=config_change(ALTER SYSTEM)",
    );
    check(
        "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u",
        "create_rule w=t,u t=t,u +unbounded_write",
    );
}

#[test]
fn privileges_and_session() {
    check("GRANT SELECT ON t TO bob", "grant t=t");
    check("REVOKE ALL ON t FROM bob", "revoke t=t");
    check("GRANT admin TO bob", "grant");
    check("CREATE ROLE x LOGIN SUPERUSER", "create_role");
    check("CREATE USER x", "create_role");
    check("ALTER ROLE x SUPERUSER", "alter_role");
    check(
        "ALTER USER x SET search_path = evil",
        "alter_role d=config_change(ALTER ROLE SET)",
    );
    check("DROP ROLE x", "drop_role");
    check("DROP USER x", "drop_role");
    check("SET ROLE postgres", "set_role");
    check("set local role postgres", "set_role");
    check("RESET ROLE", "reset_role");
    check(
        "SET SESSION AUTHORIZATION postgres",
        "set_session_authorization",
    );
    check("SET search_path = evil, public", "set:search_path");
    check("SET LOCAL statement_timeout = 0", "set:statement_timeout");
    check("RESET ALL", "reset:all");
    check("SHOW search_path", "show");
    check(
        "SELECT set_config('role', 'postgres', false)",
        "select f=set_config d=config_change(set_config(role)),role_change(set_config(role))",
    );
    check("SELECT set_config(lower('ROLE'), 'x', false)", "select f=lower,set_config d=config_change(set_config(<expression>)),role_change(set_config(<expression>))");
}

#[test]
fn set_config_is_a_danger_only_for_settings_that_matter() {
    // Harmless constant names: what a plain SET of them is.
    for name in [
        "application_name",
        "search_path",
        "SEARCH_PATH",
        "timezone",
        "statement_timeout",
    ] {
        check(
            &format!("SELECT set_config('{name}', 'x', false)"),
            "select f=set_config",
        );
    }
    check(
        "SELECT set_config('application_name'::text, 'x', false)",
        "select f=set_config",
    );
    // Names that matter, and computed names.
    for name in [
        "standard_conforming_strings",
        "client_encoding",
        "backslash_quote",
        "default_transaction_read_only",
        "session_replication_role",
        "app.tenant_id",
        "pgaudit.log",
        "log_statement",
    ] {
        check(
            &format!("SELECT set_config('{name}', 'x', false)"),
            &format!("select f=set_config d=config_change(set_config({name}))"),
        );
    }
    check(
        "SELECT set_config('Session_Authorization', 'x', false)",
        "select f=set_config d=config_change(set_config(session_authorization)),role_change(set_config(session_authorization))",
    );
    check(
        "SELECT set_config(name, 'x', false) FROM s",
        "select t=s f=set_config d=config_change(set_config(<expression>)),role_change(set_config(<expression>))",
    );
}

#[test]
fn dropping_columns_and_constraints_is_flagged() {
    check(
        "ALTER TABLE t DROP COLUMN c",
        "alter_table w=t t=t +drops_column",
    );
    check(
        "alter table t drop c cascade",
        "alter_table w=t t=t +drops_column",
    );
    check(
        "ALTER TABLE IF EXISTS s.t DROP CONSTRAINT t_pkey",
        "alter_table w=s.t t=s.t +drops_constraint",
    );
    check(
        "ALTER TABLE t ADD COLUMN x int, DROP COLUMN IF EXISTS c, DROP CONSTRAINT k",
        "alter_table w=t t=t +drops_column +drops_constraint",
    );
    check(
        "ALTER FOREIGN TABLE f DROP COLUMN c",
        "alter_foreign_table w=f t=f +drops_column",
    );
    check(
        "ALTER TYPE ty DROP ATTRIBUTE a",
        "alter_type w=ty t=ty +drops_column",
    );
    check(
        "ALTER DOMAIN d DROP CONSTRAINT k",
        "alter_domain +drops_constraint",
    );
    // Not drops.
    check("ALTER TABLE t ADD COLUMN c int", "alter_table w=t t=t");
    check(
        "ALTER TABLE t ALTER COLUMN c DROP DEFAULT",
        "alter_table w=t t=t",
    );
    check(
        "ALTER DOMAIN d ADD CONSTRAINT k CHECK (VALUE > 0)",
        "alter_domain",
    );
}

#[test]
fn renaming_a_role_is_a_role_statement() {
    check("ALTER ROLE bob RENAME TO alice", "alter_role");
    check("ALTER USER bob RENAME TO alice", "alter_role");
    check("ALTER GROUP g RENAME TO h", "alter_role");
    check("ALTER TABLE t RENAME TO u", "alter_rename w=t t=t");
}

#[test]
fn transactions_and_prepared() {
    check("BEGIN", "begin");
    check("START TRANSACTION READ WRITE", "begin");
    check("COMMIT", "commit");
    check("ROLLBACK", "rollback");
    check(
        "SAVEPOINT a; RELEASE a; ROLLBACK TO a",
        "savepoint\nsavepoint\nsavepoint",
    );
    check("PREPARE TRANSACTION 'x'", "two_phase");
    check(
        "PREPARE p AS DELETE FROM t",
        "prepare:p(delete) w=t t=t +unbounded_write",
    );
    check(
        "PREPARE q(int) AS SELECT * FROM t WHERE id = $1",
        "prepare:q(select) t=t",
    );
    check("EXECUTE p", "execute:p");
    check("DEALLOCATE p", "deallocate");
    check("DISCARD ALL", "discard");
    check(
        "DECLARE c CURSOR FOR SELECT * FROM t; FETCH 10 FROM c; CLOSE c",
        "declare_cursor t=t\nfetch\nclose_portal",
    );
}

#[test]
fn explain() {
    check("EXPLAIN SELECT * FROM t", "explain(select) t=t");
    check(
        "EXPLAIN DELETE FROM t",
        "explain(delete) w=t t=t +unbounded_write",
    );
    check(
        "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
        "explain_analyze(delete) w=t t=t +explain_analyze_write",
    );
    check(
        "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE id = 2",
        "explain_analyze(update) w=t t=t +explain_analyze_write",
    );
    check(
        "EXPLAIN (ANALYZE false) DELETE FROM t WHERE id = 1",
        "explain(delete) w=t t=t",
    );
    check("EXPLAIN ANALYZE SELECT 1", "explain_analyze(select)");
}

#[test]
fn dangerous_functions() {
    check(
        "SELECT pg_read_file('/etc/passwd')",
        "select f=pg_read_file d=server_file_access(pg_read_file)",
    );
    check(
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        "select f=pg_catalog.pg_read_file d=server_file_access(pg_read_file)",
    );
    check(
        r#"SELECT "PG_READ_FILE"('/etc/passwd')"#,
        "select f=PG_READ_FILE d=server_file_access(pg_read_file)",
    );
    check(
        r#"SELECT public."pg_read_file"('x')"#,
        "select f=public.pg_read_file d=server_file_access(pg_read_file)",
    );
    check(
        r#"SELECT U&"pg\005fread\005ffile"('x')"#,
        "select f=pg_read_file d=server_file_access(pg_read_file)",
    );
    check(
        "SELECT PG_LS_DIR('.')",
        "select f=pg_ls_dir d=server_file_access(pg_ls_dir)",
    );
    check(
        "SELECT * FROM pg_ls_dir('.') AS f",
        "select f=pg_ls_dir d=server_file_access(pg_ls_dir)",
    );
    check(
        "SELECT 1 WHERE EXISTS (SELECT pg_stat_file('x'))",
        "select f=pg_stat_file d=server_file_access(pg_stat_file)",
    );
    check(
        "SELECT CASE WHEN 1=1 THEN pg_read_binary_file('x') END",
        "select f=pg_read_binary_file d=server_file_access(pg_read_binary_file)",
    );
    check(
        "SELECT lo_import('/etc/passwd')",
        "select f=lo_import d=server_file_access(lo_import),large_object(lo_import)",
    );
    check(
        "SELECT lo_unlink(1234)",
        "select f=lo_unlink d=large_object(lo_unlink)",
    );
    check(
        "SELECT * FROM dblink('host=x', 'DELETE FROM t') AS r(a int)",
        "select f=dblink d=dblink(dblink),dynamic_sql(dblink)",
    );
    check(
        "SELECT pg_terminate_backend(123)",
        "select f=pg_terminate_backend d=process_signal(pg_terminate_backend)",
    );
    check(
        "SELECT pg_reload_conf()",
        "select f=pg_reload_conf d=config_change(pg_reload_conf)",
    );
    check(
        "SELECT query_to_xml('DELETE FROM t', true, true, '')",
        "select f=query_to_xml d=dynamic_sql(query_to_xml)",
    );
    check(
        "SELECT * FROM pg_file_settings",
        "select t=pg_file_settings d=server_file_access(pg_file_settings)",
    );
    check(
        "SELECT x FROM t ORDER BY pg_read_file('a') LIMIT 1",
        "select t=t f=pg_read_file d=server_file_access(pg_read_file)",
    );
    check(
        "INSERT INTO t VALUES (pg_read_file('a'))",
        "insert w=t t=t f=pg_read_file d=server_file_access(pg_read_file)",
    );
}

#[test]
fn copy() {
    check("COPY t TO STDOUT", "copy_to t=t");
    check("COPY t FROM STDIN", "copy_from w=t t=t");
    check(
        "COPY t FROM '/etc/passwd'",
        "copy_from w=t t=t d=server_file_access(COPY FROM '/etc/passwd')",
    );
    check(
        "COPY t TO '/tmp/x'",
        "copy_to t=t d=server_file_access(COPY TO '/tmp/x')",
    );
    check(
        "COPY t FROM PROGRAM 'id'",
        "copy_program w=t t=t d=copy_program(COPY PROGRAM)",
    );
    check(
        "COPY (SELECT pg_read_file('x')) TO STDOUT",
        "copy_to f=pg_read_file d=server_file_access(pg_read_file)",
    );
    check(
        "COPY (SELECT 1) TO PROGRAM 'sh -c id'",
        "copy_program d=copy_program(COPY PROGRAM)",
    );
}

#[test]
fn do_and_call() {
    check("DO $$ BEGIN DROP TABLE t; END $$", "do d=dynamic_sql(DO)");
    check(
        "DO LANGUAGE plpgsql 'BEGIN NULL; END'",
        "do d=dynamic_sql(DO)",
    );
    check("CALL p(1)", "call f=p");
}

#[test]
fn multi_statement_splits_with_own_text() {
    let s = classify("SELECT 1; DROP TABLE t;  /* c */ UPDATE t SET a = 1").unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].text, "SELECT 1");
    assert_eq!(s[1].text, "DROP TABLE t");
    assert_eq!(s[2].text, "UPDATE t SET a = 1");
    check("select 'a;b'; select \"x;y\" from t", "select\nselect t=t");
    check("", "");
    check("-- only a comment", "");
}

#[test]
fn parse_errors_fail() {
    assert!(matches!(classify("SELEC 1"), Err(ParseError::Syntax(_))));
    assert!(matches!(
        classify("SELECT 1; DROP TABLE"),
        Err(ParseError::Syntax(_))
    ));
    assert!(matches!(classify("SELECT '\0'"), Err(ParseError::NulByte)));
    assert!(matches!(
        classify("SELECT 'unterminated"),
        Err(ParseError::Syntax(_))
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    // Redundant parentheses make no nodes: fine at any depth the grammar accepts.
    assert!(classify(&format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500))).is_ok());
    // 12 nested sub-selects / a 30-term sum are analysed.
    assert!(classify(&format!(
        "SELECT {}1{}",
        "(SELECT ".repeat(12),
        ")".repeat(12)
    ))
    .is_ok());
    assert!(classify(&format!("SELECT 1{}", " + 1".repeat(30))).is_ok());
    // Deeper trees are refused (never a crash): the protobuf decoder's recursion limit, then
    // PostgreSQL's own stack-depth and memory limits.
    for n in [60, 1000, 10_000] {
        assert!(matches!(
            classify(&format!("SELECT 1{}", " + 1".repeat(n))),
            Err(ParseError::TooComplex(_) | ParseError::Syntax(_))
        ));
        assert!(classify(&format!("SELECT {}true", "NOT ".repeat(n))).is_err());
        assert!(classify(&format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n))).is_err());
    }
}

#[test]
fn standard_conforming_strings_changes_the_split() {
    use gatehouse_sql::{classify_with, ParseOptions};
    let sql = r"SELECT 'a\'; DROP TABLE t; --'";
    let on = classify_with(
        sql,
        ParseOptions {
            standard_conforming_strings: true,
        },
    )
    .unwrap();
    let off = classify_with(
        sql,
        ParseOptions {
            standard_conforming_strings: false,
        },
    )
    .unwrap();
    assert_eq!(
        on.len(),
        2,
        "with the default, the backslash is literal and DROP is a statement"
    );
    assert_eq!(
        on[1].kind,
        StatementKind::Drop {
            object: "TABLE".into()
        }
    );
    assert_eq!(
        off.len(),
        1,
        "with it off, \\' escapes the quote and all is one string"
    );
    assert_eq!(off[0].kind, StatementKind::Select);
}

#[test]
fn prepared_statements_are_tracked() {
    let mut p = PreparedStatements::new();
    p.observe(&classify("PREPARE p AS DELETE FROM t; PREPARE q AS SELECT 1").unwrap());
    assert_eq!(p.len(), 2);
    assert_eq!(p.resolve("p")[0].kind, StatementKind::Delete);
    assert!(p.resolve("nope").is_empty());
    p.observe(&classify("DEALLOCATE p").unwrap());
    assert!(p.resolve("p").is_empty());
    p.observe(&classify("PREPARE q AS DELETE FROM t").unwrap());
    assert_eq!(p.resolve("q").len(), 2, "both bodies kept");
    p.observe(&classify("DISCARD PLANS").unwrap());
    assert_eq!(p.len(), 1);
    p.observe(&classify("DEALLOCATE ALL").unwrap());
    assert!(p.is_empty());
    p.observe(&classify("PREPARE r AS SELECT 1; DISCARD ALL").unwrap());
    assert!(p.is_empty());
}

#[test]
fn danger_names_are_listed() {
    for d in [Danger::CopyProgram, Danger::DynamicSql("DO".into())] {
        assert!(gatehouse_sql::DANGER_NAMES.contains(&d.name()));
    }
    for s in classify("SELECT 1; DROP TABLE t; COPY t FROM PROGRAM 'x'; EXPLAIN ANALYZE SELECT 1; CREATE INDEX i ON t(a)").unwrap() {
        let names = s.kind.names();
        assert!(gatehouse_sql::KIND_NAMES.contains(&names[0].as_str()), "{names:?}");
    }
}
