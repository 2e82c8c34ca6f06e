"""The gateway with its keys in a TPM 2.0 (a real swtpm): the vault credential is sealed and
unsealed through the TPM, and a different TPM is refused without touching any data."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from harness import CANARY, stop_process


def _free_port_pair() -> int:
    """A port P with P+1 also free: the TSS swtpm connector uses P+1 for control."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port >= 65535:
            continue
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
        finally:
            t.close()
    raise RuntimeError("no free port pair")


class Swtpm:
    def __init__(self, state: Path):
        self.state = state
        self.state.mkdir(parents=True, exist_ok=True)
        self.port = _free_port_pair()
        self.proc: subprocess.Popen | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("swtpm did not start")

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def swtpm(tmp_path):
    if shutil.which("swtpm") is None:
        pytest.fail("swtpm is not installed (scripts/test-all.sh installs it)")
    tpm = Swtpm(tmp_path / "tpm-state")
    tpm.start()
    yield tpm
    tpm.stop()


def _tpm_toml(tpm: Swtpm) -> str:
    return f'\n[key_store]\nbackend = "tpm"\ntcti = "{tpm.tcti}"\n'


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_session_through_tpm_sealed_vault(gatehouse, swtpm):
    gw = gatehouse(extra_toml=_tpm_toml(swtpm), env={"TSS2_LOG": "all+none"})
    status = json.loads(gw.cli("board", "status", "--json").stdout)
    assert status["backend"] == "tpm2"
    assert status["hardware_backed"] is True
    assert status["tpm"]["manufacturer"], status
    assert status["signing_key"]["scheme"] == "ecdsa-p256-sha256"
    assert len(bytes.fromhex(status["signing_key"]["public_key"])) == 65

    token = gw.token("tpm-user")
    out = gw.psql("tpm-user", token, "-At", "-c", "select current_user, 40 + 2").stdout
    assert out.strip() == "gh_app|42"

    # The vaulted password is nowhere in the data dir in the clear.
    for p in gw.data_dir.rglob("*"):
        if p.is_file():
            assert CANARY.encode() not in p.read_bytes(), p


def test_another_tpm_is_refused_and_nothing_is_touched(gatehouse, swtpm, tmp_path):
    gw = gatehouse(start=False, extra_toml=_tpm_toml(swtpm), env={"TSS2_LOG": "all+none"})
    before = _digest_tree(gw.data_dir)
    assert any(k.startswith("tpm/") for k in before), before
    swtpm.stop()

    other = Swtpm(tmp_path / "other-tpm-state")
    other.start()
    try:
        text = gw.config.read_text().replace(swtpm.tcti, other.tcti)
        gw.config.write_text(text)
        p = gw.cli("serve", check=False, timeout=60)
        assert p.returncode != 0
        assert "belong to another TPM" in p.stderr, p.stderr
        assert CANARY not in p.stderr + p.stdout
        p = gw.cli("connection", "list", check=False)
        assert p.returncode != 0
        assert _digest_tree(gw.data_dir) == before
    finally:
        other.stop()


def test_audit_checkpoints_signed_by_the_tpm_verify(gatehouse, swtpm):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    gw = gatehouse(extra_toml=_tpm_toml(swtpm), env={"TSS2_LOG": "all+none"})
    token = gw.token("tpm-auditor")
    out = gw.psql("tpm-auditor", token, "-At", "-c", "select 'tpm-audit-ok'").stdout
    assert out.strip() == "tpm-audit-ok"
    # On demand while serving, then at shutdown.
    cp_text = gw.cli("audit", "checkpoint", timeout=120).stdout
    assert gw.stop() == 0

    status = json.loads(gw.cli("board", "status", "--json").stdout)
    tpm_key = status["signing_key"]["public_key"]
    p = gw.cli("audit", "verify", "--json", check=False, timeout=120)
    v = json.loads(p.stdout)
    assert p.returncode == 0 and v["ok"] and v["content_checked"], v
    assert v["uncovered"] == 0 and v["checkpoints"] >= 2, v
    assert v["last_checkpoint"]["signer"] == f"ecdsa-p256-sha256:{tpm_key}", v
    st = json.loads(gw.cli("status", "--json").stdout)
    assert st["key_store"]["hardware_backed"] is True and st["key_store"]["development_only"] is False, st
    assert "DEVELOPMENT ONLY" not in gw.cli("status").stdout

    # An independent verifier (Python's cryptography, not Gatehouse's code) accepts the
    # TPM's signature over the checkpoint message with the exported public key.
    message, _, rest = cp_text.partition("signer ")
    sig_line = [l for l in rest.splitlines() if l.startswith("signature ")][0]
    signature = bytes.fromhex(sig_line.split(" ", 1)[1])
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(tpm_key))
    pub.verify(signature, message.encode(), ec.ECDSA(hashes.SHA256()))
    tampered = message.replace("size ", "size 9", 1).encode()
    try:
        pub.verify(signature, tampered, ec.ECDSA(hashes.SHA256()))
        raise AssertionError("a tampered checkpoint message verified")
    except Exception as e:  # cryptography raises InvalidSignature
        assert type(e).__name__ == "InvalidSignature", e


