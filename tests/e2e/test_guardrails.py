"""Guardrails by meaning, through the real data path: a policy file, PostgreSQL's own parser
classifying each statement, refused statements answered with SQLSTATE 42501 naming the rule
and never reaching the database, the session staying usable (transaction blocks aborted the
way PostgreSQL aborts them), and every decision in the audit trail."""

from __future__ import annotations

import os
import hashlib
import secrets
import signal

import psycopg
import pytest

from harness import sql_error_state, wait_for

POLICY = """
version = "e2e-guardrails-1"
default = "allow"

[[presets]]
enable = ["no_drop_truncate", "no_unbounded_write", "no_privilege_changes", "no_server_files"]
tags = { environment = "test" }

[[rules]]
name = "secrets-off-limits"
action = "deny"
reason = "the vault_copy table is off limits"
tables = ["vault_copy"]

[[rules]]
name = "audit-log-writes-need-dba"
action = "require_approval"
reason = "writes to audit_log need a DBA"
writes_to = ["audit_log"]

[rules.approval]
approvers = ["dev:dba"]
mode = "ticket"
"""


@pytest.fixture
def guarded(gatehouse, pg, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    gw = gatehouse(extra_toml=f'\n[policy]\npath = "{policy}"\n')
    table = f"guard_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        c.execute(f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 10) g")
    yield gw, table, policy
    with pg.owner_connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")


