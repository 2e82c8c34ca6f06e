"""Fixtures for the Gatehouse end-to-end tests (see harness.py for the real peers)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness import CANARY, Gatehouse, OidcProvider, Postgres, free_port, pg_bin_dir


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A real PostgreSQL server (SCRAM auth) with database appdb, owner gh_owner, login role gh_app."""
    server = Postgres(free_port(), pg_bin_dir())
    try:
        server.init()
        server.start()
        server.setup_schema()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """node-oidc-provider with an RSA key (kid k1); .token(client_id) does client_credentials."""
    provider = OidcProvider(tmp_path_factory.mktemp("oidc"))
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def oidc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OidcProvider]]:
    """Extra, independent OpenID providers (for key rotation / ES256 tests)."""
    started: list[OidcProvider] = []

    def make(**kw) -> OidcProvider:
        p = OidcProvider(tmp_path_factory.mktemp("oidc-extra"), **kw)
        started.append(p)
        p.start()
        return p

    yield make
    for p in started:
        p.stop()


def _make_factory(tmp_path_factory: pytest.TempPathFactory, pg: Postgres, oidc: OidcProvider):
    started: list[Gatehouse] = []

    def make(start: bool = True, pg_server: Postgres | None | bool = True,
             oidc_provider: OidcProvider | None | bool = True, **kw) -> Gatehouse:
        gw = Gatehouse(
            tmp_path_factory.mktemp("gatehouse"),
            pg if pg_server is True else (pg_server or None),
            oidc if oidc_provider is True else (oidc_provider or None),
            **kw,
        )
        started.append(gw)
        if start:
            gw.start()
        return gw

    return make, started


@pytest.fixture
def gatehouse(tmp_path_factory, pg, oidc) -> Iterator[Callable[..., Gatehouse]]:
    """Function-scoped factory: gatehouse(**options) -> a configured and started gateway."""
    make, started = _make_factory(tmp_path_factory, pg, oidc)
    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def module_gatehouse(tmp_path_factory, pg, oidc) -> Iterator[Callable[..., Gatehouse]]:
    make, started = _make_factory(tmp_path_factory, pg, oidc)
    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def gw(module_gatehouse) -> Gatehouse:
    """One default gateway shared by the tests of a module."""
    return module_gatehouse()


@pytest.fixture
def alice(oidc: OidcProvider) -> tuple[str, str]:
    """(user, token) for agent-alice from the real OpenID provider."""
    return "agent-alice", oidc.token("agent-alice")


@pytest.fixture(scope="session")
def canary() -> str:
    return CANARY


def pytest_report_header(config) -> list[str]:
    from harness import gatehouse_bin

    return [f"gatehouse binary: {gatehouse_bin()}", f"postgres bin: {pg_bin_dir()}"]


def read_all_bytes(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths if p.is_file()}
