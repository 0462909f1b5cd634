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
from dataclasses import asdict
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.credentials import read_admin_credentials
from activities.vault import Vault
from devstack.stack import StackInfo
from tests.e2e.conftest import CloudControl
from tests.e2e.test_leak_scan import count, history_blobs
from tests.e2e.test_purchase_end_to_end import audit_rows, provision
from workflows.plan_change_contracts import (
    PLAN_CHANGE_WORKFLOW_TYPE,
    PlanChangeRequest,
    PlanChangeResult,
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
    [server] = cloud.servers_of(purchase["purchase_id"])
    assert (server["status"], server["server_type"]["name"], server["primary_disk_size"]) == (
        "running",
        "cx23",
        40,
    )
    assert "plan" not in server["labels"]
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
