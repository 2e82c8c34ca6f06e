"""The built appliance image under QEMU, with swtpm as its TPM and user-mode networking.

Used by test_appliance.py. The image comes from image/build.sh ($GATEHOUSE_IMAGE_OUT, default
~/.cache/gatehouse/image/out); nothing here builds or changes it: every boot runs on a copy.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The host as QEMU's user-mode network shows it to the guest.
HOST_FROM_GUEST = "10.0.2.2"
GUEST_PG_PORT = 5432


def image_dir() -> Path:
    env = os.environ.get("GATEHOUSE_IMAGE_OUT")
    if env:
        return Path(env)
    cache = os.environ.get("GATEHOUSE_CACHE") or str(Path.home() / ".cache" / "gatehouse")
    return Path(cache) / "image" / "out"


def manifest() -> dict:
    return json.loads((image_dir() / "manifest.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sparse_copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


# ---------------------------------------------------------------------------------------
# TLS material for the OpenID provider the appliance reaches at https://10.0.2.2:PORT
# ---------------------------------------------------------------------------------------

def make_tls(dirpath: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 10.0.2.2 and 127.0.0.1: (cert, key, ca)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse image test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST_FROM_GUEST)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address(HOST_FROM_GUEST)),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (dirpath / "oidc-cert.pem", dirpath / "oidc-key.pem", dirpath / "oidc-ca.pem")
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


# ---------------------------------------------------------------------------------------
# Seed disk: what an operator's provisioning stick would carry (read at first boot only)
# ---------------------------------------------------------------------------------------

def make_seed(path: Path, *, issuer: str, ca_pem: Path, pg_port: int, password: str) -> None:
    config = f"""[gateway]
name = "gh-appliance-test"
watchdog = true
data_dir = "/var/lib/gatehouse"

[[listeners]]
name = "postgres"
protocol = "postgres"
bind = "0.0.0.0:{GUEST_PG_PORT}"

[key_store]
backend = "tpm"
tcti = "device:/dev/tpmrm0"

[identity]
jwks_refresh_min_interval_seconds = 1

