"""The audit trail through the product: records sealed at rest, signed checkpoints (on an
interval, on demand while serving, at shutdown), `gatehouse audit verify` offline, inclusion and
consistency proofs, and each kind of tampering named by `verify`."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from harness import CANARY


MARKER = "zebra_quokka_marker_7731"


def _verify(gw, *extra: str) -> tuple[int, dict]:
    p = gw.cli("audit", "verify", "--json", *extra, check=False)
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout)


def _db(gw) -> Path:
    return gw.data_dir / "audit.db"


def _db_files(gw) -> list[Path]:
    """The SQLite database and its WAL/SHM, not the high-water mark beside them."""
    return [f for f in gw.data_dir.glob("audit.db*") if not f.name.endswith(".hwm")]


def _run_statements(gw, user: str = "auditor-e2e") -> None:
    token = gw.token(user)
    out = gw.psql(user, token, "-At", "-c", f"select '{MARKER}' as m", "-c", "select 40 + 2").stdout
    assert MARKER in out and "42" in out


def test_checkpoints_verify_and_records_are_sealed(gatehouse):
    gw = gatehouse()
    _run_statements(gw)

    # On demand while the gateway runs (SIGUSR1 through the CLI).
    cp_text = gw.cli("audit", "checkpoint").stdout
    assert cp_text.startswith("gatehouse-audit-checkpoint/v1\n"), cp_text
    assert "\nsignature " in cp_text
    rc, v = _verify(gw)
    assert rc == 0 and v["ok"], v
    assert v["checkpoints"] >= 1 and v["content_checked"] is True

    # `gatehouse status` while serving: running, the software store flagged, durability shown.
    st = json.loads(gw.cli("status", "--json").stdout)
    assert st["running"] is True and st["key_store"]["development_only"] is True, st
    assert st["audit"]["durability"] == "bounded" and st["audit"]["power_loss_window_ms"] == 10, st
    assert st["audit"]["last_checkpoint"]["kind"] == "demand", st
    human = gw.cli("status").stdout
    assert "SOFTWARE KEY STORE: DEVELOPMENT ONLY" in human, human

    # Every record of the session carries the identity, and verifies.
    recs = gw.audit_json()
    stmts = [r for r in recs if r["event"] == "statement" and MARKER in (r.get("statement") or "")]
    assert len(stmts) == 1 and stmts[0]["username"] == "auditor-e2e"

    # Proofs for that record against the newest checkpoint.
    proof = json.loads(gw.cli("audit", "prove", "--seq", str(stmts[0]["seq"])).stdout)
    assert proof["inclusion_verified"] is True and proof["consistency"]["verified"] is True

    # Shutdown writes a last checkpoint: nothing is left uncovered.
    assert gw.stop() == 0
    rc, v = _verify(gw)
    assert rc == 0 and v["ok"] and v["uncovered"] == 0, v
    kinds = v["last_checkpoint"]["kind"]
    assert kinds == "shutdown", v["last_checkpoint"]
    st = json.loads(gw.cli("status", "--json").stdout)
    assert st["running"] is False and st["audit"]["uncovered_records"] == 0, st

    # The checkpoint is signed by the key store's signing key.
    status = json.loads(gw.cli("board", "status", "--json").stdout)
    signer = v["last_checkpoint"]["signer"]
    assert signer == f'{status["signing_key"]["scheme"]}:{status["signing_key"]["public_key"]}'

    # An auditor without the keys can still check links, tree and signatures.
    rc, v = _verify(gw, "--no-keys", "--trusted-key", signer)
    assert rc == 0 and v["ok"] and v["content_checked"] is False, v

    # Encryption at rest: neither the statement text nor the vaulted password is in the
    # store's files in the clear.
    for f in gw.data_dir.glob("audit.db*"):
        data = f.read_bytes()
        assert MARKER.encode() not in data, f
        assert CANARY.encode() not in data, f


def test_tampering_is_named_by_verify(gatehouse, tmp_path):
    gw = gatehouse()
    _run_statements(gw)
    _run_statements(gw, "second-user")
    assert gw.stop() == 0
    rc, v = _verify(gw)
    assert rc == 0 and v["ok"], v
    db = _db(gw)
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    for f in _db_files(gw):
        shutil.copy2(f, pristine / f.name)

    def restore() -> None:
        for f in _db_files(gw):
            f.unlink()
        for f in pristine.iterdir():
            shutil.copy2(f, gw.data_dir / f.name)

    def sql(stmt: str, *args) -> None:
        c = sqlite3.connect(db)
        c.execute(stmt, args)
        c.commit()
        c.close()

    last = v["last_seq"]
    assert last >= 6

    # An edited field.
    sql("UPDATE records SET time_us = time_us + 1 WHERE seq = 4")
    rc, v = _verify(gw)
    assert rc == 1 and v["first_bad_record"] == 4, v
    human = gw.cli("audit", "verify", check=False)
    assert human.returncode == 1 and "PROBLEM: record 4" in human.stdout and "FAILED" in human.stdout, human.stdout
    restore()

    # A deleted row.
    sql("DELETE FROM records WHERE seq = 3")
    rc, v = _verify(gw)
    assert rc == 1 and v["first_bad_record"] == 3, v
    restore()

    # A truncated tail.
    sql("DELETE FROM records WHERE seq > ?", last - 2)
    rc, v = _verify(gw)
    assert rc == 1 and any("truncated" in p for p in v["problems"]), v
    restore()

    # Rolled back: an older, self-consistent copy of the database put back after more
    # records and checkpoints were written (the high-water mark beside it is not rolled back).
    rc, v = _verify(gw)
    assert rc == 0, v
    gw.start()
    _run_statements(gw, "third-user")
    assert gw.stop() == 0
    rc, v = _verify(gw)
    assert rc == 0 and v["ok"], v
    restore()
    rc, v = _verify(gw)
    assert rc == 1 and any("rolled back" in p for p in v["problems"]), v
    # ... and the gateway refuses to start on it rather than continue a forked trail.
    p = gw.cli("serve", check=False, timeout=60)
    assert p.returncode != 0
    assert CANARY not in p.stdout + p.stderr

    # A trusted key other than the appliance's: the first checkpoint is flagged.
    other = "ed25519:" + "11" * 32
    rc, v = _verify(gw, "--trusted-key", other)
    assert rc == 1 and any("not by the trusted key" in p for p in v["problems"]), v
