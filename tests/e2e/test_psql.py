"""psql through the gateway: only host, port and password (a JWT) differ from a direct connection."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from harness import APP_ROLE


def ok(p):
    assert p.returncode == 0, f"psql exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p


@pytest.fixture(scope="module")
def tbl(gw, oidc):
    name = f"psql_{uuid.uuid4().hex[:8]}"
    ok(gw.psql("agent-alice", oidc.token("agent-alice"), "-c", f"CREATE TABLE {name} (id int PRIMARY KEY, v text)"))
    return name


def test_select(gw, alice):
    p = ok(gw.psql(*alice, "-At", "-c", "SELECT 40 + 2"))
    assert p.stdout.strip() == "42"


def test_runs_as_vaulted_upstream_role(gw, alice):
    # The client authenticated with a JWT as agent-alice; upstream the gateway logged in as gh_app.
    p = ok(gw.psql(*alice, "-At", "-c", "SELECT current_user, current_database()"))
    assert p.stdout.strip() == f"{APP_ROLE}|appdb"


def test_create_insert_select(gw, alice, tbl):
    ok(gw.psql(*alice, "-c", f"INSERT INTO {tbl} VALUES (1, 'one'), (2, 'two'), (3, 'three')"))
    p = ok(gw.psql(*alice, "-At", "-c", f"SELECT count(*), string_agg(v, ',' ORDER BY id) FROM {tbl}"))
    assert p.stdout.strip() == "3|one,two,three"


def test_multi_statement_simple_query(gw, alice):
    # One simple-protocol Query message carrying three statements.
    p = ok(gw.psql(*alice, "-At", "-c", "SELECT 1; SELECT 'two'; SELECT 3"))
    assert p.stdout.split() == ["1", "two", "3"]


def test_copy_in_and_out(gw, alice, tmp_path):
    name = f"psql_copy_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "in.csv"
    rows = [f"{i},name {i},\"quoted, {i}\"" for i in range(1, 2001)]
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out.csv"
    ok(gw.psql(*alice, "-v", "ON_ERROR_STOP=1",
               "-c", f"CREATE TABLE {name} (id int, a text, b text)",
               "-c", f"\\copy {name} FROM '{src}' WITH (FORMAT csv)",
               "-c", f"\\copy (SELECT * FROM {name} ORDER BY id) TO '{out}' WITH (FORMAT csv)"))
    assert out.read_text() == src.read_text()
    p = ok(gw.psql(*alice, "-At", "-c", f"SELECT count(*), sum(id) FROM {name}"))
    assert p.stdout.strip() == f"2000|{sum(range(1, 2001))}"


def test_error_then_continue_in_same_session(gw, alice):
    script = "SELECT pg_backend_pid() AS pid1;\nSELECT 1/0;\nSELECT 'still here', pg_backend_pid() AS pid2;\n"
    p = gw.psql(*alice, "-At", input=script)
    assert "division by zero" in p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2, p.stdout
    pid1 = lines[0]
    still, pid2 = lines[1].split("|")
    assert still == "still here"
    assert pid1 == pid2, "the session must survive a statement error (same upstream backend)"


def test_error_in_transaction_then_rollback(gw, alice):
    script = ("BEGIN;\nSELECT 1/0;\nSELECT 1;\nROLLBACK;\nSELECT 'after rollback';\n")
    p = gw.psql(*alice, "-At", input=script)
    assert "current transaction is aborted" in p.stderr
    assert p.stdout.strip().splitlines()[-1] == "after rollback"


def test_notice_is_relayed(gw, alice):
    p = ok(gw.psql(*alice, "-c", "DO $$ BEGIN RAISE NOTICE 'hi from plpgsql %', 42; END $$"))
    assert "NOTICE:  hi from plpgsql 42" in p.stderr


def test_listen_notify(gw, oidc, alice):
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    payload = f"payload-{uuid.uuid4().hex[:6]}"

    def notifier():
        time.sleep(1.0)
        with gw.connect("agent-bob", oidc.token("agent-bob"), autocommit=True) as c:
            c.execute(f"NOTIFY {channel}, '{payload}'")

    t = threading.Thread(target=notifier)
    t.start()
    # psql reports notifications after the next command completes.
    p = gw.psql(*alice, "-At", input=f"LISTEN {channel};\nSELECT pg_sleep(2.5);\nSELECT 'done';\n")
    t.join()
    ok(p)
    assert f'Asynchronous notification "{channel}" with payload "{payload}" received' in p.stdout + p.stderr


def test_psql_meta_commands(gw, alice):
    # \d uses catalog queries (simple protocol) and must work like against a direct server.
    p = ok(gw.psql(*alice, "-c", "\\d items"))
    assert "Table \"public.items\"" in p.stdout
    assert "price" in p.stdout


def test_wrong_password_is_refused(gw):
    p = gw.psql("agent-alice", "not-a-jwt")
    assert p.returncode != 0
    assert "not-a-jwt" not in p.stderr + p.stdout