[[identity.issuers]]
issuer = "{issuer}"
audience = ["gatehouse"]
ca_file = "/var/lib/gatehouse/seed/oidc-ca.pem"
"""
    args = ["--host", HOST_FROM_GUEST, "--port", str(pg_port), "--database", "appdb", "--user", "gh_app",
            "--tls", "disable", "--tag", "environment=test"]
    staging = path.parent / (path.name + ".d")
    (staging / "files").mkdir(parents=True)
    (staging / "connections").mkdir()
    (staging / "gatehouse.toml").write_text(config)
    shutil.copy(ca_pem, staging / "files" / "oidc-ca.pem")
    (staging / "connections" / "app.args").write_text("\n".join(args) + "\n")
    (staging / "connections" / "app.password").write_text(password + "\n")
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for p in ["gatehouse.toml", "files", "connections"]:
            tar.add(staging / p, arcname=p)
    shutil.rmtree(staging)
    # A block device whole 512-byte sectors long.
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * ((-size) % (1 << 20) or 0))


# ---------------------------------------------------------------------------------------
# swtpm
# ---------------------------------------------------------------------------------------

class Swtpm:
    """A TPM 2.0 for the VM (unix control socket, as QEMU's tpm-emulator wants). Its dictionary-
    attack lockout is relaxed first (swtpm allows 3 failures; unclean kills count as failures)."""

    def __init__(self, state: Path):
        self.state = state
        self.state.mkdir(parents=True, exist_ok=True)
        self.sock = state / "swtpm.sock"
        self.proc: subprocess.Popen | None = None
        self._relax_lockout()

    def _relax_lockout(self) -> None:
        port = _free_port_pair()
        ctrl = port + 1  # the TSS swtpm TCTI always uses port + 1 for control
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_tcp(port, 10)
            tcti = f"swtpm:host=127.0.0.1,port={port}"
            env = dict(os.environ, TSS2_LOG="all+none")
            subprocess.run(["tpm2_dictionarylockout", "-T", tcti, "--setup-parameters", "--max-tries=1000",
                            "--recovery-time=1", "--lockout-recovery-time=1", "--clear-lockout"],
                           check=True, capture_output=True, timeout=30, env=env)
            subprocess.run(["tpm2_shutdown", "-T", tcti, "-c"], check=True, capture_output=True, timeout=30,
                           env=env)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def start(self) -> None:
        if self.sock.exists():
            self.sock.unlink()
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--ctrl", f"type=unixio,path={self.sock}", "--terminate"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("swtpm did not create its control socket")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _free_port_pair() -> int:
    for _ in range(50):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as t:
            try:
                t.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


def _wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


# ---------------------------------------------------------------------------------------
# QEMU
# ---------------------------------------------------------------------------------------

@dataclass
class Vm:
    """One boot of the appliance: its disk copy, console log, forwarded ports, monitor socket."""

    workdir: Path
    disk: Path
    tpm: Swtpm | None
    seed: Path | None = None
    guest_ports: list[int] = field(default_factory=lambda: [GUEST_PG_PORT])
    memory_mib: int = 1024
    proc: subprocess.Popen | None = None
    forwards: dict[int, int] = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def console_log(self) -> Path:
        return self.workdir / f"console-{self.disk.stem}.log"

    @property
    def monitor(self) -> Path:
        return self.workdir / f"monitor-{self.disk.stem}.sock"

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""

    def start(self) -> None:
        out = image_dir()
        cmdline = (out / "cmdline").read_text().strip()
        # Debugging aid, e.g. GATEHOUSE_IMAGE_APPEND=systemd.journald.forward_to_console=1
        cmdline += " " + os.environ.get("GATEHOUSE_IMAGE_APPEND", "")
        self.forwards = {g: free_port() for g in self.guest_ports}
        hostfwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.forwards.items())
        kvm = os.access("/dev/kvm", os.R_OK | os.W_OK) and os.environ.get("GATEHOUSE_QEMU_KVM") == "1"
        accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]
        args = ["qemu-system-x86_64", "-nodefaults", "-nographic", "-machine", "q35", *accel,
                "-smp", "2", "-m", str(self.memory_mib), "-no-reboot",
                "-kernel", str(out / "vmlinuz"), "-initrd", str(out / "initrd.img"), "-append", cmdline,
                "-drive", f"file={self.disk},if=none,id=disk0,format=raw,cache=unsafe",
                "-device", "virtio-blk-pci,drive=disk0,serial=gh-disk",
                "-netdev", f"user,id=n0,{hostfwd}", "-device", "virtio-net-pci,netdev=n0,romfile=",
                "-serial", f"file:{self.console_log}",
                "-monitor", f"unix:{self.monitor},server=on,wait=off"]
        if self.seed is not None:
            args += ["-drive", f"file={self.seed},if=none,id=seed,format=raw,readonly=on",
                     "-device", "virtio-blk-pci,drive=seed,serial=gh-seed"]
        if self.tpm is not None:
            args += ["-chardev", f"socket,id=chrtpm,path={self.tpm.sock}",
                     "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
        self.console_log.unlink(missing_ok=True)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(self.workdir / "qemu.out", "ab"),
                                     stderr=subprocess.STDOUT)

    def host_port(self, guest_port: int) -> int:
        return self.forwards[guest_port]

    def wait_console(self, marker: str, timeout: float) -> float:
        """Seconds since start when `marker` appeared on the console; raises on timeout/exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.console():
                return time.monotonic() - self.started_at
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}) before {marker!r}:\n{self.console()[-6000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"{marker!r} not on the console within {timeout}s:\n{self.console()[-6000:]}")

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _monitor(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.monitor))
            s.sendall(command.encode() + b"\n")
            time.sleep(0.2)

    def shutdown(self, timeout: float = 90) -> bool:
        """ACPI power-down (systemd-logind in the guest), repeated until QEMU exits. True if clean."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._monitor("system_powerdown")
            except OSError:
                pass
            if self.wait_exit(5) is not None:
                return True
        self.kill()
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def console_values(text: str, key: str) -> list[str]:
    """The values of `KEY: value` lines the appliance printed (gatehouse-console.service)."""
    prefix = f"{key}: "
    out = []
    for line in text.splitlines():
        line = line.strip("\r")
        i = line.find(prefix)
        if i >= 0:
            out.append(line[i + len(prefix):].strip())
    return out
