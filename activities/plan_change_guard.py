"""What a plan change asks Temporal about the tenant's other runs, before it touches a server.

- Is the tenant being deprovisioned? DeprovisionMailTenant (`deprovision-{tenant}`) does
  not wait for a plan change: it deletes the server under it. Every plan-change step that
  would touch the server asks first, and stops with TenantDeprovisioned instead of
  stopping, changing, starting or restoring anything for a tenant that is leaving.
- Does another plan change hold the tenant's plan-change lock (`plan-change-lock-{tenant}`,
  workflows/plan_change_lock.py)? The lock is taken by the plan change itself, as a child
  workflow; here it is only read: who holds it, for the refusal's message, and for the
  rotation, which must not write a Vault version while another run has the server down.

Read through the activity's own Temporal client (activity.client()); the class exists so
that tests of the provider-facing activities can stand in for Temporal.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from workflows.deprovision_contracts import deprovision_workflow_id
from workflows.plan_change_contracts import (
    PLAN_CHANGE_IN_PROGRESS,
    PLAN_CHANGE_LOCK_TYPE,
    TENANT_DEPROVISIONED,
    plan_change_lock_id,
)

RUNNING = WorkflowExecutionStatus.RUNNING
COMPLETED = WorkflowExecutionStatus.COMPLETED


@dataclass(frozen=True)
class LockHolder:
    """Who holds `plan-change-lock-{tenant}` now (None fields: nobody)."""

    lock_workflow_id: str
    # The plan change run holding it (the lock's parent), or a description of a run that
    # squats the id without being a lock a plan change started.
    holder: str | None
    # The holder run is still open (False: it closed and Temporal is about to end the
    # lock through its parent close policy; the lock is stale).
    holder_running: bool = False


class TenantRuns:
    """The tenant's deprovisioning and plan-change lock, as Temporal knows them."""

    def __init__(self, client: Client | None = None) -> None:
        # None: the calling activity's own client (the worker's).
        self._client = client

    def client(self) -> Client:
        return self._client or activity.client()

    async def _status(self, workflow_id: str) -> WorkflowExecutionStatus | None:
        try:
            description = await self.client().get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return description.status

    async def deprovisioning(self, tenant_id: str) -> str | None:
        """The deprovisioning run's workflow id while one of the tenant is running."""
        workflow_id = deprovision_workflow_id(tenant_id)
        return workflow_id if await self._status(workflow_id) == RUNNING else None

    async def deprovisioned(self, tenant_id: str) -> str | None:
        """The deprovisioning run's id if one is running or has completed (its server gone
        is then its doing, not a fault)."""
        workflow_id = deprovision_workflow_id(tenant_id)
        return workflow_id if await self._status(workflow_id) in (RUNNING, COMPLETED) else None

    async def lock_holder(self, tenant_id: str) -> LockHolder:
        """Who holds the tenant's plan-change lock."""
        lock_id = plan_change_lock_id(tenant_id)
        client = self.client()
        try:
            lock = await client.get_workflow_handle(lock_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return LockHolder(lock_id, None)
            raise
        if lock.status != RUNNING:
            return LockHolder(lock_id, None)
        if lock.workflow_type != PLAN_CHANGE_LOCK_TYPE or lock.parent_id is None:
            # Any client can start any type under any id: a squatter holds the id until
            # it ends or an operator terminates it; refusing is the safe side.
            return LockHolder(
                lock_id, f"a {lock.workflow_type} run not started by a plan change", True
            )
        try:
            parent = await client.get_workflow_handle(
                lock.parent_id, run_id=lock.parent_run_id
            ).describe()
            running = parent.status == RUNNING
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            running = False
        return LockHolder(lock_id, lock.parent_id, running)

    async def end_stale_lock(self, held: LockHolder) -> bool:
        """Terminate the lock if its holder has closed (Temporal is about to, through the
        parent close policy); True if this call ended it. Never touches a lock whose
        holder runs, nor a run squatting the id."""
        if held.holder is None or held.holder_running:
            return False
        try:
            await (
                self.client()
                .get_workflow_handle(held.lock_workflow_id)
                .terminate(f"its plan change {held.holder} has closed")
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            return False  # ended meanwhile
        return True

    async def refuse_if_changing_plan(self, tenant_id: str, caller: str | None) -> None:
        """PlanChangeInProgress (retryable: the rotation waits it out) while a plan change
        other than `caller` holds the tenant's lock; the caller has written nothing yet."""
        held = await self.lock_holder(tenant_id)
        if held.holder is not None and held.holder_running and held.holder != caller:
            raise ApplicationError(
                f"plan change {held.holder} has tenant {tenant_id!r}'s server; nothing "
                "written, tried again once it is done",
                {"holder": held.holder, "lock_workflow_id": held.lock_workflow_id},
                type=PLAN_CHANGE_IN_PROGRESS,
            )


def tenant_deprovisioned(tenant_id: str, by: str) -> ApplicationError:
    """The final error of a plan-change step that found the tenant leaving."""
    return ApplicationError(
        f"tenant {tenant_id!r} is being deprovisioned ({by}): the plan change touches nothing more",
        {"deprovisioned_by": by},
        type=TENANT_DEPROVISIONED,
        non_retryable=True,
    )
