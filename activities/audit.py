"""The append-only, tamper-evident audit log.

Every row carries a MAC made by Vault Transit (`transit/hmac/mail-audit`, a key that
cannot be exported) over its content, its sequence number, the chain's name and the
MAC of the row before it. Whoever holds the database cannot make a MAC, so a changed,
inserted, reordered or removed row no longer verifies. The head of the chain (sequence
number + MAC of the last row) is anchored outside the database, in a Vault KV v2 record
written with check-and-set after every append, so a truncated tail shows too.

A worker checks the rows from the anchored head to the end before it appends, and
refuses (`AuditChainBroken`, an alert) to append onto a chain that does not verify:
it never forges onward. `verify_chain` checks everything (every MAC, sequence
continuity, the links, the head against the anchor and the operator's checkpoint); it
is what `starter.py audit-verify` and the world check run.

Rows are keyed by `event_key` (workflow id, run id, event): an activity retried after
a crash finds its row already there and writes nothing, so each event is logged once
per run. SQLite is the default store (one worker host); PostgreSQL serves deployments
with several workers (MAILPROV_AUDIT_DSN=postgresql://...). Appends are serialised by
a chain lock (a lock file beside the SQLite file, a PostgreSQL advisory lock) held
from reading the tail to writing the anchor; the anchor's check-and-set catches any
writer outside that lock. Triggers refuse UPDATE, DELETE and TRUNCATE so that a bug in
this code cannot rewrite history; the MACs and the anchor are what catch someone who
drops the triggers.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.connections import explain_postgres_error
from activities.vault import VaultError, vault_failure
from workflows.contracts import AuditEvent

# structlog itself, not the worker's log set-up (tests/unit/test_import_rules.py).
log = structlog.get_logger("audit")

# The first row's `prev_mac`.
GENESIS_MAC = "genesis"
# Bound into every MAC, so a MAC made for anything else never verifies as an audit row.
MAC_DOMAIN = "mail-provisioning-audit-v1"
# The activity failure's type for a refused append (counted by runtime/metrics.py).
AUDIT_CHAIN_BROKEN = "AuditChainBroken"
# How long an append waits for the chain lock before it gives up (retryably): below the
# audit activity's 30 s start-to-close, and a bounded wait keeps a hung appender from
# parking every other append's thread in the worker's pool.
CHAIN_LOCK_TIMEOUT = 20.0
# Check-and-set conflicts on the anchor before an append gives up (retryably).
ANCHOR_ATTEMPTS = 20

# One row layout for both stores. `seq` is given by the appender (the last + 1, under
# the chain lock), never by the database, so it is bound into the row's MAC.
ROW_COLUMNS = """
    event_key  TEXT NOT NULL UNIQUE,
    event      TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    timestamp  TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_mac   TEXT NOT NULL,
    mac        TEXT NOT NULL
"""

SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY,{ROW_COLUMNS});
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""

POSTGRES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_events (
    seq BIGINT PRIMARY KEY,{ROW_COLUMNS});
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit log is append-only'; END $$;
CREATE OR REPLACE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"""

COLUMNS = "seq, event_key, event, tenant_id, user_id, timestamp, details, prev_mac, mac"
INSERT_ROW = f"INSERT INTO audit_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
# The column that tells this layout from the unkeyed one of earlier versions.
LAYOUT_MARKER = "prev_mac"


@dataclass(frozen=True)
class AuditRow:
    seq: int
    event_key: str
    event: str
    tenant_id: str
    user_id: str
    timestamp: str
    details: dict[str, str]
    prev_mac: str
    mac: str


@dataclass(frozen=True)
class Head:
    """Where a chain ends: the last row's sequence number and MAC."""

    seq: int
    mac: str

    @classmethod
    def of(cls, row: AuditRow) -> Head:
        return cls(row.seq, row.mac)


