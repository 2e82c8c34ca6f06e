"""Identity: real OIDC tokens are accepted; forged or wrong ones are refused with SQLSTATE class 28
and a login.failure audit record; JWKS key rotation; dev tokens."""

from __future__ import annotations

import json
import re
import time

import psycopg
import pytest

from harness import (APP_ROLE, alg_none_token, b64url_decode, hs256_token, new_ec_key, new_rsa_key, tamper_payload,
                     wait_for)
from pgraw import PgRaw


def raw_login(gw, user, password, dbname="app"):
    with PgRaw(gw.host, gw.port) as c:
        res = c.login(user, password, dbname)
        if res.ok:
            rows, err = c.query("SELECT current_user")
            assert err is None
            c.terminate()
        return res


def max_seq(gw) -> int:
    return max((r["seq"] for r in gw.audit_json()), default=0)


def assert_refused(gw, user, token, *, classes=("28",), dbname="app"):
    before = max_seq(gw)
    res = raw_login(gw, user, token, dbname)
    assert not res.ok, "forged/invalid token was accepted"
    assert res.error is not None, "expected an ErrorResponse, the gateway just closed the connection"
    assert res.error.get("S") == "FATAL" or res.error.get("V") == "FATAL", res.error
    assert res.sqlstate[:2] in classes or res.sqlstate in classes, res.error
    msg = " ".join(res.error.values())
    assert token not in msg, "error message echoes the token"
    for part in token.split("."):
        if len(part) >= 16:
            assert part not in msg, "error message echoes part of the token"
    # and a real client library gets a clean error too
    with pytest.raises(psycopg.OperationalError) as ei:
        gw.connect(user, token, dbname=dbname).close()
    assert token not in str(ei.value)
    recs = [r for r in gw.audit_json() if r["seq"] > before]
    fails = [r for r in recs if r["event"] == "login.failure"]
    assert fails, f"no login.failure audit record; got {[r['event'] for r in recs]}"
    for f in fails:
        assert f.get("reason"), f
        for part in token.split("."):
            if len(part) >= 16:
                assert part not in json.dumps(f), "audit record contains (part of) the token"
        assert f.get("decision", "deny") == "deny"
    return res, fails


@pytest.fixture(scope="module")
def base_claims(oidc):
    return oidc.claims_of(oidc.token("agent-alice"))


def test_valid_oidc_token(gw, oidc):
    token = oidc.token("agent-alice")
    before = max_seq(gw)
    with gw.connect("agent-alice", token, autocommit=True) as c:
        assert c.execute("SELECT current_user").fetchone() == (APP_ROLE,)
    recs = [r for r in gw.audit_json() if r["seq"] > before]
    ok = [r for r in recs if r["event"] == "login.success"]
    assert len(ok) == 1, recs
    assert ok[0]["username"] == "agent-alice"
    assert ok[0]["subject"] == "agent-alice"
    assert ok[0]["groups"] == ["analysts"]
    assert ok[0]["issuer"] == oidc.issuer
    assert ok[0]["connection"] == "app"
    assert ok[0].get("email") == "alice@example.test"
    assert ok[0].get("token_id") == oidc.claims_of(token)["jti"]


def test_forged_valid_control(gw, oidc):
    # Control for the forged cases below: our forging signs exactly like the provider, so a
    # forged token with valid claims IS accepted. Each refusal below is due to its one defect.
    res = raw_login(gw, "agent-alice", oidc.forge(oidc.valid_claims()))
    assert res.ok, res.error


