"""Deprovisioning on the real stack: the local cloud, OpenBao, Temporal, the audit log.

purchase -> `starter.py deprovision TENANT --wait` -> nothing of the tenant is left
(server, login key, Vault record with every version and its metadata, rotation
schedule, claim) and check-world agrees -> the same tenant buys again (its record starts
again at version 1: the old versions are gone) -> deprovisioned again. Also: a second
deprovisioning finds nothing, and one started while a purchase runs is refused with
nothing touched. A plan that promises backups keeps a labelled final snapshot of the
server, which its expiry timer deletes after the (here shortened) retention.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from dataclasses import asdict, replace
from typing import Any

import hvac
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.rotation_schedule import rotation_schedule_exists
from devstack.stack import StackInfo
from starter import check_world, start_deprovision, start_purchase
from tests.e2e.conftest import CloudControl, polled_status
from tests.e2e.test_purchase_end_to_end import audit_rows, provision
from worker import WORKFLOWS, Settings, build_activities, worker_interceptors, workflow_runner
from workflows.activation_contracts import activation_workflow_id
from workflows.claim_contracts import tenant_claim_id
from workflows.contracts import PurchaseRequest
from workflows.deprovision_contracts import (
    PURCHASE_IN_PROGRESS,
    DeprovisionRequest,
    DeprovisionResult,
    deprovision_workflow_id,
)
from workflows.final_snapshot_contracts import EXPIRY_WORKFLOW_TYPE, expiry_workflow_id
from workflows.plan_change_contracts import (
    PLAN_CHANGE_WORKFLOW_TYPE,
    TENANT_DEPROVISIONED,
    PlanChangeRequest,
    PlanChangeStatus,
    plan_change_workflow_id,
)

QUEUE = "mail-provisioning"


def root_vault(info: StackInfo) -> hvac.Client:
    token = (info.state_dir / "vault" / "root.token").read_text().strip()
    return hvac.Client(url=info.vault_addr, token=token)


def vault_metadata(info: StackInfo, tenant: str) -> dict[str, Any] | None:
    """The record's KV v2 metadata (every version), None when there is none at all."""
    try:
        response = root_vault(info).secrets.kv.v2.read_secret_metadata(
            path=f"{tenant}/admin", mount_point="smtp"
        )
    except hvac.exceptions.InvalidPath:
        return None
    return dict(response["data"])


