"""Just-in-time approval (ticket mode) through the real data path and the CLI: a statement a
rule sends for approval is refused with a request id, approvers decide with their own OIDC
token (no self-approval, approver groups only), and the identical statement from the same user
then passes exactly once."""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest

from harness import sql_error_state, wait_for

POLICY = """
version = "e2e-approvals-1"
default = "allow"

[[rules]]
name = "ledger-writes-need-dba"
action = "require_approval"
reason = "writes to the ledger need a DBA"
writes_to = ["{table}"]

[rules.approval]
approvers = ["dev:dba"]
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

        # Every step of each request's life is an audit record naming it, the rule and the
        # policy (the gateway watches the approvals store once a second).
        def events(req_id):
            return [r["event"] for r in gw.audit_json()
                    if r["event"].startswith("approval.") and (r.get("reason") or "").startswith(req_id)]

        wait_for(lambda: "approval.denied" in events(rid2), timeout=10, what="approval events audited")
        assert events(rid) == ["approval.requested", "approval.approved", "approval.executed"], events(rid)
        assert events(rid2) == ["approval.requested", "approval.denied"], events(rid2)
        rec = [r for r in gw.audit_json() if r["event"] == "approval.approved"][0]
        assert "dev:bob-dba approve (dba): ok once" in rec["reason"] and "e2e-approvals-1" in rec["reason"], rec
        assert rec["username"] == "alice-app" and rec["statement"] == sql
    finally:
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")


HOLD_POLICY = """
version = "e2e-hold-1"
default = "allow"

[[rules]]
name = "orders-writes-held"
action = "require_approval"
reason = "writes to orders wait for a DBA"
writes_to = ["{orders}"]

[rules.approval]
approvers = ["dev:dba"]
mode = "hold"
hold_timeout_seconds = 30

[[rules]]
name = "audit-writes-held-briefly"
action = "require_approval"
reason = "writes to the short table wait two seconds at most"
writes_to = ["{short}"]

