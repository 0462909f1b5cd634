"""ChangeMailPlan's logic on the time-skipping server, with scripted activities.

The activities themselves run against the local cloud in
tests/devstack/test_plan_change_actions.py; here each path of the workflow is forced:
changed, refused before anything is touched, failed after the stop (old type back),
hostile input.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.plan_change_guard import TenantRuns
from devstack.stack import tool
from tests.workflow.sandbox import restricted_sandbox
from worker import worker_interceptors
from workflows.contracts import AuditEvent, MailuTarget
from workflows.dispatch import ProvisionMailTenant
from workflows.metrics import PLAN_CHANGE_DOWNTIME
from workflows.plan_change_contracts import (
    PLAN_CHANGE_IN_PROGRESS,
    PLAN_CHANGE_LOCK_TYPE,
    PLAN_CHANGE_WORKFLOW_TYPE,
    TENANT_DEPROVISIONED,
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
    plan_change_workflow_id,
)
from workflows.plan_change_lock import PlanChangeLock
from workflows.rotation_contracts import RotatedCredentials, RotationRequest

REQUEST = PlanChangeRequest("acme", "r-1", "business", "ops@example.com")
TARGET = MailuTarget("acme", "acme.example", "mail-acme", "192.0.2.7", "ssh-ed25519 AAAA")
CHECK = PlanChangeCheck(
    tenant_id="acme",
    server_id=42,
    target=TARGET,
    from_server_type="cx23",
    to_server_type="cx33",
    upgrade_disk=True,
    disk_gb_before=40,
    disk_gb_after=80,
    location="fsn1",
    previous_plan=None,
)


@dataclass
class World:
    """The provider's server as the scripted activities see and change it."""

    check_error: Exception | None = None
    start_errors: list[Exception] = field(default_factory=list)
    server_type: str = "cx23"
    running: bool = True
    calls: list[str] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    # The step (check, stop, change, start) that waits, heartbeating, until cancelled;
    # `entered` is set once it waits, so a test cancels at a known point.
    block_at: str | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    # What the restore reports (the activity's outcome, e.g. tenant_deprovisioned).
    restore_outcome: str = "restored"
    # Looks at a held lock (plan_change_lock_holder), which touch no server.
    lock_looks: int = 0
    # start_mail_server's first attempt waits (not heartbeating, so it never hears of a
    # cancel) until this is set, then fails retryably: an attempt that ends on its own
    # after the run was cancelled.
    start_fails_after: asyncio.Event | None = None

    async def _maybe_block(self, step: str) -> None:
        if self.block_at != step:
            return
        self.entered.set()
        try:
            while True:
                activity.heartbeat(step)
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.calls.append(f"{step}:cancelled")
            raise

    def activities(self) -> list[Any]:
        @activity.defn(name="plan_change_lock_holder")
        async def plan_change_lock_holder(request: PlanChangeLockRequest) -> PlanChangeLockHolder:
            # Temporal is real here: the lock is read (and a stale one ended) by the
            # worker's own code (activities/plan_change_guard.py).
            self.lock_looks += 1
            runs = TenantRuns()
            held = await runs.lock_holder(request.tenant_id)
            freed = await runs.end_stale_lock(held)
            return PlanChangeLockHolder(
                held.lock_workflow_id, held.holder, held.holder_running, freed
            )

        @activity.defn(name="check_plan_change")
        async def check_plan_change(request: PlanChangeRequest) -> PlanChangeCheck:
            self.calls.append("check")
            await self._maybe_block("check")
            if self.check_error is not None:
                raise self.check_error
            return CHECK

        @activity.defn(name="stop_server")
        async def stop_server(request: ServerPowerRequest) -> StoppedServer:
            self.calls.append("stop")
            self.running = False
            return StoppedServer(request.server_id, "shutdown", "2027-01-01T00:00:00.000Z")

        @activity.defn(name="change_server_type")
        async def change_server_type(request: ServerTypeChange) -> int:
            self.calls.append(f"change:{request.server_type}:{request.upgrade_disk}")
            assert not self.running
            self.server_type = request.server_type
            await self._maybe_block("change")
            return 80

        @activity.defn(name="start_mail_server")
        async def start_mail_server(check: PlanChangeCheck) -> MailuHealthy:
            self.calls.append("start")
            await self._maybe_block("start")
            if self.start_fails_after is not None and activity.info().attempt == 1:
                self.entered.set()
                await self.start_fails_after.wait()
                raise ApplicationError("admin container still 'starting'", type="MailuNotHealthy")
            if self.start_errors:
                raise self.start_errors.pop(0)
            self.running = True
            return MailuHealthy("2027-01-01T00:03:12.500Z")

        @activity.defn(name="rotate_admin_credentials")
        async def rotate_admin_credentials(request: RotationRequest) -> RotatedCredentials:
            self.calls.append("prove_login")
            return RotatedCredentials(
                "admin@acme.example", "smtp/acme/admin", 5, 4, "2027-01-01T00:03:20Z"
            )

        @activity.defn(name="label_server_plan")
        async def label_server_plan(request: PlanLabelRequest) -> None:
            self.calls.append("label")
            self.labels["plan"] = request.plan

        @activity.defn(name="restore_server_type")
        async def restore_server_type(request: ServerTypeChange) -> str:
            self.calls.append(f"restore:{request.server_type}")
            if self.restore_outcome == "restored":
                self.server_type = request.server_type
                self.running = True
            return self.restore_outcome

        @activity.defn(name="record_audit_event")
        async def record_audit_event(event: AuditEvent) -> bool:
            self.audit.append(event)
            return True

        return [
            plan_change_lock_holder,
            check_plan_change,
            stop_server,
            change_server_type,
            start_mail_server,
            rotate_admin_credentials,
            label_server_plan,
            restore_server_type,
            record_audit_event,
        ]


