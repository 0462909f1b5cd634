"""The append-only audit log.

Each row carries the hash of the row before it, so an edited or deleted row
breaks the chain and `verify()` names the first broken one. Rows are keyed by
`event_key` (workflow id, run id, event): an activity retried after a crash
finds its row already there and writes nothing, so each event is logged once
per run.

SQLite is the default store (one worker host); the store is a small protocol so
a PostgreSQL store for multi-worker deployments can stand beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from temporalio import activity

from workflows.contracts import AuditEvent

GENESIS_HASH = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_key  TEXT NOT NULL UNIQUE,
    event      TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    timestamp  TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    row_hash   TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
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


class SqliteAuditStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE,
        # which serialises writers so two workers cannot fork the hash chain.
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def append(self, event: AuditEvent, timestamp: str) -> bool:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute(
                    "SELECT 1 FROM audit_events WHERE event_key = ?", (event.event_key,)
                ).fetchone():
                    db.execute("ROLLBACK")
                    return False
                last = db.execute(
                    "SELECT row_hash FROM audit_events ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                prev = last[0] if last else GENESIS_HASH
                db.execute(
                    "INSERT INTO audit_events (event_key, event, tenant_id, user_id, timestamp,"
                    " details, prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
                db.execute("COMMIT")
                return True
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def rows(self) -> list[AuditRow]:
        with closing(self._connect()) as db:
            cursor = db.execute(
                "SELECT seq, event_key, event, tenant_id, user_id, timestamp, details,"
                " prev_hash, row_hash FROM audit_events ORDER BY seq"
            )
            return [
                AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7], r[8])
                for r in cursor.fetchall()
            ]


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
