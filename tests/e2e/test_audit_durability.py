"""Durability and retention of the audit trail through the product: records written before
their statements survive SIGKILL of the gateway and still verify; retention pruning removes
only old, checkpointed records, refuses cut-offs inside the retention period, and leaves a
store that verifies and still proves."""

from __future__ import annotations

import json
import os
import signal
import time

from harness import wait_for


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
    wait_for(lambda: not gw.alive(), timeout=5, what="gateway stopped")
