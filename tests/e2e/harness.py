"""Real peers for the Gatehouse end-to-end tests: a PostgreSQL server, an OpenID provider
(node-oidc-provider) and the gatehouse binary itself. No mocks.

Used by conftest.py (fixtures) and directly by tests that need their own instance.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
import psycopg
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

REPO = Path(__file__).resolve().parents[2]
OIDC_DIR = REPO / "tests" / "oidc"

# The upstream role's password. It lives only in PostgreSQL and in the gateway's vault; it
# must never show up anywhere a client, a log reader or an auditor can see.
CANARY = "CANARY-pw-7f3a9c1e"
OWNER_PASSWORD = "owner-pw-5d1e0b"
APP_ROLE = "gh_app"
OWNER_ROLE = "gh_owner"
APP_DB = "appdb"
CONNECTION = "app"  # the name clients put in dbname

# OIDC clients the test provider knows. sub of their access tokens == client_id.
CLIENTS = [
    {"client_id": "agent-alice", "client_secret": "alice-secret-1", "groups": ["analysts"],
     "email": "alice@example.test"},
    {"client_id": "agent-bob", "client_secret": "bob-secret-2", "groups": ["analysts", "engineers"],
     "email": "bob@example.test"},
    {"client_id": "agent-carol", "client_secret": "carol-secret-3", "groups": []},
]

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def port_is_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after timeout. Returns the exit code (None if it had to be killed)."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------

def pg_bin_dir() -> Path:
    env = os.environ.get("PG_BIN")
    if env:
        return Path(env)
    cands = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        try:
            cands.append((int(Path(d).parent.name), Path(d)))
        except ValueError:
            pass
    if not cands:
        found = shutil.which("initdb")
        if found:
            return Path(found).parent
        raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) found")
    return max(cands)[1]


def psql_path() -> str:
    p = pg_bin_dir() / "psql"
    return str(p) if p.exists() else (shutil.which("psql") or "psql")


class Postgres:
    """A throwaway PostgreSQL cluster. initdb refuses to run as root, so as root the server runs as
    the `postgres` system user (created by Debian's postgresql-common) in a directory it owns."""

    def __init__(self, port: int, bindir: Path):
        self.port = port
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.run_as: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="gh-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as e:
                raise RuntimeError("running as root needs the `postgres` system user") from e
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"

    def _run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        p = subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL, cwd=self.root, **kw)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {p.returncode}: {p.stdout}\n{p.stderr}")
        return p

    def init(self) -> None:
        pwfile = self.root / "owner.pw"
        pwfile.write_text(OWNER_PASSWORD + "\n")
        if self.run_as:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        env = dict(os.environ, LC_ALL="C", LANG="C")
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", OWNER_ROLE,
                  "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                  "--no-sync", env=env)
        pwfile.unlink()
        self._run("mkdir", "-p", str(self.sockdir))
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(
                "\n# gatehouse e2e\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.sockdir}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 100\n"
                "log_min_messages = warning\n"
            )

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.root / "postgres.log"),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                        "stop"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL, cwd=self.root)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def owner_conninfo(self, dbname: str = APP_DB) -> str:
        return (f"host={self.host} port={self.port} dbname={dbname} user={OWNER_ROLE} "
                f"password={OWNER_PASSWORD} sslmode=disable")

    def owner_connect(self, dbname: str = APP_DB) -> psycopg.Connection:
        return psycopg.connect(self.owner_conninfo(dbname), autocommit=True)

    def setup_schema(self) -> None:
        with psycopg.connect(self.owner_conninfo("postgres"), autocommit=True) as c:
            c.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{CANARY}'")
            c.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_ROLE}")
        with self.owner_connect() as c:
            c.execute(f"ALTER SCHEMA public OWNER TO {APP_ROLE}")
            c.execute(f"SET ROLE {APP_ROLE}")
            c.execute(
                "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),"
                " created timestamptz NOT NULL DEFAULT now(), payload bytea)"
            )
            c.execute(
                "INSERT INTO items (id, name, price, payload) "
                "SELECT g, 'item-' || g, g * 1.25, decode(lpad(to_hex(g), 8, '0'), 'hex') "
                "FROM generate_series(1, 1000) g"
            )

    def log_text(self) -> str:
        p = self.root / "postgres.log"
        return p.read_text(errors="replace") if p.exists() else ""


# ---------------------------------------------------------------------------------------
# OpenID provider (node-oidc-provider)
# ---------------------------------------------------------------------------------------

