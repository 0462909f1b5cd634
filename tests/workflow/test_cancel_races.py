"""A cancel that races a step with an effect: the effect is undone all the same (issue 17).

The steps whose effect compensation must undo (the tenant claim, the server, the Vault
record, the rotation schedule) are waited for on cancel (WAIT_CANCELLATION_COMPLETED,
workflows/policies.py). An attempt may still complete after the cancel reached it: a
write already under way in a thread, a provider that answered just then. These tests
make each such step complete only after the cancel has reached its activity, and check
that the run still ends CANCELLED with nothing of the purchase left behind.

The last test is the reported case itself with the real store_credentials activity: its
Vault write runs in a thread a cancel does not stop, and lands after the cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.vault import VaultActivities
from devstack.stack import tool
from runtime.interceptor import WorkerInterceptor
from starter import start_purchase
from tests.workflow.sandbox import restricted_sandbox
from tests.workflow.test_provision_workflow import ENVELOPE, Harness, ScriptedWorld, purchase
from worker import WORKFLOWS
from workflows.contracts import PurchaseRequest


@dataclass
class LateWorld(ScriptedWorld):
    """The `late` activity waits for the cancel to reach it, then completes anyway."""

    late: str = ""
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_sent: asyncio.Event = field(default_factory=asyncio.Event)

    def activities(self) -> list[Any]:
        return [
            self._completes_after_cancel(fn) if fn.__name__ == self.late else fn
            for fn in super().activities()
        ]

    def _completes_after_cancel(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        # The scripted activity's signature (so arguments decode to their types), not
        # its activity definition.
        @functools.wraps(fn, updated=())
        async def late(arg: Any) -> Any:
            self.started.set()
            await self.cancel_sent.wait()
            activity.heartbeat()  # the answer to a heartbeat carries the cancel
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            # The effect lands after the cancel, and the activity says so.
            return await fn(arg)

        return activity.defn(name=self.late)(late)


async def activity_cancel_recorded(handle: WorkflowHandle[Any, Any]) -> None:
    """Until the run has asked its running activity to cancel (the history says so)."""
    while True:
        async for event in handle.fetch_history_events():
            if event.HasField("activity_task_cancel_requested_event_attributes"):
                return
        await asyncio.sleep(0.05)


async def cancel_once_started(
    handle: WorkflowHandle[Any, Any], started: asyncio.Event, cancel_sent: asyncio.Event
) -> BaseException:
    await started.wait()
    await handle.cancel()
    # Then the activity's heartbeat is answered with the cancel (a heartbeat sent before
    # that would be answered without, and the SDK holds the next one back for seconds).
    await activity_cancel_recorded(handle)
    cancel_sent.set()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    return failure.value.cause


# step -> (server deleted, Vault version withdrawn, rotation schedule removed)
EFFECTS = {
    "admit_purchase": ([], [], []),
    "create_server": ([42], [], []),
    "store_credentials": ([42], [1], []),
    "ensure_rotation_schedule": ([42], [1], ["schedule"]),
}


@pytest.mark.parametrize("step", list(EFFECTS))
async def test_a_step_that_completes_after_the_cancel_is_undone(
    time_skipping_env: WorkflowEnvironment, step: str
) -> None:
    world = LateWorld(late=step)
    harness = Harness(time_skipping_env, world)
    raw = purchase()
    tenant = raw["tenant_id"]
    async with harness.worker():
        handle, _ = await start_purchase(
            harness.env.client, PurchaseRequest.parse(raw), harness.task_queue
        )
        cause = await cancel_once_started(handle, world.started, world.cancel_sent)

    assert isinstance(cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    deleted, withdrawn, schedules = EFFECTS[step]
    assert world.deleted == deleted
    assert world.removed_versions == withdrawn
    assert world.removed_schedules == [f"rotate-{tenant}" for _ in schedules]
    assert world.claims[tenant][1] == "released"
    assert world.notifications == []
    assert "bring_up_server" not in world.calls or step != "create_server"


class SlowVault:
    """Stands in for activities.vault.Vault (the methods VaultActivities uses), in memory.

    Its write blocks until the activity has been told of the cancel, as an hvac call in
    flight does: the cancel interrupts the activity's await, not the thread."""

    def __init__(self) -> None:
        self.versions: list[dict[str, str] | None] = []  # index + 1 = version; None = deleted
        self.write_started = threading.Event()

    def record_path(self, tenant_id: str) -> str:
        return f"smtp/{tenant_id}/admin"

    def latest(self, tenant_id: str) -> tuple[dict[str, str] | None, int]:
        return (self.versions[-1], len(self.versions)) if self.versions else (None, 0)

    def write_credentials(self, tenant_id: str, record: dict[str, str], cas: int) -> int:
        assert cas == len(self.versions)
        self.write_started.set()
        activity.wait_for_cancelled_sync()
        self.versions.append(record)
        return len(self.versions)

    def delete_version(self, tenant_id: str, version: int) -> None:
        self.versions[version - 1] = None

    def current(self) -> dict[str, str] | None:
        return self.latest("")[0]


