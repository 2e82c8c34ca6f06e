"""image/check-hardening.sh on the binary that went into the image, and proof that the check
fails on a binary built without each protection."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance import manifest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "image" / "check-hardening.sh"


def check(binary: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK), str(binary)], capture_output=True, text=True, timeout=60)


def test_the_image_binary_is_hardened():
    # build.sh checks and installs this stripped copy; the manifest names its hash.
    cache = Path(os.environ.get("GATEHOUSE_CACHE") or Path.home() / ".cache" / "gatehouse")
    stripped = cache / "image" / "gatehouse.stripped"
    assert stripped.is_file(), "build the image first (image/build.sh)"
    assert hashlib.sha256(stripped.read_bytes()).hexdigest() == manifest()["gatehouse_sha256"]
    p = check(stripped)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("PIE", "full RELRO", "NX", "stack protector", "no RPATH"):
        assert any(line.split()[:1] == ["ok"] and name in line for line in p.stdout.splitlines()), p.stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build the bad binary")
def test_the_check_names_every_missing_protection(tmp_path):
    src = tmp_path / "weak.c"
    src.write_text("#include <string.h>\nint main(int c, char **v) { char b[64]; strcpy(b, v[0]); return b[1]; }\n")
    weak = tmp_path / "weak"
    subprocess.run(["cc", "-O0", "-fno-stack-protector", "-no-pie", "-Wl,-z,norelro", "-Wl,-z,lazy",
                    "-Wl,-z,execstack", "-Wl,-rpath,/tmp/evil", "-o", str(weak), str(src)], check=True)
    p = check(weak)
    assert p.returncode == 1, p.stdout
    failed = [line for line in p.stdout.splitlines() if line.strip().startswith("FAIL")]
    for name in ("PIE", "full RELRO", "NX", "stack protector", "no RPATH"):
        assert any(name in line for line in failed), p.stdout
