"""ProvisionMailTenant's logic on the time-skipping server, with scripted activities.

The activities here stand in for the outside world so each path (retries, bad input,
compensation, dedupe) can be forced; the real activities are exercised end to end
in tests/e2e against the real stack.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.plans import DEFAULT_CATALOG, plan_for
from starter import start_purchase
from tests.workflow.sandbox import restricted_sandbox
from worker import WORKFLOWS
from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import (
    STEPS,
    Admission,
    AdmissionRequest,
    AuditEvent,
    DnsRecord,
    DnsRecordsRequest,
    MailuTarget,
    Notification,
    ProvisionResult,
    PurchaseRequest,
    RemoveCredentialsRequest,
    SealedCredentials,
    ServerAddress,
    ServerHandle,
    ServerSpec,
    ServerUpRequest,
    StoreCredentialsRequest,
    StoredCredentials,
    workflow_id_for,
)
from workflows.input_rules import InvalidPurchaseRequest
from workflows.rotation_contracts import RotationRequest, RotationScheduleRequest

ENVELOPE = "mpenc:v1:ZmFrZS1lbnZlbG9wZQ=="


@dataclass
class ScriptedWorld:
    """Records every activity call; `failures[name]` = errors to raise before succeeding."""

    failures: dict[str, list[Exception]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    audit: list[AuditEvent] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    specs: list[ServerSpec] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    removed_versions: list[int] = field(default_factory=list)
    ptr: list[str] = field(default_factory=list)
    pinned_keys: list[str] = field(default_factory=list)
    schedules: list[RotationScheduleRequest] = field(default_factory=list)
    removed_schedules: list[str] = field(default_factory=list)
    # purchase ids whose servers were deleted by label (no server id known)
    purchase_deletes: list[str] = field(default_factory=list)
    # tenant -> (holder, state): the scripted stand-in of the TenantClaim workflows
    claims: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The worker's MAILPROV_KEEP_FAILED_SERVERS, as admission reports it
    keep_failed_servers: bool = False

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)

    def activities(self) -> list[Any]:
        @activity.defn(name="create_server")
        async def create_server(spec: ServerSpec) -> ServerHandle:
            self._enter("create_server")
            self.specs.append(spec)
            return ServerHandle(spec.tenant_id, 42, spec.name, "ssh-ed25519 AAAAfirst", 7)

        # The merged activities run their parts under the parts' own names, so a
        # failure can be scripted in either part.
        @activity.defn(name="bring_up_server")
        async def bring_up_server(request: ServerUpRequest) -> ServerAddress:
            self._enter("wait_for_server")
            self._enter("set_reverse_dns")
            self.ptr.append(request.dns_ptr)
            return ServerAddress(request.server.server_id, "203.0.113.7")

        @activity.defn(name="rotate_host_key")
        async def rotate_host_key(target: MailuTarget) -> str:
            self._enter("rotate_host_key")
            assert target.host_public_key == "ssh-ed25519 AAAAfirst"
            return "ssh-ed25519 AAAAsecond"

        @activity.defn(name="set_up_mailu")
        async def set_up_mailu(request: DnsRecordsRequest) -> list[DnsRecord]:
            self._enter("configure_mailu")
            self.pinned_keys.append(request.target.host_public_key)
            self._enter("mail_dns_records")
            line = f"{request.target.domain}. 600 IN MX 10 mail.{request.target.domain}."
            return [DnsRecord(f"{request.target.domain}.", "MX", 600, "10 mail.x.", line)]

        @activity.defn(name="create_admin_credentials")
        async def create_admin_credentials(target: MailuTarget) -> SealedCredentials:
            self._enter("create_admin_credentials")
            return SealedCredentials(f"admin@{target.domain}", ENVELOPE)

        @activity.defn(name="store_credentials")
        async def store_credentials(request: StoreCredentialsRequest) -> StoredCredentials:
            self._enter("store_credentials")
            return StoredCredentials(f"smtp/{request.tenant_id}/admin", 1, "2026-01-01T00:00:00Z")

        @activity.defn(name="record_audit_event")
        async def record_audit_event(event: AuditEvent) -> bool:
            self._enter("record_audit_event")
            if any(e.event_key == event.event_key for e in self.audit):
                return False
            self.audit.append(event)
            return True

        @activity.defn(name="admit_purchase")
        async def admit_purchase(request: AdmissionRequest) -> Admission:
            self._enter("admit_purchase")
            try:
                plan = plan_for(DEFAULT_CATALOG, request.plan)
            except InvalidPurchaseRequest as err:
                raise err.as_failure() from None
            holder, state = self.claims.get(request.tenant_id, (request.holder, "released"))
            if holder != request.holder and state != "released":
                raise ApplicationError(
                    f"tenant {request.tenant_id!r} already has a mail server",
                    {"tenant_id": request.tenant_id},
                    type="TenantAlreadyProvisioned",
                    non_retryable=True,
                )
            self.claims[request.tenant_id] = (request.holder, "held")
            return Admission(plan, "claim-run", self.keep_failed_servers)

        @activity.defn(name="release_tenant_claim")
        async def release_tenant_claim(request: TenantClaimRequest) -> None:
            self._enter("release_tenant_claim")
            if request.run_id is None:
                # A run that gave up on admission releases only a claim it holds.
                if self.claims.get(request.tenant_id, ("", ""))[0] != request.holder:
                    return
            else:
                assert request.run_id == "claim-run"
            self.claims[request.tenant_id] = (request.holder, "released")

        @activity.defn(name="notify_customer")
        async def notify_customer(notification: Notification) -> None:
            self._enter("notify_customer")
            self.notifications.append(notification)

        @activity.defn(name="delete_server")
        async def delete_server(server: ServerHandle) -> bool:
            self._enter("delete_server")
            self.deleted.append(server.server_id)
            return True

        @activity.defn(name="delete_purchase_servers")
        async def delete_purchase_servers(purchase_id: str) -> list[int]:
            self._enter("delete_purchase_servers")
            self.purchase_deletes.append(purchase_id)
            ids = [42 for spec in self.specs if spec.labels["purchase"] == purchase_id]
            self.deleted.extend(ids)
            return ids

        @activity.defn(name="remove_rotation_schedule")
        async def remove_rotation_schedule(request: RotationRequest) -> bool:
            self._enter("remove_rotation_schedule")
            self.removed_schedules.append(f"rotate-{request.tenant_id}")
            return True

        @activity.defn(name="remove_credentials")
        async def remove_credentials(request: RemoveCredentialsRequest) -> bool:
            self._enter("remove_credentials")
            self.removed_versions.append(request.version)
            return True

        @activity.defn(name="ensure_rotation_schedule")
        async def ensure_rotation_schedule(request: RotationScheduleRequest) -> str:
            self._enter("ensure_rotation_schedule")
            self.schedules.append(request)
            return f"rotate-{request.target.tenant_id}"

        return [
            admit_purchase,
            ensure_rotation_schedule,
            create_server,
            bring_up_server,
            rotate_host_key,
            remove_credentials,
            set_up_mailu,
            create_admin_credentials,
            store_credentials,
            record_audit_event,
            release_tenant_claim,
            notify_customer,
            delete_server,
            delete_purchase_servers,
            remove_rotation_schedule,
        ]


def purchase(**overrides: Any) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:12]
    request = {
        "purchase_id": f"p-{suffix}",
        # A tenant of its own: a completed purchase keeps its tenant's claim.
        "tenant_id": f"acme-{suffix}",
        "domain": "acme.example",
        "plan": "starter",
        "requested_by": "shop-backend",
        "notify_url": "https://shop.example/hooks/mail-ready",
    }
    request.update(overrides)
    return request


@pytest.fixture
async def world(time_skipping_env: WorkflowEnvironment) -> AsyncIterator[ScriptedWorld]:
    yield ScriptedWorld()


class Harness:
    def __init__(self, env: WorkflowEnvironment, world: ScriptedWorld) -> None:
        self.env = env
        self.world = world
        self.task_queue = f"tq-{uuid.uuid4().hex[:8]}"

    def worker(self) -> Worker:
        return Worker(
            self.env.client,
            task_queue=self.task_queue,
            workflows=list(WORKFLOWS),
            workflow_runner=restricted_sandbox(),
            activities=self.world.activities(),
        )

    async def run(self, raw: dict[str, Any], workflow_id: str | None = None) -> ProvisionResult:
        async with self.worker():
            result: ProvisionResult = await self.env.client.execute_workflow(
                "ProvisionMailTenant",
                raw,
                id=workflow_id or workflow_id_for(str(raw.get("purchase_id"))),
                task_queue=self.task_queue,
                result_type=ProvisionResult,
            )
            return result


@pytest.fixture
def harness(time_skipping_env: WorkflowEnvironment, world: ScriptedWorld) -> Harness:
    return Harness(time_skipping_env, world)


async def test_happy_path_runs_every_step_once_and_returns_no_secret(harness: Harness) -> None:
    raw = purchase()
    result = await harness.run(raw)
    tenant = raw["tenant_id"]

    assert result.tenant_id == tenant
    assert result.server_id == 42
    assert result.ipv4 == "203.0.113.7"
    assert result.webmail_url == "https://mail.acme.example"
    assert result.vault_path == f"smtp/{tenant}/admin"
    assert result.vault_version == 1
    assert result.notified is True
    assert ENVELOPE not in str(asdict(result))
    assert set(harness.world.calls.values()) == {1}
    assert "delete_server" not in harness.world.calls
    spec = harness.world.specs[0]
    assert spec.plan == DEFAULT_CATALOG["starter"]
    assert [r.type for r in result.dns_records] == ["MX"]
    assert result.ipv6 is None
    assert spec.labels["purchase"] == raw["purchase_id"]
    assert spec.labels["tenant"] == tenant
    [event] = harness.world.audit
    assert event.event == "smtp_credentials_stored"
    assert event.user_id == "system"
    assert event.details == {
        "username": "admin@acme.example",
        "webmail_url": "https://mail.acme.example",
    }
    assert harness.world.ptr == ["mail.acme.example"]
    # Everything after the rotation trusts only the new host key.
    assert harness.world.pinned_keys == ["ssh-ed25519 AAAAsecond"]
    # A completed purchase ends with its rotation schedule, aimed at the pinned key.
    [schedule] = harness.world.schedules
    assert schedule.target.host_public_key == "ssh-ed25519 AAAAsecond"
    assert schedule.task_queue == harness.task_queue
    [note] = harness.world.notifications
    assert note.idempotency_key == workflow_id_for(raw["purchase_id"])
    assert note.payload["event"] == "mail_server_ready"


async def test_status_query_lists_every_step_done(harness: Harness) -> None:
    raw = purchase()
    async with harness.worker():
        handle = await harness.env.client.start_workflow(
            "ProvisionMailTenant",
            raw,
            id=workflow_id_for(raw["purchase_id"]),
            task_queue=harness.task_queue,
        )
        await handle.result()
        status = await handle.query("status")
    assert status["state"] == "completed"
    assert tuple(s["name"] for s in status["steps"]) == STEPS
    assert all(s["state"] == "done" and s["finished_at"] for s in status["steps"])


@pytest.mark.parametrize(
    ("step", "error_type"),
    [
        ("create_server", "Hetzner.rate_limit_exceeded"),
        ("wait_for_server", "ServerNotReady"),
        ("configure_mailu", "SshUnavailable"),
        ("create_admin_credentials", "RemoteCommandFailed"),
        ("create_admin_credentials", "AdminLoginProofFailed"),
        ("store_credentials", "VaultError"),
        ("record_audit_event", "OperationalError"),
        ("notify_customer", "NotifyUnreachable"),
    ],
)
async def test_each_step_is_retried_until_it_succeeds(
    harness: Harness, step: str, error_type: str
) -> None:
    harness.world.failures[step] = [
        ApplicationError("transient", type=error_type) for _ in range(3)
    ]
    result = await harness.run(purchase())
    assert harness.world.calls[step] == 4
    assert result.server_id == 42
    assert harness.world.deleted == []


@pytest.mark.parametrize(
    ("overrides", "field_name", "rule_part"),
    [
        ({"tenant_id": "Acme"}, "tenant_id", "[a-z0-9]"),
        ({"tenant_id": "../etc"}, "tenant_id", "[a-z0-9]"),
        ({"domain": "localhost"}, "domain", ">= 2 labels"),
        ({"domain": "Acme.example"}, "domain", "lowercase"),
        ({"domain": "a" * 64 + ".example"}, "domain", "1-63"),
        ({"domain": "bücher.example"}, "domain", "IDNA"),
        ({"plan": "platinum"}, "plan", "catalog"),
        ({"requested_by": " "}, "requested_by", "blank"),
        ({"notify_url": "ftp://x.example"}, "notify_url", "https://"),
        ({"extra": "x"}, "extra", "not a known field"),
        ({"domain": None}, "domain", "required"),
        ({"plan": 3}, "plan", "string"),
        ({"plan": "Gold Plan"}, "plan", "[a-z0-9]"),
        # Whether a failed server is kept is the worker operator's choice, never input.
        ({"keep_server_on_failure": True}, "keep_server_on_failure", "not a known field"),
    ],
)
async def test_bad_input_fails_at_once_naming_field_and_rule_before_any_side_effect(
    harness: Harness, overrides: dict[str, Any], field_name: str, rule_part: str
) -> None:
    raw = purchase(**overrides)
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(raw, workflow_id=workflow_id_for(raw["purchase_id"]))
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidPurchaseRequest"
    assert cause.non_retryable
    assert cause.details[0]["field"] == field_name
    assert rule_part in cause.details[0]["rule"]
    # Admission may have run its read-only checks (plan, notify_url policy); nothing else,
    # and the tenant's claim was not taken.
    assert set(harness.world.calls) <= {"admit_purchase"}
    assert harness.world.claims == {}


async def test_admission_out_of_retries_releases_the_claim_an_attempt_took(
    harness: Harness,
) -> None:
    """An attempt took the claim but its answer was lost; the rest failed: nothing is held."""
    raw = purchase()
    harness.world.claims[raw["tenant_id"]] = (workflow_id_for(raw["purchase_id"]), "held")
    harness.world.claims["other"] = ("purchase-other", "held")
    harness.world.failures["admit_purchase"] = [
        ApplicationError("Temporal unavailable", type="RPCError") for _ in range(100)
    ]
    with pytest.raises(WorkflowFailureError):
        await harness.run(raw)
    assert harness.world.claims[raw["tenant_id"]][1] == "released"
    assert harness.world.claims["other"] == ("purchase-other", "held")
    assert "create_server" not in harness.world.calls


async def test_workflow_id_must_belong_to_the_purchase(harness: Harness) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(purchase(), workflow_id="some-other-id")
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.details[0]["field"] == "purchase_id"
    assert sum(harness.world.calls.values()) == 0


# Parts of a merged activity -> the step the status (and the failure) names.
STEP_OF_PART = {
    "record_audit_event": "audit",
    "set_reverse_dns": "wait_for_server",
    "mail_dns_records": "configure_mailu",
}
COMPENSATED_STEPS = [
    ("wait_for_server", "ServerBootFailed"),
    ("set_reverse_dns", "Provider.invalid_input"),
    ("rotate_host_key", "HostKeyMismatch"),
    ("configure_mailu", "RemoteCommandFailed"),
    ("mail_dns_records", "MailuDnsExportFailed"),
    ("create_admin_credentials", "VaultError"),
    ("store_credentials", "VaultError"),
    ("record_audit_event", "IntegrityError"),
]


@pytest.mark.parametrize(("step", "error_type"), COMPENSATED_STEPS)
async def test_final_failure_after_the_server_exists_is_compensated(
    harness: Harness, step: str, error_type: str
) -> None:
    harness.world.failures[step] = [
        ApplicationError(f"{step} broke for good", type=error_type, non_retryable=True)
    ]
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(purchase())

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ProvisioningFailed"
    step_name = STEP_OF_PART.get(step, step)
    assert cause.message == f"provisioning failed at {step_name}: {step} broke for good"
    assert cause.details[0] == {"step": step_name, "error_type": error_type}
    assert harness.world.deleted == [42]
    # Only a record this run wrote is withdrawn: it exists only once store succeeded.
    stored = step == "record_audit_event"
    assert harness.world.removed_versions == ([1] if stored else [])
    [event] = [e for e in harness.world.audit if e.event == "provisioning_failed"]
    assert event.details["step"] == step_name
    assert event.details["error_type"] == error_type
    assert event.details["reason"] == f"{step} broke for good"
    assert harness.world.notifications == []


async def test_failed_login_proof_retries_then_compensates(harness: Harness) -> None:
    """AdminLoginProofFailed is retryable until CREATE_CREDENTIALS' overall limit, then cleanup."""
    harness.world.failures["create_admin_credentials"] = [
        ApplicationError("SMTP AUTH refused: 535", type="AdminLoginProofFailed") for _ in range(500)
    ]
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(purchase())
    # Retried (more than once), yet bounded by the 15-minute schedule-to-close limit.
    assert 5 < harness.world.calls["create_admin_credentials"] < 500
    assert harness.world.calls.get("store_credentials", 0) == 0  # never "VPS ready"
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ProvisioningFailed"
    assert cause.details[0] == {
        "step": "create_admin_credentials",
        "error_type": "AdminLoginProofFailed",
    }
    assert harness.world.deleted == [42]
    assert harness.world.notifications == []


