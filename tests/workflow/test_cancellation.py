"""A cancel at every step ends CANCELLED after compensation (time-skipping server).

Decision (also in the workflow's docstring and docs/RELIABILITY.md): a cancel that
arrives before the run completes, including while the customer is being notified
(the server is ready by then), voids the purchase: the stored Vault version is
withdrawn, the server deleted, `provisioning_failed` audited, and the run ends
CANCELLED. A cancel during create_server, when the server id is not known yet,
deletes whatever server carries the purchase's label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from starter import start_purchase
from tests.workflow.test_provision_workflow import Harness, ScriptedWorld, purchase
from workflows.contracts import ProvisionStatus, PurchaseRequest


@dataclass
class CancellableWorld(ScriptedWorld):
    purchase_deletes: list[str] = field(default_factory=list)

    def activities(self) -> list[Any]:
        @activity.defn(name="delete_purchase_servers")
        async def delete_purchase_servers(purchase_id: str) -> list[int]:
            self._enter("delete_purchase_servers")
            self.purchase_deletes.append(purchase_id)
            return [42]

        return [*super().activities(), delete_purchase_servers]


@pytest.fixture
def harness(time_skipping_env: WorkflowEnvironment) -> Harness:
    return Harness(time_skipping_env, CancellableWorld())


# step held (its activity keeps failing, retryably) -> whether credentials were stored
STEPS = {
    "create_server": False,
    "wait_for_server": False,
    "set_reverse_dns": False,
    "rotate_host_key": False,
    "configure_mailu": False,
    "create_admin_credentials": False,
    "store_credentials": False,
    "record_audit_event": True,
    "notify_customer": True,
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_cancel_at_each_step_compensates_and_ends_cancelled(
    harness: Harness, step: str
) -> None:
    world = harness.world
    assert isinstance(world, CancellableWorld)
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
    if step == "create_server":
        assert (world.purchase_deletes, world.deleted) == ([raw["purchase_id"]], [])
    else:
        assert (world.purchase_deletes, world.deleted) == ([], [42])
    assert world.removed_versions == ([1] if STEPS[step] else [])
    failed = [e for e in world.audit if e.event == "provisioning_failed"]
    assert len(failed) == 1
    assert failed[0].details["reason"] == "workflow cancelled"
    assert world.notifications == []


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
