"""The PostgreSQL path cannot be fooled at the protocol level (issue 14, items 1-6, 8-10).

A hostile client does not have to hide a statement in SQL text: it can change how the
server *reads* the text (standard_conforming_strings, client_encoding), use a message type
the relay does not judge (fast-path FunctionCall), ask for results in a format the masking
does not look into (binary arrays and records), or rely on the gateway's bookkeeping being
out of step with the server's (undescribed portals, prepared statements re-executed after
their approval was used or the policy changed, names the server refused). Each case here is
judged by its effect on the real PostgreSQL server (rows, large objects) or on the bytes the
client received, through the real gateway.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import struct

import pytest

from harness import CANARY, CONNECTION, wait_for
from pgraw import PgRaw

POLICY = """
version = "e2e-protocol-1"
default = "allow"

[[presets]]
enable = ["no_drop_truncate", "no_unbounded_write", "no_privilege_changes", "no_server_files",
          "no_admin_functions"]
tags = { environment = "test" }

[[rules]]
name = "no-dynamic-sql"
action = "deny"
reason = "SQL built at run time cannot be judged"
dangers = ["dynamic_sql"]

[[rules]]
name = "ledger-writes-need-dba"
action = "require_approval"
reason = "writes to the ledger need a DBA"
writes_to = ["ledger_e2e"]

