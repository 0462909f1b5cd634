"""Credential rotation on the real stack: Temporal Schedules, OpenBao, SSH, SMTP.

The rotation schedule a completed purchase creates is driven by the real Temporal
scheduler: a backfill over two 180-day periods makes it start two rotations, each
of which writes a Vault version, sets MailU over the pinned SSH channel and proves
the SMTP login. The tests then prove with the reader role (which can decrypt) what
the worker cannot: the new password logs in and the old one no longer does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import smtplib
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import hvac
import pytest
from temporalio.client import Client, ScheduleBackfill, ScheduleOverlapPolicy, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.audit import SqliteAuditStore
from activities.credentials import read_admin_credentials
from activities.rotation_schedule import (
    NoRotationSchedule,
    parse_utc,
    rotate_now,
    rotation_status,
)
from activities.vault import CredentialsRecord, Vault, VaultSettings
from devstack.demo import smtp_login
from devstack.stack import StackInfo
from starter import start_purchase
from tests.e2e import test_leak_scan as leak_scan
from tests.e2e.conftest import CloudControl, new_request
from tests.e2e.test_leak_scan import (
    Capture,
    count,
    files_under,
    history_blobs,
    vault_outside_envelope,
)
from tests.e2e.test_purchase_end_to_end import audit_rows, provision
from worker import WORKFLOWS, Settings, build_activities, workflow_runner
from workflows.contracts import MailuTarget, ProvisionResult
from workflows.rotation_contracts import (
    ROTATION_CATCHUP_WINDOW,
    ROTATION_WORKFLOW_TYPE,
    RotationRequest,
    RotationResult,
    rotation_schedule_id,
)

PERIOD = timedelta(days=180)
# The leak scan's fixtures: the password generator's memory and the in-process worker log.
capture = leak_scan.capture
worker_log = leak_scan.worker_log


def login_for(info: StackInfo, cloud: CloudControl, result: ProvisionResult, tmp_path: Path) -> Any:
    cafile = tmp_path / f"vps-{result.server_id}.pem"
    cafile.write_text(cloud.tls_cert(result.server_id))
    host = result.ipv4 or result.ipv6
    assert host is not None
    return functools.partial(smtp_login, host, info.smtp_port, cafile)


def version_data(info: StackInfo, tenant: str, version: int) -> dict[str, str]:
    """One stored version, read with the reader role (it may read every version)."""
    reader = hvac.Client(url=info.vault_addr, token=info.reader_token_file.read_text().strip())
    response = reader.secrets.kv.v2.read_secret_version(
        path=f"{tenant}/admin", version=version, mount_point="smtp", raise_on_deleted_version=True
    )
    return dict(response["data"]["data"])


async def wait_for_runs(client: Client, tenant: str, count: int) -> list[str]:
    """Workflow ids of the schedule's first `count` runs, once all have finished."""
    handle = client.get_schedule_handle(rotation_schedule_id(tenant))
    for _ in range(600):
        info = (await handle.describe()).info
        if len(info.recent_actions) >= count and not info.running_actions:
            return [a.action.workflow_id for a in info.recent_actions]  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
    raise AssertionError(f"the schedule did not run {count} rotations in time")


def assert_rotated_from(before: dict[str, str], after: dict[str, str]) -> None:
    """A rotation changes the envelope and last_rotated; every other field stays."""
    assert after["password"] != before["password"]
    assert parse_utc(after["last_rotated"]) >= parse_utc(before["last_rotated"])
    for key in ("username", "webmail_url", "created_at", "rotation_policy"):
        assert after[key] == before[key], key


async def rotate_and_wait(client: Client, tenant: str) -> tuple[str, RotationResult]:
    """`starter.py rotate` as a function: the run's id and its result."""
    run_id = await rotate_now(client, tenant)
    outcome = await client.get_workflow_handle(run_id, result_type=RotationResult).result()
    return run_id, outcome


def assert_stored_password_logs_in(
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    result: ProvisionResult,
    tmp_path: Path,
) -> None:
    current = read_admin_credentials(reader_vault, result.tenant_id)
    login = login_for(info, cloud, result, tmp_path)
    assert login(current.username, current.password).startswith("235 ")


async def provisioned(
    client: Client, reader_vault: Vault, purchase: dict[str, Any]
) -> tuple[ProvisionResult, str, CredentialsRecord]:
    """A purchase provisioned on the stack: its result, tenant and first Vault record."""
    result = await provision(client, purchase)
    tenant = purchase["tenant_id"]
    record = reader_vault.read_credentials(tenant)
    assert record is not None
    return result, tenant, record