async def test_a_vault_write_that_lands_after_the_cancel_is_withdrawn(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    vault = SlowVault()
    real = VaultActivities(vault)  # type: ignore[arg-type]
    world = ScriptedWorld()
    scripted = [
        fn
        for fn in world.activities()
        if fn.__name__ not in {"store_credentials", "remove_credentials"}
    ]
    task_queue = "cancel-during-store"
    raw = purchase()
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        workflow_runner=restricted_sandbox(),
        activities=[*scripted, real.store_credentials, real.remove_credentials],
        # As the worker runs it: heartbeats are how a running activity learns of a cancel.
        interceptors=[WorkerInterceptor()],
    ):
        handle, _ = await start_purchase(
            time_skipping_env.client, PurchaseRequest.parse(raw), task_queue
        )
        await asyncio.to_thread(vault.write_started.wait)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()

    assert isinstance(failure.value.cause, CancelledError)
    # The write happened (after the cancel), and the version it made is withdrawn.
    assert [v is None for v in vault.versions] == [True]
    assert vault.current() is None
    assert ENVELOPE not in str(failure.value)
    assert world.deleted == [42]


@dataclass
class FailsAfterCancelWorld(LateWorld):
    """The `late` activity fails on its own (retryably) once the cancel was requested: it
    never heartbeats, so it does not hear of the cancel, as a Vault write that meets a
    sealed Vault does."""

    def _completes_after_cancel(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn, updated=())
        async def fails(arg: Any) -> Any:
            self.started.set()
            await self.cancel_sent.wait()
            raise ApplicationError("Vault is sealed", type="VaultSealed")

        return activity.defn(name=self.late)(fails)


async def test_a_cancel_the_step_hears_of_only_by_failing_is_audited_as_the_cancel() -> None:
    """Temporal retries no activity whose cancel was requested, so the step ends with
    its attempt's own error although the run was cancelled: the run ends CANCELLED and
    its provisioning_failed row names the cancel (docs/OPERATIONS.md), the step's error
    beside it. On a real dev server: the time-skipping server retries that attempt."""
    # A step the cancel waits for (WAIT_CANCELLATION_COMPLETED); one it abandons ends
    # with the cancel itself.
    world = FailsAfterCancelWorld(late="store_credentials")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=tool("temporal"))
    try:
        harness = Harness(env, world)
        async with harness.worker():
            handle, _ = await start_purchase(
                env.client, PurchaseRequest.parse(purchase()), harness.task_queue
            )
            cause = await cancel_once_started(handle, world.started, world.cancel_sent)
            assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    finally:
        await env.shutdown()
    assert isinstance(cause, CancelledError), cause
    assert world.deleted == [42]
    [event] = world.audit
    assert event.event == "provisioning_failed"
    assert {k: event.details[k] for k in ("step", "error_type", "reason", "step_error")} == {
        "step": "store_credentials",
        "error_type": "CancelledError",
        "reason": "workflow cancelled",
        "step_error": "VaultSealed: Vault is sealed",
    }
