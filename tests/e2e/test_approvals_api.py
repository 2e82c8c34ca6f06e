"""Just-in-time approvals through the REST API (`protocol = "api"` listener) of the real
`gatehouse serve`, with a real PostgreSQL, psycopg clients, the real OpenID provider
(node-oidc-provider: agent-alice, agent-bob, agent-carol) and the development issuer.

Every response the tests receive is also checked against docs/api/openapi.yaml (status
documented, body valid against the schema), and a last test runs schemathesis against the
live server."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
import requests
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from harness import CANARY, REPO, free_port, sql_error_state, tamper_payload, wait_for

OPENAPI = REPO / "docs" / "api" / "openapi.yaml"
SUFFIX = secrets.token_hex(4)
HELD, TICKET, QUORUM, GRANTED, BRIEF = (
    f"api_{n}_{SUFFIX}" for n in ("held", "ticket", "quorum", "granted", "brief"))
TABLES = (HELD, TICKET, QUORUM, GRANTED, BRIEF)

POLICY = f"""
version = "e2e-api-1"
default = "allow"

[[rules]]
name = "held-writes"
action = "require_approval"
reason = "writes to the held table wait for an engineer"
writes_to = ["{HELD}"]

[rules.approval]
approvers = ["engineers", "dev:dba"]
mode = "hold"
hold_timeout_seconds = 60

[[rules]]
name = "brief-hold"
action = "require_approval"
reason = "writes to the brief table wait two seconds at most"
writes_to = ["{BRIEF}"]

[rules.approval]
approvers = ["engineers", "dev:dba"]
mode = "hold"
hold_timeout_seconds = 2

[[rules]]
name = "ticket-writes"
action = "require_approval"
reason = "writes to the ticket table need an engineer"
writes_to = ["{TICKET}", "{GRANTED}"]

[rules.approval]
approvers = ["engineers", "dev:dba"]
mode = "ticket"

[[rules]]
name = "two-person-writes"
action = "require_approval"
reason = "writes to the quorum table need two approvers"
writes_to = ["{QUORUM}"]

