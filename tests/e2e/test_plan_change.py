"""ChangeMailPlan on the real stack: Temporal, OpenBao, the local cloud, SSH, MailU.

A purchase on `starter` (cx23, 40 GB) is changed to `business` (cx33, 80 GB): the
server is shut down, changed with its disk upgraded, powered on, MailU comes back
healthy after the reboot, the admin login is proven again (a new Vault version) and
the change is audited. The way back down is then refused before anything is touched
(an upgraded disk cannot shrink). The module's world check (conftest) then compares
every record.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities import hetzner
from activities.credentials import read_admin_credentials
from activities.mailu import MailuHost
from activities.rotation_target import TenantRecords, rotation_target, tenant_server_selector
from activities.ssh import ServerAccess, SshIdentity
from activities.vault import Vault
from devstack.demo import smtp_login
from devstack.stack import StackInfo
from tests.e2e.conftest import CloudControl
from tests.e2e.test_leak_scan import count, history_blobs
from tests.e2e.test_purchase_end_to_end import audit_rows, provision
from workflows.contracts import ProvisionResult
from workflows.plan_change_contracts import (
    PLAN_CHANGE_WORKFLOW_TYPE,
    PlanChangeRequest,
    PlanChangeResult,
    PlanChangeStatus,
    plan_change_lock_id,
    plan_change_workflow_id,
)


async def change_plan(client: Client, request: PlanChangeRequest) -> PlanChangeResult:
    result: PlanChangeResult = await client.execute_workflow(
        PLAN_CHANGE_WORKFLOW_TYPE,
        asdict(request),
        id=plan_change_workflow_id(request.tenant_id, request.request_id),
        task_queue="mail-provisioning",
        result_type=PlanChangeResult,
    )
    return result


def server_of(cloud: CloudControl, purchase: dict[str, Any]) -> tuple[str, str, int, str | None]:
    """The purchase's one server: status, type, disk (GB) and its `plan` label."""
    [server] = cloud.servers_of(purchase["purchase_id"])
    return (
        server["status"],
        server["server_type"]["name"],
        server["primary_disk_size"],
        server["labels"].get("plan"),
    )


def cancel_audited(info: StackInfo, workflow_id: str) -> dict[str, str]:
    """The run's one audit row, a failed change: why it stopped and what was restored."""
    [row] = audit_rows(info, workflow_id)
    assert row.event == "mail_plan_change_failed"
    keys = ("step", "error_type", "reason", "restored", "server_type", "plan")
    return {k: row.details[k] for k in keys}


async def test_an_upgrade_reboots_into_the_bigger_type_and_the_way_back_is_refused(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
) -> None:
    bought = await provision(client, purchase)
    tenant = purchase["tenant_id"]
    up = PlanChangeRequest(tenant, "up-1", "business", "e2e-tests")

    changed = await change_plan(client, up)

    assert (changed.previous_server_type, changed.server_type, changed.disk_gb) == (
        "cx23",
        "cx33",
        80,
    )
    assert changed.stopped_how == "shutdown"
    assert changed.downtime_seconds > 0
    [server] = cloud.servers_of(purchase["purchase_id"])
    assert server["id"] == bought.server_id
    assert (server["status"], server["server_type"]["name"], server["primary_disk_size"]) == (
        "running",
        "cx33",
        80,
    )
    assert server["labels"]["plan"] == "business"
    commands = [c["command"] for c in cloud.commands(bought.server_id)]
    assert any(c.endswith("ps --format json admin") for c in commands)
    # The admin login proven after the reboot is the record Vault now holds.
    assert changed.vault_version == bought.vault_version + 1
    assert read_admin_credentials(reader_vault, tenant).username == f"admin@{purchase['domain']}"
    [row] = audit_rows(info, plan_change_workflow_id(tenant, "up-1"))
    assert row.event == "mail_plan_changed"
    assert row.details["downtime_seconds"] == str(changed.downtime_seconds)
    # The password the change proved (the reader role decrypts it) is nowhere else: not
    # in the run's history, stored or codec-decoded, nor in the audit database.
    proven = read_admin_credentials(reader_vault, tenant).password
    blobs = {
        **history_blobs(info, plan_change_workflow_id(tenant, "up-1")),
        # SQLite may hold recent rows in its write-ahead log beside the file.
        "audit db": b"".join(
            path.read_bytes()
            for path in (info.audit_db, info.audit_db.with_name(info.audit_db.name + "-wal"))
            if path.exists()
        ),
    }
    assert {name: count(blob, [proven]) for name, blob in blobs.items()} == dict.fromkeys(blobs, 0)

    down = PlanChangeRequest(tenant, "down-1", "starter", "e2e-tests")
    with pytest.raises(WorkflowFailureError) as refused:
        await change_plan(client, down)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "PlanChangeImpossible"
    assert "cannot shrink" in cause.message
    [after] = cloud.servers_of(purchase["purchase_id"])
    assert (after["status"], after["server_type"]["name"]) == ("running", "cx33")
    assert audit_rows(info, plan_change_workflow_id(tenant, "down-1")) == []


