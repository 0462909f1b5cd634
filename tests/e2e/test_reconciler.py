"""The orphan reconciler on the real stack: terminated runs leave nothing behind.

A purchase is terminated while its customer webhook is down (server ready,
credentials stored, audited, notification retrying): no compensation runs. The
reconciler (dry run, inside the grace period, then for real) must delete exactly
that server, withdraw exactly that run's Vault version and audit it once, and never
touch a completed purchase's server or a server without our labels.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowExecutionStatus,
    WorkflowHandle,
)

from activities.audit import SqliteAuditStore
from activities.vault import Vault
from devstack.stack import StackInfo
from starter import query_status, run_reconciler, schedule_reconciler, start_purchase
from tests.e2e.conftest import CloudControl, customer_webhook, new_request
from workflows.claim_contracts import tenant_claim_id
from workflows.contracts import PurchaseRequest
from workflows.reconcile_contracts import (
    RECONCILE_SCHEDULE_ID,
    RECONCILE_WORKFLOW,
    ReconcileReport,
    ReconcileRequest,
)

TASK_QUEUE = "mail-provisioning"


async def reach_step(handle: WorkflowHandle[Any, Any], step: str) -> None:
    for _ in range(600):
        status = await query_status(handle)
        if status.current_step == step:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id} never reached {step}")


def orphan_rows(info: StackInfo, workflow_id: str) -> list[Any]:
    return [
        row
        for row in SqliteAuditStore(info.audit_db).rows()
        if row.event_key.startswith(workflow_id + "/") and row.details.get("reason") == "orphaned"
    ]


def unlabelled_server(cloud: CloudControl) -> int:
    body = {
        "name": f"not-ours-{uuid.uuid4().hex[:6]}",
        "server_type": "cx23",
        "image": "debian-12",
        "location": "fsn1",
    }
    response = cloud.api.post("servers", json=body)
    response.raise_for_status()
    return int(response.json()["server"]["id"])


async def reconcile(client: Client, **request: Any) -> ReconcileReport:
    return await run_reconciler(
        client, TASK_QUEUE, ReconcileRequest(**request), uuid.uuid4().hex[:8]
    )


def purchase_keys(cloud: CloudControl, request: PurchaseRequest) -> list[Any]:
    selector = f"purchase={request.purchase_id}"
    return list(cloud.api.get("ssh_keys", params={"label_selector": selector}).json()["ssh_keys"])


def mine(report: ReconcileReport, request: PurchaseRequest) -> list[Any]:
    return [o for o in report.orphans if o.purchase_id == request.purchase_id]


async def test_terminated_run_is_cleaned_up_and_nothing_else(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault
) -> None:
    completed = new_request(info)
    done, _ = await start_purchase(client, completed, TASK_QUEUE)
    await done.result()
    # A webhook nobody listens on: the run sits in notify's retries with a ready server.
    _, hook_url = customer_webhook(info)  # nothing listens on it
    stuck = new_request(info, notify_url=hook_url)
    handle, _ = await start_purchase(client, stuck, TASK_QUEUE)
    await reach_step(handle, "notify")
    await handle.terminate("test: an operator terminates the run")
    foreign = unlabelled_server(cloud)
    [stuck_server] = cloud.servers_of(stuck.purchase_id)
    assert reader_vault.read_credentials(stuck.tenant_id) is not None

    dry = await reconcile(client, grace_seconds=0, dry_run=True)
    assert [(o.action, o.run_status) for o in mine(dry, stuck)] == [("would delete", "TERMINATED")]
    graced = await reconcile(client, grace_seconds=3600)
    assert [o.action for o in mine(graced, stuck)] == ["in grace period"]
    assert cloud.servers_of(stuck.purchase_id) and orphan_rows(info, handle.id) == []

    real = await reconcile(client, grace_seconds=0)
    [orphan] = mine(real, stuck)
    assert (orphan.action, orphan.server_id, orphan.vault_version_withdrawn) == (
        "deleted",
        stuck_server["id"],
        1,
    )
    assert cloud.servers_of(stuck.purchase_id) == []
    # The purchase's SSH key resource went with its server (VpsActivities.delete_server).
    assert purchase_keys(cloud, stuck) == []
    assert len(purchase_keys(cloud, completed)) == 1
    assert reader_vault.read_credentials(stuck.tenant_id) is None
    [row] = orphan_rows(info, handle.id)
    assert row.event == "provisioning_failed" and row.details["error_type"] == "TERMINATED"
    # The terminated run never released its tenant claim: the reconciler did.
    claim = await client.get_workflow_handle(tenant_claim_id(stuck.tenant_id)).describe()
    assert claim.status == WorkflowExecutionStatus.COMPLETED
    # Untouched: the completed purchase (server and record) and the unlabelled server.
    assert len(cloud.servers_of(completed.purchase_id)) == 1
    assert reader_vault.read_credentials(completed.tenant_id) is not None
    assert foreign in [s["id"] for s in cloud.servers()]
    assert not [o for o in real.orphans if o.purchase_id == completed.purchase_id]

    again = await reconcile(client, grace_seconds=0)
    assert mine(again, stuck) == []
    assert len(orphan_rows(info, handle.id)) == 1
    cloud.api.delete(f"servers/{foreign}").raise_for_status()


async def test_the_schedule_runs_the_reconciler_every_interval(client: Client) -> None:
    request = ReconcileRequest(grace_seconds=1800, dry_run=True)
    await schedule_reconciler(client, TASK_QUEUE, request, timedelta(minutes=15))
    # A second call updates the schedule in place instead of failing.
    await schedule_reconciler(client, TASK_QUEUE, request, timedelta(minutes=10))
    handle = client.get_schedule_handle(RECONCILE_SCHEDULE_ID)
    try:
        description = await handle.describe()
        action = description.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == (RECONCILE_WORKFLOW, TASK_QUEUE)
        assert [i.every for i in description.schedule.spec.intervals] == [timedelta(minutes=10)]
        assert description.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    finally:
        await handle.delete()