[rules.approval]
approvers = ["engineers", "dev:dba"]
min_approvals = 2
mode = "ticket"
"""


# ---------------------------------------------------------------------------------------
# The contract: every response is checked against the OpenAPI document.
# ---------------------------------------------------------------------------------------

class Contract:
    def __init__(self, path: Path):
        self.doc = yaml.safe_load(path.read_text())
        self.registry = Registry().with_resource(
            "urn:gatehouse-api", Resource.from_contents(self.doc, default_specification=DRAFT202012))
        self.routes = []
        for template, item in self.doc["paths"].items():
            rx = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
            self.routes.append((rx, template, item))

    def _resolve(self, obj: dict) -> dict:
        while "$ref" in obj:
            node = self.doc
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def check(self, method: str, path: str, r: requests.Response) -> None:
        path = path.split("?")[0]
        matches = [(t, item) for rx, t, item in self.routes if rx.match(path)]
        if not matches:
            assert r.status_code == 404, f"{path} is not in the OpenAPI document but answered {r.status_code}"
            return
        template, item = matches[0]
        op = item.get(method.lower())
        if op is None:
            assert r.status_code == 405, f"{method} {template} undocumented but answered {r.status_code}"
            return
        status = str(r.status_code)
        assert status in op["responses"], f"{method} {template}: status {status} is not documented: {r.text}"
        resp = self._resolve(op["responses"][status])
        content = resp.get("content", {}).get("application/json")
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        assert r.headers.get("cache-control") == "no-store"
        if content:
            ref = op["responses"][status]
            base = ("urn:gatehouse-api" + ref["$ref"]) if "$ref" in ref else (
                "urn:gatehouse-api#/paths/" + _escape(template) + f"/{method.lower()}/responses/{status}")
            schema = {"$ref": base + "/content/application~1json/schema"}
            Draft202012Validator(schema, registry=self.registry).validate(r.json())


def _escape(s: str) -> str:
    return s.replace("~", "~0").replace("/", "~1")


CONTRACT = Contract(OPENAPI)


class Api:
    """A client of the gateway's API listener (HTTPS, the gateway's own certificate)."""

    def __init__(self, gw, port: int):
        self.base = f"https://127.0.0.1:{port}"
        self.port = port
        self.verify = str(gw.data_dir / "tls" / "cert.pem")

    def call(self, method: str, path: str, token: str | None = None, *, json_body=None, data=None,
             headers: dict | None = None, check_contract: bool = True) -> requests.Response:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        r = requests.request(method, self.base + path, json=json_body, data=data, headers=h,
                             verify=self.verify, timeout=30)
        if check_contract:
            CONTRACT.check(method, path, r)
        return r

    def get(self, path, token=None, **kw):
        return self.call("GET", path, token, **kw)

    def post(self, path, token=None, body=None, **kw):
        return self.call("POST", path, token, json_body=body, **kw)

    def delete(self, path, token=None, **kw):
        return self.call("DELETE", path, token, **kw)

    def pending_id(self, token: str, statement: str, timeout: float = 15.0) -> str:
        def find():
            r = self.get("/v1/approvals?state=pending", token)
            assert r.status_code == 200, r.text
            ids = [a["id"] for a in r.json()["approvals"] if a["statement"] == statement]
            return ids[0] if ids else None
        return wait_for(find, timeout=timeout, what=f"a pending request for {statement!r}")


def error_code(r: requests.Response) -> str:
    return r.json()["error"]["code"]


# ---------------------------------------------------------------------------------------
# One gateway (PostgreSQL listener + API listener) for the module.
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(module_gatehouse, pg, oidc, tmp_path_factory):
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        for t in TABLES:
            c.execute(f"CREATE TABLE {t} (id int, note text)")
    policy = tmp_path_factory.mktemp("api-policy") / "policy.toml"
    policy.write_text(POLICY)
    api_port = free_port()
    gw = module_gatehouse(extra_toml=(
        f'\n[policy]\npath = "{policy}"\n\n[approvals]\ngrant_issuers = ["dev:dba"]\n\n'
        f'[[listeners]]\nname = "api"\nprotocol = "api"\nbind = "127.0.0.1:{api_port}"\n'))
    api = Api(gw, api_port)
    wait_for(lambda: api.get("/v1/healthz").status_code == 200, timeout=10, what="the API listener")
    tokens = {
        # From the real OpenID provider.
        "alice": oidc.token("agent-alice"),  # analysts: requester
        "bob": oidc.token("agent-bob"),  # analysts, engineers: approver
        "carol": oidc.token("agent-carol"),  # no groups: neither approver nor issuer
        # From the development issuer.
        "dave": gw.token("dave-dba", groups=["dba"]),  # an approver who also runs statements
        "erin": gw.token("erin-dba", groups=["dba"]),  # second approver, grant issuer
    }
    yield gw, api, tokens
    with pg.owner_connect() as c:
        for t in TABLES:
            c.execute(f"DROP TABLE IF EXISTS {t}")


def _refused(gw, user: str, token: str, sql: str) -> psycopg.Error:
    with gw.connect(user, token, autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
    assert sql_error_state(ei.value) == "42501", ei.value
    return ei.value


def _request_id(err: BaseException) -> str:
    m = re.search(r"apr_[a-z2-7]{16}", str(err))
    assert m, f"no request id in {err}"
    return m.group(0)


def _rows(pg, table: str) -> list[tuple]:
    with pg.owner_connect() as c:
        return c.execute(f"SELECT id, note FROM {table} ORDER BY id").fetchall()


def _audit_for(gw, rid: str, event: str) -> dict:
    def find():
        recs = [r for r in gw.audit_json() if r["event"] == event and (r.get("reason") or "").startswith(rid)]
        return recs[0] if recs else None
    return wait_for(find, timeout=15, what=f"{event} record for {rid}")


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------

def test_healthz_needs_no_token_and_says_nothing_else(env):
    gw, api, _ = env
    r = api.get("/v1/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # Plain HTTP on the API port is refused (no development option on this listener).
    r = requests.get(f"http://127.0.0.1:{api.port}/v1/healthz", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "tls_required"
    # Unknown routes and methods are JSON errors too.
    assert api.get("/v1/nothing-here").status_code == 404
    r = api.call("PUT", "/v1/grants", env[2]["bob"])
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"


def test_held_insert_is_approved_through_the_api_and_then_runs(env, pg):
    gw, api, tok = env
    sql = f"INSERT INTO {HELD} VALUES (1, 'approved via api')"
    result: dict[str, object] = {}

    def client() -> None:
        try:
            with gw.connect("agent-alice", tok["alice"], autocommit=True) as c:
                result["rowcount"] = c.execute(sql).rowcount
        except Exception as e:  # noqa: BLE001 - inspected below
            result["error"] = e

    t = threading.Thread(target=client)
    t.start()
    try:
        rid = api.pending_id(tok["bob"], sql)
        assert t.is_alive(), "the INSERT must be held, not answered"
        assert _rows(pg, HELD) == []
        r = api.get(f"/v1/approvals/{rid}", tok["bob"])
        assert r.status_code == 200
        a = r.json()
        assert (a["status"], a["mode"], a["requester"], a["statement"]) == ("pending", "hold", "agent-alice", sql)
        assert a["approvers"] == ["engineers", "dev:dba"] and a["rule"].endswith("held-writes")

        r = api.post(f"/v1/approvals/{rid}/approve", tok["bob"], {"comment": "looks fine", "minutes": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "approved" and body["votes"][0]["approver"] == "agent-bob"
        assert body["votes"][0]["comment"] == "looks fine"
        t.join(timeout=30)
        assert not t.is_alive() and result == {"rowcount": 1}, result
    finally:
        t.join(timeout=60)
    assert _rows(pg, HELD) == [(1, "approved via api")]
    wait_for(lambda: api.get(f"/v1/approvals/{rid}", tok["bob"]).json()["status"] == "executed",
             timeout=10, what="the request marked executed")

    # Deciding again is a conflict, not a second vote.
    r = api.post(f"/v1/approvals/{rid}/approve", tok["dave"])
    assert r.status_code == 409 and error_code(r) == "not_pending", r.text

    # The audit trail has the API decision with the approver's identity and groups.
    rec = _audit_for(gw, rid, "approval.approved")
    assert "agent-bob approve (analysts,engineers): looks fine" in rec["reason"], rec
    assert rec["username"] == "agent-alice" and rec["statement"] == sql
    _audit_for(gw, rid, "approval.executed")
    stmt = [r for r in gw.audit_json() if r["event"] == "statement" and r.get("statement") == sql]
    assert stmt and stmt[-1]["decision"] == "allow" and rid in stmt[-1]["reason"], stmt


def test_held_insert_denied_through_the_api_fails_in_the_client(env, pg):
    gw, api, tok = env
    sql = f"INSERT INTO {HELD} VALUES (2, 'denied via api')"
    result: dict[str, object] = {}

    def client() -> None:
        try:
            with gw.connect("agent-alice", tok["alice"], autocommit=True) as c:
                c.execute(sql)
                result["ran"] = True
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=client)
    t.start()
    try:
        rid = api.pending_id(tok["bob"], sql)
        r = api.post(f"/v1/approvals/{rid}/deny", tok["bob"], {"reason": "not during the freeze"})
        assert r.status_code == 200 and r.json()["status"] == "denied", r.text
        t.join(timeout=30)
    finally:
        t.join(timeout=60)
    err = result.get("error")
    assert isinstance(err, psycopg.Error) and sql_error_state(err) == "42501", result
    assert "not approved" in str(err) and rid in str(err)
    assert (2, "denied via api") not in _rows(pg, HELD)
    r = api.post(f"/v1/approvals/{rid}/deny", tok["dave"])
    assert r.status_code == 409, r.text
    rec = _audit_for(gw, rid, "approval.denied")
    assert "agent-bob deny (analysts,engineers): not during the freeze" in rec["reason"], rec


def test_deciding_after_the_hold_expired_is_a_conflict(env, pg):
    gw, api, tok = env
    sql = f"INSERT INTO {BRIEF} VALUES (1, 'too late')"
    with gw.connect("agent-alice", tok["alice"], autocommit=True) as c:
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
        assert time.monotonic() - t0 >= 1.5, "the statement must have been held"
    assert sql_error_state(ei.value) == "42501" and "not approved" in str(ei.value)
    rid = _request_id(ei.value)
    r = api.post(f"/v1/approvals/{rid}/approve", tok["bob"])
    assert r.status_code == 409 and error_code(r) in ("expired", "not_pending"), r.text
    assert _rows(pg, BRIEF) == []
    _audit_for(gw, rid, "approval.expired")
    assert api.get(f"/v1/approvals/{rid}", tok["bob"]).json()["status"] == "expired"


def test_ticket_approved_through_the_api_lets_the_identical_statement_pass_once(env, pg):
    gw, api, tok = env
    sql = f"INSERT INTO {TICKET} VALUES (1, 'ticket')"
    rid = _request_id(_refused(gw, "agent-alice", tok["alice"], sql))
    r = api.post(f"/v1/approvals/{rid}/approve", tok["bob"])  # no body at all
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    # Another statement is not covered; the identical one passes exactly once.
    _refused(gw, "agent-alice", tok["alice"], f"INSERT INTO {TICKET} VALUES (2, 'other')")
    with gw.connect("agent-alice", tok["alice"], autocommit=True) as c:
        assert c.execute(sql).rowcount == 1
    assert rid not in str(_refused(gw, "agent-alice", tok["alice"], sql))
    assert _rows(pg, TICKET) == [(1, "ticket")]
    assert api.get(f"/v1/approvals/{rid}", tok["alice"]).json()["status"] == "executed"  # her own
    _audit_for(gw, rid, "approval.executed")


def test_self_approval_and_non_approvers_are_refused(env):
    gw, api, tok = env
    # dave is in an approver group, but this is his own statement.
    rid = _request_id(_refused(gw, "dave-dba", tok["dave"], f"INSERT INTO {TICKET} VALUES (10, 'self')"))
    r = api.post(f"/v1/approvals/{rid}/approve", tok["dave"])
    assert r.status_code == 403 and error_code(r) == "self_approval", r.text
    # alice's request: she cannot approve it either, nor can carol (no approver group).
    rid2 = _request_id(_refused(gw, "agent-alice", tok["alice"], f"INSERT INTO {TICKET} VALUES (11, 'x')"))
    r = api.post(f"/v1/approvals/{rid2}/approve", tok["alice"])
    assert r.status_code == 403 and error_code(r) == "self_approval", r.text
    r = api.post(f"/v1/approvals/{rid2}/approve", tok["carol"])
    assert r.status_code == 403 and error_code(r) == "not_an_approver", r.text
    r = api.post(f"/v1/approvals/{rid2}/deny", tok["carol"], {"reason": "no"})
    assert r.status_code == 403, r.text
    # carol sees neither request; bob sees both; alice sees her own only.
    assert api.get(f"/v1/approvals/{rid2}", tok["carol"]).status_code == 403
    listed = lambda who: {a["id"] for a in api.get("/v1/approvals?state=all&limit=1000", tok[who]).json()["approvals"]}
    assert rid not in listed("carol") and rid2 not in listed("carol")
    assert {rid, rid2} <= listed("bob")
    assert rid2 in listed("alice") and rid not in listed("alice")
    # Nothing was decided by the refused attempts.
    for i in (rid, rid2):
        a = api.get(f"/v1/approvals/{i}", tok["bob"]).json()
        assert a["status"] == "pending" and a["votes"] == [], a


def test_bad_expired_and_missing_tokens_are_401(env, oidc):
    gw, api, tok = env
    rid = _request_id(_refused(gw, "agent-alice", tok["alice"], f"INSERT INTO {TICKET} VALUES (20, 'auth')"))
    path = f"/v1/approvals/{rid}/approve"
    now = int(time.time())
    expired = oidc.forge(dict(oidc.valid_claims("agent-bob"), iat=now - 7200, exp=now - 3600))
    tampered = tamper_payload(tok["carol"], groups=["engineers"], sub="agent-bob")
    cases = {
        "missing": (None, {}),
        "basic": (None, {"Authorization": "Basic YWdlbnQtYm9iOnB3"}),
        "garbage": ("not-a-jwt", {}),
        "expired": (expired, {}),
        "forged": (tampered, {}),
    }
    for name, (token, headers) in cases.items():
        r = api.post(path, token, headers=headers)
        assert r.status_code == 401, (name, r.status_code, r.text)
        www = r.headers.get("WWW-Authenticate", "")
        assert www.startswith("Bearer realm=\"gatehouse\""), (name, www)
        if token:
            assert 'error="invalid_token"' in www and token not in r.text + www, name
    assert "expired" in api.post(path, expired).json()["error"]["message"]
    assert api.get("/v1/approvals").status_code == 401
    assert api.get("/v1/grants", "x.y.z").status_code == 401
    # None of it counted: the request is still pending without votes.
    a = api.get(f"/v1/approvals/{rid}", tok["bob"]).json()
    assert a["status"] == "pending" and a["votes"] == []
    # Each presented-but-refused token is a failed logon in the audit trail (never the token).
    def failures():
        return [r for r in gw.audit_json() if r["event"] == "login.failure" and r.get("listener") == "api"]
    wait_for(lambda: len(failures()) >= 4, timeout=10, what="login.failure records for the API")
    recs = failures()
    assert any("token expired" in r["reason"] for r in recs), recs
    assert any("signature" in r["reason"] for r in recs), recs
    assert all(r["source"].startswith("127.0.0.1:") and r["protocol"] == "https" for r in recs), recs
    assert all(r["decision"] == "deny" for r in recs)
    blob = json.dumps(recs)
    assert expired not in blob and tampered not in blob


def test_unknown_ids_are_404(env):
    _, api, tok = env
    for path in ("/v1/approvals/apr_aaaaaaaaaaaaaaaa", "/v1/approvals/not-an-id",
                 "/v1/approvals/apr_aaaaaaaaaaaaaaaa/approve", "/v1/approvals/apr_aaaaaaaaaaaaaaaa/deny"):
        method = "GET" if path.count("/") == 3 else "POST"
        r = api.call(method, path, tok["bob"])
        assert r.status_code == 404 and error_code(r) == "not_found", (path, r.text)
    r = api.delete("/v1/grants/grt_aaaaaaaaaaaaaaaa", tok["erin"])
    assert r.status_code == 404, r.text


def test_quorum_and_double_decisions(env, pg):
    gw, api, tok = env
    sql = f"INSERT INTO {QUORUM} VALUES (1, 'two people')"
    rid = _request_id(_refused(gw, "agent-alice", tok["alice"], sql))
    r = api.post(f"/v1/approvals/{rid}/approve", tok["bob"], {"comment": "one"})
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["approvals"] == 1
    r = api.post(f"/v1/approvals/{rid}/approve", tok["bob"])
    assert r.status_code == 409 and error_code(r) == "already_decided", r.text
    _refused(gw, "agent-alice", tok["alice"], sql)  # one approval is not enough
    r = api.post(f"/v1/approvals/{rid}/approve", tok["erin"], {"comment": "two"})
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    r = api.post(f"/v1/approvals/{rid}/deny", tok["dave"])
    assert r.status_code == 409 and error_code(r) == "not_pending", r.text
    with gw.connect("agent-alice", tok["alice"], autocommit=True) as c:
        assert c.execute(sql).rowcount == 1
    assert _rows(pg, QUORUM) == [(1, "two people")]
    rec = _audit_for(gw, rid, "approval.approved")
    assert "agent-bob approve (analysts,engineers): one" in rec["reason"], rec
    assert "dev:erin-dba approve (dba): two" in rec["reason"], rec


def test_malformed_bodies(env):
    gw, api, tok = env
    rid = _request_id(_refused(gw, "agent-alice", tok["alice"], f"INSERT INTO {TICKET} VALUES (30, 'bodies')"))
    path = f"/v1/approvals/{rid}/approve"
    js = {"Content-Type": "application/json"}
    r = api.call("POST", path, tok["bob"], data=b"{not json", headers=js)
    assert r.status_code == 400 and error_code(r) == "bad_request", r.text
    r = api.post(path, tok["bob"], {"comment": "x", "approve": True})
    assert r.status_code == 422 and error_code(r) == "invalid_body", r.text
    r = api.post(path, tok["bob"], {"minutes": "ten"})
    assert r.status_code == 422, r.text
    r = api.post(path, tok["bob"], {"minutes": 0})
    assert r.status_code == 422 and error_code(r) == "invalid_value", r.text
    r = api.post(path, tok["bob"], {"minutes": 100000})
    assert r.status_code == 422, r.text
    r = api.post(path, tok["bob"], {"comment": "line\nbreak"})
    assert r.status_code == 422, r.text
    r = api.call("POST", path, tok["bob"], data=b"comment=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    r = api.call("POST", path, tok["bob"], data=b'{"comment": "' + b"a" * 40000 + b'"}', headers=js)
    assert r.status_code == 413 and error_code(r) == "payload_too_large", r.text
    r = api.get("/v1/approvals?state=bogus", tok["bob"])
    assert r.status_code == 400, r.text
    r = api.get("/v1/approvals?limit=0", tok["bob"])
    assert r.status_code == 400, r.text
    # Still pending and undecided after all that.
    a = api.get(f"/v1/approvals/{rid}", tok["bob"]).json()
    assert a["status"] == "pending" and a["votes"] == []


def test_grants_issue_list_revoke_through_the_api(env, pg):
    gw, api, tok = env
    sql1 = f"INSERT INTO {GRANTED} VALUES (1, 'granted')"
    _refused(gw, "agent-alice", tok["alice"], sql1)
    order = {"user": "agent-alice", "connection": "app", "minutes": 30, "comment": "INC-42"}
    # Only grant issuers (dba), never to oneself, only configured connections.
    r = api.post("/v1/grants", tok["bob"], order)
    assert r.status_code == 403 and error_code(r) == "not_an_approver", r.text
    r = api.post("/v1/grants", tok["erin"], dict(order, user="dev:erin-dba"))
    assert r.status_code == 403 and error_code(r) == "self_approval", r.text
    r = api.post("/v1/grants", tok["erin"], dict(order, connection="no-such-db"))
    assert r.status_code == 422, r.text
    r = api.post("/v1/grants", tok["erin"], dict(order, scope="everything"))
    assert r.status_code == 422, r.text
    r = api.post("/v1/grants", tok["erin"], {"user": "agent-alice"})
    assert r.status_code == 422, r.text

    r = api.post("/v1/grants", tok["erin"], order)
    assert r.status_code == 201, r.text
    g = r.json()
    gid = g["id"]
    assert r.headers["Location"] == f"/v1/grants/{gid}"
    assert (g["status"], g["user"], g["scope"], g["issued_by"]) == ("active", "agent-alice", "writes", "erin-dba")

    # The data path honours it: alice's writes pass, carol's do not.
    with gw.connect("agent-alice", tok["alice"], autocommit=True) as c:
        c.execute(sql1)
        c.execute(f"INSERT INTO {GRANTED} VALUES (2, 'granted too')")
    _refused(gw, "agent-carol", tok["carol"], f"INSERT INTO {GRANTED} VALUES (3, 'carol')")
    assert _rows(pg, GRANTED) == [(1, "granted"), (2, "granted too")]

    # Issuers see every grant, the grantee sees hers, others nothing.
    ids = lambda who: [x["id"] for x in api.get("/v1/grants", tok[who]).json()["grants"]]
    assert gid in ids("erin") and gid in ids("dave") and gid in ids("alice") and gid not in ids("carol")
    mine = [x for x in api.get("/v1/grants", tok["alice"]).json()["grants"] if x["id"] == gid][0]
    assert mine["use_count"] == 2, mine

    # Revoke: not by a non-issuer; then the next write needs approval again.
    r = api.delete(f"/v1/grants/{gid}", tok["carol"])
    assert r.status_code == 403, r.text
    r = api.delete(f"/v1/grants/{gid}", tok["erin"])
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_by"] == "erin-dba"
    r = api.delete(f"/v1/grants/{gid}", tok["erin"])
    assert r.status_code == 409 and error_code(r) == "grant_not_active", r.text
    _refused(gw, "agent-alice", tok["alice"], f"INSERT INTO {GRANTED} VALUES (4, 'after revoke')")
    assert gid not in ids("erin")
    assert gid in [x["id"] for x in api.get("/v1/grants?state=all", tok["erin"]).json()["grants"]]

    # Issue and end are audit records naming the issuer and the revoker.
    issued = _audit_for(gw, gid, "grant.issued")
    assert "erin-dba (dba): INC-42" in issued["reason"] and issued["username"] == "agent-alice", issued
    ended = _audit_for(gw, gid, "grant.ended")
    assert "revoked by dev:erin-dba" in ended["reason"], ended


def test_no_secrets_in_api_responses_or_log(env):
    gw, api, tok = env
    blob = ""
    for who in tok:
        blob += api.get("/v1/approvals?state=all&limit=1000", tok[who]).text
        blob += api.get("/v1/grants?state=all", tok[who]).text
    assert CANARY not in blob
    assert all(t not in blob for t in tok.values())
    log = gw.log_text()
    assert CANARY not in log and all(t not in log for t in tok.values())


def test_idle_silent_and_slow_connections_are_closed(env):
    """The 10 s bounds: a silent TCP connection, an idle TLS connection (also after a
    keep-alive request) and headers dribbled one line a second are all closed."""
    import ssl

    _, api, tok = env
    ctx = ssl.create_default_context(cafile=api.verify)
    results: dict[str, float | str] = {}

    def tls():
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", api.port)), server_hostname="127.0.0.1")

    def closed_after(name, sock, send=None):
        t0 = time.monotonic()
        sock.settimeout(40)
        try:
            if send:
                send(sock)
            while sock.recv(4096):
                pass
            results[name] = time.monotonic() - t0
        except (OSError, ssl.SSLError):
            results[name] = time.monotonic() - t0
        finally:
            sock.close()

    def keepalive(sock):
        sock.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")

    def dribble(sock):
        sock.sendall(b"GET /v1/approvals HTTP/1.1\r\n")
        for _ in range(40):
            time.sleep(1)
            sock.sendall(b"X-Slow: 1\r\n")

    jobs = [
        ("silent tcp", lambda: closed_after("silent tcp", socket.create_connection(("127.0.0.1", api.port)))),
        ("idle tls", lambda: closed_after("idle tls", tls())),
        ("keep-alive", lambda: closed_after("keep-alive", tls(), keepalive)),
        ("slow headers", lambda: closed_after("slow headers", tls(), dribble)),
    ]
    threads = [threading.Thread(target=f) for _, f in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(results) == {n for n, _ in jobs}, results
    assert all(8 <= v <= 20 for v in results.values()), results
    assert api.get("/v1/healthz").status_code == 200


def test_plaintext_only_with_the_loopback_development_option(gatehouse, pg):
    port = free_port()
    gw = gatehouse(pg_server=False, extra_toml=(
        f'\n[[listeners]]\nname = "api"\nprotocol = "api"\nbind = "127.0.0.1:{port}"\n'
        "dangerous_allow_plaintext_on_loopback = true\n"))
    api = Api(gw, port)
    wait_for(lambda: api.get("/v1/healthz").status_code == 200, timeout=10, what="the API listener")
    r = requests.get(f"http://127.0.0.1:{port}/v1/approvals", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    tok = gw.token("someone", groups=["dba"])
    r = requests.get(f"http://127.0.0.1:{port}/v1/approvals",
                     headers={"Authorization": f"Bearer {tok}"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"approvals": []}
    assert "DANGEROUS" in gw.log_text()
    # The option is refused on a non-loopback bind before anything starts.
    bad = gw.root / "bad.toml"
    bad.write_text(gw.config.read_text().replace(f"127.0.0.1:{port}", f"0.0.0.0:{port}"))
    p = gw.cli("config", "check", config=bad, check=False)
    assert p.returncode != 0 and "loopback" in p.stderr, p.stderr


def test_openapi_conformance_with_schemathesis(env, tmp_path):
    """Property-based requests from the OpenAPI document against the live server: every
    response must be documented, match its schema, reject invalid input, require the token."""
    gw, api, tok = env
    import sys

    st = Path(sys.executable).parent / "schemathesis"  # the venv the tests run in
    if not st.exists() and shutil.which("schemathesis"):
        st = Path(shutil.which("schemathesis"))
    assert st.exists(), "schemathesis is in tests/requirements.txt; install it into the venv"
    # Real data for the id-taking operations: a fresh pending request.
    _refused(gw, "agent-alice", tok["alice"], f"INSERT INTO {TICKET} VALUES (99, 'fuzz')")
    cfg = tmp_path / "schemathesis.toml"
    # A schema-valid grant order names a connection the generator cannot know (422 is right).
    cfg.write_text('[[operations]]\ninclude-operation-id = "issueGrant"\n'
                   'checks.positive_data_acceptance.enabled = false\n')
    p = subprocess.run(
        [str(st), "--config-file", str(cfg), "run", str(OPENAPI), "--url", api.base,
         "-H", f"Authorization: Bearer {tok['bob']}", "--tls-verify", api.verify,
         "--max-examples", "25", "--workers", "1", "--seed", "1", "--request-timeout", "20"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert re.search(r"\d+ passed", out) or "passed" in out, out[-2000:]
    assert gw.alive(), "the gateway must survive the fuzzing"
    assert tok["bob"] not in gw.log_text()