async def test_schedule_rotates_across_two_periods_new_password_logs_in_old_does_not(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    result, tenant, before = await provisioned(client, reader_vault, purchase)
    old = read_admin_credentials(reader_vault, tenant)
    login = login_for(info, cloud, result, tmp_path)
    assert login(old.username, old.password).startswith("235 ")

    # The schedule the purchase created: every 180 days (from the record's policy),
    # phased on last_rotated, overlap SKIP, bounded catch-up.
    handle = client.get_schedule_handle(rotation_schedule_id(tenant))
    description = await handle.describe()
    [interval] = description.schedule.spec.intervals
    assert interval.every == PERIOD
    assert description.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert description.schedule.policy.catchup_window == ROTATION_CATCHUP_WINDOW
    last_rotated = parse_utc(before.data["last_rotated"])
    assert description.info.next_action_times[:2] == [
        last_rotated + PERIOD,
        last_rotated + 2 * PERIOD,
    ]

    # Two 180-day periods, run by Temporal's own scheduler: the backfill covers the
    # two period starts before last_rotated (and no third).
    await handle.backfill(
        ScheduleBackfill(
            start_at=last_rotated - 2 * PERIOD - timedelta(hours=1),
            end_at=last_rotated - timedelta(hours=1),
            overlap=ScheduleOverlapPolicy.BUFFER_ALL,
        )
    )
    run_ids = await wait_for_runs(client, tenant, 2)
    assert len(set(run_ids)) == 2
    outcomes = [
        await client.get_workflow_handle(i, result_type=RotationResult).result() for i in run_ids
    ]
    assert sorted(o.vault_version or 0 for o in outcomes) == [
        before.version + 1,
        before.version + 2,
    ]
    assert {o.outcome for o in outcomes} == {"rotated"}

    after = reader_vault.read_credentials(tenant)
    assert after is not None and after.version == before.version + 2
    assert_rotated_from(before.data, version_data(info, tenant, before.version + 1))
    assert_rotated_from(version_data(info, tenant, before.version + 1), after.data)

    new = read_admin_credentials(reader_vault, tenant)
    assert login(new.username, new.password).startswith("235 ")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        login(old.username, old.password)

    for run_id in run_ids:
        [row] = audit_rows(info, run_id)
        assert row.event == "smtp_credentials_rotated"
        assert row.details["username"] == old.username
        assert old.password not in str(row.details) and new.password not in str(row.details)

    status = await rotation_status(client, tenant)
    assert status["every_days"] == 180
    recent = status["recent"]
    assert isinstance(recent, list)
    assert [r["status"] for r in recent] == ["completed", "completed"]


async def test_two_rotations_racing_leave_exactly_one_working_password(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    result, tenant, before = await provisioned(client, reader_vault, purchase)

    first, second = await asyncio.gather(rotate_now(client, tenant), rotate_now(client, tenant))
    runs = {first, second}
    for run_id in runs:
        outcome = await client.get_workflow_handle(run_id, result_type=RotationResult).result()
        assert outcome.outcome == "rotated"
    # Overlap SKIP joined the second operator to the running rotation (or, if the
    # first had already finished, ran the second after it): one version per run.
    assert len(
        (
            await client.get_schedule_handle(rotation_schedule_id(tenant)).describe()
        ).info.recent_actions
    ) == len(runs)
    after = reader_vault.read_credentials(tenant)
    assert after is not None and after.version == before.version + len(runs)
    assert_stored_password_logs_in(info, cloud, reader_vault, result, tmp_path)


async def test_mailu_refusing_the_new_password_restores_the_old_record_then_retries(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    result, tenant, before = await provisioned(client, reader_vault, purchase)
    cloud.inject_command_fault(result.server_id, "config-import", times=1)

    _, outcome = await rotate_and_wait(client, tenant)

    # Attempt 1 wrote v+1, MailU refused, v+2 restored the old record; attempt 2 wrote v+3.
    assert outcome.vault_version == before.version + 3
    assert version_data(info, tenant, before.version + 2) == before.data
    assert_rotated_from(before.data, version_data(info, tenant, before.version + 3))
    assert_stored_password_logs_in(info, cloud, reader_vault, result, tmp_path)


async def test_rotate_reissues_credentials_after_vault_lost_the_record(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    result, tenant, _ = await provisioned(client, reader_vault, purchase)
    root = hvac.Client(
        url=info.vault_addr, token=(info.state_dir / "vault" / "root.token").read_text().strip()
    )
    # Data loss: every version and the metadata gone, as after restoring an old backup.
    root.secrets.kv.v2.delete_metadata_and_all_versions(path=f"{tenant}/admin", mount_point="smtp")
    assert reader_vault.read_credentials(tenant) is None

    run_id, outcome = await rotate_and_wait(client, tenant)

    assert (outcome.outcome, outcome.vault_version) == ("rotated", 1)
    record = reader_vault.read_credentials(tenant)
    assert record is not None and record.data["created_at"] == record.data["last_rotated"]
    assert_stored_password_logs_in(info, cloud, reader_vault, result, tmp_path)
    [row] = audit_rows(info, run_id)
    assert row.details["reissued"] == "true"


async def test_a_deleted_server_has_its_rotation_schedule_removed(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    result = await provision(client, purchase)
    tenant = purchase["tenant_id"]
    cloud.api.delete(f"servers/{result.server_id}").raise_for_status()
    await poll(lambda: not cloud.servers_of(purchase["purchase_id"]))

    # The operator's commands, as run from a shell.
    shown = await starter(info, "rotation-status", tenant)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["schedule_id"] == rotation_schedule_id(tenant)
    rotated = await starter(info, "rotate", tenant)
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["outcome"] == "schedule_removed"

    with pytest.raises(NoRotationSchedule):
        await rotation_status(client, tenant)
    gone = await starter(info, "rotation-status", tenant)
    assert gone.returncode == 3
    assert f"no rotation schedule 'rotate-{tenant}'" in gone.stderr
    run_id = rotated.stderr.split()[1]
    [row] = audit_rows(info, run_id)
    assert row.event == "rotation_schedule_removed"

    # The server went outside the product; its record and claim remain (check-world
    # says so) until the operator deprovisions the tenant (`starter.py deprovision`).
    removed = await starter(info, "deprovision", tenant, "--reason", "server deleted", "--wait")
    assert removed.returncode == 0, removed.stderr


async def starter(info: StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        info.starter_command(*args),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


async def poll(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def test_no_plaintext_password_anywhere_after_a_rotation_and_its_undone_attempt(
    info: StackInfo,
    client: Client,
    cloud: CloudControl,
    capture: Capture,
    worker_log: Path,
    tmp_path: Path,
) -> None:
    """Every password a rotation makes (one refused by MailU and undone, one kept)."""
    task_queue = f"rotation-leak-{uuid.uuid4().hex[:6]}"
    request = new_request(info)
    settings = replace(Settings.from_env(info.worker_env), task_queue=task_queue)
    async with (
        build_activities(settings) as acts,
        Worker(
            client,
            task_queue=task_queue,
            workflows=WORKFLOWS,
            activities=acts,
            workflow_runner=workflow_runner(client.data_converter),
        ),
    ):
        handle, _ = await start_purchase(client, request, task_queue)
        result: ProvisionResult = await handle.result()
        provisioned = len(capture.passwords)
        cloud.inject_command_fault(result.server_id, "config-import", times=1)
        run_id = await rotate_now(client, request.tenant_id)
        outcome = await client.get_workflow_handle(run_id, result_type=RotationResult).result()
    assert outcome.outcome == "rotated"
    rotation_passwords = capture.passwords[provisioned:]
    assert len(rotation_passwords) == 2  # the refused attempt's and the kept one

    places = {
        **{f"{k}: rotation": v for k, v in history_blobs(info, run_id).items()},
        **{f"{k}: purchase": v for k, v in history_blobs(info, handle.id).items()},
        "vault outside envelope": vault_outside_envelope(info, request.tenant_id),
        "worker log (in-process)": worker_log.read_bytes(),
        "audit rows": json.dumps(
            [r.__dict__ for r in SqliteAuditStore(info.audit_db).rows()]
        ).encode(),
        "VPS command argv": json.dumps(cloud.commands(result.server_id)).encode(),
        "files under the stack state dir": files_under(info.state_dir),
    }
    found = {place: count(blob, capture.passwords) for place, blob in places.items()}
    assert found == dict.fromkeys(places, 0)
    # The scan is not vacuous: the kept password is the one the reader role decrypts.
    reader = Vault(
        VaultSettings(url=info.vault_addr, token=info.reader_token_file.read_text().strip())
    )
    assert read_admin_credentials(reader, request.tenant_id).password == rotation_passwords[-1]


async def test_a_hand_made_target_aimed_at_another_tenants_server_changes_nothing(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Issue 17 item 2: any client may start RotateSmtpCredentials with any argument.

    The attacker names tenant A but aims at tenant B's server, with B's public host key
    (anyone can read it off port 22). Nothing may change: no Vault version for A or B,
    no command on B's server, no audit row; both stored passwords still log in.
    """
    other = dict(purchase, purchase_id=purchase["purchase_id"] + "-b")
    other.update(tenant_id=purchase["tenant_id"] + "-b", domain="b" + purchase["domain"])
    (a, tenant_a, a_before), (b, tenant_b, b_before) = await asyncio.gather(
        provisioned(client, reader_vault, purchase), provisioned(client, reader_vault, other)
    )
    assert b.ipv4 is not None
    b_host_key = await asyncssh.get_server_host_key(b.ipv4, info.ssh_port)
    assert b_host_key is not None
    hostile = MailuTarget(
        tenant_id=tenant_a,
        domain=purchase["domain"],
        server_name=cloud.servers_of(purchase["purchase_id"])[0]["name"],
        address=b.ipv4,
        host_public_key=b_host_key.export_public_key().decode().strip(),
    )
    b_commands = len(cloud.commands(b.server_id))
    audit_before = len(SqliteAuditStore(info.audit_db).rows())

    handle = await client.start_workflow(
        ROTATION_WORKFLOW_TYPE,
        hostile,
        id=f"rotate-hostile-{uuid.uuid4().hex[:8]}",
        task_queue="mail-provisioning",
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 300)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert (cause.type, cause.non_retryable) == ("InvalidRotationRequest", True), cause
    assert "'address' is not a known field" in cause.message

    for tenant, before in ((tenant_a, a_before), (tenant_b, b_before)):
        current = reader_vault.read_credentials(tenant)
        assert current is not None and current.version == before.version, tenant
    assert len(cloud.commands(b.server_id)) == b_commands
    assert len(SqliteAuditStore(info.audit_db).rows()) == audit_before
    assert_stored_password_logs_in(info, cloud, reader_vault, a, tmp_path)
    assert_stored_password_logs_in(info, cloud, reader_vault, b, tmp_path)

    # What the client may send, the tenant id, rotates that tenant on its own server only.
    outcome = await client.execute_workflow(
        ROTATION_WORKFLOW_TYPE,
        RotationRequest(tenant_a),
        id=f"rotate-client-{uuid.uuid4().hex[:8]}",
        task_queue="mail-provisioning",
        result_type=RotationResult,
    )
    assert (outcome.outcome, outcome.vault_version) == ("rotated", a_before.version + 1)
    assert_stored_password_logs_in(info, cloud, reader_vault, a, tmp_path)
    b_now = reader_vault.read_credentials(tenant_b)
    assert b_now is not None and b_now.version == b_before.version
    assert len(cloud.commands(b.server_id)) == b_commands
    assert_stored_password_logs_in(info, cloud, reader_vault, b, tmp_path)


async def test_records_that_disagree_refuse_the_rotation_before_anything_is_written(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
) -> None:
    """Vault's record names another domain than the server's reverse DNS: which is
    right cannot be told, so nothing is written, set or audited, and the field is named."""
    result, tenant, before = await provisioned(client, reader_vault, purchase)
    root = hvac.Client(
        url=info.vault_addr, token=(info.state_dir / "vault" / "root.token").read_text().strip()
    )
    tampered = dict(
        before.data,
        username="admin@elsewhere.example",
        webmail_url="https://mail.elsewhere.example",
    )
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{tenant}/admin", secret=tampered, mount_point="smtp"
    )
    commands = len(cloud.commands(result.server_id))
    audit_before = len(SqliteAuditStore(info.audit_db).rows())

    handle = await client.start_workflow(
        ROTATION_WORKFLOW_TYPE,
        RotationRequest(tenant),
        id=f"rotate-disagree-{uuid.uuid4().hex[:8]}",
        task_queue="mail-provisioning",
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 300)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert (cause.type, cause.non_retryable) == ("RotationRecordsDisagree", True), cause
    assert "field 'domain'" in cause.message and "elsewhere.example" in cause.message
    current = reader_vault.read_credentials(tenant)
    assert current is not None and current.version == before.version + 1  # the tampered one
    assert len(cloud.commands(result.server_id)) == commands
    assert len(SqliteAuditStore(info.audit_db).rows()) == audit_before
