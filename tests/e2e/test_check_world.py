"""check-world on the real stack: each disagreement is reported with its fix, and is
gone once the fix is applied (the module leaves the world as it found it).
"""

from __future__ import annotations

import subprocess
import uuid

from temporalio.client import Client

from devstack.stack import StackInfo
from starter import check_world, start_purchase
from tests.e2e.conftest import CloudControl, new_request
from tests.e2e.test_reconciler import labelled_server, reconcile, restore_claim
from workflows.claim_contracts import TENANT_CLAIM_TYPE, tenant_claim_id
from workflows.world_check_contracts import KINDS, Disagreement

TASK_QUEUE = "mail-provisioning"


async def reported(client: Client, subject: str) -> list[Disagreement]:
    report = await check_world(client, TASK_QUEUE, uuid.uuid4().hex[:8])
    assert set(report.counts) >= set(KINDS)
    return [d for d in report.disagreements if d.subject == subject]


async def test_a_lost_claim_is_reported_with_its_fix_until_restored(
    client: Client, info: StackInfo
) -> None:
    request = new_request(info)
    handle, _ = await start_purchase(client, request, TASK_QUEUE)
    result = await handle.result()
    assert await reported(client, result.server_name) == []
    assert await reported(client, f"tenant-{request.tenant_id}") == []

    await client.get_workflow_handle(tenant_claim_id(request.tenant_id)).terminate("test")
    cli = subprocess.run(
        info.starter_command("check-world"), capture_output=True, text=True, timeout=300
    )
    assert cli.returncode == 1, cli.stderr
    assert f"DISAGREE server_without_claim: {result.server_name}" in cli.stderr
    assert "fix: restore the claim" in cli.stderr

    await restore_claim(client, request.tenant_id, handle.id, handle.result_run_id)
    assert await reported(client, result.server_name) == []


async def test_a_claim_nobody_checks_and_an_orphan_are_reported_until_fixed(
    client: Client, cloud: CloudControl
) -> None:
    tenant = f"squat-{uuid.uuid4().hex[:6]}"
    # On a task queue no worker polls, its own owner check never runs.
    squatter = await client.start_workflow(
        TENANT_CLAIM_TYPE,
        "purchase-nobody",
        id=tenant_claim_id(tenant),
        task_queue=f"nobody-polls-{uuid.uuid4().hex[:6]}",
    )
    [found] = await reported(client, f"tenant-{tenant}")
    assert found.kind == "claim_without_live_holder" and "no valid holder" in found.detail
    assert f"--workflow-id tenant-{tenant} --name release" in found.fix
    await squatter.terminate("test: the fix")
    assert await reported(client, f"tenant-{tenant}") == []

    purchase = f"orphan-{uuid.uuid4().hex[:6]}"
    labelled_server(cloud, purchase, purchase, purchase)
    [found] = await reported(client, purchase)
    assert found.kind == "orphaned_server" and "starter.py reconcile" in found.fix
    await reconcile(client, grace_seconds=0)
    assert await reported(client, purchase) == []
