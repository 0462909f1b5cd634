"""A cancel at every step ends CANCELLED after compensation (time-skipping server).

Decision (also in the workflow's docstring and docs/RELIABILITY.md): a cancel that
arrives before the run completes, including while the customer is being notified
(the server is ready by then), voids the purchase: the stored Vault version is
withdrawn, the server deleted, `provisioning_failed` audited, and the run ends
CANCELLED. A cancel during create_server, when the server id is not known yet,
deletes whatever server carries the purchase's label.
"""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from starter import start_purchase
from tests.workflow.test_provision_workflow import Harness, ScriptedWorld, purchase
from workflows.contracts import ProvisionStatus, PurchaseRequest


@pytest.fixture
def harness(time_skipping_env: WorkflowEnvironment) -> Harness:
    return Harness(time_skipping_env, ScriptedWorld())


# step held (its activity keeps failing, retryably) -> (version stored, schedule may exist)
STEPS = {
    "admit_purchase": (False, False),
    "create_server": (False, False),
    "wait_for_server": (False, False),
    "set_reverse_dns": (False, False),
    "rotate_host_key": (False, False),
    "configure_mailu": (False, False),
    "create_admin_credentials": (False, False),
    "store_credentials": (False, False),
    "record_audit_event": (True, False),
    "ensure_rotation_schedule": (True, True),
    "notify_customer": (True, True),
}

# The held call -> the purchase step it belongs to, where the names differ.
STEP_OF_HELD = {
    "set_reverse_dns": "wait_for_server",
    "record_audit_event": "audit",
    "ensure_rotation_schedule": "schedule_rotation",
    "notify_customer": "notify",
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_cancel_at_each_step_compensates_and_ends_cancelled(
    harness: Harness, step: str
) -> None:
    world = harness.world
    # 20 failures outlast the cancel (10 s in) under every step's retry policy; the
    # compensation's own audit write uses up what is left of them and then succeeds.
    world.failures[step] = [ApplicationError("held", type="Held") for _ in range(20)]
    raw = purchase()
    async with harness.worker():
        # Started as the back end starts it (the world's extra activity is registered).
        handle, _ = await start_purchase(
            harness.env.client, PurchaseRequest.parse(raw), harness.task_queue
        )
        await harness.env.sleep(10)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query("status", result_type=ProvisionStatus)

    assert isinstance(failure.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert status.state == "cancelled"
    # What clients print as `purchase cancelled at <step>; compensated` (the run's own
    # CancelledError message does not reach them: Temporal records none).
    assert status.stopped_at == STEP_OF_HELD.get(step, step)
    stored, scheduled = STEPS[step]
    assert world.removed_versions == ([1] if stored else [])
    # The schedule is removed once its step was reached (an attempt may have created it).
    assert world.removed_schedules == ([f"rotate-{raw['tenant_id']}"] if scheduled else [])
    assert world.notifications == []
    # The claim is released (an admission that never answered took none).
    assert world.claims.get(raw["tenant_id"], ("", "released"))[1] == "released"
    if step == "admit_purchase":
        # Nothing was bought, so nothing is deleted or audited; the claim is released.
        assert (world.purchase_deletes, world.deleted, world.audit) == ([], [], [])
        return
    if step == "create_server":
        assert (world.purchase_deletes, world.deleted) == ([raw["purchase_id"]], [])
    else:
        assert (world.purchase_deletes, world.deleted) == ([], [42])
    failed = [e for e in world.audit if e.event == "provisioning_failed"]
    assert len(failed) == 1
    assert failed[0].details["reason"] == "workflow cancelled"


@pytest.mark.parametrize("step", ["rotate_host_key", "configure_mailu"])
async def test_ssh_steps_outlast_many_refused_connections(harness: Harness, step: str) -> None:
    # Regression (`make faults`, SSH refused while booting): 5 capped attempts made a
    # few refused connections end the purchase; these steps are bounded by time now.
    harness.world.failures[step] = [
        ApplicationError("ssh failed: Connection lost", type="SshUnavailable") for _ in range(12)
    ]
    result = await harness.run(purchase())
    assert result.server_id == 42
    assert harness.world.calls[step] == 13
    assert harness.world.deleted == []
