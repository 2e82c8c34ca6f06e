"""Bad input and broken peers: clean protocol errors, the gateway survives, other sessions work."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import time

import psycopg
import pytest

from harness import free_port, gatehouse_bin, port_is_listening
from pgraw import PgRaw


def assert_healthy(gw, oidc):
    assert gw.alive(), f"gatehouse died:\n{gw.log_text()[-3000:]}"
    with gw.connect("agent-alice", oidc.token("agent-alice"), autocommit=True) as c:
        assert c.execute("SELECT 'healthy'").fetchone() == ("healthy",)


def expect_error(c: PgRaw, classes=("08",)):
    msgs, err = c.read_until_closed_or_error()
    assert err is not None, f"expected an ErrorResponse, got {[m.type for m in msgs]}"
    f = err.error_fields()
    assert f["C"][:2] in classes or f["C"] in classes, f
    return f


def test_oversized_startup_length(gw, oidc):
    with PgRaw(gw.host, gw.port, tls=True, timeout=5) as c:
        c.send(struct.pack("!II", 0x7FFFFFF0, 196608))
        f = expect_error(c)
        assert f["C"] == "08P01", f
    assert_healthy(gw, oidc)


def test_too_short_startup_length(gw, oidc):
    with PgRaw(gw.host, gw.port, tls=True, timeout=5) as c:
        c.send(struct.pack("!I", 3) + b"\x00\x00\x00\x00")
        f = expect_error(c)
        assert f["C"] == "08P01", f
    assert_healthy(gw, oidc)


def test_garbage_before_tls(gw, oidc):
    # An HTTP request to the PostgreSQL port: length field decodes to ~1.2 GB.
    with socket.create_connection((gw.host, gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(4096)
        except (socket.timeout, ConnectionResetError):
            data = b""
    # A clean protocol error (ErrorResponse 08P01) or an immediate close; never a hang.
    if data:
        assert data[:1] == b"E" and b"08P01" in data, data
    assert_healthy(gw, oidc)


def test_random_bytes(gw, oidc):
    for n in (1, 7, 64, 4096):
        with socket.create_connection((gw.host, gw.port), timeout=5) as s:
            try:
                s.sendall(os.urandom(n))
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
            except OSError:  # the gateway may close first: fine, it must just not die or hang
                pass
    assert_healthy(gw, oidc)


def test_unsupported_protocol_version(gw, oidc):
    with PgRaw(gw.host, gw.port, tls=True, timeout=5) as c:
        c.startup({"user": "agent-alice", "database": "app"}, protocol=0x00020000)
        f = expect_error(c, classes=("08", "0A"))
        assert f["C"] in ("08P01", "0A000"), f
    assert_healthy(gw, oidc)


def test_startup_without_user(gw, oidc):
    with PgRaw(gw.host, gw.port, tls=True, timeout=5) as c:
        c.startup({"database": "app"})
        expect_error(c, classes=("28", "08"))
    assert_healthy(gw, oidc)


def test_malformed_message_in_session(gw, oidc):
    with PgRaw(gw.host, gw.port, tls=True, timeout=5) as c:
        assert c.login("agent-alice", oidc.token("agent-alice"), "app").ok
        # A Query message whose declared length (2) is below the minimum (4).
        c.send(b"Q" + struct.pack("!I", 2))
        f = expect_error(c)
        assert f["C"] == "08P01", f
    with PgRaw(gw.host, gw.port, tls=True, timeout=5) as c:
        assert c.login("agent-alice", oidc.token("agent-alice"), "app").ok
        # Oversized frame in session.
        c.send(b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"SELECT 1")
        f = expect_error(c)
        assert f["C"] in ("08P01", "54000"), f
    assert_healthy(gw, oidc)


def test_idle_half_open_connections_do_not_block_others(gw, oidc):
    socks = [socket.create_connection((gw.host, gw.port), timeout=5) for _ in range(10)]
    try:
        t0 = time.monotonic()
        assert_healthy(gw, oidc)
        assert time.monotonic() - t0 < 5
    finally:
        for s in socks:
            s.close()


def test_client_disconnect_mid_query(gw, oidc):
    with PgRaw(gw.host, gw.port, tls=True, timeout=5) as c:
        assert c.login("agent-alice", oidc.token("agent-alice"), "app").ok
        c.send_msg(b"Q", b"SELECT pg_sleep(2)\x00")
    # abrupt close; gateway must go on
    assert_healthy(gw, oidc)


def test_upstream_down(gatehouse, oidc):
    gw = gatehouse(upstream_port=free_port())
    with PgRaw(gw.host, gw.port, tls=True, timeout=15) as c:
        res = c.login("agent-alice", oidc.token("agent-alice"), "app")
    assert not res.ok
    assert res.error is not None, "expected an ErrorResponse when the upstream is down"
    assert res.sqlstate in ("08006", "08001"), res.error
    with pytest.raises(psycopg.OperationalError):
        gw.connect("agent-alice", oidc.token("agent-alice")).close()
    assert gw.alive()
    recs = gw.audit_json()
    assert any(r["event"] == "login.failure" or r.get("sqlstate", "").startswith("08") for r in recs), \
        [r["event"] for r in recs]


def test_upstream_stops_mid_session(gatehouse, pg, oidc):
    # A second, private upstream so stopping it does not disturb the other tests.
    from harness import Postgres, pg_bin_dir

    pg2 = Postgres(free_port(), pg_bin_dir())
    try:
        pg2.init()
        pg2.start()
        pg2.setup_schema()
        gw = gatehouse(pg_server=pg2)
        conn = gw.connect("agent-alice", oidc.token("agent-alice"), autocommit=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg2.stop()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        assert gw.alive()
        with PgRaw(gw.host, gw.port, tls=True, timeout=15) as c:
            res = c.login("agent-alice", oidc.token("agent-alice"), "app")
        assert not res.ok and res.error is not None and res.sqlstate[:2] == "08", res.error
        pg2.start()
        with gw.connect("agent-alice", oidc.token("agent-alice"), autocommit=True) as c2:
            assert c2.execute("SELECT 2").fetchone() == (2,)
    finally:
        pg2.cleanup()


def test_config_check_ok_and_hash(gw):
    p = gw.cli("config", "check")
    assert p.stdout.strip() == "ok " + hashlib.sha256(gw.config.read_bytes()).hexdigest()


@pytest.mark.parametrize("mutation", [
    ("append", "\n[audit]\nsynchronus = \"full\"\n", "synchronus"),
    ("replace", ('name = "gh-test"', 'name = "gh-test"\nnmae = "typo"'), "nmae"),
    ("replace", ('protocol = "postgres"', 'protocol = "postgress"'), "postgress"),
    ("replace", ('bind = "127.0.0.1:', 'bind = "not-an-address:'), "bind"),
    ("append", "\n[[identity.issuers]]\nissuer = \"http://idp.example.com\"\naudience = [\"x\"]\n", "issuer"),
    ("append", "this is not toml\n", None),
])
def test_config_check_rejects_bad_config(gatehouse, tmp_path, mutation):
    gw = gatehouse(start=False)
    kind, change, needle = mutation
    text = gw.config.read_text()
    if kind == "append":
        text += change
    else:
        assert change[0] in text
        text = text.replace(change[0], change[1], 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    p = gw.cli("config", "check", config=bad, check=False)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    if needle:
        assert needle in p.stderr + p.stdout, p.stderr
    # serve refuses to start with it, and binds nothing
    port = int(text.split('bind = "127.0.0.1:')[1].split('"')[0]) if 'bind = "127.0.0.1:' in text else None
    sp = subprocess.run([gatehouse_bin(), "--config", str(bad), "serve"], capture_output=True, text=True,
                        timeout=30, stdin=subprocess.DEVNULL)
    assert sp.returncode != 0
    if port:
        assert not port_is_listening(port)


def test_plaintext_refused_without_opt_in(gw, oidc):
    # Without TLS the gateway must not accept the token password (unless explicitly allowed on loopback).
    with PgRaw(gw.host, gw.port, tls=False, timeout=5) as c:
        res = c.login("agent-alice", oidc.token("agent-alice"), "app")
    assert not res.ok
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=gw.host, port=gw.port, dbname="app", user="agent-alice",
                        password=oidc.token("agent-alice"), sslmode="disable", connect_timeout=5).close()


def test_plaintext_opt_in_on_loopback(gatehouse, oidc):
    gw = gatehouse(plaintext=True)
    with psycopg.connect(host=gw.host, port=gw.port, dbname="app", user="agent-alice",
                         password=oidc.token("agent-alice"), sslmode="disable", connect_timeout=5) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def list_connections(gw) -> list[dict]:
    """`connection list --json`: a JSON array, or one JSON object per line."""
    out = gw.cli("connection", "list", "--json").stdout.strip()
    try:
        parsed = json.loads(out)
        if isinstance(parsed, list):
            return parsed
        return [parsed] if "name" in parsed else parsed["connections"]
    except json.JSONDecodeError:
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_connection_cli(gatehouse, pg):
    gw = gatehouse(start=False)
    gw.connection_add("second", port=pg.port, password="irrelevant-pw-1", tags={"environment": "prod", "team": "x"})
    items = listed = list_connections(gw)
    names = {c["name"] for c in items}
    assert {"app", "second"} <= names
    assert "irrelevant-pw-1" not in json.dumps(listed)
    assert "irrelevant-pw-1" not in gw.config.read_text()
    assert 'name = "second"' in gw.config.read_text()
    # adding an existing name is refused: one entry, old settings and tags kept
    # (test_connection_cli.py covers update and set-credential)
    with pytest.raises(AssertionError, match="already exists"):
        gw.connection_add("second", port=pg.port + 1, password="irrelevant-pw-2")
    items = listed = list_connections(gw)
    assert [c["name"] for c in items].count("second") == 1
    second = next(c for c in items if c["name"] == "second")
    assert second["port"] == pg.port and second["tags"] == {"environment": "prod", "team": "x"}
    assert gw.config.read_text().count('name = "second"') == 1
    assert "irrelevant-pw-2" not in json.dumps(listed) + gw.config.read_text()
    gw.cli("connection", "remove", "second")
    items = listed = list_connections(gw)
    assert {c["name"] for c in items} == {"app"}
    assert gw.cli("config", "check").returncode == 0


def test_sigterm_stops_gateway(gatehouse):
    gw = gatehouse()
    rc = gw.stop()
    assert rc == 0, f"gatehouse serve exit code after SIGTERM: {rc}"
    assert not port_is_listening(gw.port)