def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_jwk(key: Any, kid: str) -> dict:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(key))
        jwk["alg"] = "RS256"
    else:
        jwk = json.loads(ECAlgorithm.to_jwk(key))
        jwk["alg"] = "ES256"
    jwk.update(kid=kid, use="sig")
    return jwk


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class OidcProvider:
    """node tests/oidc/provider.mjs with keys this process generated (so it can forge too)."""

    def __init__(self, root: Path, keys: list[tuple[str, Any]] | None = None, alg: str = "RS256",
                 sign_kid: str | None = None, port: int | None = None, issuer: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None):
        """tls = (cert, key, ca): serve HTTPS; `issuer` may then name an address only the
        gateway sees (the appliance VM's https://10.0.2.2:PORT), the tests reach 127.0.0.1."""
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.local_base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.issuer = issuer or self.local_base
        self.verify: str | bool = str(tls[2]) if tls else True
        self.keys: list[tuple[str, Any]] = keys or [("k1", new_rsa_key())]
        self.alg = alg
        self.sign_kid = sign_kid
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "oidc.log"
        (self.root / "clients.json").write_text(json.dumps(CLIENTS))

    @property
    def private_key(self) -> Any:
        """The key tokens are signed with (by default the first)."""
        if self.sign_kid:
            return dict(self.keys)[self.sign_kid]
        return self.keys[0][1]

    @property
    def kid(self) -> str:
        return self.sign_kid or self.keys[0][0]

    def start(self) -> None:
        jwks = {"keys": [private_jwk(k, kid) for kid, k in self.keys]}
        jwks_path = self.root / "private-jwks.json"
        jwks_path.write_text(json.dumps(jwks))
        os.chmod(jwks_path, 0o600)
        node_modules = OIDC_DIR / "node_modules" / "oidc-provider"
        if not node_modules.exists():
            raise RuntimeError(f"{node_modules} missing: run `npm ci` in {OIDC_DIR} (scripts/test-all.sh does)")
        args = ["node", str(OIDC_DIR / "provider.mjs"), "--port", str(self.port), "--issuer", self.issuer,
                "--jwks", str(jwks_path), "--clients", str(self.root / "clients.json"), "--alg", self.alg]
        if self.sign_kid:
            args += ["--sign-kid", self.sign_kid]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=OIDC_DIR)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        url = f"{self.local_base}/.well-known/openid-configuration"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oidc provider exited: {self.log_path.read_text(errors='replace')}")
            try:
                r = requests.get(url, timeout=1, verify=self.verify)
                if r.status_code == 200 and r.json().get("issuer") == self.issuer:
                    self.discovery = r.json()
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"oidc provider not ready: {self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        self.proc = None

    def restart(self, keys: list[tuple[str, Any]] | None = None, sign_kid: str | None = None,
                alg: str | None = None) -> None:
        self.stop()
        if keys is not None:
            self.keys = keys
        self.sign_kid = sign_kid
        if alg:
            self.alg = alg
        self.start()

    def token(self, client_id: str = "agent-alice") -> str:
        secret = next(c["client_secret"] for c in CLIENTS if c["client_id"] == client_id)
        r = requests.post(
            self.discovery["token_endpoint"],
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
                  "resource": "urn:gatehouse", "scope": "db"},
            timeout=10, verify=self.verify,
        )
        assert r.status_code == 200, f"token endpoint: {r.status_code} {r.text}"
        body = r.json()
        assert body["token_type"].lower() == "bearer"
        return body["access_token"]

    # -- forging ---------------------------------------------------------------------
    def claims_of(self, token: str) -> dict:
        return json.loads(b64url_decode(token.split(".")[1]))

    def forge(self, claims: dict, *, key: Any = None, kid: str | None = None, alg: str | None = None,
              headers: dict | None = None) -> str:
        """Sign claims as the provider would (by default with its own current key and kid)."""
        key = key if key is not None else self.private_key
        alg = alg or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")
        hdr = {"typ": "at+jwt", "kid": kid if kid is not None else self.kid}
        if headers:
            hdr.update(headers)
        return pyjwt.encode(claims, key, algorithm=alg, headers=hdr)

    def valid_claims(self, client_id: str = "agent-alice") -> dict:
        info = next(c for c in CLIENTS if c["client_id"] == client_id)
        now = int(time.time())
        return {"iss": self.issuer, "aud": "gatehouse", "sub": client_id, "client_id": client_id,
                "groups": info["groups"], "preferred_username": client_id, "iat": now, "exp": now + 600,
                "jti": uuid.uuid4().hex, "scope": "db"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def alg_none_token(claims: dict) -> str:
    return b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64url(json.dumps(claims).encode()) + "."


def hs256_token(claims: dict, secret: bytes, kid: str | None) -> str:
    hdr = {"alg": "HS256", "typ": "JWT"}
    if kid:
        hdr["kid"] = kid
    signing_input = b64url(json.dumps(hdr).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def tamper_payload(token: str, **changes: Any) -> str:
    h, p, s = token.split(".")
    claims = json.loads(b64url_decode(p))
    claims.update(changes)
    return h + "." + b64url(json.dumps(claims).encode()) + "." + s


# ---------------------------------------------------------------------------------------
# gatehouse
# ---------------------------------------------------------------------------------------

def gatehouse_bin() -> str:
    env = os.environ.get("GATEHOUSE_BIN")
    if env:
        return env
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache" / "gatehouse" / "target")
    return str(Path(target) / "debug" / "gatehouse")


class Gatehouse:
    """One gatehouse instance: its config, data dir and (once started) its `serve` process."""

    def __init__(self, root: Path, pg: Postgres | None, oidc: OidcProvider | None, *,
                 upstream_port: int | None = None, upstream_password: str = CANARY,
                 upstream_user: str = APP_ROLE, plaintext: bool = False, dev_issuer: bool = True,
                 extra_toml: str = "", env: dict[str, str] | None = None, issuer_name: str | None = None):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.bin = gatehouse_bin()
        if not Path(self.bin).is_file():
            raise RuntimeError(f"gatehouse binary not found at {self.bin} (set GATEHOUSE_BIN or build it)")
        self.data_dir = self.root / "data"
        self.config = self.root / "gatehouse.toml"
        self.log_path = self.root / "gatehouse.log"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.pg = pg
        self.oidc = oidc
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ)
        self.env.pop("GATEHOUSE_CONFIG", None)
        if env:
            self.env.update(env)
        lines = [
            "[gateway]",
            'name = "gh-test"',
            f'data_dir = "{self.data_dir}"',
            "",
            "[[listeners]]",
            'name = "pg"',
            'protocol = "postgres"',
            f'bind = "127.0.0.1:{self.port}"',
        ]
        if plaintext:
            lines.append("dangerous_allow_plaintext_on_loopback = true")
        lines += ["", "[identity]", "jwks_refresh_min_interval_seconds = 1", ""]
        if oidc is not None:
            lines += [
                "[[identity.issuers]]",
                *([f'name = "{issuer_name}"'] if issuer_name else []),
                f'issuer = "{oidc.issuer}"',
                'audience = ["gatehouse"]',
                'username_claim = "sub"',
                'groups_claim = "groups"',
                "",
            ]
        lines += ["[identity.dev_issuer]", f"enabled = {'true' if dev_issuer else 'false'}", ""]
        self.config.write_text("\n".join(lines) + "\n" + extra_toml)
        if pg is not None:
            self.connection_add(CONNECTION, port=upstream_port or pg.port, password=upstream_password,
                                user=upstream_user, tags={"environment": "test"})

    # -- CLI -------------------------------------------------------------------------
    def cli(self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True,
            config: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [self.bin, "--config", str(config or self.config), *args]
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def connection_add(self, name: str, *, port: int, password: str, user: str = APP_ROLE,
                       database: str = APP_DB, host: str = "127.0.0.1", tls: str = "disable",
                       tags: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        args = ["connection", "add", name, "--host", host, "--port", str(port), "--database", database,
                "--user", user, "--tls", tls]
        for k, v in (tags or {}).items():
            args += ["--tag", f"{k}={v}"]
        return self.cli(*args, input=password + "\n")

    def token(self, user: str, groups: list[str] | None = None, ttl: int | None = None) -> str:
        args = ["token", "--user", user]
        if groups:
            args += ["--groups", ",".join(groups)]
        if ttl is not None:
            args += ["--ttl-seconds", str(ttl)]
        tok = self.cli(*args).stdout.strip()
        assert tok.count(".") == 2, f"`gatehouse token` did not print a JWT: {tok!r}"
        return tok

    def audit_json(self) -> list[dict]:
        out = self.cli("audit", "tail", "-n", "100000", "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # -- serve -----------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin, "--config", str(self.config), "serve"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        log.close()
        if wait:
            try:
                wait_port(self.port, START_TIMEOUT, self.proc, "gatehouse serve")
            except Exception as e:
                raise RuntimeError(f"{e}\n--- gatehouse log ---\n{self.log_text()}") from e

    def stop(self) -> int | None:
        rc = stop_process(self.proc)
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients ---------------------------------------------------------------------
    def conninfo(self, user: str, password: str, dbname: str = CONNECTION, sslmode: str = "require") -> str:
        return (f"host={self.host} port={self.port} dbname={dbname} user={user} password={password} "
                f"sslmode={sslmode} connect_timeout=10")

    def connect(self, user: str, password: str, dbname: str = CONNECTION, **kw: Any) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, dbname=dbname, user=user, password=password,
                               sslmode="require", connect_timeout=10, **kw)

    def url(self, user: str, token: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{user}:{token}@{self.host}:{self.port}/{CONNECTION}?sslmode=require"

    def psql(self, user: str, token: str, *args: str, input: str | None = None, timeout: float = 60,
             dbname: str = CONNECTION) -> subprocess.CompletedProcess:
        env = dict(os.environ, PGPASSWORD=token, PGCONNECT_TIMEOUT="10")
        for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGSSLMODE"):
            env.pop(k, None)
        cmd = [psql_path(), "-X", f"host={self.host} port={self.port} dbname={dbname} user={user} sslmode=require",
               *args]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=None if input is not None else subprocess.DEVNULL)


def wait_for(pred, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def sql_error_state(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(exc, "sqlstate", None)


__all__ = [name for name in dir(sys.modules[__name__]) if not name.startswith("_")]
