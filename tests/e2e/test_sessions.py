"""Session recordings: what a psql client received through the gateway, after masking,
stored sealed and hash-chained in the audit trail and replayed by `gatehouse sessions`."""

from __future__ import annotations

import json
import secrets

import pytest

from harness import CANARY

MASKING = """
[masking]
[[masking.rules]]
name = "ssn-column"
columns = ["ssn"]
strategy = { kind = "redact", replacement = "***-**-****" }
"""
SSN = "078051120"


def _recording_gw(gatehouse, max_bytes: int):
    gw = gatehouse(extra_toml=MASKING)
    text = gw.config.read_text()
    assert text.rstrip().splitlines()[-1].startswith(("tags", "[connections", "environment")) or \
        "[[connections]]" in text, text
    # `connection add` appended the connection table last: extend it, restart.
    gw.config.write_text(text.rstrip() + f"\nrecord_sessions = true\nrecording_max_bytes = {max_bytes}\n")
    gw.cli("config", "check")
    gw.stop()
    gw.start()
    return gw


@pytest.fixture
def people(pg):
    table = f"rec_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, ssn text)")
        c.execute(f"INSERT INTO {table} VALUES (1, 'Jane', %s), (2, 'Leak', %s)",
                  (SSN, f"pw {CANARY}"))
        c.execute(f"INSERT INTO {table} SELECT g, 'n' || g, NULL FROM generate_series(3, 3000) g")
    yield table
    with pg.owner_connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")


def _sessions(gw, user):
    out = gw.cli("sessions", "list", "--json", "--user", user).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_psql_session_is_replayed_with_masked_results(gatehouse, people):
    gw = _recording_gw(gatehouse, 1 << 20)
    user = f"rec-{secrets.token_hex(3)}"
    token = gw.token(user)
    p = gw.psql(user, token, "-c", f"SELECT id, name, ssn FROM {people} WHERE id <= 2 ORDER BY id",
                "-c", "SELECT 1/0", "-c", "SELECT 'second statement'")
    assert "division by zero" in p.stderr
    sessions = _sessions(gw, user)
    assert len(sessions) == 1, sessions
    s = sessions[0]
    assert s["user"] == user and s["connection"] == "app" and s["statements"] >= 3, s
    assert s["recorded_bytes"] > 0 and not s["truncated"], s

    show = gw.cli("sessions", "show", s["session_id"]).stdout
    lines = show.splitlines()
    # In order, with timings: login, each statement, its result rows, the error, the end.
    def at(text):
        return next(i for i, line in enumerate(lines) if text in line)
    i_login = at(f"login {user}")
    i_sel = at(f"> SELECT id, name, ssn FROM {people}")
    i_row = at("| 1 | Jane | ***-**-****")
    i_err = at("ERROR 22012: division by zero")
    i_second = at("| second statement")
    i_end = at("end after")
    assert i_login < i_sel < i_row < i_err < i_second < i_end, show
    assert "| id | name | ssn" in show
    # Masked in the recording as the client saw it: never the clear values.
    assert SSN not in show and CANARY not in show
    # JSON replay for the console: the same events.
    ev = [json.loads(line) for line in gw.cli("sessions", "show", s["session_id"], "--json").stdout.splitlines()]
    kinds = [e["kind"] for e in ev]
    assert kinds[0] == "login" and kinds[-1] == "end" and "row" in kinds and "error" in kinds, kinds
    assert all(ev[i]["t"] <= ev[i + 1]["t"] for i in range(len(ev) - 1))
    # Stored sealed and inside the chain: not in the database file in the clear; verifies.
    db = gw.data_dir / "audit.db"
    blob = b"".join(f.read_bytes() for f in db.parent.glob("audit.db*") if f.is_file())
    assert b"second statement" not in blob and b"Jane" not in blob
    v = gw.cli("audit", "verify", "--json", check=False)
    assert v.returncode == 0, v.stdout + v.stderr


def test_recording_is_truncated_at_the_limit_and_says_so(gatehouse, people):
    gw = _recording_gw(gatehouse, 4096)
    user = f"rec-{secrets.token_hex(3)}"
    token = gw.token(user)
    p = gw.psql(user, token, "-At", "-c", f"SELECT * FROM {people} ORDER BY id")
    assert p.returncode == 0 and p.stdout.count("\n") >= 3000
    s = _sessions(gw, user)[0]
    assert s["truncated"] and s["recorded_bytes"] <= 4096, s
    show = gw.cli("sessions", "show", s["session_id"]).stdout
    assert "recording truncated: the limit of 4096 bytes per session was reached" in show
    # The audit trail itself is complete: the statement and its outcome are there.
    assert f"> SELECT * FROM {people} ORDER BY id" in show and "end after" in show


def test_sessions_are_not_recorded_unless_configured(gatehouse, people):
    gw = gatehouse()
    user = f"rec-{secrets.token_hex(3)}"
    p = gw.psql(user, gw.token(user), "-c", "SELECT 1")
    assert p.returncode == 0
    s = _sessions(gw, user)
    assert len(s) == 1 and s[0]["recorded_bytes"] == 0, s
    p = gw.cli("sessions", "show", "no-such-session", check=False)
    assert p.returncode != 0 and "no session" in p.stderr
