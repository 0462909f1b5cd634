"""The SQLite audit store: once per event key, append-only, hash-chained."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from activities.audit import SqliteAuditStore, first_broken_row
from workflows.contracts import AuditEvent


def event(key: str, tenant: str = "acme") -> AuditEvent:
    return AuditEvent(
        key,
        "smtp_credentials_stored",
        tenant,
        {"username": f"admin@{tenant}.example", "webmail_url": "https://m"},
    )


def test_an_event_key_is_written_once(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    assert store.append(event("wf/run/e"), "2026-01-01T00:00:00Z") is True
    assert store.append(event("wf/run/e"), "2026-01-01T00:00:09Z") is False
    [row] = store.rows()
    assert row.timestamp == "2026-01-01T00:00:00Z"
    assert row.user_id == "system"


def test_rows_cannot_be_updated_or_deleted(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    store.append(event("k1"), "t1")
    with sqlite3.connect(store.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE audit_events SET tenant_id = 'x'")
    with sqlite3.connect(store.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM audit_events")


def test_chain_verifies_and_names_the_first_edited_row(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    for index in range(4):
        store.append(event(f"k{index}"), f"t{index}")
    assert first_broken_row(store.rows()) is None
    with sqlite3.connect(store.path) as db:
        db.execute("DROP TRIGGER audit_events_no_update")  # an attacker with file access
        db.execute("UPDATE audit_events SET tenant_id = 'mallory' WHERE seq = 3")
    broken = first_broken_row(store.rows())
    assert broken is not None and broken.seq == 3
