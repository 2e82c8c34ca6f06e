"""Boot test of the appliance image (image/build.sh): the real image under qemu-system-x86_64
(TCG when KVM is not usable) with swtpm as its TPM and user-mode networking.

First boot encrypts the data volume with a TPM-sealed key, imports the seed (an OpenID provider
and a connection to the PostgreSQL server on the host), provisions the key store, starts the
sandboxed gateway and prints its state on the serial console. The test then runs psql through
the forwarded port, checks that no other port answers, that the root is the read-only,
dm-verity-checked erofs, reboots to show the TPM unlocks the volume again, and boots copies of
the image with one flipped byte in the root file system and in the hash tree: neither may come
up.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from appliance import (GUEST_PG_PORT, HOST_FROM_GUEST, Swtpm, Vm, console_values, flip_byte, image_dir,
                       make_seed, make_tls, manifest, sparse_copy)
from harness import CANARY, OidcProvider, Postgres, free_port, pg_bin_dir, psql_path

# Ports the appliance must not answer on (forwarded like the gateway's, so a listener there
# would be reachable): SSH, HTTP(S), pgbouncer's, a console-ish port, LLMNR's TCP port.
CLOSED_PORTS = [22, 80, 443, 6432, 8443, 5355]
FIRST_BOOT_TIMEOUT = float(os.environ.get("GATEHOUSE_IMAGE_BOOT_TIMEOUT", "300"))
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def image() -> dict:
    out = image_dir()
    for f in ("gatehouse.img", "vmlinuz", "initrd.img", "cmdline", "manifest.json"):
        assert (out / f).is_file(), f"{out / f} missing: build the image first (image/build.sh)"
    return manifest()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("appliance")


@pytest.fixture(scope="module")
def pg() -> Postgres:
    server = Postgres(free_port(), pg_bin_dir())
    try:
        server.init()
        # The appliance reaches the host's loopback through QEMU's user network (10.0.2.2).
        server.start()
        server.setup_schema()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def oidc(work) -> OidcProvider:
    tls = make_tls(work)
    port = free_port()
    provider = OidcProvider(work / "oidc", port=port, issuer=f"https://{HOST_FROM_GUEST}:{port}", tls=tls)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def booted(image, work, pg, oidc):
    """The appliance after its first boot, with its TPM: (vm, tpm, console text)."""
    disk = work / "gatehouse.img"
    sparse_copy(image_dir() / "gatehouse.img", disk)
    seed = work / "seed.tar"
    make_seed(seed, issuer=oidc.issuer, ca_pem=oidc.tls[2], pg_port=pg.port, password=CANARY)
    tpm = Swtpm(work / "tpm")
    tpm.start()
    vm = Vm(work, disk, tpm, seed=seed, guest_ports=[GUEST_PG_PORT, *CLOSED_PORTS])
    vm.start()
    try:
        TIMINGS["first boot to ready"] = vm.wait_console("GATEHOUSE-READY", FIRST_BOOT_TIMEOUT)
        yield vm, tpm, vm.console()
    finally:
        vm.shutdown()
        tpm.stop()


def psql(port: int, user: str, token: str, sql: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGPASSWORD=token, PGCONNECT_TIMEOUT="20")
    for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGSSLMODE"):
        env.pop(k, None)
    return subprocess.run([psql_path(), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                           f"host=127.0.0.1 port={port} dbname=app user={user} sslmode=require", "-c", sql],
                          capture_output=True, text=True, timeout=90, env=env, stdin=subprocess.DEVNULL)


def answers(port: int) -> bool:
    """Does something in the guest answer on the port forwarded to `port`? QEMU's user network
    accepts the host-side connection itself, so "answers" means: replies to a PostgreSQL
    SSLRequest (which also makes SSH, HTTP and TLS servers talk or close with data)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(4)
            s.sendall(struct.pack("!ii", 8, 80877103))
            return len(s.recv(64)) > 0
    except OSError:
        return False


