"""Masking in flight through the real data path: DataRow values (text and binary format),
column rules, COPY OUT (text and binary), error messages, notifications, LangChain's
SQLDatabase, and a vaulted password stored in a table row — masked always, even without a
[masking] config. Per-statement counts land in the audit trail, never the values."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import psycopg
import pytest

from harness import CANARY, sql_error_state

MASKING = """
[masking]
[masking.entities]
card = { kind = "partial", keep_last = 4 }

[[masking.rules]]
name = "ssn-column"
columns = ["ssn"]
strategy = { kind = "redact", replacement = "***-**-****" }
"""

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
SSN_PLAIN = "078051120"  # nine plain digits: masked only by the column rule


@pytest.fixture(scope="module")
def people(pg):
    table = f"people_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, email text, card text, "
                  "ssn text, note text, doc jsonb)")
        c.execute(f"INSERT INTO {table} VALUES (1, 'Jane', %s, %s, %s, 'nothing to see', %s)",
                  (EMAIL, CARD, SSN_PLAIN, '{"contact": "jane.doe@example.com", "n": 1}'))
        c.execute(f"INSERT INTO {table} VALUES (2, 'Leak', 'x', 'y', 'z', %s, NULL)",
                  (f"the db password is {CANARY} oops",))
        c.execute(f"INSERT INTO {table} SELECT g, 'n' || g, 'e' || g, NULL, NULL, 'plain', NULL "
                  "FROM generate_series(3, 500) g")
    yield table
    with pg.owner_connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def masked_gw(gatehouse):
    return gatehouse(extra_toml=MASKING)


def test_rows_are_masked_text_and_binary(masked_gw, people):
    gw = masked_gw
    token = gw.token("mask-user")
    with gw.connect("mask-user", token, autocommit=True) as c:
        for binary in (False, True):
            cur = c.cursor(binary=binary)
            row = cur.execute(f"SELECT id, name, email, card, ssn, note, doc FROM {people} WHERE id = 1").fetchone()
            assert row[0] == 1 and row[1] == "Jane"
            assert row[2] == "[REDACTED:EMAIL]", row
            assert row[3].endswith("1111") and "4111 1111" not in row[3], row
            assert row[4] == "***-**-****", row
            assert row[5] == "nothing to see"
            assert EMAIL not in str(row[6]) and row[6]["n"] == 1, row
            leak = cur.execute(f"SELECT note FROM {people} WHERE id = 2").fetchone()[0]
            assert CANARY not in leak and "REDACTED" in leak, leak
        # Many rows stream through; unmasked values are untouched.
        rows = c.execute(f"SELECT id, email FROM {people} WHERE id > 2 ORDER BY id").fetchall()
        assert len(rows) == 498 and rows[0] == (3, "e3")


def test_copy_out_text_and_binary(gatehouse, people):
    # Detectors mask COPY rows; column rules cannot (a COPY's rows carry no column names), so
    # this gateway has none (see test_copy_out_refused_with_column_rules).
    gw = gatehouse(extra_toml="[masking]\n[masking.entities]\ncard = { kind = \"partial\", keep_last = 4 }\n")
    token = gw.token("mask-copy")
    with gw.connect("mask-copy", token, autocommit=True) as c:
        with c.cursor() as cur:
            text = b""
            with cur.copy(f"COPY (SELECT * FROM {people} WHERE id <= 2) TO STDOUT") as cp:
                for chunk in cp:
                    text += bytes(chunk)
            binary = b""
            with cur.copy(f"COPY (SELECT * FROM {people} WHERE id <= 2) TO STDOUT (FORMAT binary)") as cp:
                for chunk in cp:
                    binary += bytes(chunk)
    for data in (text, binary):
        assert CANARY.encode() not in data and EMAIL.encode() not in data and b"4111 1111" not in data
        assert b"REDACTED" in data
    assert binary.startswith(b"PGCOPY\n\xff\r\n\x00")
    out = gw.psql("mask-copy", token, "-c", f"\\copy (SELECT note FROM {people} WHERE id = 2) TO STDOUT").stdout
    assert CANARY not in out and "REDACTED" in out


def test_copy_out_refused_with_column_rules(masked_gw, people):
    gw = masked_gw
    token = gw.token("mask-copy-rules")
    with gw.connect("mask-copy-rules", token, autocommit=True) as c:
        for sql in (f"COPY (SELECT ssn AS x FROM {people}) TO STDOUT",
                    f"COPY {people} TO STDOUT (FORMAT binary)",
                    f"copy {people} (ssn) to stdout with (format csv)"):
            with pytest.raises(psycopg.Error) as ei:
                with c.cursor().copy(sql) as cp:
                    for _ in cp:
                        pass
            assert sql_error_state(ei.value) == "54000", (sql, ei.value)
            assert "column rules" in str(ei.value)
        # The session goes on.
        assert c.execute(f"SELECT ssn FROM {people} WHERE id = 1").fetchone()[0] == "***-**-****"
    out = gw.psql("mask-copy-rules", token, "-c", f"\\copy (SELECT ssn FROM {people} WHERE id = 1) TO STDOUT")
    assert SSN_PLAIN not in out.stdout and "column rules" in out.stderr, (out.stdout, out.stderr)


def test_errors_and_notifications_are_masked(masked_gw):
    gw = masked_gw
    token = gw.token("mask-err")
    with gw.connect("mask-err", token, autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"SELECT '{CANARY}'::int")
        assert sql_error_state(ei.value) == "22P02"
        # libpq renders "LINE 1: <the client's own query>" itself; the server's fields are masked.
        diag = ei.value.diag
        assert CANARY not in (diag.message_primary or "") and "REDACTED" in diag.message_primary, diag.message_primary
        c.execute("LISTEN mask_ch")
        c.execute(f"NOTIFY mask_ch, 'card {CARD} for jane'")
        n = next(c.notifies(timeout=5))
        assert "4111 1111" not in n.payload and n.payload.endswith("for jane"), n.payload


def test_langchain_sees_masked_values(masked_gw, people):
    from langchain_community.utilities import SQLDatabase

    gw = masked_gw
    token = gw.token("mask-agent")
    db = SQLDatabase.from_uri(gw.url("mask-agent", token), include_tables=[people], sample_rows_in_table_info=0)
    out = db.run(f"SELECT email, card, ssn, note FROM {people} WHERE id <= 2 ORDER BY id")
    assert EMAIL not in out and "4111 1111" not in out and SSN_PLAIN not in out and CANARY not in out, out
    assert "[REDACTED:EMAIL]" in out and "***-**-****" in out


def test_counts_in_audit_and_no_values(masked_gw, people):
    gw = masked_gw
    token = gw.token("mask-audit")
    with gw.connect("mask-audit", token, autocommit=True) as c:
        c.execute(f"SELECT email, card, ssn, note FROM {people} WHERE id <= 2").fetchall()
    recs = gw.audit_json()
    stmt = [r for r in recs if r.get("username") == "mask-audit" and r["event"] == "statement"][-1]
    result = [r for r in recs if r["event"] == "statement.result" and r.get("ref_seq") == stmt["seq"]][0]
    note = result["reason"]
    assert note.startswith("masked:"), result
    for part in ("card=1", "email=1", "vaulted_secret=1", "rule:ssn-column=2"):
        assert part in note, note
    leaks = [r for r in recs if r["event"] == "secret.masked" and r.get("ref_seq") == stmt["seq"]]
    assert len(leaks) == 1 and leaks[0]["rows"] == 1 and leaks[0]["username"] == "mask-audit", leaks
    gw.stop()
    # The stopped leak is its own evidence item in exports (SI-4, IR-4) and in the summary.
    out = gw.root / "evidence"
    catalog = Path(__file__).resolve().parents[3] / "shared" / "oscal" / "NIST_SP-800-53_rev5_catalog.json"
    gw.cli("audit", "export", "--out", str(out), "--catalog", str(catalog), timeout=120)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["vaulted_secret_hits"] >= 1, manifest["summary"]
    lines = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
    leak = [l for l in lines if l["event"] == "secret.masked"][0]
    assert {"SI-4", "IR-4"} <= {c.upper() for c in leak["controls"]}, leak
    dump = subprocess.run([gw.bin, "--config", str(gw.config), "audit", "tail", "-n", "100000", "--json"],
                          capture_output=True, text=True, env=gw.env).stdout
    assert CANARY not in dump and EMAIL not in dump and "4111 1111" not in dump


def test_vaulted_secret_masked_without_masking_config(gatehouse, people):
    gw = gatehouse()  # no [masking]: only vaulted credentials are masked
    token = gw.token("plain-user")
    with gw.connect("plain-user", token, autocommit=True) as c:
        row = c.execute(f"SELECT email, note FROM {people} WHERE id IN (1, 2) ORDER BY id").fetchall()
    assert row[0][0] == EMAIL  # no detector but the vault's
    assert CANARY not in row[1][1] and "[REDACTED:VAULTED_SECRET]" in row[1][1], row


def test_unmaskable_value_fails_closed(gatehouse):
    gw = gatehouse(extra_toml="\n[masking]\nmax_value_bytes = 4096\n")
    token = gw.token("mask-big")
    with gw.connect("mask-big", token, autocommit=True) as c:
        assert c.execute("SELECT repeat('x', 100)").fetchone()[0] == "x" * 100
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT 'head', repeat('y', 10000)").fetchall()
        assert sql_error_state(ei.value) == "54000", ei.value
        assert "yyyy" not in str(ei.value)
    # Other sessions carry on.
    with gw.connect("mask-big", token, autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    ends = [r for r in gw.audit_json() if r["event"] == "session.end" and r.get("sqlstate") == "54000"]
    assert ends, "the failed session is recorded"


PROFILES = """
[masking]