async def test_a_worker_keeping_failed_servers_skips_deletion_but_still_audits(
    harness: Harness,
) -> None:
    harness.world.keep_failed_servers = True  # the operator's worker setting
    harness.world.failures["configure_mailu"] = [
        ApplicationError("compose up failed", type="RemoteCommandFailed", non_retryable=True)
    ]
    with pytest.raises(WorkflowFailureError):
        await harness.run(purchase())
    assert harness.world.deleted == []
    [event] = harness.world.audit
    assert event.details["server_kept"] == "true"


async def test_failure_at_create_is_provisioning_failed_audited_and_frees_the_tenant(
    harness: Harness,
) -> None:
    harness.world.failures["create_server"] = [
        ApplicationError("limit", type="Provider.resource_limit_exceeded", non_retryable=True)
    ]
    raw = purchase()
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(raw)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ProvisioningFailed"
    assert cause.message == "provisioning failed at create_server: limit"
    assert cause.details[0] == {
        "step": "create_server",
        "error_type": "Provider.resource_limit_exceeded",
    }
    assert harness.world.deleted == []  # nothing was created, so nothing to delete
    [event] = harness.world.audit
    assert event.event == "provisioning_failed"
    assert event.details["step"] == "create_server"
    assert event.details["server_kept"] == "false"
    # Compensation released the claim: the tenant can buy again, and gets its server.
    again = await harness.run(purchase(tenant_id=raw["tenant_id"]))
    assert again.tenant_id == raw["tenant_id"]