def test_first_boot_serves_psql_through_the_gateway(booted, oidc, pg):
    vm, _, console = booted
    token = oidc.token("agent-alice")
    p = psql(vm.host_port(GUEST_PG_PORT), "agent-alice", token,
             "SELECT count(*), sum(id) FROM items; SELECT current_user")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1000|500500", "gh_app"], p.stdout
    # The upstream credential came through the vault; it is in no output the client saw.
    assert CANARY not in p.stdout + p.stderr
    # A forged token is refused in PostgreSQL's own terms.
    bad = psql(vm.host_port(GUEST_PG_PORT), "agent-alice", token[:-4] + "AAAA", "SELECT 1")
    assert bad.returncode != 0 and "FATAL" in bad.stderr, bad.stderr


def test_console_prints_connection_information(booted, image):
    _, _, console = booted
    addr = console_values(console, "GATEHOUSE-ADDRESS")
    assert addr and addr[0].startswith("10.0.2."), console[-3000:]
    assert any(f"port={GUEST_PG_PORT}" in line for line in console_values(console, "GATEHOUSE-POSTGRES"))
    assert re.fullmatch(r"[0-9a-f]{64}", console_values(console, "GATEHOUSE-TLS-SHA256")[0])
    assert console_values(console, "GATEHOUSE-KEYSTORE") == ["tpm"]
    # The board's watchdog is armed: the gateway opened it and pets it.
    assert console_values(console, "GATEHOUSE-WATCHDOG") == ["Software Watchdog active"], console[-3000:]
    # The recovery key of the data volume is shown once, on the first boot.
    assert "DATA VOLUME RECOVERY KEY" in console
    # Nothing the gateway vaults reaches the console.
    assert CANARY not in console


def test_root_is_read_only_verity_checked_erofs(booted, image):
    _, _, console = booted
    dev, fstype, opts = console_values(console, "GATEHOUSE-ROOT")[0].split()
    assert (dev, fstype) == ("/dev/mapper/gh-root", "erofs")
    assert "ro" in opts.split(","), opts
    status, roothash = console_values(console, "GATEHOUSE-VERITY")[0].split()
    assert status == "verified"
    assert roothash == image["roothash"]
    data = console_values(console, "GATEHOUSE-DATA")[0].split()
    assert data == ["/dev/mapper/gh-data", "ext4", "LUKS2"], data


def test_only_the_gateway_port_answers(booted):
    vm, _, console = booted
    assert answers(vm.host_port(GUEST_PG_PORT)), "the gateway does not answer"
    for port in CLOSED_PORTS:
        assert not answers(vm.host_port(port)), f"guest port {port} answers"
    # Inside: the firewall drops by default and opens the gateway's port only, and nothing but
    # the gateway listens on a non-loopback address.
    assert console_values(console, "GATEHOUSE-FIREWALL") == [f"input policy drop, open tcp: {GUEST_PG_PORT}"]
    exposed = []
    for sock in console_values(console, "GATEHOUSE-SOCKET"):
        proto, addr = sock.split()
        ip = addr.rsplit(":", 1)[0]
        if ip.startswith("127.") or ip == "::1":
            continue
        if proto.startswith("udp") and addr.endswith(":68"):
            continue  # the DHCP client
        exposed.append(sock)
    assert sorted(exposed) in ([f"tcp 0.0.0.0:{GUEST_PG_PORT}"], [f"tcp6 :::{GUEST_PG_PORT}"]), exposed


