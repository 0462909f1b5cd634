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
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.audit import SqliteAuditStore
from activities.vault import Vault
from devstack.stack import StackInfo
from starter import run_reconciler, schedule_reconciler, start_purchase
from tests.e2e.conftest import CloudControl, customer_webhook, new_request, polled_status
from workflows.claim_contracts import (
    HOLDER_MEMO,
    HOLDER_RUN_MEMO,
    TENANT_CLAIM_TYPE,
    TenantClaimState,
    tenant_claim_id,
)
from workflows.contracts import WORKFLOW_TYPE, PurchaseRequest
from workflows.reconcile_contracts import (
    RECONCILE_SCHEDULE_ID,
    RECONCILE_WORKFLOW,
    ReconcileReport,
    ReconcileRequest,
)

TASK_QUEUE = "mail-provisioning"


async def reach_step(handle: WorkflowHandle[Any, Any], step: str) -> None:
    for _ in range(600):
        status = await polled_status(handle)
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


def labelled_server(cloud: CloudControl, name: str, purchase_id: str, tenant_id: str) -> int:
    """A server carrying our labels that no purchase run created (as one kept and left)."""
    labels = {"managed-by": "mail-provisioning", "purchase": purchase_id, "tenant": tenant_id}
    body = {
        "name": name,
        "server_type": "cx23",
        "image": "debian-12",
        "location": "fsn1",
        "labels": labels,
    }
    response = cloud.api.post("servers", json=body)
    assert response.status_code == 201, response.text
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
    # The terminated run never released its tenant claim: the reconciler asked it to,
    # and its owner check agreed (the server is gone).
    claim = client.get_workflow_handle(tenant_claim_id(stuck.tenant_id))
    assert (await claim.result()) == (
        "released: orphaned: run TERMINATED; holder run terminated and has no server"
    )
    # It had reached its rotation schedule (created before notify): removed with the server.
    with pytest.raises(RPCError) as gone:
        await client.get_schedule_handle(f"rotate-{stuck.tenant_id}").describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
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


async def delete_run(client: Client, workflow_id: str) -> None:
    """What the namespace retention does to a closed run: Temporal forgets it."""
    description = await client.get_workflow_handle(workflow_id).describe()
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(
                workflow_id=workflow_id, run_id=description.run_id
            ),
        )
    )
    for _ in range(600):
        try:
            await client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return
            raise
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} was never deleted")


async def test_a_completed_purchase_whose_run_temporal_forgot_keeps_its_server(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault
) -> None:
    """Issue 17 item 1: NOT_FOUND is no evidence; the claim and the Vault record are."""
    request = new_request(info)
    handle, _ = await start_purchase(client, request, TASK_QUEUE)
    result = await handle.result()
    await delete_run(client, handle.id)

    report = await reconcile(client, grace_seconds=0)
    assert mine(report, request) == []
    [server] = cloud.servers_of(request.purchase_id)
    assert server["id"] == result.server_id
    record = reader_vault.read_credentials(request.tenant_id)
    assert record is not None and record.version == result.vault_version
    claim = await client.get_workflow_handle(tenant_claim_id(request.tenant_id)).describe()
    assert claim.status == WorkflowExecutionStatus.RUNNING
    assert orphan_rows(info, handle.id) == []

    # Its claim lost too (terminated by hand): the current Vault record still protects it.
    await client.get_workflow_handle(tenant_claim_id(request.tenant_id)).terminate("test")
    report = await reconcile(client, grace_seconds=0)
    assert mine(report, request) == [] and len(cloud.servers_of(request.purchase_id)) == 1
    # Repair what this test broke on purpose (check-world would report the lost claim):
    # the claim as admission takes it, held by the (forgotten) run.
    await restore_claim(client, request.tenant_id, handle.id, handle.result_run_id)


async def restore_claim(
    client: Client, tenant_id: str, holder: str, holder_run: str | None
) -> None:
    """An operator's repair of a lost claim: start it again naming the holder run."""
    memo = {HOLDER_MEMO: holder, HOLDER_RUN_MEMO: holder_run or ""}
    await client.start_workflow(
        TENANT_CLAIM_TYPE,
        holder,
        id=tenant_claim_id(tenant_id),
        task_queue=TASK_QUEUE,
        memo=memo,
    )