[rules.approval]
approvers = ["dev:dba"]
mode = "hold"
hold_timeout_seconds = 2
"""


def _wait_pending(gw, statement: str, timeout: float = 15.0) -> str:
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in gw.cli("approvals", "list", "--json").stdout.splitlines():
            r = json.loads(line)
            if r["statement"] == statement and r["mode"] == "hold":
                return r["id"]
        time.sleep(0.1)
    raise AssertionError(f"no held request for {statement!r}")


def test_hold_mode_with_a_langchain_agent(gatehouse, pg, tmp_path):
    import threading

    from langchain_community.utilities import SQLDatabase

    orders, short = f"orders_{secrets.token_hex(4)}", f"short_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {orders} (id int, item text)")
        c.execute(f"CREATE TABLE {short} (id int)")
    policy = tmp_path / "policy.toml"
    policy.write_text(HOLD_POLICY.replace("{orders}", orders).replace("{short}", short))
    gw = gatehouse(extra_toml=f'\n[policy]\npath = "{policy}"\n')
    agent = gw.token("agent-1", groups=["agents"])
    bob = gw.token("bob-dba", groups=["dba"])
    db = SQLDatabase.from_uri(gw.url("agent-1", agent), include_tables=[orders],
                              sample_rows_in_table_info=0)
    results: dict[str, object] = {}

    def run(key: str, sql: str) -> None:
        try:
            results[key] = db.run(sql)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[key] = e

    try:
        # Approved: the INSERT waits on the session, then runs.
        insert = f"INSERT INTO {orders} VALUES (1, 'widget')"
        t = threading.Thread(target=run, args=("approved", insert))
        t.start()
        rid = _wait_pending(gw, insert)
        assert t.is_alive(), "the statement must be held, not answered"
        with pg.owner_connect() as c:
            assert c.execute(f"SELECT count(*) FROM {orders}").fetchone()[0] == 0
        gw.cli("approvals", "approve", rid, "--token", bob)
        t.join(timeout=20)
        assert not t.is_alive() and not isinstance(results["approved"], Exception), results
        with pg.owner_connect() as c:
            assert c.execute(f"SELECT item FROM {orders}").fetchall() == [("widget",)]

        # Denied: the agent gets 42501 and nothing happens.
        insert2 = f"INSERT INTO {orders} VALUES (2, 'gadget')"
        t = threading.Thread(target=run, args=("denied", insert2))
        t.start()
        rid2 = _wait_pending(gw, insert2)
        p = gw.cli("approvals", "approve", rid2, "--token", agent, check=False)
        assert p.returncode != 0  # the agent cannot approve its own statement
        gw.cli("approvals", "deny", rid2, "--token", bob, "--comment", "no")
        t.join(timeout=20)
        denied = results["denied"]
        assert isinstance(denied, Exception) and "not approved" in str(denied), denied

        # Nobody decides: the hold times out and the statement fails.
        db_short = SQLDatabase.from_uri(gw.url("agent-1", agent), include_tables=[short],
                                        sample_rows_in_table_info=0)
        with pytest.raises(Exception) as ei:
            db_short.run(f"INSERT INTO {short} VALUES (1)")
        assert "not approved" in str(ei.value), ei.value
        with pg.owner_connect() as c:
            assert c.execute(f"SELECT count(*) FROM {orders}").fetchone()[0] == 1
            assert c.execute(f"SELECT count(*) FROM {short}").fetchone()[0] == 0

        # All of it is in the audit trail.
        recs = [r for r in gw.audit_json() if r["event"] == "statement" and r.get("username") == "agent-1"]
        by_stmt = {r["statement"]: r for r in recs if r.get("statement") in (insert, insert2)}
        assert by_stmt[insert]["decision"] == "allow" and rid in by_stmt[insert]["reason"]
        assert by_stmt[insert2]["decision"] == "deny" and "denied" in by_stmt[insert2]["reason"]
        statuses = {json.loads(l)["id"]: json.loads(l)["status"]
                    for l in gw.cli("approvals", "list", "--all", "--json").stdout.splitlines()}
        assert statuses[rid] == "executed" and statuses[rid2] == "denied", statuses
    finally:
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {orders}")
            c.execute(f"DROP TABLE IF EXISTS {short}")


class _Hook:
    """A real HTTP server on loopback that records what the gateway POSTs."""

    def __init__(self):
        import http.server
        import threading

        self.bodies: list[dict] = []
        hook = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("content-length", "0"))
                hook.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_webhook_on_request_and_decision(gatehouse, pg, tmp_path, fmt):
    table = f"hooked_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int)")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.replace("{table}", table))
    hook = _Hook()
    gw = gatehouse(extra_toml=f'\n[policy]\npath = "{policy}"\n\n[approvals.webhook]\n'
                               f'url = "http://127.0.0.1:{hook.port}/hook"\nformat = "{fmt}"\n')
    try:
        alice = gw.token("alice-app", groups=["analysts"])
        bob = gw.token("bob-dba", groups=["dba"])
        e = _refusal(gw, "alice-app", alice, f"INSERT INTO {table} VALUES (7)")
        rid = [w for w in str(e).replace(".", " ").split() if w.startswith("apr_")][0]
        wait_for(lambda: len(hook.bodies) >= 1, timeout=10, what="webhook for the new request")
        gw.cli("approvals", "approve", rid, "--token", bob)
        wait_for(lambda: len(hook.bodies) >= 2, timeout=10, what="webhook for the decision")
        if fmt == "json":
            assert [b["event"] for b in hook.bodies[:2]] == ["approval.requested", "approval.approved"]
            assert hook.bodies[0]["id"] == rid and hook.bodies[0]["requester"] == "alice-app"
            assert hook.bodies[0]["approvers"] == ["dev:dba"] and "INSERT INTO" in hook.bodies[0]["statement"]
        else:
            assert set(hook.bodies[0]) == {"text"} and rid in hook.bodies[0]["text"]
            assert "needs approval" in hook.bodies[0]["text"] and "was approved" in hook.bodies[1]["text"]
        # No token or vaulted secret ever goes out in a webhook.
        blob = json.dumps(hook.bodies)
        assert bob not in blob and alice not in blob
        from harness import CANARY
        assert CANARY not in blob
    finally:
        hook.close()
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")


def test_time_boxed_grant(gatehouse, pg, tmp_path):
    table = f"granted_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int)")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.replace("{table}", table))
    gw = gatehouse(extra_toml=f'\n[policy]\npath = "{policy}"\n\n[approvals]\ngrant_issuers = ["dev:dba"]\n')
    alice = gw.token("alice-app", groups=["analysts"])
    bob = gw.token("bob-dba", groups=["dba"])
    eve = gw.token("eve", groups=["analysts"])
    try:
        assert "needs approval" in str(_refusal(gw, "alice-app", alice, f"INSERT INTO {table} VALUES (1)"))
        # Only grant issuers, never for oneself.
        p = gw.cli("approvals", "grant", "--user", "dev:alice-app", "--connection", "app", "--minutes", "30",
                   "--token", eve, check=False)
        assert p.returncode != 0
        p = gw.cli("approvals", "grant", "--user", "dev:bob-dba", "--connection", "app", "--minutes", "30",
                   "--token", bob, check=False)
        assert p.returncode != 0
        out = gw.cli("approvals", "grant", "--user", "dev:alice-app", "--connection", "app", "--minutes", "30",
                     "--token", bob, "--comment", "INC-42").stdout
        gid = out.split()[0]
        assert gid.startswith("grt_"), out
        # Alice's writes now pass for the grant's lifetime; eve's do not.
        with gw.connect("alice-app", alice, autocommit=True) as c:
            c.execute(f"INSERT INTO {table} VALUES (2)")
            c.execute(f"INSERT INTO {table} VALUES (3)")
        assert "needs approval" in str(_refusal(gw, "eve", eve, f"INSERT INTO {table} VALUES (4)"))
        with pg.owner_connect() as c:
            assert sorted(r[0] for r in c.execute(f"SELECT id FROM {table}")) == [2, 3]
        listed = gw.cli("approvals", "grants").stdout
        assert gid in listed and "used 2x" in listed, listed
        recs = [r for r in gw.audit_json() if r["event"] == "statement" and r.get("username") == "alice-app"
                and r.get("decision") == "allow" and table in (r.get("statement") or "")]
        assert len(recs) == 2 and all(gid in r["reason"] for r in recs), recs
        # Revoked: the next write needs approval again; issue and end are audit records.
        assert gw.cli("approvals", "revoke-grant", gid, "--token", eve, check=False).returncode != 0
        gw.cli("approvals", "revoke-grant", gid, "--token", bob)
        assert "needs approval" in str(_refusal(gw, "alice-app", alice, f"INSERT INTO {table} VALUES (5)"))

        def grant_events():
            return [r["event"] for r in gw.audit_json()
                    if r["event"].startswith("grant.") and (r.get("reason") or "").startswith(gid)]

        wait_for(lambda: "grant.ended" in grant_events(), timeout=10, what="grant events audited")
        assert grant_events() == ["grant.issued", "grant.ended"], grant_events()
        issued = [r for r in gw.audit_json() if r["event"] == "grant.issued"][0]
        assert "bob-dba (dba): INC-42" in issued["reason"] and issued["username"] == "alice-app", issued
    finally:
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")


TWO_IDPS_POLICY = """
version = "e2e-two-idps"
default = "deny"