class AuditChainBroken(Exception):
    """The chain does not verify: rows were changed, removed or forged."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("audit chain does not verify: " + "; ".join(problems))
        self.problems = problems


class AuditStoreUnreachable(Exception):
    """The PostgreSQL audit store cannot be reached; the message names the DSN parameter
    to fix (activities/connections.py), never the DSN (it may hold a password)."""


class AnchorMoved(Exception):
    """The anchor changed since it was read (check-and-set)."""


class AuditChainBusy(Exception):
    """Another appender held the chain lock for longer than CHAIN_LOCK_TIMEOUT: try later."""


class ChainKey(Protocol):
    """Makes and checks row MACs; the key itself stays outside the database (Vault)."""

    def mac(self, messages: list[bytes]) -> list[str]: ...

    def verify(self, pairs: list[tuple[bytes, str]]) -> list[bool]: ...


class HeadRecord(Protocol):
    """A head kept outside the database, versioned for check-and-set (Vault KV v2)."""

    def read(self) -> tuple[Head | None, int]:
        """The head and its version; (None, 0) if never written."""
        ...

    def write(self, head: Head, cas: int) -> int:
        """Replace version `cas` (0: create); AnchorMoved if it is no longer the latest."""
        ...


def mac_message(chain: str, row: AuditRow) -> bytes:
    """What a row's MAC covers: everything in the row but the MAC, and the chain's name."""
    canonical = json.dumps(
        {
            "chain": chain,
            "seq": row.seq,
            "prev_mac": row.prev_mac,
            "event_key": row.event_key,
            "event": row.event,
            "tenant_id": row.tenant_id,
            "user_id": row.user_id,
            "timestamp": row.timestamp,
            "details": row.details,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{MAC_DOMAIN}\n{canonical}".encode()


# ---------------------------------------------------------------------- stores


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


class ChainCursor:
    """The chain's rows as the appender sees them while it holds the chain lock."""

    def __init__(self, execute: Any, mark: str) -> None:
        # `execute(sql, params)` returns the fetched rows; `mark` is the driver's
        # placeholder ("?" sqlite3, "%s" psycopg). Only constants are put into SQL.
        self._execute = execute
        self._mark = mark

    def rows_from(self, seq: int) -> list[AuditRow]:
        query = f"SELECT {COLUMNS} FROM audit_events WHERE seq >= {self._mark} ORDER BY seq"  # noqa: S608
        return [_row(r) for r in self._execute(query, (seq,))]

    def has_event(self, event_key: str) -> bool:
        query = f"SELECT 1 FROM audit_events WHERE event_key = {self._mark}"  # noqa: S608
        return bool(self._execute(query, (event_key,)))

    def insert(self, row: AuditRow) -> None:
        self._execute(
            INSERT_ROW.replace("?", self._mark),
            (
                row.seq,
                row.event_key,
                row.event,
                row.tenant_id,
                row.user_id,
                row.timestamp,
                json.dumps(row.details, sort_keys=True),
                row.prev_mac,
                row.mac,
            ),
        )


class AuditStore(Protocol):
    def rows(self) -> list[AuditRow]: ...

    def rows_from(self, seq: int) -> list[AuditRow]:
        """The rows with this seq or later, without the chain lock (read-only)."""
        ...

    def chain_lock(self) -> Any:
        """A context manager: the one writer of the chain, yielding a ChainCursor."""
        ...


class SqliteAuditStore:
    """The default: one file, for a single worker host."""

    def __init__(self, path: Path, lock_timeout: float = CHAIN_LOCK_TIMEOUT) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(SQLITE_SCHEMA)
            columns = {r[1] for r in db.execute("PRAGMA table_info(audit_events)")}
        _check_layout(columns, str(path))

    def _connect(self) -> sqlite3.Connection:
        # Autocommit: each statement is its own transaction; the chain lock serialises.
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    @contextmanager
    def chain_lock(self) -> Iterator[ChainCursor]:
        # A lock file beside the database: held across the anchor write too, which a
        # SQLite transaction cannot span. Released by the kernel if the process dies.
        lock_path = self.path.with_name(self.path.name + ".chain-lock")
        with lock_path.open("a") as lock_file, closing(self._connect()) as db:
            _flock_within(lock_file, self.lock_timeout)
            try:
                yield ChainCursor(lambda sql, params: db.execute(sql, params).fetchall(), "?")
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def rows(self) -> list[AuditRow]:
        with closing(self._connect()) as db:
            cursor = db.execute(f"SELECT {COLUMNS} FROM audit_events ORDER BY seq")  # noqa: S608
            return [_row(r) for r in cursor]

    def rows_from(self, seq: int) -> list[AuditRow]:
        with closing(self._connect()) as db:
            return ChainCursor(
                lambda sql, params: db.execute(sql, params).fetchall(), "?"
            ).rows_from(seq)


