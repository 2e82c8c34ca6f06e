"""Durability and retention of the audit trail through the product: records written before
their statements survive SIGKILL of the gateway and still verify; retention pruning removes
only old, checkpointed records, refuses cut-offs inside the retention period, and leaves a
store that verifies and still proves."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time

import psycopg
import pytest

from harness import Gatehouse, sql_error_state


def _verify(gw) -> dict:
    p = gw.cli("audit", "verify", "--json", check=False, timeout=120)
    v = json.loads(p.stdout)
    v["_rc"] = p.returncode
    return v


def test_records_survive_sigkill(gatehouse):
    gw = gatehouse()
    token = gw.token("kill-user")
    markers = [f"kill_marker_{i}" for i in range(20)]
    args = []
    for m in markers:
        args += ["-c", f"select '{m}'"]
    out = gw.psql("kill-user", token, "-At", *args).stdout
    assert all(m in out for m in markers)
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(timeout=10)
    stmts = [r.get("statement") or "" for r in gw.audit_json() if r["event"] == "statement"]
    for m in markers:
        assert any(m in s for s in stmts), m
    # No shutdown checkpoint, but everything present verifies; the tail is just uncovered.
    v = _verify(gw)
    assert v["_rc"] == 0 and v["ok"], v
    # The next start continues the chain and the tree from where the killed one stopped.
    gw.start()
    gw.psql("kill-user", token, "-At", "-c", "select 'after restart'")
    assert gw.stop() == 0
    v = _verify(gw)
    assert v["_rc"] == 0 and v["ok"] and v["uncovered"] == 0, v


def test_random_sigkills_under_load_lose_no_acknowledged_statement(gatehouse, pg):
    """Crash test: concurrent clients write through the gateway while it is SIGKILLed at a
    random moment, several times. Every statement a client saw succeed has its write-ahead
    record, and the store verifies after every restart."""
    import random
    import threading

    gw = gatehouse()
    table = f"crash_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (v text)")
    token = gw.token("crash-user")
    rng = random.Random(int(os.environ.get("CRASH_SEED", "4711")))
    acked: list[str] = []
    lock = threading.Lock()
    try:
        for rnd in range(6):
            stop = threading.Event()

            def client(n: int) -> None:
                i = 0
                try:
                    with gw.connect("crash-user", token, autocommit=True) as c:
                        while not stop.is_set():
                            marker = f"r{rnd}c{n}i{i}"
                            c.execute(f"INSERT INTO {table} VALUES ('{marker}')")
                            with lock:
                                acked.append(marker)
                            i += 1
                except psycopg.Error:
                    pass  # the gateway died under us: expected

            threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait(timeout=10)
            stop.set()
            for t in threads:
                t.join(timeout=30)
            v = _verify(gw)
            assert v["_rc"] == 0 and v["ok"], (rnd, v)
            gw.start()
        stmts = {r.get("statement") or "" for r in gw.audit_json() if r["event"] == "statement"}
        assert len(acked) > 100, len(acked)  # the load was real
        missing = [m for m in acked if f"INSERT INTO {table} VALUES ('{m}')" not in stmts]
        assert not missing, missing[:10]
        # ...and every row in the table went through a recorded statement.
        with pg.owner_connect() as c:
            rows = [r[0] for r in c.execute(f"SELECT v FROM {table}")]
        assert set(acked) <= set(rows)
        unrecorded = [v_ for v_ in rows if f"INSERT INTO {table} VALUES ('{v_}')" not in stmts]
        assert not unrecorded, unrecorded[:10]
        assert gw.stop() == 0
        v = _verify(gw)
        assert v["_rc"] == 0 and v["ok"] and v["uncovered"] == 0, v
    finally:
        gw.stop()
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")


def test_retention_prunes_only_old_checkpointed_records(gatehouse, tmp_path):
    gw = gatehouse(extra_toml="\n[audit]\nretention_seconds = 2\n")
    token = gw.token("old-user")
    script = tmp_path / "many.sql"
    script.write_text("".join(f"select {i};\n" for i in range(300)))
    gw.psql("old-user", token, "-At", "-f", str(script))
    gw.cli("audit", "checkpoint")
    before = _verify(gw)
    assert before["records"] >= 600, before

    # A cut-off inside the retention period is refused; nothing is deleted.
    p = gw.cli("audit", "prune", "--before", "2999-01-01T00:00:00Z", check=False)
    assert p.returncode != 0 and "retention" in p.stderr, p.stderr
    assert _verify(gw)["records"] == before["records"]

    time.sleep(2.5)
    p = gw.cli("audit", "prune")
    assert "pruned" in p.stdout, p.stdout
    deleted = int(p.stdout.split()[1])
    assert deleted >= 256 and deleted % 256 == 0, p.stdout
    v = _verify(gw)
    assert v["_rc"] == 0 and v["ok"] and v["first_seq"] == deleted + 1, v
    # Younger records are all still there, and a remaining record still proves.
    gw.psql("old-user", token, "-At", "-c", "select 'young'")
    recs = gw.audit_json()
    assert min(r["seq"] for r in recs) == deleted + 1
    gw.cli("audit", "checkpoint")
    last = max(r["seq"] for r in recs)
    proof = json.loads(gw.cli("audit", "prove", "--seq", str(last)).stdout)
    assert proof["inclusion_verified"] and proof["consistency"]["verified"], proof
    assert gw.stop() == 0
    assert _verify(gw)["ok"]


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs for the gateway's data dir (the tests run as root, as CI does)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs for the disk-full test: {r.stderr}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_fails_closed_and_recovers(small_disk, pg, oidc):
    gw = Gatehouse(small_disk / "gh", pg, oidc)
    gw.start()
    table = f"full_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (v text)")
    token = gw.token("full-user")
    try:
        with gw.connect("full-user", token, autocommit=True) as c:
            c.execute(f"INSERT INTO {table} VALUES ('before')")
        live = gw.connect("full-user", token, autocommit=True)
        # Fill the disk.
        filler = small_disk / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        refused = None
        with live as c:
            for i in range(2000):
                try:
                    c.execute(f"INSERT INTO {table} VALUES ('during-{i}')")
                except psycopg.Error as e:
                    refused = (i, e)
                    break
        assert refused is not None, "statements kept running with the audit store full"
        # A new login cannot be recorded either: refused the same way.
        with pytest.raises(psycopg.OperationalError) as ei:
            gw.connect("full-user", token, autocommit=True)
        assert "audit store unavailable" in str(ei.value)
        i, e = refused
        assert sql_error_state(e) == "58030", e
        assert "audit store unavailable" in str(e)
        # The refused statement never reached the database.
        with pg.owner_connect() as c:
            rows = {r[0] for r in c.execute(f"SELECT v FROM {table}")}
        assert f"during-{i}" not in rows and "before" in rows
        assert "audit" in gw.log_text() and "failed" in gw.log_text()
        # Space back: the store recovers without a restart, and nothing was lost.
        filler.unlink()
        try:
            with gw.connect("full-user", token, autocommit=True) as c:
                c.execute(f"INSERT INTO {table} VALUES ('after')")
        except psycopg.Error as e:
            raise AssertionError(f"no recovery: {e}\n--- log ---\n{gw.log_text()[-4000:]}") from e
        assert gw.stop() == 0
        v = _verify(gw)
        assert v["_rc"] == 0 and v["ok"], v
        stmts = [r.get("statement") or "" for r in gw.audit_json() if r["event"] == "statement"]
        assert any("'before'" in s for s in stmts) and any("'after'" in s for s in stmts)
        # Every statement that reached the database has its record.
        with pg.owner_connect() as c:
            rows = [r[0] for r in c.execute(f"SELECT v FROM {table}")]
        for v_ in rows:
            assert any(f"'{v_}'" in s for s in stmts), v_
    finally:
        gw.stop()
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
