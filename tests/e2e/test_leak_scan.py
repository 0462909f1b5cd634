"""Leak scans: after real runs, the plaintext password appears nowhere it must not.

Three runs on the real stack, each by an in-process worker whose password generator
is wrapped to remember what it made (in this test's memory only):
  * a successful run,
  * a run whose credentials step fails once after generating a password and is retried,
  * a run that fails after the credentials step (Vault refuses the write) and compensates.
Every password of every run is searched for raw, base64, hex and URL-encoded in:
the full history (as stored, and decoded through the codec server like an operator
sees it), worker and starter logs, audit rows, Vault outside the envelope, the argv
of every command run on the VPS, and every file under the stack's state directory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import pytest
from temporalio.client import Client, WorkflowFailureError

import activities.credentials
import activities.crypto
from activities.audit import SqliteAuditStore
from activities.credentials import read_admin_credentials
from activities.vault import Vault, VaultSettings
from devstack.stack import Stack, StackInfo
from devstack.vps import SMTP_AUTH_LOG
from runtime.logs import configure_logging
from tests.e2e.conftest import CloudControl, new_request, run_in_process_worker, write_only_token
from workflows.contracts import PurchaseRequest, workflow_id_for


def encodings(password: str) -> dict[str, bytes]:
    raw = base64.b64decode(password)
    return {
        "plaintext": password.encode(),
        "raw bytes": raw,
        "base64 of plaintext": base64.b64encode(password.encode()),
        "hex": binascii.hexlify(raw),
        "HEX": binascii.hexlify(raw).upper(),
        "url-encoded": urllib.parse.quote(password, safe="").encode(),
    }


def count(blob: bytes, passwords: list[str]) -> int:
    return sum(blob.count(form) for p in passwords for form in encodings(p).values())


@dataclass
class Capture:
    passwords: list[str] = field(default_factory=list)


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Capture:
    captured = Capture()
    original = activities.crypto.generate_password

    def remembering() -> str:
        password = original()
        captured.passwords.append(password)
        return password

    monkeypatch.setattr(activities.credentials, "generate_password", remembering)
    return captured


@pytest.fixture
def worker_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "inprocess-worker.log"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    with path.open("w") as stream:
        configure_logging(stream=stream)
        yield path
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def history_blobs(info: StackInfo, workflow_id: str) -> dict[str, bytes]:
    return {
        "history (stored)": info.workflow_history(workflow_id, decoded=False),
        "history (codec-decoded)": info.workflow_history(workflow_id, decoded=True),
    }


def vault_outside_envelope(info: StackInfo, tenant_id: str) -> bytes:
    root = hvac.Client(
        url=info.vault_addr, token=(info.state_dir / "vault" / "root.token").read_text().strip()
    )
    blobs: list[Any] = []
    try:
        versions = root.secrets.kv.v2.read_secret_metadata(
            path=f"{tenant_id}/admin", mount_point="smtp"
        )["data"]
        blobs.append(versions)
        for version in versions["versions"]:
            data = root.secrets.kv.v2.read_secret_version(
                path=f"{tenant_id}/admin",
                version=int(version),
                mount_point="smtp",
                raise_on_deleted_version=False,
            )["data"]
            blobs.append(data)
    except hvac.exceptions.InvalidPath:
        pass
    return json.dumps(blobs).encode()


def smtp_auth_attempts(cloud: CloudControl, request: PurchaseRequest) -> list[tuple[str, bool]]:
    """(login, success) per SMTP AUTH the server saw; [] once the server is deleted."""
    servers = cloud.servers_of(request.purchase_id)
    if not servers:
        return []
    server = cloud.devstack.get(f"servers/{servers[0]['id']}").json()["server"]
    log = Path(server["state_dir"]) / SMTP_AUTH_LOG
    lines = log.read_text().splitlines() if log.exists() else []
    return [(e["login"], e["success"]) for e in map(json.loads, lines)]


def files_under(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


async def test_no_plaintext_password_anywhere_after_success_retry_and_failure(
    stack: Stack,
    info: StackInfo,
    client: Client,
    cloud: CloudControl,
    capture: Capture,
    worker_log: Path,
    tmp_path: Path,
) -> None:
    task_queue = f"leak-scan-{uuid.uuid4().hex[:6]}"
    runs: dict[str, tuple[PurchaseRequest, str, BaseException | None]] = {}

    ok = new_request(info)
    runs["success"] = (ok, *await run_in_process_worker(info, client, task_queue, None, ok))

    retried = new_request(info)

    async def fail_the_first_admin_import() -> None:
        # Only the credentials step runs `config-import -u -` (the password on stdin; the
        # DKIM step's import is `config-import -q -u -`).
        # The first one answers as MailU does but sets nothing, so the SMTP AUTH proof
        # fails after the password exists (and went to the server's SMTP): retried.
        for _ in range(200):
            servers = cloud.servers_of(retried.purchase_id)
            if servers:
                cloud.inject_command_fault(
                    servers[0]["id"],
                    "config-import -u -",
                    times=1,
                    exit_status=0,
                    stderr="",
                    stdout="Committing changes. No changes.\n",
                )
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the retried run never created its server")

    runs["retried credentials"] = (
        retried,
        *await run_in_process_worker(
            info, client, task_queue, None, retried, fail_the_first_admin_import
        ),
    )

    failing = new_request(info)
    runs["failed after credentials"] = (
        failing,
        *await run_in_process_worker(
            info, client, task_queue, write_only_token(info, tmp_path), failing
        ),
    )

    assert runs["success"][2] is None
    assert runs["retried credentials"][2] is None
    assert isinstance(runs["failed after credentials"][2], WorkflowFailureError)
    # One password per credentials attempt: 1 + 2 + 1.
    assert len(capture.passwords) == 4, capture.passwords and len(capture.passwords)
    # The proof ran against each server's SMTP: a refused first attempt, then success.
    auth_logs = {
        label: smtp_auth_attempts(cloud, request) for label, (request, _, _) in runs.items()
    }
    assert auth_logs["success"] == [(f"admin@{ok.domain}", True)]
    assert auth_logs["retried credentials"] == [
        (f"admin@{retried.domain}", False),
        (f"admin@{retried.domain}", True),
    ]

    # The starter, as an operator runs it, on each finished run.
    starter_output = b""
    for label, (request, _, failure) in runs.items():
        for command in ("result", "status"):
            shown = subprocess.run(
                info.starter_command(command, request.purchase_id),
                capture_output=True,
                check=False,
            )
            expected = 1 if command == "result" and failure is not None else 0
            assert shown.returncode == expected, (label, command, shown.stderr)
            starter_output += shown.stdout + shown.stderr

    places: dict[str, bytes] = {}
    for label, (request, workflow_id, _) in runs.items():
        for name, blob in history_blobs(info, workflow_id).items():
            places[f"{name}: {label}"] = blob
        places[f"vault outside envelope: {label}"] = vault_outside_envelope(info, request.tenant_id)
    places["worker log (in-process)"] = worker_log.read_bytes()
    places["worker logs (stack)"] = b"".join(p.read_bytes() for p in info.worker_logs())
    places["starter output"] = starter_output
    places["audit rows"] = json.dumps(
        [r.__dict__ for r in SqliteAuditStore(info.audit_db).rows()]
    ).encode()
    places["VPS command argv"] = json.dumps(
        [cloud.commands(s["id"]) for s in cloud.servers()]
    ).encode()
    places["files under the stack state dir"] = files_under(info.state_dir)
    places["files under the test's temp dir"] = files_under(tmp_path)

    found = {place: count(blob, capture.passwords) for place, blob in places.items()}
    assert found == dict.fromkeys(places, 0)

    # Every log line an activity wrote is JSON naming its workflow, run, activity and tenant.
    lines = [json.loads(line) for line in worker_log.read_text().splitlines()]
    activity_lines = [line for line in lines if "activity" in line]
    assert len(activity_lines) >= 10
    tenants = {r.tenant_id for r, _, _ in runs.values()}
    # The purchases' own runs, and their tenants' claims (whose owner check is an activity).
    claims = {f"tenant-{tenant}" for tenant in tenants}
    for line in activity_lines:
        assert line["workflow_id"].startswith("purchase-run-") or line["workflow_id"] in claims
        assert line["run_id"] and line["tenant_id"] in tenants

    # The scanner itself works: each encoding of a real password is found when present,
    # and the success run's password is the one that really logs in.
    probe = capture.passwords[0]
    for form in encodings(probe).values():
        assert count(b"..." + form + b"...", [probe]) >= 1
    stored = read_admin_credentials(
        Vault(VaultSettings(url=info.vault_addr, token=info.reader_token_file.read_text().strip())),
        ok.tenant_id,
    )
    assert stored.password == capture.passwords[0]
    assert runs["failed after credentials"][1] == workflow_id_for(failing.purchase_id)
    assert cloud.servers_of(failing.purchase_id) == []
