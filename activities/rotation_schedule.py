"""Temporal Schedules for credential rotation: one per tenant, `rotate-{tenant}`.

The schedule is how a tenant's credentials keep rotating for years without a
workflow sleeping for 180 days: Temporal's scheduler starts RotateSmtpCredentials
every interval, skips a start while the previous rotation still runs (overlap
SKIP, which also serialises `starter.py rotate` with the scheduled runs), and
catches up on a missed start only within a bounded window.

Activities here talk to Temporal itself through the worker's own client
(`activity.client()`), so the schedule's workflow argument is encoded by the same
payload codec as everything else.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecution,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.activation import cancel_activation, start_activation
from activities.vault import Vault, VaultError, vault_failure
from workflows.rotation_contracts import (
    ROTATION_CATCHUP_WINDOW,
    ROTATION_WORKFLOW_TYPE,
    RotationRequest,
    RotationScheduleRequest,
    rotation_interval,
    rotation_schedule_id,
)

# A rotation is a few SSH and Vault calls with retries; one that has not finished in
# a day is stuck, and must not hold the schedule's overlap SKIP for ever.
ROTATION_RUN_TIMEOUT = timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rotation_schedule(
    tenant_id: str, task_queue: str, interval: timedelta, last_rotated: datetime
) -> Schedule:
    """The tenant's schedule: every `interval`, phased so the next run is `interval`
    after the record's `last_rotated` (tenants do not all rotate at the same instant).

    Its runs get `{"tenant_id": ...}` only, like any other start of the workflow: the
    rotation reads where to go from our records (activities/rotation_target.py)."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ROTATION_WORKFLOW_TYPE,
            RotationRequest(tenant_id),
            id=rotation_schedule_id(tenant_id),
            task_queue=task_queue,
            execution_timeout=ROTATION_RUN_TIMEOUT,
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(every=interval, offset=(last_rotated - EPOCH) % interval)
            ]
        ),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=ROTATION_CATCHUP_WINDOW
        ),
    )


