"""DeprovisionMailTenant's logic on the time-skipping server, with scripted activities.

The scripted activities keep a small world (servers, the Vault record, the schedule,
the claim) and change it as the real ones would, idempotently, so a repeated or
retried step finds its effect already there. The real activities run end to end in
tests/e2e/test_deprovision.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflow.sandbox import restricted_sandbox
from tests.workflow.test_hostile_starts_workflow import (
    ROTATION_CORPUS,
    RawStart,
    one,
    refused_at_once,
)
from workflows.contracts import AuditEvent
from workflows.deprovision_contracts import (
    DEPROVISION_WORKFLOW_TYPE,
    PURCHASE_IN_PROGRESS,
    TENANT_NOT_EMPTY,
    DeletedServers,
    DeleteServersRequest,
    DeprovisionResult,
    DeprovisionStatus,
    DestroyCredentialsRequest,
    InspectRequest,
    ReleaseClaimRequest,
    TenantHoldings,
    TenantServer,
    deprovision_workflow_id,
)
from workflows.dispatch import ProvisionMailTenant
from workflows.rotation_contracts import RotationRequest

TENANT = "acme"
REQUEST = {"tenant_id": TENANT, "requested_by": "billing", "reason": "customer cancelled"}
SERVER = TenantServer(41, "mail-acme-p1", "p1", firewall_id=7)
STEPS = (
    "remove_rotation_schedule",
    "delete_tenant_servers",
    "destroy_tenant_credentials",
    "release_deprovisioned_claim",
    "record_audit_event",
)


@dataclass
class TenantWorld:
    servers: list[TenantServer] = field(default_factory=lambda: [SERVER])
    vault_version: int = 3
    schedule: bool = True
    claim: str | None = "claim-run-1"
    purchase_running: bool = False
    # Step name -> errors its next attempts raise *after* their effect (a crash after
    # the provider or Vault answered, before the worker reported it).
    crash_after: dict[str, list[Exception]] = field(default_factory=dict)
    # Servers that appear (a racing writer) when the claim step first verifies.
    appear_on_release: list[TenantServer] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)

    def _crash(self, step: str) -> None:
        self.calls.append(step)
        errors = self.crash_after.get(step)
        if errors:
            raise errors.pop(0)

    def activities(self) -> list[Any]:
        @activity.defn(name="inspect_tenant")
        async def inspect_tenant(request: InspectRequest) -> TenantHoldings:
            assert request.tenant_id == TENANT
            self._crash("inspect_tenant")
            if self.purchase_running:
                raise ApplicationError(
                    "purchase purchase-p2 of tenant 'acme' is still running",
                    type=PURCHASE_IN_PROGRESS,
                    non_retryable=True,
                )
            return TenantHoldings(
                TENANT,
                list(self.servers),
                self.vault_version,
                self.vault_version > 0,
                self.schedule,
                self.claim,
                "purchase-p1" if self.claim else None,
            )

        @activity.defn(name="remove_rotation_schedule")
        async def remove_rotation_schedule(request: RotationRequest) -> bool:
            removed, self.schedule = self.schedule, False
            self._crash("remove_rotation_schedule")
            return removed

        @activity.defn(name="delete_tenant_servers")
        async def delete_tenant_servers(request: DeleteServersRequest) -> DeletedServers:
            if request.claim_run_id != self.claim:
                self.calls.append("delete_tenant_servers")
                raise ApplicationError("reclaimed", type=PURCHASE_IN_PROGRESS, non_retryable=True)
            wanted = {s.server_id for s in request.servers}
            self.servers = [s for s in self.servers if s.server_id not in wanted]
            self._crash("delete_tenant_servers")
            keys = [f"{s.name}-login" for s in request.servers]
            return DeletedServers(sorted(wanted), keys, [7])

        @activity.defn(name="destroy_tenant_credentials")
        async def destroy_tenant_credentials(request: DestroyCredentialsRequest) -> int:
            destroyed, self.vault_version = self.vault_version, 0
            self._crash("destroy_tenant_credentials")
            return destroyed

        @activity.defn(name="release_deprovisioned_claim")
        async def release_deprovisioned_claim(request: ReleaseClaimRequest) -> bool:
            if self.appear_on_release:
                self.servers += self.appear_on_release
                self.appear_on_release = []
            if self.servers or self.vault_version or self.schedule:
                self.calls.append("release_deprovisioned_claim")
                raise ApplicationError(
                    "tenant 'acme' still has a server", type=TENANT_NOT_EMPTY, non_retryable=True
                )
            if self.claim is not None and self.claim == request.claim_run_id:
                self.claim = None
            self._crash("release_deprovisioned_claim")
            return request.claim_run_id is not None and self.claim != request.claim_run_id

        @activity.defn(name="record_audit_event")
        async def record_audit_event(event: AuditEvent) -> bool:
            if event.event_key not in {e.event_key for e in self.audit}:
                self.audit.append(event)
            self._crash("record_audit_event")
            return True

        return [
            inspect_tenant,
            remove_rotation_schedule,
            delete_tenant_servers,
            destroy_tenant_credentials,
            release_deprovisioned_claim,
            record_audit_event,
        ]

    @property
    def empty(self) -> bool:
        return not (self.servers or self.vault_version or self.schedule or self.claim)


async def run_deprovision(
    env: WorkflowEnvironment,
    world: TenantWorld,
    args: list[Any] | None = None,
    workflow_id: str | None = None,
) -> tuple[DeprovisionResult, DeprovisionStatus]:
    """One DeprovisionMailTenant run on the worker's real workflow set (the dynamic
    ProvisionMailTenant runs the type); returns its result and its final status."""
    task_queue = f"deprov-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant],
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
    ):
        handle = await env.client.start_workflow(
            DEPROVISION_WORKFLOW_TYPE,
            args=[REQUEST] if args is None else args,
            id=workflow_id or deprovision_workflow_id(TENANT),
            task_queue=task_queue,
            result_type=DeprovisionResult,
        )
        try:
            result = await handle.result()
        finally:
            status = await handle.query("status", result_type=DeprovisionStatus)
            world.status = status  # type: ignore[attr-defined]
        return result, status


async def test_a_tenant_is_removed_step_by_step_and_audited(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = TenantWorld()
    result, status = await run_deprovision(time_skipping_env, world)
    assert world.empty
    assert world.calls == ["inspect_tenant", *STEPS]
    assert result == DeprovisionResult(
        TENANT,
        "deprovisioned",
        servers_deleted=[41],
        vault_versions_destroyed=3,
        rotation_schedule_removed=True,
        claim_released=True,
        passes=1,
    )
    [event] = world.audit
    assert event.event == "tenant_deprovisioned"
    assert event.tenant_id == TENANT
    assert event.details == {
        "requested_by": "billing",
        "reason": "customer cancelled",
        "servers_deleted": "41",
        "ssh_keys_deleted": "mail-acme-p1-login",
        "firewalls_deleted": "7",
        "vault_record_destroyed": "smtp/acme/admin: 3 versions and metadata",
        "rotation_schedule_removed": "true",
        "final_snapshots": "",
        "claim_released": "true",
    }
    assert (status.state, status.current_step, status.error) == ("deprovisioned", None, None)
    assert [(s.name, s.state) for s in status.steps] == [
        ("inspect_tenant", "done"),
        ("remove_rotation_schedule", "done"),
        ("delete_tenant_servers", "done"),
        ("destroy_tenant_credentials", "done"),
        ("release_deprovisioned_claim", "done"),
        ("audit", "done"),
    ]


async def test_a_second_run_finds_nothing_and_completes_without_an_audit_row(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = TenantWorld()
    await run_deprovision(time_skipping_env, world)
    world.calls.clear()
    result, status = await run_deprovision(time_skipping_env, world)
    assert result == DeprovisionResult(TENANT, "nothing_found")
    assert world.calls == ["inspect_tenant"]
    assert len(world.audit) == 1  # the first run's row only
    assert status.state == "nothing_found"


@pytest.mark.parametrize("step", ["inspect_tenant", *STEPS])
async def test_a_step_that_crashes_after_its_effect_is_retried_and_the_run_completes(
    time_skipping_env: WorkflowEnvironment, step: str
) -> None:
    world = TenantWorld(
        crash_after={step: [ApplicationError(f"worker lost during {step}", type="OSError")]}
    )
    result, _ = await run_deprovision(time_skipping_env, world)
    assert world.empty
    assert world.calls.count(step) == 2
    assert result.outcome == "deprovisioned"
    # What the first attempt removed is reported by the retry all the same.
    assert (result.servers_deleted, result.claim_released) == ([41], True)
    assert (result.vault_versions_destroyed, result.rotation_schedule_removed) == (3, True)
    assert len(world.audit) == 1


async def test_a_running_purchase_refuses_the_run_before_anything_is_touched(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = TenantWorld(purchase_running=True)
    with pytest.raises(WorkflowFailureError) as failure:
        await run_deprovision(time_skipping_env, world)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == (PURCHASE_IN_PROGRESS, True)
    assert "still running" in cause.message
    assert world.calls == ["inspect_tenant"]
    assert (world.servers, world.vault_version, world.schedule) == ([SERVER], 3, True)
    assert world.status.state == "refused"  # type: ignore[attr-defined]


async def test_a_tenant_claimed_afresh_mid_way_is_left_alone(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """A new purchase's claim appears after inspection: the server step refuses, and
    neither the record nor the claim is touched."""
    world = TenantWorld()
    world.claim = "claim-run-1"

    original = world.activities

    def activities() -> list[Any]:
        found = original()

        @activity.defn(name="remove_rotation_schedule")
        async def remove_rotation_schedule(request: RotationRequest) -> bool:
            world.schedule = False
            world.claim = "claim-run-of-a-new-purchase"
            world.calls.append("remove_rotation_schedule")
            return True

        return [remove_rotation_schedule if a.__name__ == "remove_rotation_schedule" else a
                for a in found]  # fmt: skip

    world.activities = activities  # type: ignore[method-assign]
    with pytest.raises(WorkflowFailureError) as failure:
        await run_deprovision(time_skipping_env, world)
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == PURCHASE_IN_PROGRESS
    assert world.calls == ["inspect_tenant", "remove_rotation_schedule", "delete_tenant_servers"]
    assert (world.vault_version, world.claim) == (3, "claim-run-of-a-new-purchase")
    assert world.audit == []


async def test_something_appearing_mid_way_is_removed_by_a_second_pass(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    late = TenantServer(42, "mail-acme-p1", "p1")
    world = TenantWorld(appear_on_release=[late])
    result, _ = await run_deprovision(time_skipping_env, world)
    assert world.empty
    assert (result.passes, result.servers_deleted) == (2, [41, 42])
    assert world.calls.count("inspect_tenant") == 2
    assert len(world.audit) == 1


async def test_a_tenant_that_keeps_reappearing_fails_the_run_after_the_last_pass(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = TenantWorld()

    original = world.activities

    def activities() -> list[Any]:
        found = original()

        @activity.defn(name="release_deprovisioned_claim")
        async def release_deprovisioned_claim(request: ReleaseClaimRequest) -> bool:
            world.calls.append("release_deprovisioned_claim")
            world.servers = [SERVER]  # something recreates it every time
            raise ApplicationError("still has a server", type=TENANT_NOT_EMPTY, non_retryable=True)

        return [release_deprovisioned_claim if a.__name__ == "release_deprovisioned_claim" else a
                for a in found]  # fmt: skip

    world.activities = activities  # type: ignore[method-assign]
    with pytest.raises(WorkflowFailureError) as failure:
        await run_deprovision(time_skipping_env, world)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "DeprovisionFailed"
    assert world.calls.count("inspect_tenant") == 3
    assert world.audit == []
    assert world.status.state == "failed"  # type: ignore[attr-defined]


HOSTILE: list[tuple[str, list[Any], str]] = [
    ("no argument", [], "(input)"),
    ("two arguments", [REQUEST, REQUEST], "(input)"),
    ("a string", ["acme"], "(input)"),
    ("null", [None], "(input)"),
    ("missing tenant", [{"requested_by": "x"}], "tenant_id"),
    ("tenant not a string", [{"tenant_id": 5, "requested_by": "x"}], "tenant_id"),
    ("tenant with a slash", [{"tenant_id": "acme/../x", "requested_by": "x"}], "tenant_id"),
    ("upper-case tenant", [{"tenant_id": "ACME", "requested_by": "x"}], "tenant_id"),
    ("missing requested_by", [{"tenant_id": TENANT}], "requested_by"),
    ("blank requested_by", [{"tenant_id": TENANT, "requested_by": "  "}], "requested_by"),
    ("long requested_by", [{"tenant_id": TENANT, "requested_by": "x" * 201}], "requested_by"),
    ("control char reason", [{**REQUEST, "reason": "a\nb"}], "reason"),
    ("long reason", [{**REQUEST, "reason": "r" * 501}], "reason"),
    ("reason not a string", [{**REQUEST, "reason": ["x"]}], "reason"),
    ("unknown field", [{**REQUEST, "servers": [1, 2]}], "servers"),
    ("a target smuggled in", [{**REQUEST, "server_id": 99}], "server_id"),
    ("deep nesting", [{**REQUEST, "x": [[[[[[[[[[1]]]]]]]]]]}], "(input)"),
]


@pytest.mark.parametrize(("case", "args", "field_name"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_input_ends_the_run_at_once_naming_the_field_and_touches_nothing(
    time_skipping_env: WorkflowEnvironment, case: str, args: list[Any], field_name: str
) -> None:
    world = TenantWorld()
    payloads = [time_skipping_env.client.data_converter.payload_converter.to_payload(a)
                for a in args]  # fmt: skip
    with pytest.raises(WorkflowFailureError) as failure:
        await run_deprovision(time_skipping_env, world, [RawValue(p) for p in payloads])
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("InvalidDeprovisionRequest", True)
    assert f"field '{field_name}'" in cause.message
    assert world.calls == []


async def test_a_run_under_another_tenants_workflow_id_is_refused(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = TenantWorld()
    with pytest.raises(WorkflowFailureError) as failure:
        await run_deprovision(time_skipping_env, world, workflow_id="deprovision-other")
    assert isinstance(failure.value.cause, ApplicationError)
    assert "must match the workflow id" in failure.value.cause.message
    assert world.calls == []


async def test_a_non_json_payload_is_refused(time_skipping_env: WorkflowEnvironment) -> None:
    world = TenantWorld()
    raw = Payload(metadata={"encoding": b"binary/plain"}, data=json.dumps(REQUEST).encode())
    with pytest.raises(WorkflowFailureError) as failure:
        await run_deprovision(time_skipping_env, world, [RawValue(raw)])
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "InvalidDeprovisionRequest"
    assert world.calls == []


# The corpus any client of the namespace can send, shared with the end-to-end hostile
# starts (tests/e2e/test_hostile_starts.py): the rotation's (the decoding and the tenant
# id rules are the same) and what only a deprovisioning takes.
DEPROVISION_CORPUS = [
    *ROTATION_CORPUS,
    RawStart("no requested_by", one(b'{"tenant_id": "acme"}'), "'requested_by' is required"),
    RawStart(
        "requested_by blank", one(b'{"tenant_id":"acme","requested_by":" "}'), "'requested_by'"
    ),
    RawStart(
        "reason with a newline",
        one(b'{"tenant_id":"acme","requested_by":"b","reason":"a\\nb"}'),
        "'reason' must not contain control characters",
    ),
    RawStart(
        "reason too long",
        one(json.dumps({"tenant_id": "acme", "requested_by": "b", "reason": "r" * 501}).encode()),
        "'reason' must be 1-500",
    ),
    RawStart(
        "server id smuggled in",
        one(b'{"tenant_id":"acme","requested_by":"b","server_id":1}'),
        "'server_id' is not a known field",
    ),
]


@pytest.mark.parametrize("start", DEPROVISION_CORPUS, ids=lambda start: start.name)
async def test_a_hostile_deprovision_start_ends_at_once_with_nothing_touched(
    time_skipping_env: WorkflowEnvironment, start: RawStart
) -> None:
    world = TenantWorld()
    cause = await refused_at_once(
        time_skipping_env,
        world.activities(),
        DEPROVISION_WORKFLOW_TYPE,
        deprovision_workflow_id(TENANT),
        start,
    )
    assert cause.type == "InvalidDeprovisionRequest"
    assert "invalid deprovision request: field" in cause.message
    assert world.calls == []