async def test_a_labelled_server_no_claim_or_record_protects_is_an_orphan(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    """Issue 17 item 9: no current record, no held claim: an orphan, whatever its run did
    (here FAILED, which the reconciler used to leave alone: keep_server_on_failure)."""
    request = new_request(info)
    failed = await client.start_workflow(
        WORKFLOW_TYPE,
        {**asdict(request), "domain": "not-a-domain"},
        id=f"purchase-{request.purchase_id}",
        task_queue=TASK_QUEUE,
    )
    with pytest.raises(WorkflowFailureError):
        await failed.result()
    labelled_server(cloud, f"kept-{request.purchase_id}", request.purchase_id, request.tenant_id)
    report = await reconcile(client, grace_seconds=0)
    [orphan] = mine(report, request)
    assert (orphan.action, orphan.run_status) == ("deleted", "UNCLAIMED")
    assert cloud.servers_of(request.purchase_id) == []


async def test_a_finished_purchase_is_never_provisioned_again(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault
) -> None:
    """Issue 17 item 3: ALLOW_DUPLICATE after completion, with or without the claim."""
    request = new_request(info)
    handle, _ = await start_purchase(client, request, TASK_QUEUE)
    result = await handle.result()
    rows_before = audit_rows_of(info, handle.id)

    async def start_again(**overrides: Any) -> ApplicationError:
        again = await client.start_workflow(
            WORKFLOW_TYPE,
            {**asdict(request), **overrides},
            id=handle.id,
            task_queue=TASK_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await again.result()
        cause = failure.value.cause
        assert isinstance(cause, ApplicationError)
        return cause

    refused = await start_again()
    assert refused.type == "TenantAlreadyProvisioned"
    assert "never provisioned again" in refused.message
    # The claim gone (terminated by hand): our records still refuse it, for any tenant.
    await client.get_workflow_handle(tenant_claim_id(request.tenant_id)).terminate("test")
    refused = await start_again()
    assert refused.type == "TenantAlreadyProvisioned"
    assert "never provisioned again" in refused.message
    other_tenant = f"other-{uuid.uuid4().hex[:6]}"
    refused = await start_again(tenant_id=other_tenant)
    assert refused.type == "TenantAlreadyProvisioned" and "already has server" in refused.message
    [server] = cloud.servers_of(request.purchase_id)
    assert server["id"] == result.server_id
    record = reader_vault.read_credentials(request.tenant_id)
    assert record is not None and record.version == result.vault_version
    assert audit_rows_of(info, handle.id) == rows_before
    assert reader_vault.read_credentials(other_tenant) is None
    # Repair what this test broke on purpose: the claim, held by the first run.
    await restore_claim(client, request.tenant_id, handle.id, handle.result_run_id)


def audit_rows_of(info: StackInfo, workflow_id: str) -> list[tuple[str, str]]:
    return [
        (row.event_key, row.event)
        for row in SqliteAuditStore(info.audit_db).rows()
        if row.event_key.startswith(workflow_id + "/")
    ]


async def test_a_claim_without_a_live_holder_ends_itself(client: Client, info: StackInfo) -> None:
    """Issue 17 item 5: a hand-started claim, and one whose holder was terminated in
    admission, end at once; nothing else is touched."""
    squatted = client.get_workflow_handle(
        (
            await client.start_workflow(
                TENANT_CLAIM_TYPE,
                "purchase-anything",
                id=tenant_claim_id(f"victim-{uuid.uuid4().hex[:6]}"),
                task_queue=TASK_QUEUE,
            )
        ).id
    )
    assert (await squatted.result()).startswith("released: no valid holder")

    # A purchase terminated before it ran a step (as in admission): its claim held.
    request = new_request(info)
    ghost = await client.start_workflow(
        WORKFLOW_TYPE,
        asdict(request),
        id=f"purchase-{request.purchase_id}",
        task_queue=f"nobody-polls-{uuid.uuid4().hex[:6]}",
    )
    await ghost.terminate("test: terminated during admission")
    claim = await client.start_workflow(
        TENANT_CLAIM_TYPE,
        ghost.id,
        id=tenant_claim_id(request.tenant_id),
        task_queue=TASK_QUEUE,
        memo={HOLDER_MEMO: ghost.id, HOLDER_RUN_MEMO: ghost.result_run_id},
    )
    assert await claim.result() == "released: holder run terminated and has no server"


async def test_the_reconciler_releases_the_claim_of_a_run_terminated_in_admission(
    client: Client, info: StackInfo
) -> None:
    """Issue 17 item 5: the claim was taken while its purchase ran; the purchase was
    terminated before it bought anything. The claim's own timer would release it within
    10 minutes; the reconciler's pass does at once."""
    request = new_request(info)
    ghost = await client.start_workflow(
        WORKFLOW_TYPE,
        asdict(request),
        id=f"purchase-{request.purchase_id}",
        task_queue=f"nobody-polls-{uuid.uuid4().hex[:6]}",
    )
    claim = await client.start_workflow(
        TENANT_CLAIM_TYPE,
        ghost.id,
        id=tenant_claim_id(request.tenant_id),
        task_queue=TASK_QUEUE,
        memo={HOLDER_MEMO: ghost.id, HOLDER_RUN_MEMO: ghost.result_run_id},
    )
    for _ in range(600):
        state = await claim.query("claim", result_type=TenantClaimState)
        if state.last_check is not None:
            break
        await asyncio.sleep(0.2)
    assert state.last_check == "holder is provisioning" and state.state == "held"
    dry = await reconcile(client, grace_seconds=0, dry_run=True)
    assert request.tenant_id not in dry.stale_claims

    await ghost.terminate("test: terminated during admission")
    report = await reconcile(client, grace_seconds=0)
    assert request.tenant_id in report.stale_claims
    assert await claim.result() == (
        "released: reconciler: holder run terminated and has no server; "
        "holder run terminated and has no server"
    )
