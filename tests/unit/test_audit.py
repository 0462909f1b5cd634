"""The audit chain's logic on the SQLite store: once per event key, append-only, every
row MACed and the head anchored, and a chain that does not verify is refused.

The MAC key and the anchor are in-process here (`LocalKey`, `MemoryHead`, with the
same contract as Transit HMAC and a KV v2 record with check-and-set); the same
behaviour against the real OpenBao and PostgreSQL is in tests/integration/.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import itertools
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.audit import (
    AnchorMoved,
    AuditActivities,
    AuditChainBroken,
    AuditChainBusy,
    AuditLog,
    Head,
    SqliteAuditStore,
    mac_message,
    verify_chain,
)
from runtime.metrics import AUDIT_CHAIN_BROKEN, AUDIT_CHAIN_BROKEN_TYPE, _count_error
from workflows.contracts import AuditEvent

CHAIN = "test-chain"


class LocalKey:
    """HMAC-SHA256 under a key the test holds (Transit's contract: make, verify)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self.macs_made = 0

    def mac(self, messages: list[bytes]) -> list[str]:
        self.macs_made += len(messages)
        return ["v1:" + hmac.new(self._key, m, hashlib.sha256).hexdigest() for m in messages]

    def verify(self, pairs: list[tuple[bytes, str]]) -> list[bool]:
        return [
            hmac.compare_digest("v1:" + hmac.new(self._key, m, hashlib.sha256).hexdigest(), mac)
            for m, mac in pairs
        ]


class MemoryHead:
    """A versioned record replaced only with check-and-set (KV v2's contract)."""

    def __init__(self) -> None:
        self.versions: list[Head] = []
        self.fail_writes = 0  # the next N writes are lost (the worker dies first)

    def read(self) -> tuple[Head | None, int]:
        return (self.versions[-1] if self.versions else None), len(self.versions)

    def write(self, head: Head, cas: int) -> int:
        if cas != len(self.versions):
            raise AnchorMoved("memory")
        if self.fail_writes:
            self.fail_writes -= 1
            raise OSError("worker died before the anchor write")
        self.versions.append(head)
        return len(self.versions)


def event(key: str, tenant: str = "acme") -> AuditEvent:
    return AuditEvent(
        key,
        "smtp_credentials_stored",
        tenant,
        {"username": f"admin@{tenant}.example", "webmail_url": "https://m"},
    )


@pytest.fixture
def audit_log(tmp_path: Path) -> AuditLog:
    return AuditLog(SqliteAuditStore(tmp_path / "audit.db"), LocalKey(), MemoryHead(), CHAIN)


def filled(audit_log: AuditLog, rows: int = 5) -> AuditLog:
    for index in range(1, rows + 1):
        assert audit_log.append(event(f"wf/run/e{index}"), f"t{index}") is True
    return audit_log


def attacker(audit_log: AuditLog, *statements: str) -> None:
    """Someone with write access to the database file: drops the triggers, edits rows."""
    assert isinstance(audit_log.store, SqliteAuditStore)
    with sqlite3.connect(audit_log.store.path) as db:
        db.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        db.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        for statement in statements:
            db.execute(statement)


def problems(audit_log: AuditLog) -> list[str]:
    return audit_log.verify().problems


def test_an_event_key_is_written_once(audit_log: AuditLog) -> None:
    assert audit_log.append(event("wf/run/e"), "2026-01-01T00:00:00Z") is True
    assert audit_log.append(event("wf/run/e"), "2026-01-01T00:00:09Z") is False
    [row] = audit_log.store.rows()
    assert row.timestamp == "2026-01-01T00:00:00Z"
    assert row.user_id == "system"
    assert audit_log.anchor.read() == (Head(1, row.mac), 1)


def test_rows_cannot_be_updated_or_deleted(audit_log: AuditLog) -> None:
    audit_log.append(event("k1"), "t1")
    assert isinstance(audit_log.store, SqliteAuditStore)
    with sqlite3.connect(audit_log.store.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE audit_events SET tenant_id = 'x'")
    with sqlite3.connect(audit_log.store.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM audit_events")


def test_every_row_is_maced_linked_and_the_head_anchored(audit_log: AuditLog) -> None:
    rows = filled(audit_log).store.rows()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_mac == "genesis"
    assert all(r.prev_mac == p.mac for p, r in itertools.pairwise(rows))
    assert audit_log.key.verify([(mac_message(CHAIN, r), r.mac) for r in rows]) == [True] * 5
    report = audit_log.verify()
    assert report.ok and report.rows == 5
    assert report.anchor == report.head == Head(5, rows[-1].mac)


# Each tampering, done behind the triggers' back, and what the verification says.
TAMPERING = {
    "rewritten row": (
        ['UPDATE audit_events SET details = \'{"username":"mallory"}\' WHERE seq = 3'],
        "row seq=3 (event_key 'wf/run/e3'): MAC does not verify",
    ),
    "rewritten row, its MAC copied from another": (
        [
            "UPDATE audit_events SET mac = (SELECT mac FROM audit_events WHERE seq = 2) "
            "WHERE seq = 3"
        ],
        "row seq=3 (event_key 'wf/run/e3'): MAC does not verify",
    ),
    "deleted middle row": (
        ["DELETE FROM audit_events WHERE seq = 3"],
        "seq 3 missing before seq=4: rows were deleted",
    ),
    "deleted middle row, the rest renumbered and relinked": (
        [
            "DELETE FROM audit_events WHERE seq = 3",
            "UPDATE audit_events SET seq = seq - 1 WHERE seq > 3",
            "UPDATE audit_events SET prev_mac = (SELECT mac FROM audit_events WHERE seq = 2)"
            " WHERE seq = 3",
        ],
        "row seq=3 (event_key 'wf/run/e4'): MAC does not verify",
    ),
    "truncated tail": (
        ["DELETE FROM audit_events WHERE seq >= 4"],
        "the log ends at seq 3 but the anchor in Vault is at seq 5: rows were removed",
    ),
    "emptied": (
        ["DELETE FROM audit_events"],
        "the log ends at seq 0 but the anchor in Vault is at seq 5",
    ),
    "forged row appended": (
        [
            "INSERT INTO audit_events SELECT 6, 'wf/run/forged', event, tenant_id, user_id,"
            " timestamp, details, mac, mac FROM audit_events WHERE seq = 5"
        ],
        "row seq=6 (event_key 'wf/run/forged'): MAC does not verify",
    ),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_tampering_behind_the_triggers_is_found(audit_log: AuditLog, tampering: str) -> None:
    statements, expected = TAMPERING[tampering]
    filled(audit_log)
    attacker(audit_log, *statements)
    found = problems(audit_log)
    assert any(expected in p for p in found), found


# Tampering at or after the anchored head: a worker refuses to append onto it.
TAIL_TAMPERING = [
    "truncated tail",
    "emptied",
    "forged row appended",
    "deleted middle row, the rest renumbered and relinked",
]


@pytest.mark.parametrize("tampering", TAIL_TAMPERING)
def test_the_worker_refuses_to_append_onto_a_forged_chain(
    audit_log: AuditLog, tampering: str
) -> None:
    filled(audit_log)
    attacker(audit_log, *TAMPERING[tampering][0])
    rows_before = audit_log.store.rows()
    anchor_before = audit_log.anchor.read()
    with pytest.raises(AuditChainBroken, match="audit chain does not verify"):
        audit_log.append(event("wf/run/next"), "t9")
    assert audit_log.store.rows() == rows_before
    assert audit_log.anchor.read() == anchor_before


def test_the_anchored_row_rewritten_is_refused(audit_log: AuditLog) -> None:
    filled(audit_log)
    attacker(audit_log, "UPDATE audit_events SET tenant_id = 'mallory' WHERE seq = 5")
    with pytest.raises(AuditChainBroken, match=r"row seq=5 .* MAC does not verify"):
        audit_log.append(event("wf/run/next"), "t9")


def test_rows_without_an_anchor_are_refused(tmp_path: Path) -> None:
    """A whole forged log, or one whose anchor was removed from Vault."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    key = LocalKey()
    filled(AuditLog(store, key, MemoryHead(), CHAIN), rows=2)
    unanchored = AuditLog(store, key, MemoryHead(), CHAIN)
    with pytest.raises(AuditChainBroken, match="2 rows but no anchor in Vault"):
        unanchored.append(event("wf/run/next"), "t9")
    assert any("no anchor" in p for p in problems(unanchored))


def test_a_row_from_another_chain_does_not_verify(tmp_path: Path) -> None:
    """The chain's name is bound into each MAC: rows cannot be moved between logs."""
    key = LocalKey()
    source = filled(AuditLog(SqliteAuditStore(tmp_path / "a.db"), key, MemoryHead(), "a"), 1)
    [row] = source.store.rows()
    report = verify_chain([row], key, "b", Head(1, row.mac))
    assert report.problems == [
        "row seq=1 (event_key 'wf/run/e1'): MAC does not verify, the row was changed or forged"
    ]


def test_a_lost_anchor_write_is_caught_up_by_the_next_append(audit_log: AuditLog) -> None:
    """The worker died between its insert and the anchor write: the row is there, MACed,
    unanchored; verification says so without failing, the retry anchors it, once."""
    filled(audit_log, rows=2)
    assert isinstance(audit_log.anchor, MemoryHead)
    audit_log.anchor.fail_writes = 1
    with pytest.raises(OSError, match="worker died"):
        audit_log.append(event("wf/run/e3"), "t3")
    report = audit_log.verify()
    assert report.ok and report.anchor == Head(2, audit_log.store.rows()[1].mac)
    assert report.notes == [
        "1 row(s) after the anchored seq 2 are not anchored yet (a worker stopped before "
        "writing the anchor); the next append does"
    ]
    assert audit_log.append(event("wf/run/e3"), "t3-retry") is False  # the activity's retry
    rows = audit_log.store.rows()
    assert len(rows) == 3 and rows[2].timestamp == "t3"
    assert audit_log.anchor.read() == (Head(3, rows[2].mac), 3)
    assert audit_log.verify().notes == []


def test_an_anchor_moved_by_another_writer_is_read_again(audit_log: AuditLog) -> None:
    """Check-and-set: a conflicting anchor write re-reads and re-checks, never forks."""
    filled(audit_log, rows=1)
    anchor = audit_log.anchor
    assert isinstance(anchor, MemoryHead)
    real_write = anchor.write
    calls = []

    def racing_write(head: Head, cas: int) -> int:
        calls.append(cas)
        if len(calls) == 1:  # another worker anchors the same head first
            real_write(head, cas)
            raise AnchorMoved("memory")
        return real_write(head, cas)

    anchor.write = racing_write  # type: ignore[method-assign]
    assert audit_log.append(event("wf/run/e2"), "t2") is True
    rows = audit_log.store.rows()
    assert len(rows) == 2 and anchor.read()[0] == Head(2, rows[1].mac)
    assert calls == [1]  # the second round found the anchor already at the head
    assert audit_log.verify().ok


def test_the_checkpoint_fixes_history_against_the_workers_own_key(tmp_path: Path) -> None:
    """The worker's key can MAC anything and its token can move the anchor: a rewrite
    of the whole log with fresh MACs verifies against the anchor, but not against the
    auditor's checkpoint, which the worker cannot write."""
    key = LocalKey()
    honest = filled(AuditLog(SqliteAuditStore(tmp_path / "a.db"), key, MemoryHead(), CHAIN), 3)
    checkpoint = MemoryHead()
    checkpoint.write(Head.of(honest.store.rows()[-1]), cas=0)
    assert honest.verify(checkpoint).ok
    # The token holder rebuilds the log from scratch with a changed row 2 and re-anchors.
    forged = AuditLog(SqliteAuditStore(tmp_path / "forged.db"), key, honest.anchor, CHAIN)
    forged.anchor = MemoryHead()
    for index in (1, 2, 3):
        forged.append(event(f"wf/run/e{index}", "mallory" if index == 2 else "acme"), "t")
    assert forged.verify().ok  # without a checkpoint nothing shows
    assert forged.verify(checkpoint).problems == [
        "row seq=3 is not the row the checkpoint in Vault names: it was replaced"
    ]


def test_an_unkeyed_store_of_an_earlier_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_key TEXT,"
            " prev_hash TEXT, row_hash TEXT)"
        )
    with pytest.raises(AuditChainBroken, match="unkeyed layout of an earlier version"):
        SqliteAuditStore(path)


async def test_the_activity_alerts_and_retries_instead_of_forging(
    audit_log: AuditLog, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Retryable, never final: a final failure would make the run compensate (delete
    the paid server) because someone tampered with the log."""
    filled(audit_log, rows=2)
    attacker(audit_log, "DELETE FROM audit_events WHERE seq = 2")
    with pytest.raises(ApplicationError) as failure:
        await ActivityEnvironment().run(
            AuditActivities(audit_log).record_audit_event, event("wf/run/e3")
        )
    assert failure.value.type == AUDIT_CHAIN_BROKEN_TYPE
    assert not failure.value.non_retryable
    assert "no row at or after seq 2, the anchor in Vault" in str(failure.value)
    out = capsys.readouterr().out + caplog.text
    assert "audit_chain_broken" in out
    assert len(audit_log.store.rows()) == 1


async def test_the_activity_writes_each_event_once(audit_log: AuditLog) -> None:
    activity = AuditActivities(audit_log).record_audit_event
    assert await ActivityEnvironment().run(activity, event("wf/run/e")) is True
    assert await ActivityEnvironment().run(activity, event("wf/run/e")) is False
    assert len(audit_log.store.rows()) == 1


def test_concurrent_appenders_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    """Several appenders (threads here, processes on a host alike: the chain lock is a
    lock file) write each event once, on one chain, anchored at its end."""
    key, anchor = LocalKey(), MemoryHead()
    logs = [AuditLog(SqliteAuditStore(tmp_path / "audit.db"), key, anchor, CHAIN) for _ in range(4)]
    keys = [f"purchase-{i % 10}/run/smtp_credentials_stored" for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        written = list(
            pool.map(lambda ik: logs[ik[0] % 4].append(event(ik[1]), "t"), enumerate(keys))
        )
    assert sum(written) == 10
    report = logs[0].verify()
    assert report.ok and report.rows == 10 and report.anchor == report.head


class RecordingMeter:
    """The part of the activity metric meter `_count_error` uses, recording."""

    def __init__(self) -> None:
        self.counted: dict[str, int] = {}

    def create_counter(self, name: str, description: str) -> RecordingMeter.Counter:
        return RecordingMeter.Counter(self, name)

    class Counter:
        def __init__(self, meter: RecordingMeter, name: str) -> None:
            self.meter, self.name = meter, name

        def with_additional_attributes(self, attributes: dict[str, str]) -> RecordingMeter.Counter:
            return self

        def add(self, value: int) -> None:
            self.meter.counted[self.name] = self.meter.counted.get(self.name, 0) + value


def test_a_refused_append_is_counted_for_the_alert() -> None:
    """deploy/observability/alerts.yml alerts on this counter (MailProvisioningAuditChainBroken)."""
    meter = RecordingMeter()
    _count_error(
        meter, ApplicationError("audit chain does not verify", type=AUDIT_CHAIN_BROKEN_TYPE)
    )
    assert meter.counted == {AUDIT_CHAIN_BROKEN: 1}


async def test_a_held_chain_lock_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    """An appender stuck while holding the lock (a hung Vault call) does not park every
    other append's thread: they give up after the lock timeout, retryably."""
    store = SqliteAuditStore(tmp_path / "audit.db", lock_timeout=0.2)
    audit_log = AuditLog(store, LocalKey(), MemoryHead(), CHAIN)
    with (tmp_path / "audit.db.chain-lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another appender, holding it throughout
        with pytest.raises(AuditChainBusy, match="held by another appender"):
            audit_log.append(event("wf/run/e1"), "t1")
        with pytest.raises(ApplicationError) as failure:
            await ActivityEnvironment().run(
                AuditActivities(audit_log).record_audit_event, event("wf/run/e1")
            )
    assert (failure.value.type, failure.value.non_retryable) == ("AuditChainBusy", False)
    assert store.rows() == []
    assert audit_log.append(event("wf/run/e1"), "t1") is True  # once it is free