def test_expired(gw, oidc):
    claims = oidc.valid_claims()
    claims.update(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    assert_refused(gw, "agent-alice", oidc.forge(claims))


def test_not_yet_valid(gw, oidc):
    claims = oidc.valid_claims()
    claims.update(nbf=int(time.time()) + 3600)
    assert_refused(gw, "agent-alice", oidc.forge(claims))


def test_missing_exp(gw, oidc):
    claims = oidc.valid_claims()
    del claims["exp"]
    assert_refused(gw, "agent-alice", oidc.forge(claims))


def test_wrong_audience(gw, oidc):
    claims = oidc.valid_claims()
    claims["aud"] = "some-other-api"
    assert_refused(gw, "agent-alice", oidc.forge(claims))


def test_wrong_issuer(gw, oidc):
    claims = oidc.valid_claims()
    claims["iss"] = "http://127.0.0.1:9/evil"
    assert_refused(gw, "agent-alice", oidc.forge(claims))


def test_tampered_payload(gw, oidc):
    real = oidc.token("agent-alice")
    assert raw_login(gw, "agent-alice", real).ok
    forged = tamper_payload(real, groups=["admins"])
    assert_refused(gw, "agent-alice", forged)


def test_tampered_payload_other_user(gw, oidc):
    forged = tamper_payload(oidc.token("agent-carol"), sub="agent-alice", client_id="agent-alice")
    assert_refused(gw, "agent-alice", forged)


def test_alg_none(gw, oidc):
    assert_refused(gw, "agent-alice", alg_none_token(oidc.valid_claims()))


def test_hs256_with_public_key_as_secret(gw, oidc):
    token = hs256_token(oidc.valid_claims(), oidc.public_pem(), oidc.kid)
    assert_refused(gw, "agent-alice", token)


def test_unknown_kid(gw, oidc):
    other = new_rsa_key()
    assert_refused(gw, "agent-alice", oidc.forge(oidc.valid_claims(), key=other, kid="k-unknown"))


def test_known_kid_wrong_key(gw, oidc):
    other = new_rsa_key()
    assert_refused(gw, "agent-alice", oidc.forge(oidc.valid_claims(), key=other, kid=oidc.kid))


def test_garbage_password(gw):
    assert_refused(gw, "agent-alice", "this-is-not-a-jwt")
    assert_refused(gw, "agent-alice", "a.b.c")


def test_user_mismatch(gw, oidc):
    res, _ = assert_refused(gw, "agent-bob", oidc.token("agent-alice"))
    assert res.sqlstate == "28000", res.error


def test_unknown_database(gw, oidc):
    res = raw_login(gw, "agent-alice", oidc.token("agent-alice"), dbname="no_such_connection")
    assert not res.ok
    assert res.error is not None and res.sqlstate == "3D000", res.error
    with pytest.raises(psycopg.OperationalError):
        gw.connect("agent-alice", oidc.token("agent-alice"), dbname="no_such_connection").close()


def test_dev_token(gw):
    token = gw.token("dev-dora", groups=["ops", "dba"], ttl=300)
    before = max_seq(gw)
    with gw.connect("dev-dora", token, autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    ok = [r for r in gw.audit_json() if r["seq"] > before and r["event"] == "login.success"]
    assert ok and ok[0]["username"] == "dev-dora" and ok[0]["groups"] == ["ops", "dba"]


def test_dev_token_refused_when_dev_issuer_disabled(gatehouse):
    minting = gatehouse(start=False)
    token = minting.token("dev-dora")
    # Same data dir (same dev key) but dev_issuer disabled: the token must not be trusted.
    cfg, n = re.subn(r"(\[identity\.dev_issuer\][^\[]*?enabled\s*=\s*)true", r"\1false",
                     minting.config.read_text())
    assert n == 1, cfg
    minting.config.write_text(cfg)
    minting.start()
    assert_refused(minting, "dev-dora", token)


def test_key_rotation(gatehouse, oidc_factory):
    provider = oidc_factory()
    gw = gatehouse(oidc_provider=provider)
    old_token = provider.token("agent-alice")
    assert raw_login(gw, "agent-alice", old_token).ok  # gateway has now cached the JWKS (k1)
    old_kid, old_key = provider.keys[0]
    provider.restart(keys=[("k2", new_rsa_key()), (old_kid, old_key)], sign_kid="k2")
    new_token = provider.token("agent-alice")
    assert provider.claims_of(new_token)
    assert json.loads(b64url_decode(new_token.split(".")[0]))["kid"] == "k2"
    # An unknown kid makes the gateway refetch the JWKS (rate limit: 1 s in the test config).
    wait_for(lambda: raw_login(gw, "agent-alice", new_token).ok, timeout=15, interval=0.5,
             what="token signed with the rotated-in key to be accepted")
    assert raw_login(gw, "agent-alice", old_token).ok, "old key still published: old tokens still valid"
    # Now retire k1 entirely: tokens signed with it must stop working once the JWKS is refetched.
    provider.restart(keys=[("k2", provider.keys[0][1])], sign_kid="k2")
    retired = provider.forge(provider.valid_claims(), key=old_key, kid=old_kid)
    # (the gateway may use its cached k1 until jwks_max_age; a brand-new gateway must refuse)
    fresh = gatehouse(oidc_provider=provider)
    assert_refused(fresh, "agent-alice", retired)
    assert raw_login(fresh, "agent-alice", provider.token("agent-alice")).ok


def test_es256_provider(gatehouse, oidc_factory):
    provider = oidc_factory(keys=[("ec1", new_ec_key())], alg="ES256")
    gw = gatehouse(oidc_provider=provider)
    token = provider.token("agent-bob")
    assert json.loads(b64url_decode(token.split(".")[0]))["alg"] == "ES256"
    with gw.connect("agent-bob", token, autocommit=True) as c:
        assert c.execute("SELECT 7").fetchone() == (7,)
    # tampering an ES256 token is refused too
    assert_refused(gw, "agent-bob", tamper_payload(token, groups=["root"]))