[rules.approval]
approvers = ["dev:dba"]  # dev tokens approve: beside a real IdP, plain names are that IdP's
mode = "ticket"
"""


@pytest.fixture
def guarded(gatehouse, pg, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    gw = gatehouse(extra_toml=f'\n[policy]\npath = "{policy}"\n')
    table = f"bypass_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        c.execute(f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 10) g")
    yield gw, table, policy
    with pg.owner_connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")


def rows_in(pg, table: str) -> int:
    with pg.owner_connect() as c:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def raw_login(gw, user: str = "raw-user", groups: list[str] | None = None,
              extra: dict[str, str] | None = None) -> PgRaw:
    token = gw.token(user, groups=groups or ["analysts"])
    r = PgRaw(gw.host, gw.port)
    res = r.login(user, token, CONNECTION, extra=extra)
    assert res.ok, res.error
    return r


def error_of(msgs) -> dict[str, str] | None:
    for m in msgs:
        if m.type == "E":
            return m.error_fields()
    return None


# -- 1. standard_conforming_strings -----------------------------------------------------

SMUGGLE_SCS = "SELECT '\\', $$'; DELETE FROM {t}; --$$"


def test_scs_off_at_startup_does_not_smuggle_a_delete(guarded, pg):
    gw, table, _ = guarded
    with raw_login(gw, extra={"options": "-c standard_conforming_strings=off"}) as r:
        msgs, err = r.query(SMUGGLE_SCS.format(t=table))
        assert err is not None, "the smuggled DELETE must be refused"
        assert rows_in(pg, table) == 10
        # The session goes on, and a harmless backslash string still works.
        msgs, err = r.query("SELECT 'a\\\\b' AS s")
        assert err is None, err.error_fields() if err else None


def test_scs_off_by_set_even_pipelined(guarded, pg):
    gw, table, _ = guarded
    with raw_login(gw) as r:
        # Both Query messages in one write: the second is judged only after the server
        # answered the first (and reported the new setting).
        q1 = b"SET standard_conforming_strings = off\x00"
        q2 = SMUGGLE_SCS.format(t=table).encode() + b"\x00"
        r.send(b"Q" + struct.pack("!I", len(q1) + 4) + q1 + b"Q" + struct.pack("!I", len(q2) + 4) + q2)
        _, err1 = r.until_ready()
        assert err1 is None
        _, err2 = r.until_ready()
        assert err2 is not None, "the smuggled DELETE ran"
        assert rows_in(pg, table) == 10
        # Back on, off again inside a transaction that is rolled back: the server reports
        # each change, and the gateway reads the text the way the server does at that moment.
        r.query("SET standard_conforming_strings = on")
        _, err = r.query("BEGIN; SET LOCAL standard_conforming_strings = off; ROLLBACK")
        assert err is None
        _, err = r.query("SELECT 'a\\' AS s")  # one string under 'on'
        assert err is None
        r.query("SET standard_conforming_strings = off")
        _, err = r.query(SMUGGLE_SCS.format(t=table))
        assert err is not None
        assert rows_in(pg, table) == 10


def test_backslash_text_after_an_unsynced_execute_is_refused(guarded, pg):
    gw, table, _ = guarded
    with raw_login(gw) as r:
        # Execute (may change settings) then, in the same unsynchronised pipeline, a Parse
        # whose reading depends on them: cannot be judged, so refused.
        r.send(r.parse_msg("", "SELECT 1")
               + r.bind_msg("", "") + r.execute_msg("")
               + r.parse_msg("", SMUGGLE_SCS.format(t=table)) + r.bind_msg("", "") + r.execute_msg("")
               + r.sync_msg())
        msgs, err = r.until_ready()
        assert err is not None
        assert err.error_fields()["C"] == "0A000", err.error_fields()
        assert rows_in(pg, table) == 10


# -- 2. client_encoding -----------------------------------------------------------------

def test_client_encoding_gbk_does_not_smuggle_a_delete(guarded, pg):
    gw, table, _ = guarded
    # 0xe4 0xb8 0xad is UTF-8 for 中; in GBK, 0xad 0x5c is one character, so the backslash
    # escapes nothing and the quote ends the string.
    payload = b"SELECT E'\xe4\xb8\xad\x5c'; DELETE FROM " + table.encode() + b"; --'"
    with raw_login(gw, extra={"client_encoding": "GBK"}) as r:
        msgs, err = r.query(payload)
        assert err is not None
        assert rows_in(pg, table) == 10
        _, err = r.query("SELECT 1")
        assert err is None
    for enc in ("SJIS", "BIG5"):
        with raw_login(gw) as r:
            _, err = r.query(f"SET client_encoding = '{enc}'")
            assert err is None
            # SJIS 0x95 0x5c, BIG5 0xa5 0x5c: a character ending in a backslash byte.
            lead = {"SJIS": b"\x95\x5c", "BIG5": b"\xa5\x5c"}[enc]
            _, err = r.query(b"SELECT E'" + lead + b"'; DELETE FROM " + table.encode() + b"; --'")
            assert err is not None, enc
            assert rows_in(pg, table) == 10


# -- 3. fast-path function calls ---------------------------------------------------------

def _oid(pg, signature: str) -> int:
    with pg.owner_connect() as c:
        return c.execute("SELECT %s::regprocedure::oid::int", (signature,)).fetchone()[0]


def test_fast_path_calls_are_judged(guarded, pg):
    gw, table, _ = guarded
    lo_import = _oid(pg, "lo_import(text)")
    query_to_xml = _oid(pg, "query_to_xml(text, boolean, boolean, text)")
    with pg.owner_connect() as c:
        before = c.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
        c.execute("CREATE OR REPLACE FUNCTION public.gh_wipe() RETURNS int LANGUAGE sql "
                  f"AS $$ DELETE FROM {table} RETURNING 1 $$")
        c.execute("GRANT EXECUTE ON FUNCTION public.gh_wipe() TO gh_app")
    try:
        _fast_path_refusals(gw, pg, table, lo_import, query_to_xml, _oid(pg, "public.gh_wipe()"), before)
    finally:
        with pg.owner_connect() as c:
            c.execute("DROP FUNCTION IF EXISTS public.gh_wipe()")


def _fast_path_refusals(gw, pg, table, lo_import, query_to_xml, wipe, before):
    with raw_login(gw) as r:
        r.send(r.function_call_msg(lo_import, [b"/etc/hostname"]))
        _, err = r.until_ready()
        assert err is not None and err.error_fields()["C"] == "42501", err and err.error_fields()
        r.send(r.function_call_msg(query_to_xml, [f"delete from {table}".encode(), b"\x01", b"\x00", b""]))
        _, err = r.until_ready()
        assert err is not None and err.error_fields()["C"] == "42501"
        # A function Gatehouse does not know, by OID, under a restricting policy: refused.
        r.send(r.function_call_msg(wipe, []))
        _, err = r.until_ready()
        assert err is not None and "not a built-in function" in err.error_fields()["M"]
        _, err = r.query("SELECT 1")
        assert err is None
    assert rows_in(pg, table) == 10
    with pg.owner_connect() as c:
        assert c.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == before
    statements = [r for r in gw.audit_json() if r.get("protocol") == "function-call"]
    assert any("lo_import" in (r.get("statement") or "") and r["decision"] == "deny" for r in statements)


def test_fast_path_result_is_masked(gatehouse, pg):
    gw = gatehouse()  # no policy: the call runs; its result must still be masked
    btrim = _oid(pg, "btrim(text)")
    with raw_login(gw) as r:
        r.send(r.function_call_msg(btrim, [f"  {CANARY}  ".encode()]))
        msgs, err = r.until_ready()
        assert err is None
        assert any(m.type == "V" for m in msgs)
        assert CANARY.encode() not in bytes(r.received)


# -- 4. binary results -------------------------------------------------------------------

def test_binary_arrays_and_records_are_masked(gatehouse, pg):
    gw = gatehouse()
    token = gw.token("bin-user")
    with gw.connect("bin-user", token, autocommit=True) as c:
        cur = c.cursor(binary=True)
        arr = cur.execute("SELECT ARRAY[%s, 'x']::text[]", (CANARY,)).fetchone()[0]
        assert CANARY not in repr(arr), arr
        rec = cur.execute("SELECT ROW(%s::text, 1)", (CANARY,)).fetchone()[0]
        assert CANARY not in repr(rec), rec
        # jsonb in binary format.
        js = cur.execute("SELECT jsonb_build_object('k', %s::text)", (CANARY,)).fetchone()[0]
        assert CANARY not in repr(js)
    with raw_login(gw) as r:
        # A BINARY CURSOR over the simple protocol.
        msgs, err = r.query(f"BEGIN; DECLARE c BINARY CURSOR FOR SELECT ARRAY['{CANARY}']::text[]; "
                            "FETCH ALL c; COMMIT")
        assert err is None
        assert any(m.type == "D" for m in msgs)
        assert CANARY.encode() not in bytes(r.received)


def test_binary_value_of_an_unknown_type_is_refused(gatehouse, pg):
    gw = gatehouse()
    with pg.owner_connect() as c:
        c.execute("DROP DOMAIN IF EXISTS gh_secret_text CASCADE")
        c.execute("CREATE DOMAIN gh_secret_text AS text")
    try:
        with raw_login(gw) as r:
            msgs, err = r.query(f"BEGIN; DECLARE c BINARY CURSOR FOR "
                                f"SELECT ARRAY['{CANARY}'::gh_secret_text]; FETCH ALL c")
            # The value cannot be inspected: the session ends with 54000, nothing is sent.
            assert err is not None and err.error_fields()["C"] == "54000", err and err.error_fields()
            assert CANARY.encode() not in bytes(r.received)
    except EOFError:
        pass
    finally:
        with pg.owner_connect() as c:
            c.execute("DROP DOMAIN IF EXISTS gh_secret_text CASCADE")


# -- 5. ParameterStatus ------------------------------------------------------------------

def test_parameter_status_is_masked(gatehouse, pg):
    gw = gatehouse()
    with raw_login(gw) as r:
        msgs, err = r.query(f"SET application_name = '{CANARY}'")
        assert err is None
        assert any(m.type == "S" and m.payload.startswith(b"application_name\x00") for m in msgs)
        assert CANARY.encode() not in bytes(r.received)


# -- 6. an Execute without Describe is masked with its own plan ---------------------------

def test_undescribed_portal_is_masked_with_its_own_plan(gatehouse, pg):
    gw = gatehouse()
    with raw_login(gw) as r:
        # First a described portal whose only column is a binary int4 (not scanned) ...
        r.send(r.parse_msg("", "SELECT 42::int4") + r.bind_msg("", "", result_formats=[1])
               + r.describe_msg("P", "") + r.execute_msg("") + r.sync_msg())
        _, err = r.until_ready()
        assert err is None
        # ... then a portal that is never described, with the canary in a binary text column.
        r.send(r.parse_msg("", f"SELECT '{CANARY}'::text") + r.bind_msg("", "", result_formats=[1])
               + r.execute_msg("") + r.sync_msg())
        msgs, err = r.until_ready()
        assert err is None
        # The client gets exactly what it asked for (no RowDescription it did not ask for).
        assert [m.type for m in msgs] == ["1", "2", "D", "C", "Z"], [m.type for m in msgs]
        assert CANARY.encode() not in bytes(r.received)


# -- 8. judged again at every execution ----------------------------------------------------

def test_approval_ticket_covers_one_execution(guarded, pg, gatehouse):
    gw, _, _ = guarded
    ledger = "ledger_e2e"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"DROP TABLE IF EXISTS {ledger}")
        c.execute(f"CREATE TABLE {ledger} (id serial, amount int)")
    insert = f"INSERT INTO {ledger} (amount) VALUES (100)"
    try:
        with raw_login(gw, user="agent-x") as r:
            r.send(r.parse_msg("ins", insert) + r.bind_msg("", "ins") + r.execute_msg("") + r.sync_msg())
            _, err = r.until_ready()
            assert err is not None and "Approval request" in err.error_fields()["M"]
            req = [a for a in _approvals(gw) if a["statement"] == insert][0]
            approver = gw.token("dba-1", groups=["dba"])
            gw.cli("approvals", "approve", req["id"], "--token", approver)
            # The approved text, parsed again, runs once ...
            r.send(r.parse_msg("ins2", insert) + r.bind_msg("", "ins2") + r.execute_msg("") + r.sync_msg())
            _, err = r.until_ready()
            assert err is None, err.error_fields()
            # ... and executing the same prepared statement again needs a new approval.
            for _ in range(3):
                r.send(r.bind_msg("", "ins2") + r.execute_msg("") + r.sync_msg())
                _, err = r.until_ready()
                assert err is not None and err.error_fields()["C"] == "42501"
        with pg.owner_connect() as c:
            assert c.execute(f"SELECT count(*) FROM {ledger}").fetchone()[0] == 1
    finally:
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {ledger}")


def _approvals(gw) -> list[dict]:
    out = gw.cli("approvals", "list", "--all", "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_prepared_statement_is_judged_again_after_a_policy_reload(guarded, pg):
    gw, table, policy = guarded
    with raw_login(gw) as r:
        r.send(r.parse_msg("del", f"DELETE FROM {table} WHERE id = $1", [23]) + r.sync_msg())
        _, err = r.until_ready()
        assert err is None
        policy.write_text(POLICY + f"""
