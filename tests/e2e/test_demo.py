"""`gatehouse demo`: a throwaway PostgreSQL + gateway, and a psql command line that works."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from harness import gatehouse_bin, port_is_listening


def test_demo():
    # As root the demo runs PostgreSQL as the `postgres` user, which must be able to reach the
    # directory (pytest's tmp_path lives under a 0700 directory).
    parent = Path(tempfile.mkdtemp(prefix="gh-demo-"))
    os.chmod(parent, 0o755)
    demo_dir = parent / "demo"
    proc = subprocess.Popen([gatehouse_bin(), "demo", "--dir", str(demo_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=False)
    lines: list[str] = []
    found = threading.Event()

    def reader():
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if 'psql "' in line or "psql '" in line:
                found.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert found.wait(90), "demo printed no psql command line:\n" + "".join(lines)
        line = next(l for l in lines if 'psql "' in l or "psql '" in l)
        m = re.search(r"((?:\b[A-Z_]+=\S+\s+)*)psql\s+(.*)$", line.strip())
        assert m, line
        env = dict(os.environ)
        for assignment in shlex.split(m.group(1)):
            k, _, v = assignment.partition("=")
            env[k] = v
        tokens = ["psql", *shlex.split(m.group(2))]
        i = 0
        args = tokens[i + 1:]
        assert args, line
        p = subprocess.run(["psql", "-X", *args, "-At", "-c", "select 1"], capture_output=True, text=True,
                           timeout=60, env=env, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, (line, p.stdout, p.stderr, "".join(lines))
        assert p.stdout.strip() == "1"
        m = re.search(r"port=(\d+)", line)
        port = int(m.group(1)) if m else None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("demo did not stop on SIGTERM")
    shutil.rmtree(parent, ignore_errors=True)
    if port:
        time.sleep(0.2)
        assert not port_is_listening(port), "demo gateway still listening after SIGTERM"