async def run_change(
    env: WorkflowEnvironment,
    world: World,
    arg: Any = None,
    workflow_id: str | None = None,
) -> PlanChangeResult:
    task_queue = f"plan-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant, PlanChangeLock],
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
    ):
        result: PlanChangeResult = await env.client.execute_workflow(
            PLAN_CHANGE_WORKFLOW_TYPE,
            arg if arg is not None else REQUEST,
            id=workflow_id or plan_change_workflow_id(REQUEST.tenant_id, REQUEST.request_id),
            task_queue=task_queue,
            result_type=PlanChangeResult,
        )
        return result


def failure_of(err: pytest.ExceptionInfo[WorkflowFailureError]) -> ApplicationError:
    cause = err.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_a_change_stops_changes_starts_proves_labels_and_audits(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = World()
    result = await run_change(time_skipping_env, world)
    assert world.calls == [
        "check",
        "stop",
        "change:cx33:True",
        "start",
        "prove_login",
        "label",
    ]
    assert (world.server_type, world.running, world.labels) == ("cx33", True, {"plan": "business"})
    assert (result.server_type, result.previous_server_type, result.disk_gb) == ("cx33", "cx23", 80)
    assert result.downtime_seconds == 192.5
    assert (result.stopped_how, result.vault_version) == ("shutdown", 5)
    [event] = world.audit
    assert event.event == "mail_plan_changed"
    assert event.details["downtime_seconds"] == "192.5"
    assert event.details["previous_server_type"] == "cx23"


@pytest.mark.parametrize(
    "error_type", ["PlanChangeImpossible", "PlanUnchanged", "InvalidPlanChangeRequest"]
)
async def test_an_impossible_change_is_refused_before_anything_is_touched(
    time_skipping_env: WorkflowEnvironment, error_type: str
) -> None:
    world = World(
        check_error=ApplicationError(
            "plan change refused: field 'plan' a disk cannot shrink",
            {"field": "plan", "rule": "a disk cannot shrink"},
            type=error_type,
            non_retryable=True,
        )
    )
    with pytest.raises(WorkflowFailureError) as err:
        await run_change(time_skipping_env, world)
    failure = failure_of(err)
    assert failure.type == error_type
    assert "cannot shrink" in failure.message
    assert failure.details[0] == {"field": "plan", "rule": "a disk cannot shrink"}
    assert world.calls == ["check"]
    assert (world.server_type, world.running, world.audit) == ("cx23", True, [])


async def test_a_failure_after_the_stop_brings_the_old_type_back_up(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = World(
        start_errors=[
            ApplicationError(
                "mailu admin never healthy", type="RemoteCommandNotFound", non_retryable=True
            )
        ]
    )
    with pytest.raises(WorkflowFailureError) as err:
        await run_change(time_skipping_env, world)
    failure = failure_of(err)
    assert failure.type == "PlanChangeFailed"
    assert "start_mail_server" in failure.message
    assert world.calls == ["check", "stop", "change:cx33:True", "start", "restore:cx23"]
    assert (world.server_type, world.running, world.labels) == ("cx23", True, {})
    [event] = world.audit
    assert event.event == "mail_plan_change_failed"
    assert (event.details["step"], event.details["restored"]) == ("start_mail_server", "restored")


@pytest.mark.parametrize(
    ("arg", "field_name"),
    [
        ({"tenant_id": "acme", "request_id": "r-1", "plan": "business"}, "requested_by"),
        (
            {
                "tenant_id": "acme",
                "request_id": "r-1",
                "plan": "business",
                "requested_by": "ops",
                "server_id": 1,
            },
            "server_id",
        ),
        ("not an object", "(input)"),
    ],
)
async def test_hostile_input_ends_the_run_at_once_naming_the_field(
    time_skipping_env: WorkflowEnvironment, arg: Any, field_name: str
) -> None:
    world = World()
    with pytest.raises(WorkflowFailureError) as err:
        await run_change(time_skipping_env, world, arg)
    failure = failure_of(err)
    assert failure.type == "InvalidPlanChangeRequest"
    assert failure.details[0]["field"] == field_name
    assert world.calls == []


async def test_a_run_under_another_workflow_id_is_refused(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = World()
    with pytest.raises(WorkflowFailureError) as err:
        await run_change(time_skipping_env, world, workflow_id="change-plan-victim-r-1")
    assert failure_of(err).details[0]["field"] == "request_id"
    assert world.calls == []


async def test_a_non_json_payload_is_refused_not_a_stuck_task(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = World()
    raw = RawValue(Payload(metadata={"encoding": b"binary/plain"}, data=b"\x00\x01"))
    with pytest.raises(WorkflowFailureError) as err:
        await run_change(time_skipping_env, world, raw)
    assert failure_of(err).type == "InvalidPlanChangeRequest"
    assert failure_of(err).details[0]["field"] == "(input)"
    assert world.calls == []


def heartbeating_worker(env: WorkflowEnvironment, world: World, task_queue: str) -> Worker:
    """A worker of the plan change and its lock over `world`'s activities, whose
    heartbeats go out at once: a cancel reaches a waiting activity with its next
    heartbeat's answer."""
    return Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant, PlanChangeLock],
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
        max_heartbeat_throttle_interval=timedelta(milliseconds=50),
        default_heartbeat_throttle_interval=timedelta(milliseconds=50),
    )


async def cancel_when_blocked(
    env: WorkflowEnvironment, world: World
) -> tuple[WorkflowHandle[Any, Any], BaseException, PlanChangeStatus]:
    """Start a change, cancel it once `world.block_at` waits; the run's end and status."""
    task_queue = f"plan-cancel-{uuid.uuid4().hex[:8]}"
    async with heartbeating_worker(env, world, task_queue):
        handle = await env.client.start_workflow(
            PLAN_CHANGE_WORKFLOW_TYPE,
            REQUEST,
            id=plan_change_workflow_id(REQUEST.tenant_id, REQUEST.request_id),
            task_queue=task_queue,
        )
        await world.entered.wait()
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as ended:
            await handle.result()
        status = await handle.query("status", result_type=PlanChangeStatus)
    return handle, ended.value.cause, status


async def test_a_cancel_before_the_stop_ends_cancelled_with_nothing_touched(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = World(block_at="check")
    handle, cause, status = await cancel_when_blocked(time_skipping_env, world)
    assert isinstance(cause, CancelledError), cause
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert [call for call in world.calls if not call.startswith("check")] == []
    assert (world.server_type, world.running, world.audit) == ("cx23", True, [])
    assert status.state == "cancelled"


async def test_a_cancel_after_the_stop_brings_the_old_type_back_and_is_audited(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Cancelled while MailU is awaited after the change: the start's attempt is waited
    for, then the server goes back to its old type, running; one audit row."""
    world = World(block_at="start")
    handle, cause, status = await cancel_when_blocked(time_skipping_env, world)
    assert isinstance(cause, CancelledError), cause
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert world.calls == [
        "check",
        "stop",
        "change:cx33:True",
        "start",
        "start:cancelled",
        "restore:cx23",
    ]
    assert (world.server_type, world.running, world.labels) == ("cx23", True, {})
    [event] = world.audit
    assert event.event == "mail_plan_change_failed"
    assert (event.details["step"], event.details["restored"]) == ("start_mail_server", "restored")
    assert (event.details["error_type"], event.details["reason"]) == (
        "CancelledError",
        "workflow cancelled",
    )
    assert status.state == "cancelled"


async def test_a_cancel_during_change_type_waits_for_the_attempt_then_restores(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """The restore starts only once the change_type attempt has stopped (it would
    otherwise judge a server still migrating); the old type is back, audited."""
    world = World(block_at="change")
    _, cause, status = await cancel_when_blocked(time_skipping_env, world)
    assert isinstance(cause, CancelledError), cause
    assert world.calls == ["check", "stop", "change:cx33:True", "change:cancelled", "restore:cx23"]
    assert (world.server_type, world.running) == ("cx23", True)
    [event] = world.audit
    assert (event.event, event.details["step"]) == ("mail_plan_change_failed", "change_server_type")
    assert status.state == "cancelled"


async def test_a_cancel_the_step_hears_of_only_by_failing_is_audited_as_the_cancel() -> None:
    """The cancel reaches the server while a start attempt runs that has not heartbeated
    since; the attempt then fails on its own (retryably). Temporal retries no activity
    whose cancel was requested, so the step ends with the attempt's error, yet the run was
    cancelled: it ends CANCELLED and is audited as the cancel (docs/OPERATIONS.md), the
    attempt's error beside it.

    On a real dev server: the time-skipping test server retries that attempt instead."""
    world = World(start_fails_after=asyncio.Event())
    task_queue = f"plan-cancel-{uuid.uuid4().hex[:8]}"
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=tool("temporal"))
    try:
        async with heartbeating_worker(env, world, task_queue):
            handle = await env.client.start_workflow(
                PLAN_CHANGE_WORKFLOW_TYPE,
                REQUEST,
                id=plan_change_workflow_id(REQUEST.tenant_id, REQUEST.request_id),
                task_queue=task_queue,
            )
            await world.entered.wait()
            await handle.cancel()
            # The attempt fails only once the server has asked for the activity's cancel.
            while not any(
                event.HasField("activity_task_cancel_requested_event_attributes")
                for event in (await handle.fetch_history()).events
            ):
                await asyncio.sleep(0.05)
            assert world.start_fails_after is not None
            world.start_fails_after.set()
            with pytest.raises(WorkflowFailureError) as ended:
                await handle.result()
            assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
            status = await handle.query("status", result_type=PlanChangeStatus)
    finally:
        await env.shutdown()
    assert isinstance(ended.value.cause, CancelledError), ended.value.cause
    assert world.calls == ["check", "stop", "change:cx33:True", "start", "restore:cx23"]
    [event] = world.audit
    assert (event.event, event.details["step"]) == ("mail_plan_change_failed", "start_mail_server")
    assert {k: event.details[k] for k in ("error_type", "reason", "step_error")} == {
        "error_type": "CancelledError",
        "reason": "workflow cancelled",
        "step_error": "MailuNotHealthy: admin container still 'starting'",
    }
    assert (status.state, status.error) == ("cancelled", "workflow cancelled")


async def test_a_tenant_deprovisioned_under_the_change_ends_typed_and_audited(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """DeprovisionMailTenant runs while the server is down: the start refuses
    (TenantDeprovisioned), the restore touches nothing, the failure is audited and the
    back end gets TenantDeprovisioned, not a raw ServerGone."""
    world = World(
        start_errors=[
            ApplicationError(
                "tenant 'acme' is being deprovisioned (deprovision-acme)",
                {"deprovisioned_by": "deprovision-acme"},
                type=TENANT_DEPROVISIONED,
                non_retryable=True,
            )
        ],
        restore_outcome="tenant_deprovisioned",
    )
    with pytest.raises(WorkflowFailureError) as err:
        await run_change(time_skipping_env, world)
    failure = failure_of(err)
    assert (failure.type, failure.non_retryable) == (TENANT_DEPROVISIONED, True)
    assert "deprovisioned during the plan change" in failure.message
    assert failure.details[0] == {
        "step": "start_mail_server",
        "error_type": TENANT_DEPROVISIONED,
        "restored": "tenant_deprovisioned",
    }
    assert world.calls == ["check", "stop", "change:cx33:True", "start", "restore:cx23"]
    # Nothing restarted or changed back for a tenant that is leaving.
    assert (world.server_type, world.running) == ("cx33", False)
    [event] = world.audit
    assert event.event == "mail_plan_change_failed"
    assert event.details["restored"] == "tenant_deprovisioned"


async def test_a_second_change_of_the_tenant_is_refused_naming_the_holder(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Two requests of one tenant (two workflow ids): the second is refused before
    anything is touched, naming the first; a cancel request sent to the lock by any
    client does not free it; once the first has closed, a new change takes the lock."""
    env = time_skipping_env
    world = World(block_at="start")
    task_queue = f"plan-lock-{uuid.uuid4().hex[:8]}"
    first_id = plan_change_workflow_id("acme", "r-1")
    second = PlanChangeRequest("acme", "r-2", "business", "ops@example.com")
    async with heartbeating_worker(env, world, task_queue):
        first = await env.client.start_workflow(
            PLAN_CHANGE_WORKFLOW_TYPE, REQUEST, id=first_id, task_queue=task_queue
        )
        await world.entered.wait()
        # Anyone may send the lock a cancel request: it is not how the lock ends.
        await env.client.get_workflow_handle(plan_change_lock_id("acme")).cancel()
        with pytest.raises(WorkflowFailureError) as refused:
            await env.client.execute_workflow(
                PLAN_CHANGE_WORKFLOW_TYPE,
                second,
                id=plan_change_workflow_id("acme", "r-2"),
                task_queue=task_queue,
            )
        failure = failure_of(refused)
        assert (failure.type, failure.non_retryable) == (PLAN_CHANGE_IN_PROGRESS, True)
        assert first_id in failure.message
        assert failure.details[0] == {
            "holder": first_id,
            "lock_workflow_id": plan_change_lock_id("acme"),
        }
        # The refused run touched nothing: one check, one stop, by the first run.
        assert (world.calls.count("check"), world.calls.count("stop")) == (1, 1)
        # A rotation now (its server is down) writes nothing and retries
        # (rotate_admin_credentials asks this first); the holder's own proof passes.
        runs = TenantRuns(env.client)
        with pytest.raises(ApplicationError) as rotation:
            await runs.refuse_if_changing_plan("acme", "rotate-acme-2027-01-01T00:00:00Z")
        assert (rotation.value.type, rotation.value.non_retryable) == (
            PLAN_CHANGE_IN_PROGRESS,
            False,
        )
        await runs.refuse_if_changing_plan("acme", first_id)
        await first.cancel()
        with pytest.raises(WorkflowFailureError):
            await first.result()
        world.block_at = None
        third = await env.client.execute_workflow(
            PLAN_CHANGE_WORKFLOW_TYPE,
            PlanChangeRequest("acme", "r-3", "business", "ops@example.com"),
            id=plan_change_workflow_id("acme", "r-3"),
            task_queue=task_queue,
            result_type=PlanChangeResult,
        )
    assert third.request_id == "r-3"


async def test_a_lock_started_by_a_client_holds_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Any client can start any type under any id: a PlanChangeLock without a plan
    change as its parent ends at once, so it cannot block the tenant's changes."""
    env = time_skipping_env
    task_queue = f"plan-lock-{uuid.uuid4().hex[:8]}"
    world = World()
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant, PlanChangeLock],
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
    ):
        squat = await env.client.execute_workflow(
            PLAN_CHANGE_LOCK_TYPE, id=plan_change_lock_id("squat"), task_queue=task_queue
        )
        assert squat.startswith("refused")
        result = await run_change_on(
            env, task_queue, PlanChangeRequest("squat", "r-1", "business", "ops")
        )
    assert result.server_type == "cx33"
    assert world.lock_looks == 0


async def run_change_on(
    env: WorkflowEnvironment, task_queue: str, request: PlanChangeRequest
) -> PlanChangeResult:
    result: PlanChangeResult = await env.client.execute_workflow(
        PLAN_CHANGE_WORKFLOW_TYPE,
        request,
        id=plan_change_workflow_id(request.tenant_id, request.request_id),
        task_queue=task_queue,
        result_type=PlanChangeResult,
    )
    return result


async def test_the_downtime_is_recorded_as_a_metric_once() -> None:
    """The worker's own interceptors on the run: mailprov_plan_change_downtime_seconds
    gets the measured downtime (workflows/metrics.py), and the run completes."""
    buffer = MetricBuffer(1000)
    runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server"), runtime=runtime
    )
    try:
        world = World()
        task_queue = f"plan-metrics-{uuid.uuid4().hex[:8]}"
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[ProvisionMailTenant, PlanChangeLock],
            workflow_runner=restricted_sandbox(),
            activities=world.activities(),
            interceptors=worker_interceptors(),
        ):
            result = await env.client.execute_workflow(
                PLAN_CHANGE_WORKFLOW_TYPE,
                REQUEST,
                id=plan_change_workflow_id(REQUEST.tenant_id, REQUEST.request_id),
                task_queue=task_queue,
                result_type=PlanChangeResult,
            )
    finally:
        await env.shutdown()
    downtimes = [
        update.value
        for update in buffer.retrieve_updates()
        if update.metric.name == PLAN_CHANGE_DOWNTIME
    ]
    assert downtimes == [result.downtime_seconds] == [192.5]
