"""RotateSmtpCredentials' logic on the time-skipping server, with scripted activities.

The real activities (Vault, MailU over SSH, SMTP proof, schedules) run end to end in
tests/e2e/test_rotation.py; here each path is forced: rotated, failed, tenant gone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflow.sandbox import restricted_sandbox
from workflows.contracts import AuditEvent
from workflows.dispatch import ProvisionMailTenant
from workflows.rotation_contracts import (
    ROTATION_WORKFLOW_TYPE,
    RotatedCredentials,
    RotationRequest,
    RotationResult,
    rotation_interval,
)

REQUEST = RotationRequest("acme")


@dataclass
class RotationWorld:
    rotate_errors: list[Exception] = field(default_factory=list)
    rotations: int = 0
    # Whether the tenant has a rotation schedule for remove_rotation_schedule to delete.
    has_schedule: bool = True
    removed_schedules: list[str] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)

    def activities(self) -> list[Any]:
        @activity.defn(name="rotate_admin_credentials")
        async def rotate_admin_credentials(request: RotationRequest) -> RotatedCredentials:
            assert request == REQUEST
            self.rotations += 1
            if self.rotate_errors:
                raise self.rotate_errors.pop(0)
            return RotatedCredentials(
                "admin@acme.example", "smtp/acme/admin", 7, 6, "2027-01-01T00:00:00Z"
            )

        @activity.defn(name="remove_rotation_schedule")
        async def remove_rotation_schedule(request: RotationRequest) -> bool:
            if not self.has_schedule:
                return False
            self.removed_schedules.append(request.tenant_id)
            return True

        @activity.defn(name="record_audit_event")
        async def record_audit_event(event: AuditEvent) -> bool:
            self.audit.append(event)
            return True

        return [rotate_admin_credentials, remove_rotation_schedule, record_audit_event]


async def run_rotation(
    env: WorkflowEnvironment, world: RotationWorld, *args: Any
) -> RotationResult:
    """One RotateSmtpCredentials run on the worker's real workflow set (the dynamic
    ProvisionMailTenant runs the type); `args` replaces the schedule's argument."""
    task_queue = f"rot-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant],
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
    ):
        result: RotationResult = await env.client.execute_workflow(
            ROTATION_WORKFLOW_TYPE,
            args=list(args) if args else [REQUEST],
            id=f"rotate-acme-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
            result_type=RotationResult,
        )
        return result


async def test_rotation_audits_the_new_version_without_a_secret(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = RotationWorld()
    result = await run_rotation(time_skipping_env, world)
    assert (result.outcome, result.vault_version) == ("rotated", 7)
    [event] = world.audit
    assert event.event == "smtp_credentials_rotated"
    assert event.details["vault_version"] == "7"
    assert event.details["previous_version"] == "6"
    assert set(event.details) == {
        "username",
        "vault_path",
        "vault_version",
        "previous_version",
        "reissued",
    }
    assert world.removed_schedules == []


async def test_transient_failures_are_retried_within_the_run(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = RotationWorld(
        rotate_errors=[ApplicationError("ssh down", type="OSError") for _ in range(3)]
    )
    result = await run_rotation(time_skipping_env, world)
    assert result.outcome == "rotated"
    assert world.rotations == 4
    assert [e.event for e in world.audit] == ["smtp_credentials_rotated"]


async def test_a_failed_rotation_is_audited_and_fails_the_run(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = RotationWorld(
        rotate_errors=[ApplicationError("key changed", type="HostKeyMismatch", non_retryable=True)]
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await run_rotation(time_skipping_env, world)
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "RotationFailed"
    [event] = world.audit
    assert event.event == "smtp_credentials_rotation_failed"
    assert event.details == {"error_type": "HostKeyMismatch", "reason": "key changed"}
    # The schedule stays: the next run tries again.
    assert world.removed_schedules == []


@pytest.mark.parametrize("gone", ["ServerGone", "CredentialsWithdrawn"])
async def test_a_gone_tenant_has_its_schedule_removed(
    time_skipping_env: WorkflowEnvironment, gone: str
) -> None:
    world = RotationWorld(rotate_errors=[ApplicationError("gone", type=gone, non_retryable=True)])
    result = await run_rotation(time_skipping_env, world)
    assert (result.outcome, result.reason) == ("schedule_removed", "gone")
    assert world.removed_schedules == ["acme"]
    assert [e.event for e in world.audit] == ["rotation_schedule_removed"]
    assert world.rotations == 1


async def test_a_tenant_with_no_server_and_no_schedule_is_refused_without_an_audit_row(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Any client may name any tenant id: one we never served leaves no trace."""
    world = RotationWorld(
        rotate_errors=[ApplicationError("no server", type="ServerGone", non_retryable=True)],
        has_schedule=False,
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await run_rotation(time_skipping_env, world)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("TenantUnknown", True)
    assert "nothing to rotate for tenant acme: no server" in cause.message
    assert world.audit == []


async def test_records_that_disagree_fail_the_run_at_once_without_an_audit_row(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    refusal = ApplicationError(
        "rotation refused: field 'domain' differs",
        {"field": "domain"},
        type="RotationRecordsDisagree",
        non_retryable=True,
    )
    world = RotationWorld(rotate_errors=[refusal])
    with pytest.raises(WorkflowFailureError) as failure:
        await run_rotation(time_skipping_env, world)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("RotationRecordsDisagree", True)
    assert "field 'domain'" in cause.message
    assert (world.rotations, world.audit, world.removed_schedules) == (1, [], [])


async def test_the_status_query_answers_for_the_rotation(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    task_queue = f"rot-{uuid.uuid4().hex[:8]}"
    world = RotationWorld()
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant],
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
    ):
        handle = await time_skipping_env.client.start_workflow(
            ROTATION_WORKFLOW_TYPE, REQUEST, id="rotate-status", task_queue=task_queue
        )
        await handle.result()
        assert await handle.query("status") == {"tenant_id": "acme", "state": "rotated"}


@pytest.mark.parametrize(
    ("policy", "days"), [("180_days", 180), ("1_days", 1), ("9999_days", 9999)]
)
def test_rotation_interval_comes_from_the_policy(policy: str, days: int) -> None:
    assert rotation_interval(policy).days == days


@pytest.mark.parametrize("policy", ["180", "0_days", "180_weeks", "-1_days", "", "180_days "])
def test_rotation_interval_rejects_unknown_policies_naming_them(policy: str) -> None:
    with pytest.raises(ValueError, match="rotation_policy"):
        rotation_interval(policy)
