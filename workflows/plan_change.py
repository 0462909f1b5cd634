"""ChangeMailPlan: a tenant's mail server moved to another plan of the catalog.

    decode {"tenant_id", "request_id", "plan", "requested_by"}
        ─► take the tenant's plan-change lock (child PlanChangeLock `plan-change-lock-
            {tenant}`, workflows/plan_change_lock.py; held: PlanChangeInProgress)
        ─► check_plan_change (server from our records; Hetzner's rules; touches nothing)
        ─► stop_server (ACPI shutdown, poweroff after a grace)
        ─► change_server_type (change_type, upgrade_disk when the new disk is bigger)
        ─► start_mail_server (poweron, running, MailU's admin container healthy)
        ─► prove_admin_login (the rotation activity: a new password set, proven by
            MailU's own login check, stored in Vault; the worker cannot decrypt the
            stored one, so proving the login means setting one it knows)
        ─► label_server_plan ─► audit mail_plan_changed
    impossible change ─► the run fails at once, nothing touched (PlanUnchanged,
        PlanChangeImpossible, PlanChangeUnavailable, InvalidPlanChangeRequest, ...)
    any failure (or cancel) after the stop ─► restore_server_type (old type, powered
        on) ─► audit mail_plan_change_failed ─► PlanChangeFailed (a cancel: CANCELLED)
    the tenant deprovisioned under the change ─► restore touches nothing ─► audit
        mail_plan_change_failed ─► TenantDeprovisioned

A cancel before the stop ends the run CANCELLED with nothing touched. The steps that act
on the server (stop, change_type, start) are waited for on a cancel until their attempt
has stopped, and the restore waits for a change_type action still under way (Hetzner's
actions cannot be cancelled) before it judges the server's type.

Downtime is measured by the worker, from the stop request to MailU healthy again, and
reported in the result and the audit row.

Started by a back end or `starter.py change-plan`; any client of the namespace can
start it, so the argument names only the tenant, the request and the plan: the server
is read from our records (activities/rotation_target.py). The argument arrives raw
through the queue's dynamic workflow (workflows/dispatch.py), as rotation's does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    WorkflowAlreadyStartedError,
)

from workflows.contracts import AuditEvent
from workflows.failures import cancel_requested, error_type, innermost, reason, stop_cause
from workflows.plan_change_contracts import (
    PLAN_CHANGE_IN_PROGRESS,
    PLAN_CHANGE_LOCK_TYPE,
    TENANT_DEPROVISIONED,
    InvalidPlanChangeRequest,
    MailuHealthy,
    PlanChangeCheck,
    PlanChangeLockHolder,
    PlanChangeLockRequest,
    PlanChangeRequest,
    PlanChangeResult,
    PlanChangeStatus,
    PlanLabelRequest,
    ServerPowerRequest,
    ServerTypeChange,
    StoppedServer,
    plan_change_lock_id,
    plan_change_request_from_payloads,
)
from workflows.policies import AUDIT, WAIT_FOR_THE_ATTEMPT, policy
from workflows.rotation_contracts import RotatedCredentials, RotationRequest
from workflows.saga import Saga
from workflows.steps import StepTracker

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AuditActivities,
        CredentialsActivities,
        PlanChangeActivities,
    )

# Refusals found before anything is touched: the run ends at once, nothing to undo.
REFUSALS = (
    "InvalidPlanChangeRequest",
    "PlanUnchanged",
    "PlanChangeImpossible",
    "PlanChangeUnavailable",
    "ServerBusy",
    "PlanChangeRecordsDisagree",
    "ServerGone",
    "CredentialsWithdrawn",
    TENANT_DEPROVISIONED,
    PLAN_CHANGE_IN_PROGRESS,
)
STOPPED = (ActivityError, CancelledError, asyncio.CancelledError)

# Looking up the lock's holder (Temporal reads; a stale lock ended): brief retries.
LOCK_HOLDER: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=5),
    retry_policy=policy(1, 30),
)
# How often a stale lock (its plan change closed moments ago) is ended and tried again.
LOCK_TRIES = 3
# Provider reads only: retried briefly, refusals are final.
CHECK: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=timedelta(minutes=10),
    retry_policy=policy(2, 30, final=REFUSALS),
)
# Shutdown grace (2 min) plus a poweroff; heartbeats while it waits.
STOP: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=20),
    retry_policy=policy(3, 60),
    cancellation_type=WAIT_FOR_THE_ATTEMPT,
)
# Hetzner: "Upgrading a server takes 160 seconds on average, upgrading the disk should
# take more time" (ansible-collections/hetzner.hcloud, plugins/modules/server.py waits
# up to ~600 s with the disk): 15 minutes per attempt.
CHANGE_TYPE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=15),
    heartbeat_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=45),
    retry_policy=policy(5, 60),
    cancellation_type=WAIT_FOR_THE_ATTEMPT,
)
# Boot, then MailU's containers restart (minutes on a real server); SSH may refuse
# while sshd starts, so bounded by time, not attempts.
START: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=15),
    heartbeat_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=timedelta(minutes=30),
    retry_policy=policy(5, 60, final=("HostKeyMismatch", "ServerGone")),
    cancellation_type=WAIT_FOR_THE_ATTEMPT,
)
# The rotation activity's own options (workflows/rotation.py), bounded tighter: the
# customer's mail is up already, a failure here is compensated.
PROVE_LOGIN: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=3),
    schedule_to_close_timeout=timedelta(minutes=20),
    retry_policy=policy(
        10,
        120,
        final=("CredentialsWithdrawn", "ServerGone", "RotationRecordsDisagree", "HostKeyMismatch"),
    ),
)
LABEL: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(hours=1),
    retry_policy=policy(1, 60),
)
# Undoing must finish: the customer's mail is down until it does.
RESTORE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=20),
    heartbeat_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(5, 300),
)


class PlanChange:
    """One ChangeMailPlan run; ProvisionMailTenant runs it for that workflow type."""

    def __init__(self) -> None:
        self.steps = StepTracker(PlanChangeStatus(tenant_id=None, request_id=None, state="running"))
        self.status = self.steps.status
        self.undo = Saga()
        # What the restore did ("not_run" until it runs; see restore_server_type).
        self.restored = "not_run"

    async def run(self, args: Sequence[RawValue]) -> PlanChangeResult:
        request = self._validate(args)
        await self._lock(request)
        check = await self._check(request)
        try:
            result = await self._change(request, check)
        except STOPPED as err:
            raise await self._compensate(request, check, err) from None
        self.steps.finish("completed")
        return result

    def _validate(self, args: Sequence[RawValue]) -> PlanChangeRequest:
        started = self.steps.begin("validate_input")
        try:
            request = plan_change_request_from_payloads(
                [(arg.payload.metadata.get("encoding", b""), arg.payload.data) for arg in args],
                workflow.info().workflow_id,
            )
        except InvalidPlanChangeRequest as err:
            self.steps.end(started, "failed", error=str(err))
            self.steps.finish("refused")
            raise ApplicationError(
                str(err),
                {"field": err.field, "rule": err.rule},
                type="InvalidPlanChangeRequest",
                non_retryable=True,
            ) from None
        self.status.tenant_id = request.tenant_id
        self.status.request_id = request.request_id
        self.steps.end(started, "done")
        return request

    async def _lock(self, request: PlanChangeRequest) -> None:
        """Hold the tenant's plan-change lock for the rest of this run, or refuse.

        The lock is a child workflow with a fixed id and parent close policy TERMINATE:
        Temporal starts at most one per id and ends it when this run closes, however it
        closes (workflows/plan_change_lock.py says why this and not another lock).
        """
        started = self.steps.begin("take_plan_change_lock")
        lock_id = plan_change_lock_id(request.tenant_id)
        held: PlanChangeLockHolder | None = None
        try:
            for _ in range(LOCK_TRIES):
                try:
                    await workflow.start_child_workflow(
                        PLAN_CHANGE_LOCK_TYPE,
                        id=lock_id,
                        parent_close_policy=workflow.ParentClosePolicy.TERMINATE,
                        static_summary=f"plan change lock of tenant {request.tenant_id}",
                    )
                    self.steps.end(started, "done")
                    return
                except WorkflowAlreadyStartedError:
                    pass
                found: PlanChangeLockHolder = await workflow.execute_activity_method(
                    PlanChangeActivities.plan_change_lock_holder,
                    PlanChangeLockRequest(request.tenant_id),
                    **LOCK_HOLDER,
                )
                held = found
                if not found.freed_stale and found.holder is not None:
                    break  # a live holder (or a squatter): refused
        except STOPPED as err:
            self.steps.end(started, "failed", error=reason(err))
            if cancel_requested():
                self.steps.finish("cancelled")
                raise CancelledError(
                    "plan change cancelled before the server was touched"
                ) from None
            self.steps.finish("failed")
            raise ApplicationError(reason(err), type=error_type(err), non_retryable=True) from None
        holder = held.holder if held is not None and held.holder else "another run"
        message = (
            f"another plan change of tenant {request.tenant_id} is running ({holder}); "
            "nothing was touched: ask again once it has finished"
        )
        self.steps.end(started, "failed", error=message)
        self.steps.finish("refused")
        raise ApplicationError(
            message,
            {"holder": holder, "lock_workflow_id": lock_id},
            type=PLAN_CHANGE_IN_PROGRESS,
            non_retryable=True,
        )

    async def _check(self, request: PlanChangeRequest) -> PlanChangeCheck:
        try:
            check: PlanChangeCheck = await self.steps.run(
                "check_plan_change", PlanChangeActivities.check_plan_change, request, CHECK
            )
        except STOPPED as err:
            if cancel_requested():
                # Before the stop: nothing was touched, nothing to undo or audit.
                self.steps.finish("cancelled")
                raise CancelledError(
                    "plan change cancelled before the server was touched"
                ) from None
            if not isinstance(err, ActivityError):
                raise
            self.steps.finish("refused" if error_type(err) in REFUSALS else "failed")
            # The activity's own details ({field, rule}) reach the back end unchanged.
            inner = innermost(err)
            details = inner.details if isinstance(inner, ApplicationError) else ()
            raise ApplicationError(
                reason(err), *details, type=error_type(err), non_retryable=True
            ) from None
        return check

    async def _change(self, request: PlanChangeRequest, check: PlanChangeCheck) -> PlanChangeResult:
        tenant, server_id = request.tenant_id, check.server_id
        back = ServerTypeChange(
            tenant, server_id, check.from_server_type, False, check.to_server_type
        )
        self.undo.add("restore_server_type", lambda: self._restore(back))
        stopped: StoppedServer = await self.steps.run(
            "stop_server",
            PlanChangeActivities.stop_server,
            ServerPowerRequest(tenant, server_id),
            STOP,
        )
        disk_gb: int = await self.steps.run(
            "change_server_type",
            PlanChangeActivities.change_server_type,
            ServerTypeChange(
                tenant, server_id, check.to_server_type, check.upgrade_disk, check.from_server_type
            ),
            CHANGE_TYPE,
        )
        healthy: MailuHealthy = await self.steps.run(
            "start_mail_server", PlanChangeActivities.start_mail_server, check, START
        )
        downtime = (
            datetime.fromisoformat(healthy.healthy_at)
            - datetime.fromisoformat(stopped.stop_requested_at)
        ).total_seconds()
        proven: RotatedCredentials = await self.steps.run(
            "prove_admin_login",
            CredentialsActivities.rotate_admin_credentials,
            RotationRequest(tenant),
            PROVE_LOGIN,
        )
        await self.steps.run(
            "label_server_plan",
            PlanChangeActivities.label_server_plan,
            PlanLabelRequest(tenant, server_id, request.plan),
            LABEL,
        )
        result = PlanChangeResult(
            tenant_id=tenant,
            request_id=request.request_id,
            plan=request.plan,
            previous_plan=check.previous_plan,
            server_id=server_id,
            server_type=check.to_server_type,
            previous_server_type=check.from_server_type,
            disk_gb=disk_gb,
            downtime_seconds=round(downtime, 3),
            stopped_how=stopped.how,
            vault_version=proven.version,
        )
        await self.steps.run(
            "audit",
            AuditActivities.record_audit_event,
            self._event(
                "mail_plan_changed",
                tenant,
                {
                    "plan": request.plan,
                    "previous_plan": check.previous_plan or "",
                    "server_type": check.to_server_type,
                    "previous_server_type": check.from_server_type,
                    "disk_gb": str(disk_gb),
                    "downtime_seconds": str(result.downtime_seconds),
                    "requested_by": request.requested_by,
                    "vault_version": str(proven.version),
                },
            ),
            AUDIT,
        )
        return result

    async def _restore(self, back: ServerTypeChange) -> None:
        outcome: str = await self.steps.run(
            "restore_server_type", PlanChangeActivities.restore_server_type, back, RESTORE
        )
        self.restored = outcome

    async def _compensate(
        self, request: PlanChangeRequest, check: PlanChangeCheck, err: BaseException
    ) -> Exception:
        step = self.status.current_step or "unknown"
        cause = stop_cause(err)
        self.steps.compensate(cause["reason"])
        await self.undo.compensate()
        audited = {
            "plan": request.plan,
            "server_type": check.from_server_type,
            "step": step,
            **cause,
            "restored": self.restored,
            "requested_by": request.requested_by,
        }
        await self.steps.run(
            "audit_failure",
            AuditActivities.record_audit_event,
            self._event("mail_plan_change_failed", request.tenant_id, audited),
            AUDIT,
        )
        details = {"step": step, "error_type": error_type(err), "restored": self.restored}
        if self.restored == "tenant_deprovisioned" or error_type(err) == TENANT_DEPROVISIONED:
            # The back end asked for both; the deprovisioning wins and says so.
            self.steps.finish("failed")
            return ApplicationError(
                f"tenant {request.tenant_id} was deprovisioned during the plan change (at "
                f"{step}): nothing was restored or restarted",
                details,
                type=TENANT_DEPROVISIONED,
                non_retryable=True,
            )
        if cancel_requested():
            self.steps.finish("cancelled")
            return CancelledError(
                f"plan change cancelled at {step}; server {self.restored} on "
                f"{check.from_server_type}"
            )
        self.steps.finish("failed")
        return ApplicationError(
            f"plan change failed at {step}: {reason(err)}; server {self.restored} "
            f"on {check.from_server_type}",
            details,
            type="PlanChangeFailed",
            non_retryable=True,
        )

    @staticmethod
    def _event(event: str, tenant_id: str, details: dict[str, str]) -> AuditEvent:
        info = workflow.info()
        return AuditEvent(f"{info.workflow_id}/{info.run_id}/{event}", event, tenant_id, details)
