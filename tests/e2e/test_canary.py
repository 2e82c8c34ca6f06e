"""No secret leaves the box: after all kinds of traffic (including failures), the upstream
password (CANARY) appears nowhere a client, an operator or an auditor can see."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import psycopg
import pytest

from harness import CANARY, free_port, tamper_payload
from pgraw import PgRaw

WRONG_PW = "CANARY-wrong-3e9d51"  # a wrong upstream password: must not leak either
SECRETS = [CANARY, WRONG_PW]


def variants(secret: str) -> list[bytes]:
    b = secret.encode()
    return [b, b.hex().encode(), base64.b64encode(b).rstrip(b"="), base64.urlsafe_b64encode(b).rstrip(b"="),
            secret.encode("utf-16-le")]


def assert_clean(where: str, data: bytes) -> None:
    for s in SECRETS:
        for v in variants(s):
            assert v not in data, f"secret {s!r} (as {v[:20]!r}) found in {where}"


@pytest.fixture(scope="module")
def traffic(module_gatehouse, pg, oidc):
    """Run a mix of traffic through two gateways (TLS, and plaintext-on-loopback) and return
    everything a client received plus the gateways (stopped, so logs are flushed)."""
    env = {"RUST_LOG": "debug", "GATEHOUSE_LOG": "debug"}
    tls_gw = module_gatehouse(start=False, env=env)
    plain_gw = module_gatehouse(start=False, env=env, plaintext=True)
    for g in (tls_gw, plain_gw):
        g.connection_add("badpw", port=pg.port, password=WRONG_PW)
        g.connection_add("nouser", port=pg.port, password=CANARY, user="gh_nobody")
        g.connection_add("down", port=free_port(), password=CANARY)
        g.start()

    received: dict[str, bytes] = {}
    results: dict = {}
    outputs: dict[str, str] = {}

    def raw_session(name, g, tls, user, token, dbname="app", queries=()):
        try:
            with PgRaw(g.host, g.port, tls=tls) as c:
                res = c.login(user, token, dbname)
                if res.ok:
                    for q in queries:
                        c.query(q)
                    c.terminate()
                    c.read_until_closed_or_error()
                received[name] = bytes(c.received)
                results[name] = res
                return res
        except (OSError, EOFError) as e:
            received[name] = f"error {e}".encode()
            return None

    queries = [
        "SELECT current_user, session_user",
        "SELECT rolname, rolpassword FROM pg_roles WHERE rolname = current_user",
        "SELECT * FROM pg_authid",  # permission denied
        "SHOW password_encryption",
        "SELECT current_setting('primary_conninfo', true)",
        "SELECT 1/0",
        "SELECT name, setting FROM pg_settings",
    ]
    for g, tls, tag in ((tls_gw, True, "tls"), (plain_gw, False, "plain")):
        tok = oidc.token("agent-alice")
        res = raw_session(f"{tag}-good", g, tls, "agent-alice", tok, queries=queries)
        assert res is not None and res.ok, (res, g.log_text()[-2000:])
        for bad_name, user, bad_tok, db in [
            ("garbage", "agent-alice", "garbage", "app"),
            ("tampered", "agent-alice", tamper_payload(tok, sub="agent-bob"), "app"),
            ("mismatch", "agent-bob", tok, "app"),
            ("unknown-db", "agent-alice", tok, "nope"),
            ("badpw", "agent-alice", tok, "badpw"),
            ("nouser", "agent-alice", tok, "nouser"),
            ("down", "agent-alice", tok, "down"),
        ]:
            r = raw_session(f"{tag}-{bad_name}", g, tls, user, bad_tok, db)
            assert r is None or not r.ok, bad_name
        # real clients, including failing upstream logins
        for db in ("badpw", "nouser", "down"):
            if tls:
                with pytest.raises(psycopg.OperationalError) as ei:
                    g.connect("agent-alice", oidc.token("agent-alice"), dbname=db).close()
                outputs[f"psycopg-{db}"] = str(ei.value)
                p = g.psql("agent-alice", oidc.token("agent-alice"), "-c", "select 1", dbname=db)
                assert p.returncode != 0
                outputs[f"psql-{db}"] = p.stdout + p.stderr

    with tls_gw.connect("agent-alice", oidc.token("agent-alice"), autocommit=True) as c:
        c.execute("SELECT * FROM items").fetchall()
        with pytest.raises(psycopg.Error):
            c.execute("SELECT no_such_column FROM items")
    p = tls_gw.psql("agent-alice", oidc.token("agent-alice"), "-c", "\\conninfo", "-c", "select version()")
    outputs["psql-conninfo"] = p.stdout + p.stderr

    for g in (tls_gw, plain_gw):
        outputs[f"audit-{g.port}"] = g.cli("audit", "tail", "-n", "100000", "--json").stdout
        outputs[f"audit-text-{g.port}"] = g.cli("audit", "tail", "-n", "100000").stdout
        outputs[f"conn-list-{g.port}"] = g.cli("connection", "list").stdout
        outputs[f"conn-list-json-{g.port}"] = g.cli("connection", "list", "--json").stdout
        g.stop()
    return {"received": received, "results": results, "outputs": outputs, "gateways": [tls_gw, plain_gw]}


def test_client_bytes(traffic):
    assert len(traffic["received"]) >= 16
    for name, data in traffic["received"].items():
        assert_clean(f"bytes received by raw client {name}", data)


def test_client_outputs(traffic):
    for name, text in traffic["outputs"].items():
        if name.startswith(("psql", "psycopg")):
            assert_clean(name, text.encode())


def test_gateway_logs(traffic):
    for g in traffic["gateways"]:
        log = g.log_path.read_bytes()
        assert len(log) > 0, "expected the gateway to log something at debug level"
        assert_clean(f"gateway log {g.log_path}", log)


def test_audit_store_files(traffic):
    for g in traffic["gateways"]:
        files = [p for p in g.data_dir.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert any(n.startswith("audit.db") for n in names), names
        for p in files:
            # every file in the data dir: audit.db, -wal, -shm, vault, keys, tls
            assert_clean(f"data file {p}", p.read_bytes())
        assert_clean("config file", g.config.read_bytes())


def test_audit_tail_output(traffic):
    for name, text in traffic["outputs"].items():
        if name.startswith("audit"):
            assert text.strip(), name
            assert_clean(name, text.encode())


def test_connection_list_output(traffic):
    for name, text in traffic["outputs"].items():
        if name.startswith("conn-list"):
            assert "badpw" in text and "app" in text, text
            assert_clean(name, text.encode())


def test_upstream_failures_are_reported_cleanly(traffic):
    # bad upstream password / unknown upstream role / upstream down: the client gets an error,
    # not a hang, and the error is in the client's protocol.
    for name in ("tls-badpw", "tls-nouser", "tls-down", "plain-badpw", "plain-nouser", "plain-down"):
        res = traffic["results"].get(name)
        assert res is not None and not res.ok, name
        assert res.error is not None, f"{name}: connection closed without an ErrorResponse"
        assert res.sqlstate[:2] in ("08", "28"), (name, res.error)
    for name in ("tls-down", "plain-down"):
        assert traffic["results"][name].sqlstate[:2] == "08", traffic["results"][name].error