def parse_utc(timestamp: str) -> datetime:
    """Vault records carry ISO-8601 UTC with a `Z` suffix."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(UTC)


async def ensure_schedule(client: Client, schedule_id: str, schedule: Schedule) -> str:
    """Create the schedule, or replace its action, spec and policy if it exists.

    Returns "created" or "updated". Idempotent: a retried activity, a second
    completed purchase for the tenant, or a rotation after a host-key change all
    converge on one schedule with the current target.
    """
    try:
        await client.create_schedule(schedule_id, schedule)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        # Keep the live state (paused by an operator, notes); replace the rest.
        return ScheduleUpdate(
            Schedule(
                action=schedule.action,
                spec=schedule.spec,
                policy=schedule.policy,
                state=current.description.schedule.state,
            )
        )

    await client.get_schedule_handle(schedule_id).update(update)
    return "updated"


async def delete_schedule(client: Client, schedule_id: str) -> bool:
    """Delete the schedule; False if there was none (already deleted: idempotent)."""
    try:
        await client.get_schedule_handle(schedule_id).delete()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


class RotationScheduleActivities:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    @activity.defn(name="ensure_rotation_schedule")
    async def ensure_rotation_schedule(self, request: RotationScheduleRequest) -> str:
        """Create or update `rotate-{tenant}` from the tenant's Vault record.

        The interval comes from the record's `rotation_policy` and the phase from
        its `last_rotated`; the record must exist (this runs after it was stored).
        """
        tenant = request.target.tenant_id
        try:
            record = await asyncio.to_thread(self._vault.read_credentials, tenant)
        except VaultError as err:
            raise vault_failure(err) from None
        if record is None:
            raise ApplicationError(
                f"no credentials record for tenant {tenant!r}: nothing to rotate",
                type="CredentialsMissing",
            )
        try:
            interval = rotation_interval(record.data["rotation_policy"])
        except ValueError as err:
            raise ApplicationError(
                str(err), type="InvalidRotationPolicy", non_retryable=True
            ) from None
        schedule = rotation_schedule(
            tenant, request.task_queue, interval, parse_utc(record.data["last_rotated"])
        )
        schedule_id = rotation_schedule_id(tenant)
        outcome = await ensure_schedule(activity.client(), schedule_id, schedule)
        activity.logger.info(
            f"rotation schedule {outcome}",
            extra={"schedule_id": schedule_id, "every_days": interval.days},
        )
        # The tenant's other Temporal-side life: the wait for its DNS
        # (workflows/activation.py); started here so that the purchase's history keeps
        # its steps (activities/activation.py says why).
        await start_activation(activity.client(), tenant, request.task_queue)
        return schedule_id

    @activity.defn(name="remove_rotation_schedule")
    async def remove_rotation_schedule(self, request: RotationRequest) -> bool:
        """The tenant's server or record is gone: stop rotating it (False: there was none),
        and cancel its activation if one still waits."""
        removed = await delete_schedule(activity.client(), rotation_schedule_id(request.tenant_id))
        # A waiting activation of the tenant goes with it (nothing left to activate).
        cancelled = await cancel_activation(activity.client(), request.tenant_id)
        activity.logger.info(
            "rotation schedule removed",
            extra={"removed": removed, "activation_cancelled": cancelled},
        )
        return removed


# ------------------------------------------------------------------ operator commands


class NoRotationSchedule(LookupError):
    pass


def _workflow_id(action: ScheduleActionExecution) -> str:
    assert isinstance(action, ScheduleActionExecutionStartWorkflow), action
    return action.workflow_id


async def rotation_schedule_exists(client: Client, tenant_id: str) -> bool:
    """Whether the tenant's rotation schedule is there (deprovisioning, its tests)."""
    try:
        await client.get_schedule_handle(rotation_schedule_id(tenant_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def _describe(client: Client, tenant_id: str) -> ScheduleDescription:
    try:
        return await client.get_schedule_handle(rotation_schedule_id(tenant_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NoRotationSchedule(
                f"no rotation schedule {rotation_schedule_id(tenant_id)!r}: the tenant was "
                "never provisioned to completion, or its server is gone"
            ) from None
        raise


async def rotate_now(client: Client, tenant_id: str, poll_seconds: float = 0.5) -> str:
    """Run the tenant's rotation now, through its schedule; returns the run's workflow id.

    Triggering the schedule (rather than starting a workflow beside it) keeps its
    overlap SKIP in charge: if a rotation is already running, whether scheduled or
    triggered by another operator, no second one starts and this joins the running one.
    """
    description = await _describe(client, tenant_id)
    seen = {_workflow_id(a.action) for a in description.info.recent_actions}
    handle = client.get_schedule_handle(rotation_schedule_id(tenant_id))
    if not description.info.running_actions:
        await handle.trigger()
    while True:
        info = (await handle.describe()).info
        if info.running_actions:
            return _workflow_id(info.running_actions[0])
        new = [
            _workflow_id(a.action)
            for a in info.recent_actions
            if _workflow_id(a.action) not in seen
        ]
        if new:
            return new[-1]
        await asyncio.sleep(poll_seconds)


async def rotation_status(client: Client, tenant_id: str) -> dict[str, object]:
    """What an operator needs: interval, next runs, the last runs and how they ended."""
    description = await _describe(client, tenant_id)
    schedule, info = description.schedule, description.info
    every = [i.every.days for i in schedule.spec.intervals]
    recent = []
    for result in info.recent_actions[-5:]:
        workflow_id = _workflow_id(result.action)
        run = await client.get_workflow_handle(workflow_id).describe()
        recent.append(
            {
                "workflow_id": workflow_id,
                "started_at": result.started_at.isoformat(timespec="seconds"),
                "status": run.status.name.lower() if run.status else "unknown",
            }
        )
    return {
        "schedule_id": description.id,
        "every_days": every[0] if every else None,
        "paused": schedule.state.paused,
        "overlap": schedule.policy.overlap.name,
        "catchup_window": str(schedule.policy.catchup_window),
        "next_runs": [t.isoformat(timespec="seconds") for t in info.next_action_times[:2]],
        "running": [_workflow_id(a) for a in info.running_actions],
        "recent": recent,
    }
