"""`gatehouse connection add/update/set-credential`: re-adding a name is refused (its tags, and
with them its guardrails, stay), `update` changes only the given fields, `set-credential`
rotates the upstream password (new logins use it, the running gateway masks it) and the new
password appears nowhere an operator or auditor can read (the canary idea of test_canary.py)."""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path

import psycopg
import pytest

from harness import APP_DB, CANARY, wait_for

ROLE = "gh_rotated"
OLD_PW = "CANARY-old-5b1d27"
NEW_PW = "CANARY-new-c0ffee91"


def variants(secret: str) -> list[bytes]:
    b = secret.encode()
    return [b, b.hex().encode(), base64.b64encode(b).rstrip(b"="), secret.encode("utf-16-le")]


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def rotated_role(pg):
    with pg.owner_connect("postgres") as c:
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")
        c.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{OLD_PW}'")
        c.execute(f"GRANT CONNECT ON DATABASE {APP_DB} TO {ROLE}")
    yield ROLE


def entry(gw, name: str) -> dict:
    import json
    out = gw.cli("connection", "list", "--json").stdout
    return next(json.loads(line) for line in out.splitlines() if json.loads(line)["name"] == name)


def changes(gw, name: str) -> list[dict]:
    return [r for r in gw.audit_json() if r["event"] == "connection.changed" and r.get("connection") == name]


def test_add_refuses_an_existing_name_and_keeps_its_tags(gatehouse, pg):
    gw = gatehouse(start=False)
    gw.connection_add("prod", port=pg.port, password=CANARY, tags={"environment": "production", "team": "a"})
    before = gw.config.read_text()
    p = gw.cli("connection", "add", "prod", "--host", "127.0.0.1", "--port", str(pg.port), "--database",
               APP_DB, "--user", "gh_app", "--tls", "disable", input="other-password\n", check=False)
    assert p.returncode != 0, p
    assert "already exists" in p.stderr and "update" in p.stderr, p.stderr
    # Nothing changed: the file is byte for byte the same, the tags are there.
    assert gw.config.read_text() == before
    assert entry(gw, "prod")["tags"] == {"environment": "production", "team": "a"}
    # The add was audited (no gateway running: the CLI appended it itself).
    recs = changes(gw, "prod")
    assert len(recs) == 1 and recs[0]["reason"].startswith("connection added"), recs
    assert "tag environment=production" in recs[0]["reason"], recs


def test_update_changes_only_the_given_fields(gatehouse, pg):
    gw = gatehouse(start=False)
    gw.connection_add("svc", port=pg.port, password=CANARY, tags={"environment": "production", "team": "a"})
    # A comment in the entry must survive the edit (toml_edit).
    text = gw.config.read_text().replace('name = "svc"', '# the billing replica\nname = "svc"', 1)
    gw.config.write_text(text)
    gw.cli("connection", "update", "svc", "--port", "6543", "--tag", "team=b", "--tag", "tier=1",
           "--remove-tag", "environment")
    e = entry(gw, "svc")
    assert e["port"] == 6543
    assert e["host"] == "127.0.0.1" and e["database"] == APP_DB and e["tls"] == "disable"
    assert e["upstream_user"] == "gh_app" and e["credential"] == "vaulted"
    assert e["tags"] == {"team": "b", "tier": "1"}, e
    assert "# the billing replica" in gw.config.read_text()
    # Unknown connection, unknown tag, nothing to change: refused, nothing written.
    before = gw.config.read_text()
    for args in (["nosuch", "--port", "1"], ["svc", "--remove-tag", "nosuch"], ["svc"]):
        p = gw.cli("connection", "update", *args, check=False)
        assert p.returncode != 0, (args, p)
    assert gw.config.read_text() == before
    recs = changes(gw, "svc")
    assert [r["reason"].split(":")[0] for r in recs] == ["connection added", "connection updated"], recs
    assert "port=6543" in recs[1]["reason"] and "tag environment removed" in recs[1]["reason"], recs


def test_set_credential_rotates_and_never_shows_the_password(gatehouse, pg, rotated_role):
    env = {"RUST_LOG": "debug", "GATEHOUSE_LOG": "debug"}
    gw = gatehouse(start=False, env=env)
    gw.connection_add("rot", port=pg.port, password=OLD_PW, user=ROLE, tags={"environment": "production"})
    gw.start()
    user = f"rot-{uuid.uuid4().hex[:6]}"
    tok = gw.token(user)
    with gw.connect(user, tok, dbname="rot") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == ROLE

    # The upstream password changes; the gateway's old one no longer logs in.
    with pg.owner_connect("postgres") as c:
        c.execute(f"ALTER ROLE {ROLE} PASSWORD '{NEW_PW}'")
    with pytest.raises(psycopg.OperationalError):
        gw.connect(user, tok, dbname="rot").close()

    p = gw.cli("connection", "set-credential", "rot", input=NEW_PW + "\n")
    assert NEW_PW not in p.stdout + p.stderr
    # Vault read per login: works at once, no reload or restart.
    with gw.connect(user, tok, dbname="rot") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == ROLE
    # Tags (and so guardrails) untouched; the upstream user kept.
    e = entry(gw, "rot")
    assert e["tags"] == {"environment": "production"} and e["upstream_user"] == ROLE

    # The running gateway records the change (outbox) and then masks the new password.
    wait_for(lambda: any(r["reason"].startswith("connection credential set") for r in changes(gw, "rot")), timeout=10,
             what="connection.changed record for set-credential")
    def masked() -> bool:
        with gw.connect(user, tok, dbname="rot") as c:
            # The statement carries the password reversed (statements are recorded as sent).
            got = c.execute(f"SELECT reverse('x{NEW_PW[::-1]}x')").fetchone()[0]
            return got != f"x{NEW_PW}x"
    wait_for(masked, timeout=10, what="the new password masked in results")

    # Nowhere in plain sight: CLI output, audit trail, gateway log, any file in the data dir
    # or the config (the vault holds it sealed).
    gw.stop()
    rec = next(r for r in changes(gw, "rot") if r["reason"].startswith("connection credential set"))
    assert rec["subject"].startswith("uid:") and f"upstream user {ROLE}" in rec["reason"], rec
    blobs = {"audit json": "\n".join(map(str, gw.audit_json())).encode(), "log": gw.log_path.read_bytes(),
             "config": gw.config.read_bytes()}
    for f in all_files(gw.data_dir):
        blobs[str(f)] = f.read_bytes()
    for where, data in blobs.items():
        for v in variants(NEW_PW):
            assert v not in data, f"new password (as {v[:12]!r}) found in {where}"
    assert not list((gw.data_dir / "audit-outbox").glob("*.json")), "outbox drained"


def test_changes_without_a_gateway_are_appended_by_the_cli(gatehouse, pg, rotated_role):
    gw = gatehouse(start=False)
    gw.connection_add("offline", port=pg.port, password=OLD_PW, user=ROLE)
    gw.cli("connection", "set-credential", "offline", input=NEW_PW + "\n")
    gw.cli("connection", "remove", "offline")
    reasons = [r["reason"] for r in changes(gw, "offline")]
    assert [re.sub(r":.*", "", x) for x in reasons] == [
        "connection added", "connection credential set", "connection removed"], reasons
    verify = gw.cli("audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
