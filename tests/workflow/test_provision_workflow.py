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

from starter import start_purchase
from tests.helpers import activity_failure_reason
from workflows.contracts import (
    AuditEvent,
    MailuTarget,
    Notification,
    ProvisionResult,
    PurchaseRequest,
    SealedCredentials,
    ServerAddress,
    ServerHandle,
    ServerSpec,
    StoreCredentialsRequest,
    StoredCredentials,
    workflow_id_for,
)
from workflows.provision import ProvisionMailTenant

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
            return ServerHandle(42, spec.name, "ssh-ed25519 AAAAhostkey")

        @activity.defn(name="wait_for_server")
        async def wait_for_server(server_id: int) -> ServerAddress:
            self._enter("wait_for_server")
            return ServerAddress(server_id, "203.0.113.7")

        @activity.defn(name="configure_mailu")
        async def configure_mailu(target: MailuTarget) -> None:
            self._enter("configure_mailu")

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

        @activity.defn(name="notify_customer")
        async def notify_customer(notification: Notification) -> None:
            self._enter("notify_customer")
            self.notifications.append(notification)

        @activity.defn(name="delete_server")
        async def delete_server(server_id: int) -> bool:
            self._enter("delete_server")
            self.deleted.append(server_id)
            return True

        return [
            create_server,
            wait_for_server,
            configure_mailu,
            create_admin_credentials,
            store_credentials,
            record_audit_event,
            notify_customer,
            delete_server,
        ]


def purchase(**overrides: Any) -> dict[str, Any]:
    request = {
        "purchase_id": f"p-{uuid.uuid4().hex[:12]}",
        "tenant_id": "acme",
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
            workflows=[ProvisionMailTenant],
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

    assert result.tenant_id == "acme"
    assert result.server_id == 42
    assert result.ipv4 == "203.0.113.7"
    assert result.webmail_url == "https://mail.acme.example"
    assert result.vault_path == "smtp/acme/admin"
    assert result.vault_version == 1
    assert result.notified is True
    assert ENVELOPE not in str(asdict(result))
    assert set(harness.world.calls.values()) == {1}
    assert "delete_server" not in harness.world.calls
    spec = harness.world.specs[0]
    assert (spec.server_type, spec.image, spec.location) == ("cx22", "debian-12", "fsn1")
    assert spec.labels["purchase"] == raw["purchase_id"]
    assert spec.labels["tenant"] == "acme"
    [event] = harness.world.audit
    assert event.event == "smtp_credentials_stored"
    assert event.user_id == "system"
    assert event.details == {
        "username": "admin@acme.example",
        "webmail_url": "https://mail.acme.example",
    }
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
    assert [s["name"] for s in status["steps"]] == [
        "validate_input",
        "create_server",
        "wait_for_server",
        "configure_mailu",
        "create_admin_credentials",
        "store_credentials",
        "audit",
        "notify",
    ]
    assert all(s["state"] == "done" and s["finished_at"] for s in status["steps"])


@pytest.mark.parametrize(
    ("step", "error_type"),
    [
        ("create_server", "Hetzner.rate_limit_exceeded"),
        ("wait_for_server", "ServerNotReady"),
        ("configure_mailu", "SshUnavailable"),
        ("create_admin_credentials", "MailuCommandFailed"),
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
        ({"notify_url": "ftp://x.example"}, "notify_url", "http(s)"),
        ({"extra": "x"}, "extra", "not a known field"),
        ({"domain": None}, "domain", "required"),
        ({"plan": 3}, "plan", "string"),
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
    assert sum(harness.world.calls.values()) == 0


async def test_workflow_id_must_belong_to_the_purchase(harness: Harness) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(purchase(), workflow_id="some-other-id")
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.details[0]["field"] == "purchase_id"
    assert sum(harness.world.calls.values()) == 0


async def test_failure_after_server_exists_deletes_it_and_audits_the_reason(
    harness: Harness,
) -> None:
    harness.world.failures["configure_mailu"] = [
        ApplicationError(
            "host key mismatch at 203.0.113.7", type="HostKeyMismatch", non_retryable=True
        )
    ]
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(purchase())
    assert "host key mismatch" in activity_failure_reason(failure.value)
    assert harness.world.deleted == [42]
    assert "create_admin_credentials" not in harness.world.calls
    [event] = harness.world.audit
    assert event.event == "provisioning_failed"
    assert "host key mismatch" in event.details["reason"]
    assert harness.world.notifications == []


async def test_notify_failure_does_not_undo_a_ready_server(harness: Harness) -> None:
    harness.world.failures["notify_customer"] = [
        ApplicationError("HTTP 410", type="NotifyRejected", non_retryable=True)
    ]
    result = await harness.run(purchase())
    assert result.notified is False
    assert harness.world.deleted == []


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
