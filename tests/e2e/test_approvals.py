"""Just-in-time approval (ticket mode) through the real data path and the CLI: a statement a
rule sends for approval is refused with a request id, approvers decide with their own OIDC
token (no self-approval, approver groups only), and the identical statement from the same user
then passes exactly once."""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest

from harness import sql_error_state

POLICY = """
version = "e2e-approvals-1"
default = "allow"

[[rules]]
name = "ledger-writes-need-dba"
action = "require_approval"
reason = "writes to the ledger need a DBA"
writes_to = ["{table}"]

[rules.approval]
approvers = ["dba"]
mode = "ticket"
"""


def _refusal(gw, user, token, sql) -> psycopg.Error:
    with gw.connect(user, token, autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
    return ei.value


def test_ticket_approval_lets_the_identical_statement_pass_once(gatehouse, pg, tmp_path):
    table = f"ledger_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int, amount int)")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.replace("{table}", table))
    gw = gatehouse(extra_toml=f'\n[policy]\npath = "{policy}"\n')
    alice = gw.token("alice-app", groups=["analysts"])
    bob = gw.token("bob-dba", groups=["dba"])
    eve = gw.token("eve", groups=["analysts"])
    sql = f"INSERT INTO {table} VALUES (1, 100)"
    try:
        e = _refusal(gw, "alice-app", alice, sql)
        assert sql_error_state(e) == "42501" and "apr_" in str(e) and "dba" in str(e), e
        pending = [json.loads(l) for l in gw.cli("approvals", "list", "--json").stdout.splitlines()]
        assert len(pending) == 1 and pending[0]["statement"] == sql and pending[0]["requester"] == "alice-app"
        rid = pending[0]["id"]
        assert rid in str(e)
        # Retrying before approval points at the same request.
        assert rid in str(_refusal(gw, "alice-app", alice, sql))
        assert len(gw.cli("approvals", "list", "--json").stdout.splitlines()) == 1

        # Nobody approves their own request; non-approvers cannot; a bad token is rejected.
        p = gw.cli("approvals", "approve", rid, "--token", alice, check=False)
        assert p.returncode != 0 and "own" in p.stderr.lower(), p.stderr
        p = gw.cli("approvals", "approve", rid, "--token", eve, check=False)
        assert p.returncode != 0, p.stdout
        p = gw.cli("approvals", "approve", rid, "--token", "not.a.token", check=False)
        assert p.returncode != 0 and "rejected" in p.stderr
        assert alice not in p.stderr + p.stdout

        out = json.loads(gw.cli("approvals", "approve", rid, "--token", bob, "--comment", "ok once").stdout)
        assert out["status"] == "approved" and out["votes"][0]["approver"] == "bob-dba"

        # Another statement is not covered; the identical one passes exactly once.
        assert sql_error_state(_refusal(gw, "alice-app", alice, f"INSERT INTO {table} VALUES (2, 999)")) == "42501"
        assert sql_error_state(_refusal(gw, "eve", eve, sql)) == "42501"  # not eve's ticket
        with gw.connect("alice-app", alice, autocommit=True) as c:
            assert c.execute(sql).rowcount == 1
        e = _refusal(gw, "alice-app", alice, sql)
        assert sql_error_state(e) == "42501" and rid not in str(e)
        with pg.owner_connect() as c:
            assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1

        # The audit trail shows the refusals and the approved run with the request id.
        recs = [r for r in gw.audit_json() if r["event"] == "statement" and r.get("statement") == sql
                and r.get("username") == "alice-app"]
        assert [r["decision"] for r in recs].count("allow") == 1, recs
        allowed = [r for r in recs if r["decision"] == "allow"][0]
        assert rid in allowed["reason"], allowed
        # A denied request stays denied.
        e = _refusal(gw, "alice-app", alice, f"INSERT INTO {table} VALUES (3, 3)")
        rid2 = [w for w in str(e).replace(".", " ").split() if w.startswith("apr_")][0]
        gw.cli("approvals", "deny", rid2, "--token", bob)
        assert sql_error_state(_refusal(gw, "alice-app", alice, f"INSERT INTO {table} VALUES (3, 3)")) == "42501"
        statuses = {json.loads(l)["id"]: json.loads(l)["status"]
                    for l in gw.cli("approvals", "list", "--all", "--json").stdout.splitlines()}
        assert statuses[rid] == "executed" and statuses[rid2] == "denied", statuses
    finally:
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
