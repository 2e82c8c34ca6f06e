"""psycopg 3 through the gateway: simple and extended protocol, prepared statements, pipeline,
COPY, server-side cursors, transactions, errors, binary results."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import psycopg
import pytest
from psycopg import errors, sql

from harness import APP_ROLE


@pytest.fixture
def conn(gw, alice):
    c = gw.connect(*alice)
    yield c
    c.close()


@pytest.fixture
def aconn(gw, alice):
    c = gw.connect(*alice, autocommit=True)
    yield c
    c.close()


def test_connect_and_identity(aconn):
    assert aconn.info.parameter_status("server_version")
    assert aconn.execute("SELECT current_user").fetchone() == (APP_ROLE,)
    # The gateway must pass BackendKeyData through (needed for cancel).
    assert aconn.info.backend_pid != 0


def test_simple_protocol_multi_statement(aconn):
    cur = psycopg.ClientCursor(aconn)
    cur.execute("SELECT 1 AS a; SELECT 'x' AS b, 2 AS c")
    # both results of the multi-statement simple query arrive
    assert cur.fetchall() == [(1,)]
    assert cur.nextset()
    assert cur.fetchall() == [("x", 2)]
    assert not cur.nextset()
    cur.execute("SELECT %s::int + %s::int", (2, 3))  # parameters merged client side
    assert cur.fetchone() == (5,)


def test_extended_protocol_parameters(aconn):
    row = aconn.execute(
        "SELECT %s::int + 1, %s::text || '!', %s::numeric * 2, %s::date, %s::text IS NULL",
        (41, "hello", decimal.Decimal("1.25"), dt.date(2024, 2, 29), None),
    ).fetchone()
    assert row == (42, "hello!", decimal.Decimal("2.50"), dt.date(2024, 2, 29), True)
    rows = aconn.execute("SELECT id, name FROM items WHERE id = ANY(%s) ORDER BY id", ([3, 5, 7],)).fetchall()
    assert rows == [(3, "item-3"), (5, "item-5"), (7, "item-7")]


def test_prepared_statements(aconn):
    for i in range(5):
        row = aconn.execute("SELECT name FROM items WHERE id = %s", (i + 1,), prepare=True).fetchone()
        assert row == (f"item-{i + 1}",)
    # A named server-side prepared statement exists in the upstream session.
    names = [r[0] for r in aconn.execute("SELECT name FROM pg_prepared_statements").fetchall()]
    assert any(n.startswith("_pg3_") for n in names), names


def test_pipeline_mode(aconn):
    with aconn.pipeline():
        curs = []
        for i in range(20):
            c = aconn.cursor()
            c.execute("SELECT %s::int * 2, pg_backend_pid()", (i,))
            curs.append(c)
        aconn.execute("SELECT 1")
    results = [c.fetchone() for c in curs]
    assert [r[0] for r in results] == [i * 2 for i in range(20)]
    assert len({r[1] for r in results}) == 1


def test_pipeline_error_recovery(aconn):
    with pytest.raises(errors.DivisionByZero):
        with aconn.pipeline():
            aconn.execute("SELECT 1")
            aconn.execute("SELECT 1/0")
            aconn.execute("SELECT 2")
    assert aconn.execute("SELECT 'recovered'").fetchone() == ("recovered",)


def test_copy_in_and_out(aconn):
    name = f"copy_{uuid.uuid4().hex[:8]}"
    aconn.execute(sql.SQL("CREATE TABLE {} (id int, txt text, n numeric)").format(sql.Identifier(name)))
    rows = [(i, f"row {i}\twith tab", decimal.Decimal(i) / 4) for i in range(5000)]
    with aconn.cursor() as cur:
        with cur.copy(sql.SQL("COPY {} (id, txt, n) FROM STDIN").format(sql.Identifier(name))) as copy:
            for r in rows:
                copy.write_row(r)
        assert cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone() == (5000,)
        out = []
        with cur.copy(sql.SQL("COPY (SELECT id, txt, n FROM {} ORDER BY id) TO STDOUT").format(
                sql.Identifier(name))) as copy:
            copy.set_types(["int4", "text", "numeric"])
            for r in copy.rows():
                out.append(r)
    assert out == rows


def test_copy_binary(aconn):
    with aconn.cursor() as cur:
        data = b""
        with cur.copy("COPY (SELECT g, md5(g::text) FROM generate_series(1, 300) g) TO STDOUT (FORMAT binary)") as cp:
            for chunk in cp:
                data += bytes(chunk)
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert len(data) > 300 * 32


def test_server_side_cursor(conn):
    with conn.transaction():
        with conn.cursor(name="ssc_test") as cur:
            cur.itersize = 500
            cur.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
            total = 0
            count = 0
            for g, _ in cur:
                total += g
                count += 1
    assert count == 20000
    assert total == 20000 * 20001 // 2


def test_transaction_rollback(conn):
    name = f"tx_{uuid.uuid4().hex[:8]}"
    with conn.transaction():
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name)))

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with conn.transaction():
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1), (2)").format(sql.Identifier(name)))
            raise Boom()
    with conn.transaction():
        conn.execute(sql.SQL("INSERT INTO {} VALUES (3)").format(sql.Identifier(name)))
        with pytest.raises(Boom):
            with conn.transaction():  # savepoint
                conn.execute(sql.SQL("INSERT INTO {} VALUES (4)").format(sql.Identifier(name)))
                raise Boom()
    assert conn.execute(sql.SQL("SELECT array_agg(id ORDER BY id) FROM {}").format(
        sql.Identifier(name))).fetchone() == ([3],)
    conn.commit()


def test_errors_keep_session_usable(aconn):
    pid = aconn.info.backend_pid
    with pytest.raises(errors.UndefinedTable) as ei:
        aconn.execute("SELECT * FROM no_such_table_here")
    assert ei.value.sqlstate == "42P01"
    assert "no_such_table_here" in str(ei.value)
    with pytest.raises(errors.UniqueViolation):
        aconn.execute("INSERT INTO items (id, name) VALUES (1, 'dup')")
    with pytest.raises(errors.SyntaxError):
        aconn.execute("SELEC 1")
    with pytest.raises(errors.InvalidTextRepresentation):
        aconn.execute("SELECT %s::int", ("nope",))
    assert aconn.execute("SELECT 'ok'").fetchone() == ("ok",)
    assert aconn.info.backend_pid == pid


def test_binary_results(aconn):
    cur = aconn.cursor(binary=True)
    row = cur.execute(
        "SELECT 42::int4, 9000000000::int8, 'abc'::bytea, 1.5::float8, true, "
        "'2024-01-02 03:04:05+00'::timestamptz, '{1,2,3}'::int[], 'b1b1e6b0-0000-4000-8000-000000000000'::uuid"
    ).fetchone()
    assert row[0] == 42 and row[1] == 9000000000 and row[2] == b"abc" and row[3] == 1.5 and row[4] is True
    assert row[5] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert row[6] == [1, 2, 3]
    assert str(row[7]) == "b1b1e6b0-0000-4000-8000-000000000000"
    payloads = cur.execute("SELECT payload FROM items WHERE id IN (1, 255) ORDER BY id").fetchall()
    assert payloads == [(b"\x00\x00\x00\x01",), (b"\x00\x00\x00\xff",)]


def test_large_values_and_many_rows(aconn):
    big = aconn.execute("SELECT repeat('z', 3000000)").fetchone()[0]
    assert len(big) == 3000000 and set(big) == {"z"}
    echoed = aconn.execute("SELECT length(%s::text)", ("y" * 2_000_000,)).fetchone()[0]
    assert echoed == 2_000_000
    rows = aconn.execute("SELECT g FROM generate_series(1, 100000) g").fetchall()
    assert len(rows) == 100000 and rows[-1] == (100000,)


def test_listen_notify_psycopg(gw, oidc, aconn):
    ch = f"pch_{uuid.uuid4().hex[:8]}"
    aconn.execute(f"LISTEN {ch}")
    with gw.connect("agent-bob", oidc.token("agent-bob"), autocommit=True) as other:
        other.execute(f"NOTIFY {ch}, 'via-gateway'")
    got = []
    for n in aconn.notifies(timeout=10, stop_after=1):
        got.append((n.channel, n.payload))
    assert got == [(ch, "via-gateway")]


def test_concurrent_sessions(gw, oidc):
    conns = [gw.connect("agent-alice", oidc.token("agent-alice"), autocommit=True) for _ in range(8)]
    try:
        pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns}
        assert len(pids) == 8
    finally:
        for c in conns:
            c.close()