def _flock_within(lock_file: Any, timeout: float) -> None:
    """An exclusive flock, waited for at most `timeout` seconds (flock itself has none)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AuditChainBusy(
                    f"the audit chain lock was held by another appender for {timeout:g} s"
                ) from None
            time.sleep(0.05)


class PostgresAuditStore:
    """For several workers: one shared, append-only table in PostgreSQL."""

    LOCK = "SELECT pg_advisory_lock(hashtext('audit_events_chain'))"
    UNLOCK = "SELECT pg_advisory_unlock(hashtext('audit_events_chain'))"

    def __init__(self, dsn: str, lock_timeout: float = CHAIN_LOCK_TIMEOUT) -> None:
        import psycopg  # only deployments that use PostgreSQL need the driver loaded

        self._psycopg = psycopg
        self.dsn = dsn
        self.lock_timeout = lock_timeout
        try:
            first = psycopg.connect(dsn)
        except psycopg.OperationalError as err:
            raise AuditStoreUnreachable(explain_postgres_error(err)) from None
        with first as db:
            db.execute(POSTGRES_SCHEMA)
            columns = {
                r[0]
                for r in db.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = 'audit_events' AND table_schema = current_schema()"
                ).fetchall()
            }
        _check_layout(columns, "the PostgreSQL audit table")

    @contextmanager
    def chain_lock(self) -> Iterator[ChainCursor]:
        # A session advisory lock: one chain writer across every worker, held from
        # reading the tail to writing the anchor; a dead worker's session releases it.
        with self._psycopg.connect(self.dsn, autocommit=True) as db:
            # lock_timeout bounds the wait for an advisory lock too (PostgreSQL docs,
            # runtime-config-client: "waiting to acquire a lock on a table, index, row,
            # or other database object").
            db.execute(f"SET lock_timeout = {int(self.lock_timeout * 1000)}")
            try:
                db.execute(self.LOCK)
            except self._psycopg.errors.LockNotAvailable:
                raise AuditChainBusy(
                    f"the audit chain lock was held by another appender for {self.lock_timeout:g} s"
                ) from None
            try:

                def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
                    cursor = db.execute(sql, params)
                    return cursor.fetchall() if cursor.description else []

                yield ChainCursor(execute, "%s")
            finally:
                if not db.broken:  # a lost session has released its lock already
                    db.execute(self.UNLOCK)

    def rows(self) -> list[AuditRow]:
        with self._psycopg.connect(self.dsn) as db:
            cursor = db.execute(f"SELECT {COLUMNS} FROM audit_events ORDER BY seq")  # noqa: S608
            return [_row(r) for r in cursor.fetchall()]

    def rows_from(self, seq: int) -> list[AuditRow]:
        with self._psycopg.connect(self.dsn) as db:
            return ChainCursor(
                lambda sql, params: db.execute(sql, params).fetchall(), "%s"
            ).rows_from(seq)


def _check_layout(columns: set[str], where: str) -> None:
    if LAYOUT_MARKER not in columns:
        raise AuditChainBroken(
            [
                f"{where} has the unkeyed layout of an earlier version (no MACs): "
                "verify it with that version, archive it and start a new log"
            ]
        )


def open_audit_store(location: str) -> AuditStore:
    """`postgresql://...` selects PostgreSQL; anything else is a SQLite file path."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresAuditStore(location)
    return SqliteAuditStore(Path(location))


# ---------------------------------------------------------------------- checks


def link_problems(rows: list[AuditRow], first_seq: int, first_prev: str | None) -> list[str]:
    """Sequence continuity and links; `first_prev` None: the first row's link is not known."""
    problems = []
    expected, prev = first_seq, first_prev
    for row in rows:
        if row.seq != expected:
            gap = f"seq {expected}" if row.seq == expected + 1 else f"seq {expected}..{row.seq - 1}"
            problems.append(f"{gap} missing before seq={row.seq}: rows were deleted")
        elif prev is not None and row.prev_mac != prev:
            problems.append(f"row seq={row.seq} does not link to the row before it")
        expected, prev = row.seq + 1, row.mac
    return problems