def _exists(pg, table: str) -> bool:
    with pg.owner_connect() as c:
        return c.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def _refused(conn, sql: str, params=None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    return ei.value


def test_refused_by_meaning_not_by_text(guarded, pg):
    gw, table, _ = guarded
    token = gw.token("guard-user", groups=["analysts"])
    with gw.connect("guard-user", token, autocommit=True) as c:
        for sql in (f"DROP TABLE {table}", f"/* harmless */ DrOp /* x */ TaBlE {table}",
                    f"SELECT 1; DROP TABLE {table}", f"TRUNCATE {table}"):
            e = _refused(c, sql)
            assert sql_error_state(e) == "42501", (sql, e)
            assert "preset:no_drop_truncate" in str(e), e
        assert _exists(pg, table)
        # Text that only looks dangerous passes.
        assert c.execute("SELECT 'DROP TABLE x' AS s").fetchone()[0] == "DROP TABLE x"
        assert c.execute("SELECT $q$TRUNCATE everything$q$").fetchone()[0] == "TRUNCATE everything"
        # An unbounded write is refused; a bounded one runs.
        e = _refused(c, f"DELETE FROM {table}")
        assert sql_error_state(e) == "42501" and "no_unbounded_write" in str(e)
        assert c.execute(f"DELETE FROM {table} WHERE id = 10").rowcount == 1
        # Privilege changes and server files.
        assert sql_error_state(_refused(c, "SET ROLE postgres")) == "42501"
        assert sql_error_state(_refused(c, "SELECT pg_read_file('/etc/passwd')")) == "42501"
        # A user rule by table, wherever the table appears.
        e = _refused(c, "SELECT * FROM (SELECT 1) s, LATERAL (SELECT * FROM vault_copy) v")
        assert "rule:secrets-off-limits" in str(e) and "off limits" in str(e)
        # Approval-required statements are refused (fail closed) and say who approves.
        e = _refused(c, "INSERT INTO audit_log VALUES (1)")
        assert sql_error_state(e) == "42501" and "dba" in str(e) and "approval" in str(e)
        # Not SQL at all: refused where anything is restricted, never sent.
        e = _refused(c, "SELEC 1 FROM")
        assert sql_error_state(e) == "42501" and "unparseable" in str(e)
        # The session is still fine.
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 9
    # psql (simple protocol, its own client) sees the same.
    p = gw.psql("guard-user", token, "-At", "-c", f"DROP TABLE {table}", "-c", "SELECT 'still here'")
    assert "statement blocked by preset:no_drop_truncate" in p.stderr, p.stderr
    assert "still here" in p.stdout
    p = gw.psql("guard-user", token, "-At", "-c", f"UPDATE {table} SET v = 0")
    assert "no_unbounded_write" in p.stderr, p.stderr
    assert _exists(pg, table)


def test_extended_protocol_and_transactions(guarded, pg):
    gw, table, _ = guarded
    token = gw.token("guard-ext")
    with gw.connect("guard-ext", token) as c:  # not autocommit: psycopg opens a transaction
        assert c.execute(f"SELECT v FROM {table} WHERE id = %s", (3,)).fetchone()[0] == 3
        e = _refused(c, f"UPDATE {table} SET v = %s", (0,))
        assert sql_error_state(e) == "42501" and "no_unbounded_write" in str(e)
        # The transaction block is aborted, exactly as PostgreSQL would have it.
        e = _refused(c, "SELECT 1")
        assert sql_error_state(e) == "25P02", e
        c.rollback()
        assert c.execute(f"SELECT sum(v) FROM {table} WHERE id <= %s", (4,)).fetchone()[0] == 10
        # A server-side prepared statement that is refused, then an allowed one.
        e = _refused(c, f"DELETE FROM {table} WHERE %s::int IS NOT NULL", (1,))
        assert sql_error_state(e) == "42501"
        c.rollback()
        cur = c.cursor()
        for i in range(6):  # psycopg prepares server-side after a few executions
            assert cur.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone()[0] == i * 2
    with gw.connect("guard-ext", token, autocommit=True) as c:
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 10


def test_every_decision_is_audited(guarded):
    gw, table, policy = guarded
    token = gw.token("guard-audit")
    with gw.connect("guard-audit", token, autocommit=True) as c:
        _refused(c, f"DROP TABLE {table}")
        c.execute("SELECT 42")
    recs = [r for r in gw.audit_json() if r.get("username") == "guard-audit" and r["event"] == "statement"]
    denied = [r for r in recs if r.get("decision") == "deny"]
    assert len(denied) == 1 and denied[0]["statement"] == f"DROP TABLE {table}", recs
    assert denied[0]["reason"].startswith("preset:no_drop_truncate"), denied[0]
    assert any(r.get("decision") == "allow" and r["statement"] == "SELECT 42" for r in recs)
    results = {r["ref_seq"]: r for r in gw.audit_json() if r["event"] == "statement.result"}
    assert results[denied[0]["seq"]]["sqlstate"] == "42501"
    loaded = [r for r in gw.audit_json() if r["event"] == "config.loaded"]
    assert "e2e-guardrails-1" in loaded[-1]["reason"], loaded[-1]
    # Every decision names the policy it was made under: SHA-256 of the policy file.
    want = hashlib.sha256(policy.read_bytes()).hexdigest()
    assert all(r.get("policy_hash") == want for r in recs), recs
    assert loaded[-1]["policy_hash"] == want
    # The hash is inside the chain: the store still verifies.
    v = gw.cli("audit", "verify", "--json")
    assert v.returncode == 0, v.stdout + v.stderr


def test_broken_policy_is_refused_and_the_last_good_one_stays(guarded, pg):
    gw, table, policy = guarded
    token = gw.token("guard-reload")
    policy.write_text(POLICY + "\n[[rules]]\nname = \"x\"\naction = \"deny\"\nbogus_key = 1\n")
    p = gw.cli("config", "check", check=False)
    assert p.returncode != 0 and "policy" in p.stderr and "line" in p.stderr, p.stderr
    os.kill(gw.proc.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in gw.log_text(), timeout=10, what="reload refusal in the log")
    with gw.connect("guard-reload", token, autocommit=True) as c:
        assert sql_error_state(_refused(c, f"DROP TABLE {table}")) == "42501"
    assert _exists(pg, table)
    # A broken policy at start: the gateway does not start at all.
    gw.stop()
    p = gw.cli("serve", check=False, timeout=60)
    assert p.returncode != 0 and "policy" in p.stderr, p.stderr
