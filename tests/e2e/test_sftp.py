"""The read-only SFTP server for auditors, through the real `gatehouse serve`, with real clients:
OpenSSH's `sftp` in batch mode (host key pinned in a known_hosts file written from
`gatehouse sftp host-key`) and paramiko.

An auditor downloads an evidence export and `gatehouse audit verify-export` passes on the
downloaded copy; writes, removes, renames, path escapes, symlinks, shells, exec and forwarding
are refused and recorded; wrong keys and passwords do not get in; no vaulted secret is served."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from harness import CANARY, free_port, wait_for, wait_port

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO.parent / "shared" / "oscal" / "NIST_SP-800-53_rev5_catalog.json"
MARKER = "sftp_marker_z93"
PASSWORD_TRY = "pw-try-6b1d0e"  # a password an attacker tries; it must be recorded nowhere
MAX_SESSIONS = 4
MAX_HANDLES = 6


def keygen(path: Path, kind: str, comment: str) -> Path:
    args = ["ssh-keygen", "-q", "-N", "", "-C", comment, "-f", str(path), "-t", kind]
    if kind == "ecdsa":
        args += ["-b", "256"]
    subprocess.run(args, check=True, capture_output=True, timeout=30)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sftp-keys")
    return {
        "carol": keygen(d / "carol", "ed25519", "carol@audit"),
        "dave": keygen(d / "dave", "ecdsa", "dave@audit"),
        "stranger": keygen(d / "stranger", "ed25519", "stranger@elsewhere"),
    }


@pytest.fixture(scope="module")
def sgw(module_gatehouse, keys):
    """A gateway with the SFTP server on, two auditors, exports every 2 seconds."""
    port = free_port()
    pub = {n: (p.with_suffix(".pub")).read_text().strip() for n, p in keys.items()}
    extra = f"""
[audit]
catalog = "{CATALOG}"

[sftp]
bind = "127.0.0.1:{port}"
export_every_seconds = 2
max_sessions = {MAX_SESSIONS}
max_handles = {MAX_HANDLES}
login_grace_seconds = 3

[[sftp.auditors]]
name = "carol"
keys = ["{pub['carol']}"]