[[rules]]
name = "no-deletes-now"
action = "deny"
reason = "deletes are frozen"
kinds = ["delete"]
""")
        reloads = gw.log_text().count("configuration reloaded")
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_for(lambda: gw.log_text().count("configuration reloaded") > reloads, timeout=10,
                 what="policy reload")
        r.send(r.bind_msg("", "del", [b"1"]) + r.execute_msg("") + r.sync_msg())
        _, err = r.until_ready()
        assert err is not None and "no-deletes-now" in err.error_fields()["M"], err and err.error_fields()
    assert rows_in(pg, table) == 10


# -- 9. prepared statements tracked from the server's answers -----------------------------

def test_rejected_parse_does_not_rename_the_statement_in_the_audit(gatehouse, pg):
    gw = gatehouse()
    with raw_login(gw) as r:
        r.send(r.parse_msg("s1", "SELECT 1 AS first") + r.sync_msg())
        _, err = r.until_ready()
        assert err is None
        # The server refuses a second statement of the same name (42P05) ...
        r.send(r.parse_msg("s1", "SELECT 2 AS second") + r.sync_msg())
        _, err = r.until_ready()
        assert err is not None and err.error_fields()["C"] == "42P05"
        # ... so s1 is still the first one, and the audit record must say so.
        r.send(r.bind_msg("", "s1") + r.execute_msg("") + r.sync_msg())
        _, err = r.until_ready()
        assert err is None
    recs = [x for x in gw.audit_json() if x.get("event") == "statement" and x.get("statement_name") == "s1"]
    assert recs and recs[-1]["statement"] == "SELECT 1 AS first", recs[-1]


# -- 10. bounded judging -----------------------------------------------------------------

def test_statement_longer_than_the_judging_limit_is_refused(guarded, pg):
    gw, table, _ = guarded
    with raw_login(gw) as r:
        big = f"DELETE FROM {table} /* " + "x" * (2 * 1024 * 1024) + " */"
        _, err = r.query(big)
        assert err is not None and err.error_fields()["C"] == "54000", err and err.error_fields()
        _, err = r.query("SELECT 1")
        assert err is None
    assert rows_in(pg, table) == 10


# -- 7. column rules follow the source column ----------------------------------------------

COLUMN_RULE = """
[masking]
[[masking.rules]]
name = "salary-column"
columns = ["salary"]
strategy = { kind = "redact", replacement = "[salary]" }
"""


def test_column_rules_follow_the_source_column_and_json(gatehouse, pg):
    gw = gatehouse(extra_toml=COLUMN_RULE)
    table = f"pay_{secrets.token_hex(4)}"
    with pg.owner_connect() as c:
        c.execute("SET ROLE gh_app")
        c.execute(f"CREATE TABLE {table} (id int, salary text)")
        c.execute(f"INSERT INTO {table} VALUES (1, 'pay-grade-77x')")
    try:
        token = gw.token("col-user")
        with gw.connect("col-user", token, autocommit=True) as c:
            assert c.execute(f"SELECT salary FROM {table}").fetchone()[0] == "[salary]"
            # An alias does not take the column out of its rule.
            assert c.execute(f"SELECT salary AS x FROM {table}").fetchone()[0] == "[salary]"
            assert c.execute(f"SELECT t.salary AS \"Pay\" FROM {table} t").fetchone()[0] == "[salary]"
            # JSON built in SQL: field names are column names.
            for sql in (f"SELECT row_to_json(t) FROM {table} t",
                        f"SELECT json_agg(t) FROM {table} t",
                        f"SELECT to_jsonb(t) FROM {table} t"):
                v = c.execute(sql).fetchone()[0]
                assert "pay-grade-77x" not in repr(v), (sql, v)
            # Binary format too.
            cur = c.cursor(binary=True)
            assert cur.execute(f"SELECT salary AS y FROM {table}").fetchone()[0] == "[salary]"
            v = cur.execute(f"SELECT to_jsonb(t) FROM {table} t").fetchone()[0]
            assert "pay-grade-77x" not in repr(v), v
    finally:
        with pg.owner_connect() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