async def test_notify_failure_does_not_undo_a_ready_server(harness: Harness) -> None:
    harness.world.failures["notify_customer"] = [
        ApplicationError("HTTP 410", type="NotifyRejected", non_retryable=True)
    ]
    result = await harness.run(purchase())
    assert result.notified is False
    assert harness.world.deleted == []


async def test_a_failed_rotation_schedule_does_not_undo_a_ready_server(harness: Harness) -> None:
    harness.world.failures["ensure_rotation_schedule"] = [
        ApplicationError("no policy", type="InvalidRotationPolicy", non_retryable=True)
    ]
    result = await harness.run(purchase())
    assert result.vault_version == 1
    assert result.notified is True
    assert harness.world.deleted == []
    assert harness.world.removed_versions == []


async def test_no_notify_url_skips_the_notification(harness: Harness) -> None:
    result = await harness.run(purchase(notify_url=None))
    assert result.notified is False
    assert "notify_customer" not in harness.world.calls


async def test_cancellation_after_server_exists_compensates(harness: Harness) -> None:
    raw = purchase()
    # Hold the run in wait_for_server (never ready) so the cancel lands mid-run.
    harness.world.failures["wait_for_server"] = [
        ApplicationError("not yet", type="ServerNotReady") for _ in range(1000)
    ]
    async with harness.worker():
        handle = await harness.env.client.start_workflow(
            "ProvisionMailTenant",
            raw,
            id=workflow_id_for(raw["purchase_id"]),
            task_queue=harness.task_queue,
        )
        await harness.env.sleep(30)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert harness.world.deleted == [42]
    assert [e.event for e in harness.world.audit] == ["provisioning_failed"]


async def test_second_start_of_a_finished_purchase_is_not_provisioned_again(
    harness: Harness,
) -> None:
    request = PurchaseRequest.parse(purchase())
    async with harness.worker():
        handle, is_new = await start_purchase(harness.env.client, request, harness.task_queue)
        assert is_new
        first = await handle.result()
        again, is_new_again = await start_purchase(harness.env.client, request, harness.task_queue)
        assert not is_new_again
        assert await again.result() == first
    assert harness.world.calls["create_server"] == 1