async def claim_running(client: Client, tenant: str) -> bool:
    try:
        description = await client.get_workflow_handle(tenant_claim_id(tenant)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return description.status == WorkflowExecutionStatus.RUNNING


async def activation_state(client: Client, tenant: str) -> WorkflowExecutionStatus | None:
    """The status of the tenant's latest ActivateMailDomain run (None: never started)."""
    try:
        description = await client.get_workflow_handle(activation_workflow_id(tenant)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status


def ssh_keys(cloud: CloudControl, tenant: str) -> list[dict[str, Any]]:
    response = cloud.api.get("ssh_keys", params={"label_selector": f"tenant={tenant}"})
    response.raise_for_status()
    return list(response.json()["ssh_keys"])


def final_snapshots(cloud: CloudControl, tenant: str) -> list[dict[str, Any]]:
    selector = f"managed-by=mail-provisioning,purpose=final-snapshot,tenant={tenant}"
    response = cloud.api.get("images", params={"type": "snapshot", "label_selector": selector})
    response.raise_for_status()
    return list(response.json()["images"])


async def assert_nothing_left(client: Client, info: StackInfo, cloud: CloudControl, t: str) -> None:
    assert cloud.servers(label_selector=f"tenant={t}") == []
    assert ssh_keys(cloud, t) == []
    assert vault_metadata(info, t) is None
    assert not await rotation_schedule_exists(client, t)
    assert not await claim_running(client, t)
    report = await check_world(client, QUEUE, uuid.uuid4().hex[:8])
    mine = [d for d in report.disagreements if t in d.subject or t in d.detail]
    assert mine == [], mine


async def test_a_deprovisioned_tenant_is_gone_everywhere_and_buys_again(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    tenant = purchase["tenant_id"]
    first = await provision(client, purchase)
    [server] = cloud.servers(label_selector=f"tenant={tenant}")
    assert len(ssh_keys(cloud, tenant)) == 1
    assert await rotation_schedule_exists(client, tenant) and await claim_running(client, tenant)
    # The completed purchase started the wait for the customer's DNS.
    assert await activation_state(client, tenant) == WorkflowExecutionStatus.RUNNING

    process = await asyncio.to_thread(
        subprocess.run,
        info.starter_command(
            *("deprovision", tenant, "--requested-by", "e2e-billing"),
            *("--reason", "cancelled", "--wait"),
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result == {
        "tenant_id": tenant,
        "outcome": "deprovisioned",
        "servers_deleted": [server["id"]],
        "vault_versions_destroyed": first.vault_version,
        "rotation_schedule_removed": True,
        "claim_released": True,
        "passes": 1,
        "final_snapshots": [],  # the starter plan promises no backups
    }
    await assert_nothing_left(client, info, cloud, tenant)
    # ... and the deprovisioning cancelled it with the rotation schedule.
    assert await activation_state(client, tenant) == WorkflowExecutionStatus.CANCELED
    [row] = audit_rows(info, deprovision_workflow_id(tenant))
    assert (row.event, row.tenant_id) == ("tenant_deprovisioned", tenant)
    details = row.details
    assert details["requested_by"] == "e2e-billing"
    assert details["servers_deleted"] == str(server["id"])
    assert details["ssh_keys_deleted"] == f"{server['name']}-login"
    assert details["vault_record_destroyed"] == (
        f"smtp/{tenant}/admin: {first.vault_version} versions and metadata"
    )
    assert details["final_snapshots"] == ""
    assert final_snapshots(cloud, tenant) == []

    # A second run finds nothing and says so; no second audit row.
    handle = await start_deprovision(client, DeprovisionRequest(tenant, "e2e-billing"), QUEUE)
    again: DeprovisionResult = await handle.result()
    assert again.outcome == "nothing_found"
    assert len(audit_rows(info, deprovision_workflow_id(tenant))) == 1

    # The same tenant buys again: its claim is free, and its record starts afresh.
    second = await provision(
        client, {**purchase, "purchase_id": f"{purchase['purchase_id']}-again"}
    )
    assert second.vault_version == 1
    assert second.server_id != first.server_id
    assert await claim_running(client, tenant)

    # Clean-up, through the same door.
    handle = await start_deprovision(client, DeprovisionRequest(tenant, "e2e-cleanup"), QUEUE)
    final: DeprovisionResult = await handle.result()
    assert final.servers_deleted == [second.server_id]
    await assert_nothing_left(client, info, cloud, tenant)


async def test_a_deprovisioning_while_the_purchase_runs_is_refused_and_touches_nothing(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    tenant = purchase["tenant_id"]
    handle, _ = await start_purchase(client, PurchaseRequest.parse(purchase), QUEUE)
    # Past admission: the purchase holds the tenant's claim and is buying its server.
    while not any(
        s.name == "wait_for_server" for s in (await polled_status(handle)).steps
    ):  # fmt: skip
        await asyncio.sleep(0.5)
    refused = await start_deprovision(client, DeprovisionRequest(tenant, "e2e-billing"), QUEUE)
    with pytest.raises(WorkflowFailureError) as failure:
        await refused.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == (PURCHASE_IN_PROGRESS, True)
    assert "still running" in cause.message
    assert audit_rows(info, deprovision_workflow_id(tenant)) == []

    # The purchase was not disturbed; once it completes, deprovisioning goes through.
    result = await handle.result()
    assert [s["id"] for s in cloud.servers(label_selector=f"tenant={tenant}")] == [result.server_id]
    done = await start_deprovision(client, DeprovisionRequest(tenant, "e2e-cleanup"), QUEUE)
    assert (await done.result()).outcome == "deprovisioned"
    await assert_nothing_left(client, info, cloud, tenant)


async def test_a_plan_change_racing_the_deprovisioning_is_harmless(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    """The customer cancels while a plan change has stopped the server: the server is
    deleted under it, and the plan change ends with TenantDeprovisioned ("deprovisioned
    during the plan change") and its mail_plan_change_failed audit row, having restarted,
    recreated or stored nothing; nothing of the tenant is left."""
    tenant = purchase["tenant_id"]
    await provision(client, purchase)
    change = await client.start_workflow(
        PLAN_CHANGE_WORKFLOW_TYPE,
        asdict(PlanChangeRequest(tenant, "race-1", "business", "e2e-billing")),
        id=plan_change_workflow_id(tenant, "race-1"),
        task_queue=QUEUE,
    )
    # Wait until the change has touched the server (it is stopping or stopped).
    while True:
        status = await change.query("status", result_type=PlanChangeStatus)
        if any(step.name == "stop_server" for step in status.steps):
            break
        assert status.state in ("running",), status
        await asyncio.sleep(0.2)
    handle = await start_deprovision(client, DeprovisionRequest(tenant, "e2e-billing"), QUEUE)
    result: DeprovisionResult = await handle.result()
    assert result.outcome == "deprovisioned"
    with pytest.raises(WorkflowFailureError) as failure:
        await change.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert (cause.type, cause.non_retryable) == (TENANT_DEPROVISIONED, True)
    assert "deprovisioned during the plan change" in cause.message
    assert cause.details[0]["restored"] == "tenant_deprovisioned"
    [row] = audit_rows(info, plan_change_workflow_id(tenant, "race-1"))
    assert row.event == "mail_plan_change_failed"
    assert row.details["restored"] == "tenant_deprovisioned"
    await assert_nothing_left(client, info, cloud, tenant)


# The final snapshot's retention on the test's worker: short, so its timer fires here.
SHORT_RETENTION_SECONDS = 15


async def test_a_backup_plan_keeps_a_final_snapshot_until_its_timer_deletes_it(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    """enterprise (the shipped catalog's plan that promises backups): the deprovisioning
    snapshots the server before deleting it, labels the snapshot, ends, and the
    snapshot's expiry timer deletes it after the worker's configured retention."""
    tenant = purchase["tenant_id"]
    bought = await provision(client, {**purchase, "plan": "enterprise"})
    [server] = cloud.servers(label_selector=f"tenant={tenant}")
    assert server["labels"]["plan"] == "enterprise"
    queue = f"e2e-snapshot-{uuid.uuid4().hex[:8]}"
    env = {
        **info.worker_env,
        "MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS": str(SHORT_RETENTION_SECONDS),
    }
    settings = replace(Settings.from_env(env), task_queue=queue)
    async with (
        build_activities(settings) as activities,
        Worker(
            client,
            task_queue=queue,
            workflows=list(WORKFLOWS),
            activities=activities,
            interceptors=worker_interceptors(),
            workflow_runner=workflow_runner(client.data_converter),
        ),
    ):
        handle = await start_deprovision(
            client, DeprovisionRequest(tenant, "e2e-billing", "cancelled"), queue
        )
        result: DeprovisionResult = await handle.result()
        [image_id] = result.final_snapshots
        assert result.servers_deleted == [bought.server_id]
        # The snapshot outlives its server, labelled, available, with its size.
        [image] = final_snapshots(cloud, tenant)
        assert cloud.servers(label_selector=f"tenant={tenant}") == []
        assert (image["id"], image["status"], image["type"]) == (
            image_id,
            "available",
            "snapshot",
        )
        assert image["created_from"]["id"] == bought.server_id
        assert image["image_size"] is not None
        labels = image["labels"]
        assert labels["purchase"] == purchase["purchase_id"]
        assert labels["server"] == str(bought.server_id)
        delete_after = int(labels["delete-after"])
        [row] = audit_rows(info, deprovision_workflow_id(tenant))
        assert row.details["final_snapshots"] == f"{image_id}:{delete_after}"
        # Expected while its timer runs: check-world has nothing to say about it.
        timer = client.get_workflow_handle(expiry_workflow_id(image_id))
        assert (await timer.describe()).status == WorkflowExecutionStatus.RUNNING
        report = await check_world(client, QUEUE, uuid.uuid4().hex[:8])
        mine = [d for d in report.disagreements if tenant in d.detail or str(image_id) in d.subject]
        assert mine == [], mine
        # A snapshot whose timer is gone is a disagreement, and the fix check-world
        # prints (start the timer again by its id: it reads the label) makes it agree.
        await timer.terminate("e2e: a lost timer")
        report = await check_world(client, QUEUE, uuid.uuid4().hex[:8])
        [lost] = [d for d in report.disagreements if d.subject == f"image-{image_id}"]
        assert lost.kind == "final_snapshot_without_timer"
        assert f"--workflow-id {expiry_workflow_id(image_id)}" in lost.fix
        await client.start_workflow(
            EXPIRY_WORKFLOW_TYPE, id=expiry_workflow_id(image_id), task_queue=QUEUE
        )
        # The timer deletes it once delete-after has passed.
        outcome = await client.get_workflow_handle(expiry_workflow_id(image_id)).result()
        assert outcome["state"] == "deleted"
        assert outcome["delete_after"] == delete_after
    assert cloud.api.get(f"images/{image_id}").status_code == 404
    assert final_snapshots(cloud, tenant) == []
    [deleted] = audit_rows(info, expiry_workflow_id(image_id))
    assert (deleted.event, deleted.tenant_id) == ("final_snapshot_deleted", tenant)
    assert deleted.details["outcome"] == "deleted"
    await assert_nothing_left(client, info, cloud, tenant)
