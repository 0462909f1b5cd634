"""PlanChangeLock: at most one plan change of a tenant at a time, enforced by Temporal.

ChangeMailPlan runs have one id per request (`change-plan-{tenant}-{request}`), so
Temporal alone would run two requests of one tenant side by side, each stopping and
changing the same server. Before it touches anything, a plan change therefore starts
this workflow as its child with the fixed id `plan-change-lock-{tenant}`. Temporal runs
at most one open workflow per id in a namespace, so of two changes racing, on any
clients and workers, exactly one child start succeeds; the other run is refused at
once (PlanChangeInProgress, naming the holder) with nothing touched.

Why a child workflow, and not the tenant claim's pattern (a lock started by an activity,
ended by an owner check) or a look at the running ChangeMailPlan runs in visibility:
- visibility is eventually consistent (two runs starting together can each miss the
  other) and the ids cannot be told apart by prefix (tenant `acme` and tenant `acme-r`);
- a child started with parent close policy TERMINATE lives exactly as long as its plan
  change: Temporal's server ends it when the parent closes, however it closes
  (completed, failed, cancelled, terminated, timed out), so no owner check, timer or
  release signal is needed, and none can be forged.

The lock trusts no client. It ignores cancel requests (anyone can send one; only its
parent's closing ends it) and has no signals. A run started without a parent (any
client can start any type under any id) ends at once and holds nothing. Between the
parent closing and the server terminating the child there is a short gap: the next
plan change then finds the holder closed, ends the stale lock itself (only then) and
takes it (the `plan_change_lock_holder` activity, activities/plan_change_guard.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

from workflows.plan_change_contracts import PLAN_CHANGE_LOCK_TYPE, plan_change_lock_id
from workflows.plan_change_contracts import plan_change_workflow_id as _change_id

# Taken raw so that no start argument, whatever it carries, can fail the run's decoding.
_NO_ARGUMENT = RawValue(Payload())
_LOCK_PREFIX = plan_change_lock_id("")
_CHANGE_PREFIX = _change_id("", "")[:-1]  # "change-plan-"


def holder_may_hold(lock_id: str, parent_id: str | None) -> bool:
    """A lock is held only by a plan change of its own tenant that started it as a child."""
    if parent_id is None or not lock_id.startswith(_LOCK_PREFIX):
        return False
    tenant = lock_id[len(_LOCK_PREFIX) :]
    return parent_id.startswith(f"{_CHANGE_PREFIX}{tenant}-")


@workflow.defn(name=PLAN_CHANGE_LOCK_TYPE, failure_exception_types=[RuntimeError, TypeError])
class PlanChangeLock:
    def __init__(self) -> None:
        self._holder: str | None = None

    @workflow.run
    async def run(self, start: RawValue = _NO_ARGUMENT) -> str:
        del start  # the lock needs nothing from its start
        info = workflow.info()
        parent = info.parent.workflow_id if info.parent is not None else None
        if not holder_may_hold(info.workflow_id, parent):
            return "refused: not started by a plan change of this tenant"
        self._holder = parent
        while True:
            try:
                # Held until the parent closes: the server then terminates this run.
                await workflow.wait_condition(lambda: False)
            except asyncio.CancelledError:
                # A cancel request, from whoever: not the parent's way to end it.
                workflow.logger.info("cancel request ignored: the lock ends with its holder")

    @workflow.query(name="holder")
    def holder(self) -> str | None:
        return self._holder

    @workflow.signal(dynamic=True)
    def _signal(self, name: str, args: Sequence[RawValue]) -> None:
        """Every signal lands here and is dropped: nothing a client sends moves the lock."""
        del name, args