def test_tls_key_sealed_and_rotation_keeps_older_data(gatehouse, swtpm):
    gw = gatehouse(extra_toml=_tpm_toml(swtpm), env={"TSS2_LOG": "all+none"})
    # The self-signed listener key rests sealed by the TPM, never in the clear.
    tls_dir = gw.data_dir / "tls"
    assert (tls_dir / "key.sealed").is_file() and not (tls_dir / "key.pem").exists()
    sealed = (tls_dir / "key.sealed").read_bytes()
    assert sealed.startswith(b"gatehouse-sealed-tls-key/v1 ") and b"PRIVATE KEY" not in sealed

    token = gw.token("rot-user")
    assert gw.psql("rot-user", token, "-At", "-c", "select 'before-rotation'").stdout.strip() == "before-rotation"
    before = json.loads(gw.cli("board", "status", "--json").stdout)["data_keys"]

    # Rotate both data keys while the gateway runs; the vault is re-sealed at once.
    out = gw.cli("board", "rotate", "--purpose", "vault", timeout=120).stdout
    assert "1 credentials re-sealed" in out, out
    gw.cli("board", "rotate", "--purpose", "audit", timeout=120)
    after = json.loads(gw.cli("board", "status", "--json").stdout)["data_keys"]
    assert after["vault"] != before["vault"] and after["audit"] != before["audit"]

    # New logins use the re-sealed credential; after a restart new audit records are sealed
    # under the new key, and the records sealed under the old one still read and verify.
    assert gw.psql("rot-user", token, "-At", "-c", "select 'after-rotation'").stdout.strip() == "after-rotation"
    assert gw.stop() == 0
    gw.start()
    assert gw.psql("rot-user", token, "-At", "-c", "select 'after-restart'").stdout.strip() == "after-restart"
    assert gw.stop() == 0
    stmts = [r.get("statement") or "" for r in gw.audit_json() if r["event"] == "statement"]
    for marker in ("before-rotation", "after-rotation", "after-restart"):
        assert any(marker in s for s in stmts), (marker, stmts)
    p = gw.cli("audit", "verify", "--json", check=False, timeout=120)
    v = json.loads(p.stdout)
    assert p.returncode == 0 and v["ok"] and v["content_checked"], v
    db = sqlite3.connect(gw.data_dir / "audit.db")
    key_ids = {row[0] for row in db.execute("SELECT DISTINCT key_id FROM records WHERE key_id IS NOT NULL")}
    db.close()
    assert {before["audit"], after["audit"]} <= key_ids, key_ids


def test_configured_tls_key_sealed_by_the_tpm(gatehouse, swtpm, tmp_path):
    import psycopg

    gw = gatehouse(start=False, extra_toml=_tpm_toml(swtpm), env={"TSS2_LOG": "all+none"})
    key, cert = tmp_path / "own.key", tmp_path / "own.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    sealed = gw.data_dir / "own.key.sealed"
    gw.cli("board", "seal-tls-key", "--out", str(sealed), input=key.read_text(), timeout=120)
    assert b"PRIVATE KEY" not in sealed.read_bytes()
    key.unlink()  # only the sealed copy remains
    text = gw.config.read_text().replace(
        'protocol = "postgres"', f'protocol = "postgres"\ntls_cert = "{cert}"\ntls_key = "{sealed}"', 1)
    gw.config.write_text(text)
    gw.start()
    token = gw.token("own-cert-user")
    # verify-full against our own certificate: the gateway presents it, so it holds the key.
    with psycopg.connect(host=gw.host, port=gw.port, dbname="app", user="own-cert-user", password=token,
                         sslmode="verify-full", sslrootcert=str(cert), connect_timeout=10) as c:
        assert c.execute("select 7 * 6").fetchone()[0] == 42
    gw.stop()

    # Another TPM cannot open the sealed key: the gateway refuses to start, clearly.
    swtpm.stop()
    other = Swtpm(tmp_path / "other")
    other.start()
    try:
        gw.config.write_text(gw.config.read_text().replace(swtpm.tcti, other.tcti))
        p = gw.cli("serve", check=False, timeout=60)
        assert p.returncode != 0 and CANARY not in p.stdout + p.stderr
    finally:
        other.stop()