def data_luks_header(disk: Path, out: Path) -> Path:
    """The first 16 MiB (the LUKS2 header area) of the gh-data partition, as a file: the host
    has no device-mapper, but cryptsetup reads headers and tests keys on plain files."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]
    part = next(p for p in table["partitions"] if p.get("name") == "gh-data")
    with open(disk, "rb") as src, open(out, "wb") as dst:
        src.seek(part["start"] * table.get("sectorsize", 512))
        dst.write(src.read(16 << 20))
    return out


def recovery_key(console: str) -> str:
    lines = [line.strip() for line in console.splitlines()]
    i = next(i for i, line in enumerate(lines) if "DATA VOLUME RECOVERY KEY" in line)
    return lines[i + 1]


def test_reboot_unlocks_the_data_volume_with_the_tpm(booted, work, oidc):
    vm, tpm, first_console = booted
    first_fpr = console_values(first_console, "GATEHOUSE-TLS-SHA256")[0]
    assert vm.shutdown(), "the appliance did not power down cleanly"
    # The data partition is LUKS2 with exactly two ways in: the TPM token and the recovery key
    # printed at first boot (the one-time format key is gone).
    header = data_luks_header(vm.disk, work / "gh-data.luks")
    meta = json.loads(subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", str(header)],
                                     check=True, capture_output=True, text=True).stdout)
    assert sorted(t["type"] for t in meta["tokens"].values()) == ["systemd-recovery", "systemd-tpm2"]
    assert sorted(meta["keyslots"]) == ["1", "2"], meta["keyslots"].keys()  # slot 0 (one-time key) removed
    key = recovery_key(first_console)
    assert re.fullmatch(r"([a-z]{8}-){7}[a-z]{8}", key), key
    for candidate, ok in ((key, True), (key[:-1] + ("a" if key[-1] != "a" else "b"), False)):
        p = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(header)],
                           input=candidate.encode(), capture_output=True, timeout=120)
        assert (p.returncode == 0) == ok, p.stderr
    tpm.stop()
    tpm.start()
    second = Vm(work, vm.disk, tpm, seed=None, guest_ports=[GUEST_PG_PORT])
    second.start()
    try:
        TIMINGS["second boot to ready"] = second.wait_console("GATEHOUSE-READY", FIRST_BOOT_TIMEOUT)
        console = second.console()
        assert "DATA VOLUME RECOVERY KEY" not in console
        # Same data volume: the same TLS certificate, the vaulted connection still there.
        assert console_values(console, "GATEHOUSE-TLS-SHA256") == [first_fpr]
        p = psql(second.host_port(GUEST_PG_PORT), "agent-alice", oidc.token("agent-alice"), "SELECT count(*) FROM items")
        assert p.returncode == 0 and p.stdout.strip() == "1000", p.stderr
        t0 = time.monotonic()
        assert second.shutdown(), "the appliance did not power down cleanly"
        TIMINGS["clean shutdown"] = time.monotonic() - t0
    finally:
        second.kill()
        tpm.stop()


@pytest.mark.parametrize("where", ["root file system", "hash tree"])
def test_a_flipped_byte_stops_the_boot(image, work, where):
    disk = work / f"tampered-{where.replace(' ', '-')}.img"
    sparse_copy(image_dir() / "gatehouse.img", disk)
    if where == "root file system":
        # In the erofs superblock (offset 1024 of the root partition): read by every mount.
        offset = image["root_offset_mib"] * 1024 * 1024 + 1024 + 8
    else:
        # In the hash tree's first data block after the verity superblock (4 KiB): the level
        # every read of the root goes through.
        offset = image["verity_offset_mib"] * 1024 * 1024 + 4096 + 17
    flip_byte(disk, offset)
    vm = Vm(work, disk, None, guest_ports=[GUEST_PG_PORT])
    vm.start()
    try:
        rc = vm.wait_exit(FIRST_BOOT_TIMEOUT)
        console = vm.console()
        assert rc is not None, f"a tampered image kept running:\n{console[-3000:]}"
        assert "GATEHOUSE-READY" not in console
        assert "dm-verity device corrupted" in console or "gatehouse: dm-verity" in console, console[-3000:]
        assert not answers(vm.host_port(GUEST_PG_PORT))
        TIMINGS[f"tampered {where}: boot refused"] = time.monotonic() - vm.started_at
    finally:
        vm.kill()
        disk.unlink(missing_ok=True)


def test_report_timings(image):
    """Not a check: prints what the boot test measured (docs/benchmarks.md quotes it)."""
    out = image_dir()
    sizes = {f: (out / f).stat().st_size for f in ("vmlinuz", "initrd.img")}
    disk_alloc = (out / "gatehouse.img").stat().st_blocks * 512
    print(json.dumps({"timings_s": {k: round(v, 1) for k, v in TIMINGS.items()},
                      "root_erofs_bytes": image["root_size_bytes"], "disk_allocated_bytes": disk_alloc,
                      **sizes}, indent=1))