[[sftp.auditors]]
name = "dave"
keys = ["{pub['dave']}"]
"""
    gw = module_gatehouse(extra_toml=extra)
    gw.sftp_port = port
    wait_port(port, 30, gw.proc, "gatehouse sftp")
    # Something worth exporting: a session whose statements carry a marker.
    token = gw.token("analyst-ann", groups=["analysts"])
    p = gw.psql("analyst-ann", token, "-At", "-c", f"select '{MARKER}'")
    assert p.returncode == 0, p.stderr
    return gw


@pytest.fixture(scope="module")
def known_hosts(sgw, tmp_path_factory) -> Path:
    line = sgw.cli("sftp", "host-key", "--known-hosts", "127.0.0.1").stdout.strip()
    kh = tmp_path_factory.mktemp("kh") / "known_hosts"
    kh.write_text(line + "\n")
    return kh


def openssh_sftp(sgw, known_hosts: Path, key: Path, batch: str, user: str = "carol",
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [
        "sftp", "-F", "/dev/null", "-b", "-", "-P", str(sgw.sftp_port), "-i", str(key),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10", f"{user}@127.0.0.1",
    ]
    return subprocess.run(cmd, input=batch, capture_output=True, text=True, timeout=60, cwd=cwd)


def paramiko_key(path: Path):
    if "ecdsa" in path.with_suffix(".pub").read_text().split()[0]:
        return paramiko.ECDSAKey.from_private_key_file(str(path))
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def connect(sgw, key: Path, user: str, known_hosts: Path) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    c.load_host_keys(str(known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        c.connect("127.0.0.1", port=sgw.sftp_port, username=user, pkey=paramiko_key(key),
                  look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10,
                  auth_timeout=10)
    except BaseException:
        c.close()  # a failed login must not keep its connection (and a session slot)
        raise
    return c


def export_with_marker(sgw) -> str:
    """Waits for a scheduled export that contains the marker; returns its directory name."""
    exports = sgw.data_dir / "exports"

    def found():
        for d in sorted(exports.glob("evidence-*")):
            jl = d / "records.jsonl"
            if jl.exists() and MARKER in jl.read_text():
                return d.name
        return None

    return wait_for(found, timeout=30, what="a scheduled export with the marker")


def events(sgw, kind: str) -> list[dict]:
    return [r for r in sgw.audit_json() if r["event"] == kind]


def test_host_key_is_printed_and_matches_what_the_server_presents(sgw, known_hosts):
    out = sgw.cli("sftp", "host-key").stdout.split("\n")
    line, fingerprint = out[0].strip(), out[1].strip()
    assert line.startswith("ssh-ed25519 ") and fingerprint.startswith("SHA256:")
    # What OpenSSH's own tools see on the wire is the same key.
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(sgw.sftp_port), "127.0.0.1"],
                          capture_output=True, text=True, timeout=30)
    assert line.split()[1] in scan.stdout, scan
    fp = subprocess.run(["ssh-keygen", "-lf", str(known_hosts)], capture_output=True, text=True, timeout=30)
    assert fingerprint in fp.stdout
    # Sealed at rest: the host key file holds no OpenSSH private key.
    sealed = (sgw.data_dir / "sftp" / "host_ed25519.sealed").read_text()
    assert sealed.startswith("gatehouse-sealed-ssh-host-key/v1 ")
    assert "PRIVATE KEY" not in sealed


def test_openssh_sftp_downloads_an_export_that_verifies(sgw, known_hosts, keys, tmp_path):
    name = export_with_marker(sgw)
    local = tmp_path / "copy"
    p = openssh_sftp(sgw, known_hosts, keys["carol"], f"ls -l\ncd {name}\nls -l\nget -r /{name} {local}\n")
    assert p.returncode == 0, p.stdout + p.stderr
    assert name in p.stdout and "manifest.json" in p.stdout
    assert sorted(f.name for f in local.iterdir()) == [
        "assessment-results.json", "manifest.json", "manifest.sig", "records.csv", "records.jsonl"]
    assert MARKER in (local / "records.jsonl").read_text()
    # The downloaded copy verifies offline against the gateway's signing key ...
    v = sgw.cli("audit", "verify-export", str(local), check=False)
    assert v.returncode == 0 and v.stdout.strip().endswith("OK"), v.stdout + v.stderr
    # ... and on an auditor's machine, with no config at all, against the pinned signing key.
    signer = json.loads(sgw.cli("board", "status", "--json").stdout)["signing_key"]
    trusted = f"{signer['scheme']}:{signer['public_key']}"
    v = subprocess.run([sgw.bin, "--config", str(tmp_path / "no-such.toml"), "audit", "verify-export",
                        str(local), "--trusted-key", trusted], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and v.stdout.strip().endswith("OK"), v.stdout + v.stderr
    # ... and a changed byte in it does not.
    bad = tmp_path / "tampered"
    shutil.copytree(local, bad)
    csv = (bad / "records.csv").read_text().replace(MARKER, MARKER.upper())
    (bad / "records.csv").write_text(csv)
    v = sgw.cli("audit", "verify-export", str(bad), check=False)
    assert v.returncode != 0 and "FileChanged" in v.stdout

    # Every file fetched is an open and a complete download in the audit trail, by carol.
    downloads = [r for r in events(sgw, "sftp.download") if f"/{name}/" in r.get("statement", "")]
    assert {r["statement"].rsplit("/", 1)[1] for r in downloads} >= {"manifest.json", "records.jsonl"}
    assert all(r["username"] == "carol" and r["reason"] == "complete" for r in downloads)
    opens = [r for r in events(sgw, "sftp.open") if f"/{name}/" in r.get("statement", "")]
    assert len(opens) >= 5 and all(r["decision"] == "allow" for r in opens)
    logins = [r for r in events(sgw, "login.success") if r.get("protocol") == "sftp"]
    carol_fp = subprocess.run(["ssh-keygen", "-lf", str(keys["carol"].with_suffix(".pub"))],
                              capture_output=True, text=True, timeout=30).stdout.split()[1]
    assert any(r["username"] == "carol" and r["subject"] == carol_fp and carol_fp in r["reason"]
               for r in logins)


def test_paramiko_lists_and_reads(sgw, known_hosts, keys):
    name = export_with_marker(sgw)
    # dave logs in with an ECDSA key.
    c = connect(sgw, keys["dave"], "dave", known_hosts)
    try:
        s = c.open_sftp()
        assert s.normalize(".") == "/"
        top = s.listdir("/")
        assert name in top and not any(n.startswith(".") for n in top)
        assert sorted(s.listdir(name)) == [
            "assessment-results.json", "manifest.json", "manifest.sig", "records.csv", "records.jsonl"]
        st = s.stat(f"/{name}/records.jsonl")
        on_disk = (sgw.data_dir / "exports" / name / "records.jsonl").read_bytes()
        assert st.st_size == len(on_disk)
        with s.open(f"/{name}/records.jsonl", "rb") as f:
            assert f.read() == on_disk
        with s.open(f"{name}/records.jsonl", "rb") as f:  # relative to the root
            f.seek(10)
            assert f.read(20) == on_disk[10:30]
        # More handles than allowed: refused, and the session carries on.
        files = [s.open(f"/{name}/manifest.json", "rb") for _ in range(MAX_HANDLES)]
        with pytest.raises(IOError):
            s.open(f"/{name}/manifest.json", "rb")
        for f in files:
            f.close()
        assert s.stat(f"/{name}/manifest.json").st_size > 0
    finally:
        c.close()


def test_writes_are_refused_and_recorded(sgw, known_hosts, keys, tmp_path):
    name = export_with_marker(sgw)
    export_dir = sgw.data_dir / "exports" / name
    before = {p.name: p.read_bytes() for p in export_dir.iterdir()}
    local = tmp_path / "upload.txt"
    local.write_text("forged evidence\n")
    c = connect(sgw, keys["carol"], "carol", known_hosts)
    try:
        s = c.open_sftp()
        attempts = [
            lambda: s.put(str(local), f"/{name}/records.csv"),
            lambda: s.put(str(local), "/new.txt"),
            lambda: s.open(f"/{name}/records.csv", "ab"),
            lambda: s.remove(f"/{name}/records.csv"),
            lambda: s.rename(f"/{name}/records.csv", f"/{name}/x.csv"),
            lambda: s.posix_rename(f"/{name}/records.csv", f"/{name}/x.csv"),
            lambda: s.mkdir("/newdir"),
            lambda: s.rmdir(f"/{name}"),
            lambda: s.chmod(f"/{name}/records.csv", 0o777),
            lambda: s.utime(f"/{name}/records.csv", (0, 0)),
            lambda: s.symlink("/etc/passwd", "/passwd"),
        ]
        for attempt in attempts:
            with pytest.raises(IOError) as e:
                attempt()
            assert e.value.errno == errno.EACCES, e.value
        # Still a working session.
        assert name in s.listdir("/")
    finally:
        c.close()
    assert {p.name: p.read_bytes() for p in export_dir.iterdir()} == before
    assert not (sgw.data_dir / "exports" / "new.txt").exists()
    denied = [r for r in events(sgw, "sftp.denied") if r.get("username") == "carol"]
    ops = {r["statement"].split()[0] for r in denied}
    assert {"open-for-write", "remove", "rename", "mkdir", "rmdir", "setstat", "symlink"} <= ops, ops
    assert all(r["decision"] == "deny" for r in denied)


def test_path_escapes_and_symlinks_are_refused(sgw, known_hosts, keys):
    exports = sgw.data_dir / "exports"
    # A symlink planted inside the served tree, pointing at the config (and one at the keys).
    (exports / "planted").unlink(missing_ok=True)
    os.symlink(sgw.config, exports / "planted")
    (exports / "keysdir").unlink(missing_ok=True)
    os.symlink(sgw.data_dir, exports / "keysdir")
    hidden = exports / ".partial-evidence-fake"
    hidden.mkdir(exist_ok=True)
    (hidden / "records.csv").write_text("half written\n")
    c = connect(sgw, keys["carol"], "carol", known_hosts)
    try:
        s = c.open_sftp()
        for path in ["../gatehouse.toml", "/../gatehouse.toml", "../../../../etc/passwd",
                     "/evidence/../../gatehouse.toml", "/planted", "/keysdir/vault.bin",
                     "/keysdir/keys"]:
            with pytest.raises(IOError) as e:
                s.open(path, "rb").read()
            assert e.value.errno == errno.EACCES, (path, e.value)
        for path in ["..", "/..", "/keysdir"]:
            with pytest.raises(IOError) as e:
                s.listdir(path)
            assert e.value.errno == errno.EACCES, (path, e.value)
        with pytest.raises(IOError):
            s.readlink("/planted")
        # Absolute host paths are inside the root: there is no /etc there.
        with pytest.raises(IOError) as e:
            s.open("/etc/passwd", "rb")
        assert e.value.errno == errno.ENOENT
        # Hidden (in-progress) exports are neither listed nor readable.
        top = s.listdir("/")
        assert "planted" not in top and "keysdir" not in top and ".partial-evidence-fake" not in top
        with pytest.raises(IOError):
            s.open("/.partial-evidence-fake/records.csv", "rb")
    finally:
        c.close()
        (exports / "planted").unlink(missing_ok=True)
        (exports / "keysdir").unlink(missing_ok=True)
        shutil.rmtree(hidden, ignore_errors=True)
    denied = [r["reason"] for r in events(sgw, "sftp.denied")]
    assert any("escapes" in d for d in denied) and any("symbolic links" in d for d in denied)


def test_wrong_keys_and_passwords_are_refused(sgw, known_hosts, keys):
    p = openssh_sftp(sgw, known_hosts, keys["stranger"], "ls\n")
    assert p.returncode != 0 and "Permission denied" in p.stderr
    # carol's key is not dave's.
    with pytest.raises(paramiko.AuthenticationException):
        connect(sgw, keys["carol"], "dave", known_hosts)
    # Password and keyboard-interactive: never accepted.
    t = paramiko.Transport(("127.0.0.1", sgw.sftp_port))
    try:
        t.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_password("carol", PASSWORD_TRY)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_interactive("carol", lambda title, instr, prompts: [PASSWORD_TRY for _ in prompts])
        assert not t.is_authenticated()
    finally:
        t.close()
    stranger_fp = subprocess.run(["ssh-keygen", "-lf", str(keys["stranger"].with_suffix(".pub"))],
                                 capture_output=True, text=True, timeout=30).stdout.split()[1]

    def failures():
        return [r for r in events(sgw, "login.failure") if r.get("protocol") == "sftp"]

    wait_for(lambda: any("password" in r["reason"] for r in failures()), what="password failure record")
    f = failures()
    assert any(stranger_fp in r["reason"] and "unknown key" in r["reason"] for r in f)
    assert any(r["username"] == "dave" and "another auditor" in r["reason"] for r in f)
    assert all(r["decision"] == "deny" for r in f)
    everything = json.dumps(sgw.audit_json()) + sgw.log_text()
    assert PASSWORD_TRY not in everything


def test_shell_exec_and_forwarding_are_refused(sgw, known_hosts, keys):
    c = connect(sgw, keys["carol"], "carol", known_hosts)
    try:
        t = c.get_transport()
        ch = t.open_session()
        with pytest.raises(paramiko.SSHException):
            ch.exec_command("cat /etc/passwd")
        ch.close()
        ch = t.open_session()
        with pytest.raises(paramiko.SSHException):
            ch.get_pty()
            ch.invoke_shell()
        ch.close()
        with pytest.raises(paramiko.ChannelException):
            t.open_channel("direct-tcpip", ("127.0.0.1", sgw.port), ("127.0.0.1", 50000))
        with pytest.raises(paramiko.SSHException):
            t.request_port_forward("127.0.0.1", 0)
    finally:
        c.close()
    # OpenSSH's ssh too: no command runs.
    p = subprocess.run(["ssh", "-F", "/dev/null", "-p", str(sgw.sftp_port), "-i", str(keys["carol"]),
                        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={known_hosts}", "carol@127.0.0.1", "echo pwned"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "pwned" not in p.stdout
    ops = {r["statement"].split()[0] for r in events(sgw, "sftp.denied")}
    assert {"exec", "port-forward", "remote-forward"} <= ops, ops
    assert "pty" in ops or "shell" in ops


def test_malformed_sftp_stream_ends_only_that_session(sgw, known_hosts, keys):
    c = connect(sgw, keys["carol"], "carol", known_hosts)
    try:
        ch = c.get_transport().open_session()
        ch.invoke_subsystem("sftp")
        ch.sendall(b"\xff\xff\xff\xff" + b"\x01" * 64)  # a 4 GiB packet length
        ch.settimeout(10)
        assert ch.recv(1024) == b""  # the server ends the SFTP session
    finally:
        c.close()
    # Others carry on.
    c = connect(sgw, keys["carol"], "carol", known_hosts)
    try:
        assert c.open_sftp().listdir("/")
    finally:
        c.close()
    assert any(r["statement"] == "protocol" for r in events(sgw, "sftp.denied"))


def test_removing_an_auditor_takes_effect_on_reload(sgw, known_hosts, keys):
    """SIGHUP with dave's block removed: dave's key no longer logs in; restored, it does again."""
    original = sgw.config.read_text()
    start = original.index('[[sftp.auditors]]\nname = "dave"')
    without_dave = original[:start] + original[start:].split("\n", 3)[3]
    assert 'name = "dave"' not in without_dave and 'name = "carol"' in without_dave

    def dave_logs_in() -> bool:
        try:
            connect(sgw, keys["dave"], "dave", known_hosts).close()
            return True
        except paramiko.AuthenticationException:
            return False

    assert dave_logs_in()
    try:
        sgw.config.write_text(without_dave)
        sgw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not dave_logs_in(), timeout=15, what="dave refused after the reload")
        connect(sgw, keys["carol"], "carol", known_hosts).close()
    finally:
        sgw.config.write_text(original)
        sgw.proc.send_signal(signal.SIGHUP)
    wait_for(dave_logs_in, timeout=15, what="dave back after the second reload")


def test_connections_that_do_not_log_in_are_closed(sgw):
    """A client that connects and never authenticates is disconnected after the login grace
    time (3 s here), freeing its session slot."""
    t = paramiko.Transport(("127.0.0.1", sgw.sftp_port))
    try:
        t.start_client(timeout=10)
        assert t.is_active()
        wait_for(lambda: not t.is_active(), timeout=15, what="the server to close the connection")
    finally:
        t.close()
    with socket.create_connection(("127.0.0.1", sgw.sftp_port), timeout=5) as raw:
        raw.settimeout(15)
        banner = raw.recv(64)
        assert banner.startswith(b"SSH-2.0-")
        started = time.monotonic()
        while raw.recv(4096):  # never send our banner; the server must hang up
            pass
        assert time.monotonic() - started < 12


def test_sessions_are_bounded(sgw, known_hosts, keys):
    clients = []
    try:
        for _ in range(MAX_SESSIONS):
            clients.append(connect(sgw, keys["carol"], "carol", known_hosts))
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            connect(sgw, keys["carol"], "carol", known_hosts).open_sftp()
    finally:
        for cl in clients:
            cl.close()

    def fresh_session_works():
        try:
            c = connect(sgw, keys["carol"], "carol", known_hosts)
        except (paramiko.SSHException, EOFError, OSError):
            return False
        try:
            return bool(c.open_sftp().listdir("/"))
        finally:
            c.close()

    wait_for(fresh_session_works, timeout=15, what="a session after the others closed")


def test_nothing_served_holds_a_vaulted_secret(sgw, known_hosts, keys, tmp_path):
    export_with_marker(sgw)
    local = tmp_path / "all"
    p = openssh_sftp(sgw, known_hosts, keys["carol"], f"get -r / {local}\n")
    assert p.returncode == 0, p.stdout + p.stderr
    files = [f for f in local.rglob("*") if f.is_file()]
    assert len(files) >= 5
    for f in files:
        assert CANARY.encode() not in f.read_bytes(), f
    assert CANARY not in sgw.log_text()


def test_exports_map_sftp_records_to_controls(sgw):
    """The scheduled exports carry the SFTP records with their 800-53 controls, and the OSCAL
    document reports on AU-6 and AU-9(4)."""
    want = {"sftp.open": {"ac-3", "au-6", "au-9.4"}, "sftp.download": {"au-6", "au-9.4"},
            "sftp.denied": {"ac-3", "au-9", "au-9.4", "ir-4"}}

    def exported():
        recs = []
        for d in sorted((sgw.data_dir / "exports").glob("evidence-*")):
            recs += [json.loads(l) for l in (d / "records.jsonl").read_text().splitlines() if l]
        return recs if {r["event"] for r in recs} >= set(want) else None

    recs = wait_for(exported, timeout=30, what="exports with the SFTP records")
    for r in recs:
        if r["event"] in want:
            assert want[r["event"]] <= set(r["controls"]), r
        if r["event"].startswith("login.") and r.get("protocol") == "sftp":
            assert {"ia-2", "ac-2"} <= set(r["controls"]), r
    reported = set()
    for d in (sgw.data_dir / "exports").glob("evidence-*"):
        doc = json.loads((d / "assessment-results.json").read_text())
        sel = doc["assessment-results"]["results"][0]["reviewed-controls"]["control-selections"]
        reported |= {c["control-id"] for s in sel for c in s["include-controls"]}
    assert {"au-6", "au-9.4"} <= reported, reported


def test_session_end_is_recorded_before_shutdown(module_gatehouse, keys, tmp_path_factory):
    """A gateway stopping with an auditor connected ends the session and records it."""
    port = free_port()
    pub = keys["carol"].with_suffix(".pub").read_text().strip()
    gw = module_gatehouse(pg_server=False, extra_toml=f"""
