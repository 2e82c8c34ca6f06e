"""Query cancellation through the gateway (CancelRequest on a new connection to the gateway)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import os

import psycopg
import pytest
from psycopg import errors

from harness import psql_path


def _run_and_cancel(gw, alice, cancel):
    conn = gw.connect(*alice, autocommit=True)
    result: dict = {}

    def work():
        t0 = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
            result["error"] = None
        except psycopg.Error as e:
            result["error"] = e
        result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=work)
    t.start()
    time.sleep(1.0)
    assert t.is_alive()
    cancel(conn)
    t.join(timeout=15)
    assert not t.is_alive(), "statement was not cancelled within 15s"
    try:
        assert isinstance(result["error"], errors.QueryCanceled), result
        assert result["error"].sqlstate == "57014"
        assert result["elapsed"] < 8, result
        # the session survives the cancel
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)
    finally:
        conn.close()


def test_cancel_legacy_pqcancel(gw, alice):
    _run_and_cancel(gw, alice, lambda c: c.cancel())


def test_cancel_safe(gw, alice):
    # libpq >= 17 cancel API (may negotiate TLS for the cancel connection)
    if not hasattr(psycopg.Connection, "cancel_safe"):
        pytest.skip("psycopg without cancel_safe()")
    _run_and_cancel(gw, alice, lambda c: c.cancel_safe(timeout=10))


def test_cancel_is_audited(gw, alice):
    before = max((r["seq"] for r in gw.audit_json()), default=0)
    _run_and_cancel(gw, alice, lambda c: c.cancel())
    recs = [r for r in gw.audit_json() if r["seq"] > before]
    assert any(r["event"] == "cancel" for r in recs), [r["event"] for r in recs]
    res = [r for r in recs if r["event"] == "statement.result" and r.get("sqlstate") == "57014"]
    assert res, "the cancelled statement's result (57014) is recorded"


def test_psql_sigint_cancels(gw, alice):
    user, token = alice
    env = dict(os.environ, PGPASSWORD=token, PGCONNECT_TIMEOUT="10")
    p = subprocess.Popen(
        [psql_path(), "-X", f"host={gw.host} port={gw.port} dbname=app user={user} sslmode=require",
         "-c", "SELECT pg_sleep(30)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    time.sleep(1.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"psql did not finish after SIGINT: {err}")
    assert time.monotonic() - t0 < 8
    assert "canceling statement due to user request" in err, err
