"""The policy engine's evasion corpus (gateway/policy/tests/evasion.toml: comments, case,
quoting, dollar quotes, unicode escapes, multi-statement strings, CTEs, EXPLAIN ANALYZE,
prepared statements, functions, DO blocks, COPY PROGRAM, SET ROLE, search_path tricks …) run
through the real gateway against a real PostgreSQL with the example policy: no statement that
should be blocked reaches the database (the gateway answers it itself, with the replacement
that raises 42501), and nothing that should pass is refused by the gateway.

Approval rules are switched to ticket mode here (a hold would wait for an approver)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import psycopg

from harness import CANARY, sql_error_state

REPO = Path(__file__).resolve().parents[2]
POLICY_SRC = REPO / "gateway" / "policy" / "examples" / "policy.toml"
CORPUS = tomllib.loads((REPO / "gateway" / "policy" / "tests" / "evasion.toml").read_text())


def _ticket_policy() -> str:
    text = POLICY_SRC.read_text()
    text = re.sub(r'mode = "hold"[^\n]*', 'mode = "ticket"', text)
    return re.sub(r"\nhold_timeout_seconds = \d+[^\n]*", "", text)


def test_evasion_corpus_through_the_gateway(gatehouse, pg, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(_ticket_policy())
    # The development issuer alone: the example policy's plain names (`agents`, `dba`) are its
    # users' and groups', as they are the sole issuer's in a deployment with one IdP.
    gw = gatehouse(start=False, oidc_provider=None, extra_toml=f'\n[policy]\npath = "{policy}"\n')
    for name, conn in CORPUS["connections"].items():
        gw.connection_add(name, port=pg.port, password=CANARY, tags=conn["tags"])
    gw.start()
    tokens: dict[tuple, str] = {}
    failures = []
    counts = {"allow": 0, "deny": 0, "approval": 0}
    skipped = 0
    for case in CORPUS["case"]:
        if case.get("scs") is False:
            # The gateway parses with standard_conforming_strings on (the server default);
            # with it off, strings only get longer on the server, so the gateway sees more
            # code, never less. The corpus's expectation assumes the server's setting.
            skipped += 1
            continue
        user = case.get("user", "alice")
        groups = case.get("groups", ["agents"])
        key = (user, tuple(groups))
        if key not in tokens:
            tokens[key] = gw.token(user, groups=groups)
        refused_by_gateway = None
        with psycopg.connect(host=gw.host, port=gw.port, dbname=case.get("connection", "orders-prod"),
                             user=user, password=tokens[key], sslmode="require", autocommit=True,
                             cursor_factory=psycopg.ClientCursor, connect_timeout=10) as c:
            for s in case.get("setup", []):
                try:
                    c.execute(s)
                except psycopg.Error:
                    pass
            try:
                c.execute(case["sql"])
                refused_by_gateway = None
            except psycopg.Error as e:
                msg = str(e)
                refused_by_gateway = msg if (sql_error_state(e) == "42501" and "gatehouse:" in msg) else None
        expect = case["expect"]
        counts[expect] += 1
        if expect == "allow" and refused_by_gateway:
            failures.append(f"legitimate statement refused: {case['sql']!r}: {refused_by_gateway}")
        elif expect in ("deny", "approval") and not refused_by_gateway:
            failures.append(f"should be {expect}, reached the database: {case['sql']!r} ({case['note']})")
        elif expect == "approval" and "needs approval" not in refused_by_gateway:
            failures.append(f"should need approval: {case['sql']!r}: {refused_by_gateway}")
        elif expect == "deny" and case.get("rule") and case["rule"] not in refused_by_gateway:
            failures.append(f"wrong rule for {case['sql']!r}: want {case['rule']}, got {refused_by_gateway}")
    assert not failures, "\n".join(failures)
    assert counts["deny"] >= 100 and counts["allow"] >= 25 and counts["approval"] >= 10, counts
    assert skipped <= 2