[[rules]]
name = "anyone-show"
action = "allow"
kinds = ["show"]

[[rules]]
name = "corp-alice-reads"
action = "allow"
users = ["corp:agent-alice"]
kinds = ["select"]

[[rules]]
name = "corp-engineers-insert"
action = "allow"
groups = ["corp:engineers"]
kinds = ["insert"]

[[rules]]
name = "updates-need-corp-engineers"
action = "require_approval"
kinds = ["update"]
[rules.approval]
approvers = ["corp:engineers"]
mode = "ticket"
"""


def test_same_name_at_another_idp_is_another_principal(gatehouse, pg, oidc, oidc_factory, tmp_path):
    """Two real OpenID providers that both issue agent-alice (analysts) and agent-bob (analysts,
    engineers). Users, groups, approvers and grant issuers written `corp:` are the first
    provider's only: the second provider's namesakes log in, but match no rule, use no grant
    and approve nothing meant for the first."""
    partner = oidc_factory()
    assert partner.issuer != oidc.issuer
    table = f"idps_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int, v int)")
        c.execute(f"INSERT INTO {table} VALUES (1, 0)")
    policy = tmp_path / "policy.toml"
    policy.write_text(TWO_IDPS_POLICY)
    gw = gatehouse(issuer_name="corp", dev_issuer=False, extra_toml=(
        f'\n[[identity.issuers]]\nname = "partner"\nissuer = "{partner.issuer}"\n'
        'audience = ["gatehouse"]\nusername_claim = "sub"\ngroups_claim = "groups"\n'
        f'\n[policy]\npath = "{policy}"\n\n[approvals]\ngrant_issuers = ["corp:engineers"]\n'))
    corp_alice, corp_bob = oidc.token("agent-alice"), oidc.token("agent-bob")
    p_alice, p_bob = partner.token("agent-alice"), partner.token("agent-bob")
    try:
        # Logins from both providers work.
        for tok in (corp_alice, corp_bob, p_alice, p_bob):
            user = "agent-alice" if tok in (corp_alice, p_alice) else "agent-bob"
            with gw.connect(user, tok, autocommit=True) as c:
                assert c.execute("SHOW server_version").fetchone()

        # User and group rules meant for corp do not match partner's namesakes.
        with gw.connect("agent-alice", corp_alice, autocommit=True) as c:
            assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        assert "policy:default" in str(_refusal(gw, "agent-alice", p_alice, f"SELECT count(*) FROM {table}"))
        with gw.connect("agent-bob", corp_bob, autocommit=True) as c:
            c.execute(f"INSERT INTO {table} VALUES (2, 0)")
        assert "policy:default" in str(_refusal(gw, "agent-bob", p_bob, f"INSERT INTO {table} VALUES (3, 0)"))

        # A request from corp's alice: partner's engineer cannot approve it; corp's can.
        sql = f"UPDATE {table} SET v = v + 1 WHERE id = 1"
        e = _refusal(gw, "agent-alice", corp_alice, sql)
        assert "apr_" in str(e), e
        pending = [json.loads(l) for l in gw.cli("approvals", "list", "--json").stdout.splitlines()]
        assert len(pending) == 1 and pending[0]["requester_issuer"] == oidc.issuer, pending
        rid = pending[0]["id"]
        p = gw.cli("approvals", "approve", rid, "--token", p_bob, check=False)
        assert p.returncode != 0 and "approver" in p.stderr.lower(), p.stderr
        out = json.loads(gw.cli("approvals", "approve", rid, "--token", corp_bob).stdout)
        assert out["status"] == "approved" and out["votes"][0]["approver_issuer"] == oidc.issuer, out
        # The approved ticket is corp alice's: her namesake's identical statement is refused.
        assert sql_error_state(_refusal(gw, "agent-alice", p_alice, sql)) == "42501"
        with gw.connect("agent-alice", corp_alice, autocommit=True) as c:
            c.execute(sql)

        # Grants: a plain name is ambiguous with two providers; partner's engineer is no grant
        # issuer; a grant to corp:agent-alice is hers only.
        grant = ["approvals", "grant", "--connection", "app", "--minutes", "30", "--scope", "any"]
        p = gw.cli(*grant, "--user", "agent-alice", "--token", corp_bob, check=False)
        assert p.returncode != 0 and "ambiguous" in p.stderr, p.stderr
        p = gw.cli(*grant, "--user", "corp:agent-alice", "--token", p_bob, check=False)
        assert p.returncode != 0, p.stdout
        gid = gw.cli(*grant, "--user", "corp:agent-alice", "--token", corp_bob).stdout.split()[0]
        assert gid.startswith("grt_"), gid
        other = f"UPDATE {table} SET v = v + 10 WHERE id = 1"
        assert "needs approval" in str(_refusal(gw, "agent-alice", p_alice, other))
        with gw.connect("agent-alice", corp_alice, autocommit=True) as c:
            c.execute(other)
        with pg.owner_connect() as c:
            assert c.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == (11,)
        # The grant's audit record names the grantee's issuer.
        issued = lambda: [r for r in gw.audit_json() if r["event"] == "grant.issued"]  # noqa: E731
        wait_for(lambda: issued(), timeout=10, what="the grant.issued audit record")
        assert issued()[-1]["username"] == "agent-alice" and issued()[-1]["issuer"] == oidc.issuer, issued()
    finally:
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