def mac_problems(rows: list[AuditRow], key: ChainKey, chain: str) -> list[str]:
    """Every row whose MAC does not verify: its content (or its seq, or link) was changed."""
    valid = key.verify([(mac_message(chain, r), r.mac) for r in rows])
    return [
        f"row seq={r.seq} (event_key {r.event_key!r}): MAC does not verify, "
        "the row was changed or forged"
        for r, ok in zip(rows, valid, strict=True)
        if not ok
    ]


def head_problems(name: str, head: Head | None, rows: list[AuditRow]) -> list[str]:
    """The row a head (anchor or checkpoint) names must be there, with that MAC."""
    if head is None:
        return []
    last = rows[-1].seq if rows else 0
    if head.seq > last:
        return [
            f"the log ends at seq {last} but the {name} in Vault is at seq {head.seq}: "
            "rows were removed from the end (truncated)"
        ]
    row = next((r for r in rows if r.seq == head.seq), None)
    if row is None:
        return [f"row seq={head.seq}, the {name} in Vault, is missing: rows were deleted"]
    if row.mac != head.mac:
        return [f"row seq={head.seq} is not the row the {name} in Vault names: it was replaced"]
    return []


@dataclass
class AuditReport:
    """What `verify_chain` found. `problems` empty: the log is intact."""

    rows: int
    head: Head | None
    anchor: Head | None
    checkpoint: Head | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(
    rows: list[AuditRow],
    key: ChainKey,
    chain: str,
    anchor: Head | None,
    checkpoint: Head | None = None,
) -> AuditReport:
    """Check the whole log: MACs of every row, continuity, links, anchor and checkpoint.

    Rows after the anchored head are fine if they verify: a worker that stopped between
    its insert and its anchor write leaves them, and the next append anchors them.
    """
    report = AuditReport(len(rows), Head.of(rows[-1]) if rows else None, anchor, checkpoint)
    report.problems += link_problems(rows, 1, GENESIS_MAC)
    report.problems += mac_problems(rows, key, chain)
    if anchor is None and rows:
        report.problems.append(
            f"{len(rows)} rows but no anchor in Vault for chain {chain!r}: "
            "the anchor was removed or the rows were not written by a worker"
        )
    report.problems += head_problems("anchor", anchor, rows)
    report.problems += head_problems("checkpoint", checkpoint, rows)
    if anchor is not None and checkpoint is not None and checkpoint.seq > anchor.seq:
        report.problems.append(
            f"the anchor (seq {anchor.seq}) is behind the checkpoint (seq {checkpoint.seq}): "
            "the anchor was moved back"
        )
    if anchor is not None and rows and rows[-1].seq > anchor.seq:
        report.notes.append(
            f"{rows[-1].seq - anchor.seq} row(s) after the anchored seq {anchor.seq} are not "
            "anchored yet (a worker stopped before writing the anchor); the next append does"
        )
    return report


def tail_problems(
    rows: list[AuditRow], key: ChainKey, chain: str, anchored: Head | None
) -> list[str]:
    """The worker's check before appending: the rows from the anchored head on.

    `rows` are those with seq >= the anchored seq (all rows if there is no anchor).
    """
    if anchored is None:
        problems = link_problems(rows, 1, GENESIS_MAC)
        if rows:
            problems.append(
                f"{len(rows)} rows but no anchor in Vault for chain {chain!r}: "
                "the anchor was removed or the rows were not written by a worker"
            )
    elif not rows:
        problems = [
            f"no row at or after seq {anchored.seq}, the anchor in Vault: rows were "
            "removed from the end (truncated)"
        ]
    else:
        problems = head_problems("anchor", anchored, rows)
        problems += link_problems(rows, anchored.seq, None)
    return problems + mac_problems(rows, key, chain)


# ---------------------------------------------------------------------- appending


