"""The append-only audit log.

Each row carries the hash of the row before it, so an edited or deleted row
breaks the chain and `verify()` names the first broken one. Rows are keyed by
`event_key` (workflow id, run id, event): an activity retried after a crash
finds its row already there and writes nothing, so each event is logged once
per run.

SQLite is the default store (one worker host); PostgreSQL serves deployments with
several workers (MAILPROV_AUDIT_DSN=postgresql://...). Both enforce append-only
with triggers, so even a bug in this code cannot rewrite history quietly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from temporalio import activity

from workflows.contracts import AuditEvent

GENESIS_HASH = "0" * 64

# One row layout for both stores; only the key column's type differs.
ROW_COLUMNS = """
    event_key  TEXT NOT NULL UNIQUE,
    event      TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    timestamp  TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    row_hash   TEXT NOT NULL
"""

SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,{ROW_COLUMNS});
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""

POSTGRES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_events (
    seq BIGSERIAL PRIMARY KEY,{ROW_COLUMNS});
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit log is append-only'; END $$;
CREATE OR REPLACE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"""


@dataclass(frozen=True)
class AuditRow:
    seq: int
    event_key: str
    event: str
    tenant_id: str
    user_id: str
    timestamp: str
    details: dict[str, str]
    prev_hash: str
    row_hash: str


def row_hash(prev_hash: str, event: AuditEvent, timestamp: str) -> str:
    canonical = json.dumps(
        {
            "event_key": event.event_key,
            "event": event.event,
            "tenant_id": event.tenant_id,
            "user_id": event.user_id,
            "timestamp": timestamp,
            "details": event.details,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


class AuditStore(Protocol):
    def append(self, event: AuditEvent, timestamp: str) -> bool:
        """Append once; False if a row with this event_key already exists."""
        ...

    def rows(self) -> list[AuditRow]: ...


COLUMNS = "seq, event_key, event, tenant_id, user_id, timestamp, details, prev_hash, row_hash"
INSERT_ROW = (
    "INSERT INTO audit_events (event_key, event, tenant_id, user_id, timestamp, details,"
    " prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _append_chained(cursor: Any, mark: str, event: AuditEvent, timestamp: str) -> bool:
    """The append itself, shared by both stores; the caller holds the chain lock.

    `mark` is the driver's parameter placeholder ("?" for sqlite3, "%s" for psycopg).
    """
    # Only constant placeholders and column lists are interpolated into SQL here.
    cursor.execute(f"SELECT 1 FROM audit_events WHERE event_key = {mark}", (event.event_key,))  # noqa: S608
    if cursor.fetchone():
        return False
    cursor.execute("SELECT row_hash FROM audit_events ORDER BY seq DESC LIMIT 1")
    last = cursor.fetchone()
    prev = last[0] if last else GENESIS_HASH
    insert = INSERT_ROW.replace("?", mark)
    cursor.execute(
        insert,
        (
            event.event_key,
            event.event,
            event.tenant_id,
            event.user_id,
            timestamp,
            json.dumps(event.details, sort_keys=True),
            prev,
            row_hash(prev, event, timestamp),
        ),
    )
    return True


def _row(record: Sequence[Any]) -> AuditRow:
    return AuditRow(
        int(record[0]),
        record[1],
        record[2],
        record[3],
        record[4],
        record[5],
        json.loads(record[6]),
        record[7],
        record[8],
    )


class SqliteAuditStore:
    """The default: one file, for a single worker host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(SQLITE_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE,
        # which serialises writers so two workers cannot fork the hash chain.
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def append(self, event: AuditEvent, timestamp: str) -> bool:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                written = _append_chained(db.cursor(), "?", event, timestamp)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return written

    def rows(self) -> list[AuditRow]:
        with closing(self._connect()) as db:
            cursor = db.execute(f"SELECT {COLUMNS} FROM audit_events ORDER BY seq")  # noqa: S608
            return [_row(r) for r in cursor]


class PostgresAuditStore:
    """For several workers: one shared, append-only table in PostgreSQL."""

    def __init__(self, dsn: str) -> None:
        import psycopg  # only deployments that use PostgreSQL need the driver loaded

        self._psycopg = psycopg
        self.dsn = dsn
        with psycopg.connect(dsn) as db:
            db.execute(POSTGRES_SCHEMA)

    def append(self, event: AuditEvent, timestamp: str) -> bool:
        with self._psycopg.connect(self.dsn) as db, db.transaction(), db.cursor() as cursor:
            # One chain, one writer at a time, across every worker.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('audit_events_chain'))")
            return _append_chained(cursor, "%s", event, timestamp)

    def rows(self) -> list[AuditRow]:
        with self._psycopg.connect(self.dsn) as db:
            cursor = db.execute(f"SELECT {COLUMNS} FROM audit_events ORDER BY seq")  # noqa: S608
            return [_row(r) for r in cursor.fetchall()]


def open_audit_store(location: str) -> AuditStore:
    """`postgresql://...` selects PostgreSQL; anything else is a SQLite file path."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresAuditStore(location)
    return SqliteAuditStore(Path(location))


def first_broken_row(rows: list[AuditRow]) -> AuditRow | None:
    """The first row whose hash or link does not match; None if the chain is intact."""
    prev = GENESIS_HASH
    for row in rows:
        event = AuditEvent(row.event_key, row.event, row.tenant_id, row.details, row.user_id)
        if row.prev_hash != prev or row.row_hash != row_hash(prev, event, row.timestamp):
            return row
        prev = row.row_hash
    return None


class AuditActivities:
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    @activity.defn(name="record_audit_event")
    async def record_audit_event(self, event: AuditEvent) -> bool:
        timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        written = await asyncio.to_thread(self._store.append, event, timestamp)
        activity.logger.info(
            "audit event " + ("written" if written else "already present"),
            extra={"event": event.event},
        )
        return written