[[masking_profiles]]
name = "support-last4"
groups = ["dev:support"]
[masking_profiles.masking.entities]
card = { kind = "partial", keep_last = 4 }

[[masking_profiles]]
name = "dba-clear-on-test"
groups = ["dev:dba"]
tags = { environment = "test" }
[masking_profiles.masking]
disabled = ["card", "ssn", "email", "phone", "iban", "ip_address", "aws_key", "private_key", "jwt",
            "bearer_token", "github_token", "stripe_key", "slack_token", "google_api_key",
            "openai_key", "assigned_secret"]

[[masking_profiles]]
name = "dba-elsewhere"
groups = ["dev:dba"]
tags = { environment = "production" }
[masking_profiles.masking]
"""


def test_group_dependent_masking(gatehouse, people):
    gw = gatehouse(extra_toml=PROFILES)
    sql = f"SELECT card, email, note FROM {people} WHERE id IN (1, 2) ORDER BY id"

    def fetch(user: str, groups: list[str]):
        token = gw.token(user, groups=groups)
        with gw.connect(user, token, autocommit=True) as c:
            return c.execute(sql).fetchall()

    analyst = fetch("ana", ["analysts"])
    assert analyst[0][0] == "[REDACTED:CARD]" and analyst[0][1] == "[REDACTED:EMAIL]", analyst
    support = fetch("sam", ["support"])
    assert support[0][0].endswith("1111") and "4111 1111" not in support[0][0], support
    assert support[0][1] == "[REDACTED:EMAIL]"
    dba = fetch("dora", ["dba"])  # the harness connection is tagged environment=test
    assert dba[0][0] == CARD and dba[0][1] == EMAIL, dba
    # Even the DBA never sees a vaulted credential.
    for rows in (analyst, support, dba):
        assert CANARY not in rows[1][2] and "REDACTED" in rows[1][2]
    notes = [r.get("reason") or "" for r in gw.audit_json() if r["event"] == "statement.result"]
    assert any("(profile support-last4)" in n for n in notes), notes
    assert any("(profile dba-clear-on-test)" in n and "vaulted_secret=1" in n for n in notes), notes
    # psql sees the same as psycopg.
    token = gw.token("sam", groups=["support"])
    out = gw.psql("sam", token, "-At", "-c", f"SELECT card FROM {people} WHERE id = 1").stdout
    assert out.strip().endswith("1111") and "4111 1111" not in out, out