class AuditLog:
    """The worker's side: append an event once, onto a chain that verifies, and anchor it."""

    def __init__(self, store: AuditStore, key: ChainKey, anchor: HeadRecord, chain: str) -> None:
        self.store = store
        self.key = key
        self.anchor = anchor
        self.chain = chain

    def append(self, event: AuditEvent, timestamp: str) -> bool:
        """Append once; False if a row with this event_key already exists.

        Raises AuditChainBroken, appending nothing, if the rows from the anchored head
        on do not verify (truncated, rewritten, or rows without a valid MAC).
        """
        written = False  # by this call: stays True when a later round finds its row
        with self.store.chain_lock() as cursor:
            for _ in range(ANCHOR_ATTEMPTS):
                anchored, version = self.anchor.read()
                rows = cursor.rows_from(anchored.seq if anchored else 1)
                problems = tail_problems(rows, self.key, self.chain, anchored)
                if problems:
                    raise AuditChainBroken(problems)
                head = Head.of(rows[-1]) if rows else None
                if not cursor.has_event(event.event_key):
                    row = self._sealed(event, timestamp, head)
                    cursor.insert(row)
                    head, written = Head.of(row), True
                if head is None or head == anchored:
                    return written
                try:
                    self.anchor.write(head, cas=version)
                except AnchorMoved:
                    # Someone outside our lock moved it: read it again and re-check the
                    # tail; the row (if ours) is there now, so nothing is written twice.
                    continue
                return written
        raise VaultError(
            f"the audit anchor kept moving: {ANCHOR_ATTEMPTS} check-and-set conflicts",
            retryable=True,
        )

    def _sealed(self, event: AuditEvent, timestamp: str, head: Head | None) -> AuditRow:
        unsealed = AuditRow(
            seq=head.seq + 1 if head else 1,
            event_key=event.event_key,
            event=event.event,
            tenant_id=event.tenant_id,
            user_id=event.user_id,
            timestamp=timestamp,
            # Stored as JSON and read back as such: MAC the same value both times.
            details=json.loads(json.dumps(event.details, sort_keys=True)),
            prev_mac=head.mac if head else GENESIS_MAC,
            mac="",
        )
        [mac] = self.key.mac([mac_message(self.chain, unsealed)])
        return AuditRow(**{**unsealed.__dict__, "mac": mac})

    def check_ready(self) -> list[str]:
        """Raise VaultError unless the key makes a MAC and the anchor can be read.

        Returns what is wrong with the rows from the anchored head on (empty: nothing).
        A worker starts either way (each append refuses a broken chain by itself); it
        says so at once instead of at the next purchase's audit step.
        """
        self.key.mac([b"startup-check"])
        anchored, _ = self.anchor.read()  # before the rows: a row appended meanwhile is read too
        rows = self.store.rows_from(anchored.seq if anchored else 1)
        return tail_problems(rows, self.key, self.chain, anchored)

    def verify(self, checkpoint: HeadRecord | None = None) -> AuditReport:
        """The whole log against the anchor (and the operator's checkpoint, if given)."""
        anchor, _ = self.anchor.read()
        saved, _ = checkpoint.read() if checkpoint else (None, 0)
        return verify_chain(self.store.rows(), self.key, self.chain, anchor, saved)


class AuditActivities:
    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log

    @activity.defn(name="record_audit_event")
    async def record_audit_event(self, event: AuditEvent) -> bool:
        timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            written = await asyncio.to_thread(self._log.append, event, timestamp)
        except AuditChainBroken as err:
            # Retried (for the activity's day), never final: a tampered log must not make
            # a run compensate, i.e. delete a paid server. The log line, and the counter
            # runtime/metrics.py keeps of this failure type, are what operators alert on.
            log.error("audit_chain_broken", problems=err.problems, audit_event=event.event)
            raise ApplicationError(str(err), type=AUDIT_CHAIN_BROKEN) from None
        except AuditChainBusy as err:
            raise ApplicationError(str(err), type="AuditChainBusy") from None
        except VaultError as err:
            raise vault_failure(err) from None
        activity.logger.info(
            "audit event " + ("written" if written else "already present"),
            extra={"event": event.event},
        )
        return written
