"""The audit log against whoever holds its database, on both sinks (SQLite, PostgreSQL
18) with the real OpenBao: rows MACed by Transit under the worker's token, the head
anchored in KV v2, `starter.py audit-verify` under the auditor's token.

Each tampering is done as an attacker with the database would: drop the append-only
triggers, then rewrite, delete, renumber, truncate or forge rows. Each is reported by
audit-verify (exit 1), and where it touches the anchored head the worker refuses to
append onto it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import starter
from activities.audit import AuditChainBroken, AuditLog, Head
from activities.audit_vault import AuditSettings, open_audit_log
from activities.vault import TRANSIT_BATCH, Vault, VaultSettings
from devstack.stack import ROOT
from tests.integration.openbao_dev import DevOpenBao
from worker import ConfigError, Settings
from worker import _open_audit_log as open_worker_audit_log
from workflows.contracts import AuditEvent

SINKS = ["sqlite", "postgres"]


def event(key: str) -> AuditEvent:
    return AuditEvent(
        key,
        "smtp_credentials_stored",
        "acme",
        {"username": "admin@acme.example", "webmail_url": "https://mail.acme.example"},
    )


@pytest.fixture(params=SINKS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file, or a fresh database on the shared PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "audit.db")
        return
    server_uri: str = request.getfixturevalue("postgres_uri")
    name = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_uri, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield server_uri.replace("/postgres?", f"/{name}?")


@pytest.fixture
def settings(location: str) -> AuditSettings:
    # A chain per test: each has its own anchor in the shared OpenBao.
    return AuditSettings(location=location, chain=f"test-{uuid.uuid4().hex[:12]}")


def worker_log(openbao: DevOpenBao, settings: AuditSettings) -> AuditLog:
    vault = Vault(VaultSettings(url=openbao.addr, token=openbao.tokens.worker))
    return open_audit_log(settings, vault)


def attacker(location: str, *statements: str) -> None:
    """Drops the append-only triggers (the database's owner or a superuser can), edits."""
    if location.startswith("postgresql://"):
        with psycopg.connect(location) as db:
            db.execute("DROP TRIGGER audit_events_no_change ON audit_events")
            for statement in statements:
                db.execute(statement)
        return
    with sqlite3.connect(location) as db:
        db.execute("DROP TRIGGER audit_events_no_update")
        db.execute("DROP TRIGGER audit_events_no_delete")
        for statement in statements:
            db.execute(statement)


def audit_verify(
    openbao: DevOpenBao,
    settings: AuditSettings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *extra: str,
) -> tuple[int, str]:
    """`starter.py audit-verify` in this process, with the auditor's token."""
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", openbao.tokens.auditor)
    monkeypatch.delenv("VAULT_TOKEN_FILE", raising=False)
    capsys.readouterr()
    code = starter.main(
        ["audit-verify", "--audit", settings.location, "--chain", settings.chain, *extra]
    )
    return code, capsys.readouterr().err


TAMPERING = {
    "rewritten row": (
        ['UPDATE audit_events SET details = \'{"username": "mallory"}\' WHERE seq = 3'],
        "BROKEN: row seq=3 (event_key 'wf/run/e3'): MAC does not verify",
    ),
    "deleted middle row": (
        ["DELETE FROM audit_events WHERE seq = 3"],
        "BROKEN: seq 3 missing before seq=4: rows were deleted",
    ),
    "deleted middle row, the rest renumbered and relinked": (
        [
            "DELETE FROM audit_events WHERE seq = 3",
            "UPDATE audit_events SET seq = seq - 1 WHERE seq > 3",
            "UPDATE audit_events SET prev_mac = (SELECT mac FROM audit_events WHERE seq = 2)"
            " WHERE seq = 3",
        ],
        "BROKEN: row seq=3 (event_key 'wf/run/e4'): MAC does not verify",
    ),
    "truncated tail": (
        ["DELETE FROM audit_events WHERE seq >= 4"],
        "BROKEN: the log ends at seq 3 but the anchor in Vault is at seq 5: rows were removed",
    ),
    "forged row appended": (
        [
            "INSERT INTO audit_events SELECT 6, 'wf/run/forged', event, tenant_id, user_id,"
            " timestamp, details, mac, mac FROM audit_events WHERE seq = 5"
        ],
        "BROKEN: row seq=6 (event_key 'wf/run/forged'): MAC does not verify",
    ),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_audit_verify_reports_each_tampering(
    openbao: DevOpenBao,
    settings: AuditSettings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tampering: str,
) -> None:
    audit_log = worker_log(openbao, settings)
    for index in range(1, 6):
        assert audit_log.append(event(f"wf/run/e{index}"), f"2026-01-01T00:00:0{index}Z")
    code, out = audit_verify(openbao, settings, capsys, monkeypatch)
    assert (code, out.splitlines()[-1]) == (
        0,
        f"ok: 5 audit rows in chain {settings.chain!r}, MACs and links verify, anchored at seq 5",
    )
    statements, expected = TAMPERING[tampering]
    attacker(settings.location, *statements)
    code, out = audit_verify(openbao, settings, capsys, monkeypatch)
    assert code == 1
    assert expected in out, out


@pytest.mark.parametrize(
    "tampering",
    [
        "truncated tail",
        "forged row appended",
        "deleted middle row, the rest renumbered and relinked",
    ],
)
def test_the_worker_refuses_to_append_onto_a_forged_chain(
    openbao: DevOpenBao, settings: AuditSettings, tampering: str
) -> None:
    audit_log = worker_log(openbao, settings)
    for index in range(1, 6):
        audit_log.append(event(f"wf/run/e{index}"), "t")
    attacker(settings.location, *TAMPERING[tampering][0])
    rows, anchor = audit_log.store.rows(), audit_log.anchor.read()
    with pytest.raises(AuditChainBroken, match="audit chain does not verify"):
        audit_log.append(event("wf/run/next"), "t")
    assert (audit_log.store.rows(), audit_log.anchor.read()) == (rows, anchor)


def test_the_checkpoint_is_written_by_the_auditor_and_checked(
    openbao: DevOpenBao,
    settings: AuditSettings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    audit_log = worker_log(openbao, settings)
    for index in range(1, 4):
        audit_log.append(event(f"wf/run/e{index}"), "t")
    code, out = audit_verify(openbao, settings, capsys, monkeypatch, "--checkpoint")
    assert code == 0 and "checkpoint: seq 3 recorded in Vault" in out
    head = Head.of(audit_log.store.rows()[-1])
    # A holder of the worker's token rebuilds row 2 with fresh MACs and re-anchors: the
    # anchor agrees, the auditor's checkpoint (which that token cannot write) does not.
    attacker(settings.location, "DELETE FROM audit_events WHERE seq >= 2")
    forged = worker_log(openbao, settings)
    forged.anchor.write(Head.of(forged.store.rows()[0]), cas=forged.anchor.read()[1])
    forged.append(AuditEvent("wf/run/e2", "provisioning_failed", "acme", {}), "t")
    forged.append(event("wf/run/e3"), "t")
    code, out = audit_verify(openbao, settings, capsys, monkeypatch)
    assert code == 1
    assert "row seq=3 is not the row the checkpoint in Vault names" in out, out
    assert forged.anchor.read()[0] != head


def test_the_cli_exits_non_zero_in_its_own_process(
    openbao: DevOpenBao, settings: AuditSettings
) -> None:
    audit_log = worker_log(openbao, settings)
    for index in range(1, 3):
        audit_log.append(event(f"wf/run/e{index}"), "t")
    env = {**os.environ, "VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.tokens.auditor}
    env.pop("VAULT_TOKEN_FILE", None)
    command = [
        sys.executable,
        str(ROOT / "starter.py"),
        "audit-verify",
        "--audit",
        settings.location,
        "--chain",
        settings.chain,
    ]
    intact = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert intact.returncode == 0, intact.stderr
    attacker(settings.location, "DELETE FROM audit_events WHERE seq = 2")
    broken = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert broken.returncode == 1
    assert "the log ends at seq 1 but the anchor in Vault is at seq 2" in broken.stderr


def test_more_rows_than_one_transit_request_takes(openbao: DevOpenBao) -> None:
    """OpenBao refuses a JSON body of more than 1000 strings (max_request_json_strings):
    MACs are made and checked in batches, so a long log still verifies, and a bad MAC
    in a later batch is still found at its place."""
    worker = Vault(VaultSettings(url=openbao.addr, token=openbao.tokens.worker))
    messages = [f"row {i}".encode() for i in range(3 * TRANSIT_BATCH + 7)]
    macs = worker.hmac("mail-audit", messages)
    assert len(set(macs)) == len(messages)
    auditor = Vault(VaultSettings(url=openbao.addr, token=openbao.tokens.auditor))
    macs[TRANSIT_BATCH + 3] = macs[0]
    valid = auditor.verify_hmac("mail-audit", list(zip(messages, macs, strict=True)))
    assert [i for i, ok in enumerate(valid) if not ok] == [TRANSIT_BATCH + 3]


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("reader", r"audit key or anchor not usable: .*permission denied.*vault_bootstrap"),
        ("auditor", r"audit key or anchor not usable: .*permission denied.*vault_bootstrap"),
    ],
)
def test_the_worker_refuses_to_start_without_the_audit_key(
    openbao: DevOpenBao, tmp_path: Path, token: str, message: str
) -> None:
    """A token that cannot MAC (an old bootstrap's policy, or the wrong role): the worker
    says so at start, instead of failing every purchase at its audit step."""
    env = {
        "HCLOUD_TOKEN": "t",
        "MAILPROV_SSH_KEY_FILE": "/k",
        "MAILPROV_CODEC_KEYS_FILE": "/c",
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": getattr(openbao.tokens, token),
        "MAILPROV_VAULT_DENIED_RETRY_SECONDS": "0",
        "MAILPROV_AUDIT_DB": str(tmp_path / "audit.db"),
    }
    settings = Settings.from_env(env)
    with pytest.raises(ConfigError, match=message):
        open_worker_audit_log(settings, Vault(settings.vault))


def test_a_wholesale_rewrite_is_reported_in_bounded_output(
    openbao: DevOpenBao,
    settings: AuditSettings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    audit_log = worker_log(openbao, settings)
    for index in range(1, 61):
        audit_log.append(event(f"wf/run/e{index}"), "t")
    attacker(settings.location, "UPDATE audit_events SET tenant_id = 'mallory'")
    code, out = audit_verify(openbao, settings, capsys, monkeypatch)
    broken = [line for line in out.splitlines() if line.startswith("BROKEN: ")]
    assert code == 1
    assert len(broken) == starter.MAX_PROBLEMS_SHOWN + 1
    assert broken[-1] == "BROKEN: ... and 10 more"
    assert out.splitlines()[-1].startswith("60 problem(s) in 60 audit rows")


def test_the_worker_says_at_start_up_that_the_chain_is_broken(
    openbao: DevOpenBao,
    settings: AuditSettings,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It starts (appends refuse by themselves), but alerts before the next audit step."""
    audit_log = worker_log(openbao, settings)
    for index in range(1, 4):
        audit_log.append(event(f"wf/run/e{index}"), "t")
    env = {
        "HCLOUD_TOKEN": "t",
        "MAILPROV_SSH_KEY_FILE": "/k",
        "MAILPROV_CODEC_KEYS_FILE": "/c",
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": openbao.tokens.worker,
        # A PostgreSQL DSN or a SQLite file, each under its own variable (README).
        (
            "MAILPROV_AUDIT_DSN"
            if settings.location.startswith("postgres")
            else "MAILPROV_AUDIT_DB"
        ): settings.location,
        "MAILPROV_AUDIT_CHAIN": settings.chain,
    }
    worker_settings = Settings.from_env(env)
    assert open_worker_audit_log(worker_settings, Vault(worker_settings.vault)).check_ready() == []
    assert "audit_chain_broken" not in capsys.readouterr().out + caplog.text
    attacker(settings.location, "DELETE FROM audit_events WHERE seq = 3")
    open_worker_audit_log(worker_settings, Vault(worker_settings.vault))
    out = capsys.readouterr().out + caplog.text
    assert "audit_chain_broken" in out and "no row at or after seq 3" in out