async def test_a_refused_change_type_after_the_stop_brings_the_old_type_back_up(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    """change_type answers a final error once the server is off: the saga powers the
    server on again on its old type, the failure is audited, nothing else changed."""
    bought = await provision(client, purchase)
    tenant = purchase["tenant_id"]
    cloud.inject(
        method="POST",
        path=f"/v1/servers/{bought.server_id}/actions/change_type",
        status=422,
        code="invalid_server_type",
        message="The server type does not fit for the given server or is deprecated",
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await change_plan(client, PlanChangeRequest(tenant, "up-1", "business", "e2e-tests"))
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "PlanChangeFailed"
    assert cause.details[0]["step"] == "change_server_type"
    # The purchase's plan label, untouched.
    assert server_of(cloud, purchase) == ("running", "cx23", 40, "starter")
    [row] = audit_rows(info, plan_change_workflow_id(tenant, "up-1"))
    assert row.event == "mail_plan_change_failed"
    assert (row.details["step"], row.details["restored"]) == ("change_server_type", "unchanged")


async def test_a_lost_change_type_answer_is_retried_without_a_second_change(
    client: Client, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    """The change happens but its answer is lost (503 after the effect): the retry meets
    the migration (locked) or its result and changes nothing twice."""
    bought = await provision(client, purchase)
    cloud.inject(
        method="POST",
        path=f"/v1/servers/{bought.server_id}/actions/change_type",
        status=503,
        code="unavailable",
        after_effect=True,
    )
    changed = await change_plan(
        client, PlanChangeRequest(purchase["tenant_id"], "up-1", "business", "e2e-tests")
    )
    assert (changed.server_type, changed.disk_gb) == ("cx33", 80)
    [server] = cloud.servers_of(purchase["purchase_id"])
    assert (server["status"], server["server_type"]["name"]) == ("running", "cx33")


async def test_starter_change_plan_waits_shows_the_steps_and_prints_the_result(
    client: Client, info: StackInfo, purchase: dict[str, Any]
) -> None:
    """`python starter.py change-plan TENANT PLAN --wait`, as README and OPERATIONS show."""
    await provision(client, purchase)
    tenant = purchase["tenant_id"]
    done = await asyncio.to_thread(
        subprocess.run,
        info.starter_command("change-plan", tenant, "business", "--request-id", "cli-1", "--wait"),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["plan"], result["server_type"], result["request_id"]) == (
        "business",
        "cx33",
        "cli-1",
    )
    assert result["downtime_seconds"] > 0
    for step in ("stop_server", "change_server_type", "start_mail_server", "audit"):
        assert f"  {step}: done" in done.stderr
    again = await asyncio.to_thread(
        subprocess.run,
        info.starter_command("change-plan", tenant, "starter", "--wait"),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert again.returncode == 1
    assert "PlanChangeImpossible" in again.stderr or "cannot shrink" in again.stderr


# --- cancel semantics on the real stack (docs/OPERATIONS.md "Plan change", Cancel) -------
#
# A step is held by the local cloud's fault rules (devstack/faults.py): the provider keeps
# answering a retryable error, so the step's activity retries under its policy until the
# test cancels the run. The test cancels only once the step has failed twice and waits
# for its next attempt (the pending activity's state in a describe), so the cancel finds
# no attempt running: Temporal cancels a retrying activity at once.

# Far more answers than the attempts a held step makes before the test cancels it.
HOLD_TIMES = 500
POLLS = 1500


async def start_change(
    client: Client, request: PlanChangeRequest
) -> WorkflowHandle[Any, PlanChangeResult]:
    return await client.start_workflow(
        PLAN_CHANGE_WORKFLOW_TYPE,
        asdict(request),
        id=plan_change_workflow_id(request.tenant_id, request.request_id),
        task_queue="mail-provisioning",
        result_type=PlanChangeResult,
    )


async def held_between_attempts(
    client: Client, handle: WorkflowHandle[Any, Any], activity: str
) -> str:
    """Until `activity` has failed at least twice and waits for its next attempt; returns
    its last failure's message (decoded: failures go through the codec too)."""
    for _ in range(POLLS):
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.RUNNING, description.status
        for pending in description.raw_description.pending_activities:
            if (
                pending.activity_type.name == activity
                and pending.attempt >= 3
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
            ):
                return str(await client.data_converter.decode_failure(pending.last_failure))
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id} never retried {activity}")


async def cancelled(handle: WorkflowHandle[Any, Any]) -> PlanChangeStatus:
    """Cancel the run; its end must be CANCELLED. Returns its final status query."""
    await handle.cancel()
    return await ended_cancelled(handle)


async def ended_cancelled(handle: WorkflowHandle[Any, Any]) -> PlanChangeStatus:
    """The run's end, which must be CANCELLED; its final status query."""
    with pytest.raises(WorkflowFailureError) as ended:
        await handle.result()
    assert isinstance(ended.value.cause, CancelledError), ended.value.cause
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    status: PlanChangeStatus = await handle.query("status", result_type=PlanChangeStatus)
    return status


async def lock_end(client: Client, tenant: str) -> WorkflowExecutionStatus | None:
    """How the tenant's plan-change lock ended, once it has (Temporal terminates it when
    its plan change closes, moments after)."""
    lock = client.get_workflow_handle(plan_change_lock_id(tenant))
    for _ in range(POLLS):
        status = (await lock.describe()).status
        if status != WorkflowExecutionStatus.RUNNING:
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"{lock.id} still running after its plan change closed")


def vps_pid(cloud: CloudControl, server_id: int) -> int | None:
    """The stand-in server's process: a new one after every power cycle."""
    response = cloud.devstack.get(f"servers/{server_id}")
    response.raise_for_status()
    pid: int | None = response.json()["server"]["pid"]
    return pid


async def mailu_admin_healthy(info: StackInfo, worker_vault: Vault, tenant: str) -> None:
    """Until MailU's admin container is healthy on the tenant's server, asked as the
    plan change's own start step asks (docker compose ps over the pinned SSH key)."""
    provider = hetzner.from_settings(
        {"token": (info.state_dir / "cloud.token").read_text().strip(), "api_url": info.cloud_url}
    )
    identity = SshIdentity.from_file(Path(info.worker_env["MAILPROV_SSH_KEY_FILE"]))
    try:
        servers = await provider.find_servers(label_selector=tenant_server_selector(tenant))
    finally:
        await provider.aclose()
    record, version = worker_vault.latest(tenant)
    target = rotation_target(TenantRecords(tenant, servers, record, version), identity)
    async with await ServerAccess(identity, port=info.ssh_port).open(target) as conn:
        await ActivityEnvironment().run(MailuHost(conn).wait_admin_healthy)


async def test_a_cancel_touches_nothing_before_the_stop_and_brings_the_old_type_back_after_it(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    worker_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    bought = await provision(client, purchase)
    tenant, server_id = purchase["tenant_id"], bought.server_id
    pid = vps_pid(cloud, server_id)

    # 1. Cancelled in check_plan_change (the provider's catalog answers 503): nothing
    #    touched, no audit row, the lock released.
    cloud.inject(
        method="GET", path="/v1/server_types", status=503, code="unavailable", times=HOLD_TIMES
    )
    before = await start_change(client, PlanChangeRequest(tenant, "cancel-1", "business", "e2e"))
    assert "unavailable" in await held_between_attempts(client, before, "check_plan_change")
    status = await cancelled(before)
    cloud.clear_faults()
    assert (status.state, status.current_step) == ("cancelled", None)
    assert [step.name for step in status.steps] == [
        "validate_input",
        "take_plan_change_lock",
        "check_plan_change",
    ]
    # The purchase's plan label, untouched.
    assert server_of(cloud, purchase) == ("running", "cx23", 40, "starter")
    assert vps_pid(cloud, server_id) == pid  # never powered down
    assert audit_rows(info, before.id) == []
    assert await lock_end(client, tenant) == WorkflowExecutionStatus.TERMINATED

    # 2. Cancelled after the stop, in change_server_type (change_type answers `locked`, as
    #    Hetzner does while another action holds the server): the server back up on its
    #    old type, MailU healthy, the stored admin login works, the cancel audited.
    cloud.inject(
        method="POST",
        path=f"/v1/servers/{server_id}/actions/change_type",
        status=423,
        code="locked",
        message="server is locked by a running action",
        times=HOLD_TIMES,
    )
    after = await start_change(client, PlanChangeRequest(tenant, "cancel-2", "business", "e2e"))
    assert "locked" in await held_between_attempts(client, after, "change_server_type")
    [server] = cloud.servers_of(purchase["purchase_id"])
    assert server["status"] == "off"
    status = await cancelled(after)
    cloud.clear_faults()
    assert status.state == "cancelled"
    assert {step.name: step.state for step in status.steps}.items() >= {
        "stop_server": "done",
        "restore_server_type": "done",
        "audit_failure": "done",
    }.items()
    # The purchase's plan label, untouched.
    assert server_of(cloud, purchase) == ("running", "cx23", 40, "starter")
    assert cancel_audited(info, after.id) == {
        "step": "change_server_type",
        "error_type": "CancelledError",
        "reason": "workflow cancelled",
        "restored": "unchanged",
        "server_type": "cx23",
        "plan": "business",
    }
    assert await lock_end(client, tenant) == WorkflowExecutionStatus.TERMINATED

    await mail_works_as_bought(info, cloud, reader_vault, worker_vault, bought, tmp_path)


async def test_a_cancel_during_the_migration_waits_for_it_and_keeps_the_grown_disk(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    worker_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Cancelled while Hetzner's change_type action migrates the server (held by the
    stand-in's migration hold): the action cannot be cancelled, so the restore waits for
    it to end; the disk it grew cannot shrink, so the server stays on the new type and
    runs again (`restored: kept_new_type`), as docs/OPERATIONS.md says."""
    bought = await provision(client, purchase)
    tenant, server_id = purchase["tenant_id"], bought.server_id
    hold = f"servers/{server_id}/migration-hold"
    cloud.devstack.post(hold).raise_for_status()
    handle = await start_change(client, PlanChangeRequest(tenant, "cancel-3", "business", "e2e"))
    await server_status(cloud, purchase["purchase_id"], "migrating")
    await handle.cancel()
    restoring = await status_when(handle, lambda s: s.current_step == "restore_server_type")
    assert restoring.state == "compensating"
    [server] = cloud.servers_of(purchase["purchase_id"])
    assert server["status"] == "migrating"  # the restore waits for Hetzner's action
    cloud.devstack.delete(hold).raise_for_status()
    status = await ended_cancelled(handle)
    assert status.state == "cancelled"
    # The purchase's plan label, untouched.
    assert server_of(cloud, purchase) == ("running", "cx33", 80, "starter")
    assert cancel_audited(info, handle.id) == {
        "step": "change_server_type",
        "error_type": "CancelledError",
        "reason": "workflow cancelled",
        "restored": "kept_new_type",
        "server_type": "cx23",
        "plan": "business",
    }
    assert await lock_end(client, tenant) == WorkflowExecutionStatus.TERMINATED
    await mail_works_as_bought(info, cloud, reader_vault, worker_vault, bought, tmp_path)


async def server_status(cloud: CloudControl, purchase_id: str, wanted: str) -> None:
    for _ in range(POLLS):
        [server] = cloud.servers_of(purchase_id)
        if server["status"] == wanted:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the server of {purchase_id} never became {wanted}")


async def status_when(
    handle: WorkflowHandle[Any, Any], done: Callable[[PlanChangeStatus], bool]
) -> PlanChangeStatus:
    for _ in range(POLLS):
        status: PlanChangeStatus = await handle.query("status", result_type=PlanChangeStatus)
        if done(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id} never reached the expected state: {status}")


async def mail_works_as_bought(
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    worker_vault: Vault,
    bought: ProvisionResult,
    tmp_path: Path,
) -> None:
    """After a cancelled change: MailU's admin container healthy again, and the admin
    login Vault holds (the purchase's: a cancelled change sets no password) works."""
    tenant = bought.tenant_id
    await mailu_admin_healthy(info, worker_vault, tenant)
    assert reader_vault.latest(tenant)[1] == bought.vault_version
    credentials = read_admin_credentials(reader_vault, tenant)
    cafile = tmp_path / "vps-cert.pem"
    cafile.write_text(cloud.tls_cert(bought.server_id))
    assert bought.ipv4 is not None
    reply = smtp_login(
        bought.ipv4, info.smtp_port, cafile, credentials.username, credentials.password
    )
    assert reply.startswith("235 ")