[sftp]
bind = "127.0.0.1:{port}"
export_every_seconds = 0

[[sftp.auditors]]
name = "carol"
keys = ["{pub}"]
""")
    gw.sftp_port = port
    wait_port(port, 30, gw.proc, "gatehouse sftp")
    kh = tmp_path_factory.mktemp("kh2") / "known_hosts"
    kh.write_text(gw.cli("sftp", "host-key", "--known-hosts", "127.0.0.1").stdout)
    c = connect(gw, keys["carol"], "carol", kh)
    s = c.open_sftp()
    assert s.listdir("/") == []
    assert gw.stop() == 0
    c.close()
    recs = gw.audit_json()
    kinds = [r["event"] for r in recs]
    assert "session.end" in kinds and kinds[-1] == "gateway.stop"
    assert kinds.index("session.end") < kinds.index("gateway.stop")
    assert gw.cli("audit", "verify").returncode == 0


def test_config_check_refuses_bad_sftp_sections(sgw, keys, tmp_path):
    base = sgw.config.read_text()
    rsa = keygen(tmp_path / "rsa", "rsa", "old@laptop").with_suffix(".pub").read_text().strip()
    cases = {
        "max_sesions": base.replace("max_sessions =", "max_sesions =", 1),
        "use ssh-ed25519 or ecdsa": base.replace(
            'name = "dave"', f'name = "erin"\nkeys = ["{rsa}"]\n\n[[sftp.auditors]]\nname = "dave"', 1),
        "not an OpenSSH public key": base.replace(
            'name = "dave"', 'name = "erin"\nkeys = ["ssh-ed25519 nonsense"]\n\n[[sftp.auditors]]\nname = "dave"', 1),
        "sftp.bind": base.replace(f"127.0.0.1:{sgw.sftp_port}", f"127.0.0.1:{sgw.port}", 1),
    }
    for expected, text in cases.items():
        assert text != base, expected
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        p = sgw.cli("config", "check", config=cfg, check=False)
        assert p.returncode != 0 and expected in p.stderr, (expected, p.stderr)
    cfg = tmp_path / "good.toml"
    cfg.write_text(base)
    assert sgw.cli("config", "check", config=cfg, check=False).returncode == 0


def test_host_key_sealed_by_the_tpm_survives_a_restart(gatehouse, keys, tmp_path):
    """With the TPM key store (a real swtpm) the host key is sealed under a TPM-held key: the
    gateway unseals the same key after a restart, and auditors log in against it."""
    from test_tpm import Swtpm, _tpm_toml

    if shutil.which("swtpm") is None:
        pytest.fail("swtpm is not installed (scripts/test-all.sh installs it)")
    tpm = Swtpm(tmp_path / "tpm-state")
    tpm.start()
    try:
        port = free_port()
        pub = keys["carol"].with_suffix(".pub").read_text().strip()
        gw = gatehouse(pg_server=False, env={"TSS2_LOG": "all+none"}, extra_toml=_tpm_toml(tpm) + f"""
[sftp]
bind = "127.0.0.1:{port}"
export_every_seconds = 0

[[sftp.auditors]]
name = "carol"
keys = ["{pub}"]
""")
        gw.sftp_port = port
        wait_port(port, 30, gw.proc, "gatehouse sftp")
        assert json.loads(gw.cli("board", "status", "--json").stdout)["backend"] == "tpm2"
        first = gw.cli("sftp", "host-key").stdout
        kh = tmp_path / "known_hosts"
        kh.write_text(gw.cli("sftp", "host-key", "--known-hosts", "127.0.0.1").stdout)
        sealed = (gw.data_dir / "sftp" / "host_ed25519.sealed").read_bytes()
        assert sealed.startswith(b"gatehouse-sealed-ssh-host-key/v1 ")
        assert gw.stop() == 0
        gw.start()
        wait_port(port, 30, gw.proc, "gatehouse sftp")
        assert gw.cli("sftp", "host-key").stdout == first
        c = connect(gw, keys["carol"], "carol", kh)  # RejectPolicy: the pinned key must match
        try:
            assert c.open_sftp().listdir("/") == []
        finally:
            c.close()
    finally:
        tpm.stop()
