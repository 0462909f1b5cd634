"""ChangeMailPlan's logic on the time-skipping server, with scripted activities.

The activities themselves run against the local cloud in
tests/devstack/test_plan_change_actions.py; here each path of the workflow is forced:
changed, refused before anything is touched, failed after the stop (old type back),
hostile input.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devstack.stack import tool
from worker import worker_interceptors
from workflows.contracts import AuditEvent, MailuTarget
from workflows.dispatch import ProvisionMailTenant
from workflows.metrics import PLAN_CHANGE_DOWNTIME
from workflows.plan_change_contracts import (
    PLAN_CHANGE_WORKFLOW_TYPE,
    MailuHealthy,
    PlanChangeCheck,
    PlanChangeRequest,
    PlanChangeResult,
    PlanLabelRequest,
    ServerPowerRequest,
    ServerTypeChange,
    StoppedServer,
    plan_change_workflow_id,
)
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

    def activities(self) -> list[Any]:
        @activity.defn(name="check_plan_change")
        async def check_plan_change(request: PlanChangeRequest) -> PlanChangeCheck:
            self.calls.append("check")
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
            return 80

        @activity.defn(name="start_mail_server")
        async def start_mail_server(check: PlanChangeCheck) -> MailuHealthy:
            self.calls.append("start")
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
            self.server_type = request.server_type
            self.running = True
            return "restored"

        @activity.defn(name="record_audit_event")
        async def record_audit_event(event: AuditEvent) -> bool:
            self.audit.append(event)
            return True

        return [
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
        workflows=[ProvisionMailTenant],
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
            workflows=[ProvisionMailTenant],
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
