"""ActivateMailDomain's waiting logic on the time-skipping server, scripted checks.

The scripted check answers from a list (complete or not, or an error); the real check
(activities/dns_check.py) resolves against a real authoritative server in
tests/integration/test_dns_check_knot.py.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    DNS_PUBLISHED_SIGNAL,
    DNS_VERIFIED_EVENT,
    DNS_WAIT_LIMIT,
    GAVE_UP_EVENT,
    ActivationResult,
    ActivationStatus,
    DnsCheck,
    DnsCheckRequest,
    RecordProblem,
    activation_workflow_id,
    check_intervals,
)
from workflows.contracts import AuditEvent
from workflows.dispatch import ProvisionMailTenant

TENANT = "acme"
DOMAIN = "acme.example"
DKIM_MISSING = RecordProblem(
    f"dkim._domainkey.{DOMAIN}.", "TXT", "v=DKIM1; k=rsa; p=MIIB", "absent"
)


@dataclass
class DnsWorld:
    # What each successive check answers: True complete, False DKIM missing, or an error.
    answers: list[bool | Exception] = field(default_factory=list)
    checks: int = 0
    audit: list[AuditEvent] = field(default_factory=list)

    def activities(self) -> list[Any]:
        @activity.defn(name="check_mail_dns")
        async def check_mail_dns(request: DnsCheckRequest) -> DnsCheck:
            assert request.tenant_id == TENANT
            self.checks += 1
            answer = self.answers.pop(0) if self.answers else False
            if isinstance(answer, Exception):
                raise answer
            return DnsCheck(TENANT, DOMAIN, 6, [] if answer else [DKIM_MISSING])

        @activity.defn(name="record_audit_event")
        async def record_audit_event(event: AuditEvent) -> bool:
            if event.event_key not in {e.event_key for e in self.audit}:
                self.audit.append(event)
            return True

        return [check_mail_dns, record_audit_event]


async def start(
    env: WorkflowEnvironment, world: DnsWorld, args: list[Any] | None = None, wid: str = ""
) -> tuple[Worker, WorkflowHandle[Any, ActivationResult]]:
    task_queue = f"activate-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant],
        activities=world.activities(),
    )
    handle = await env.client.start_workflow(
        ACTIVATION_WORKFLOW_TYPE,
        args=[{"tenant_id": TENANT}] if args is None else args,
        id=wid or activation_workflow_id(TENANT),
        task_queue=task_queue,
        result_type=ActivationResult,
    )
    return worker, handle


async def status_of(handle: WorkflowHandle[Any, Any]) -> ActivationStatus:
    status: ActivationStatus = await handle.query("status", result_type=ActivationStatus)
    return status


def test_intervals_grow_from_minutes_to_hours_and_end_at_30_days() -> None:
    waits = check_intervals()
    assert waits[0] == timedelta(minutes=5)
    # Growing, but for the last wait, cut to end at the limit.
    assert all(later >= earlier for earlier, later in itertools.pairwise(waits[:-1]))
    assert max(waits) == timedelta(hours=6)
    assert sum(waits, timedelta(0)) == DNS_WAIT_LIMIT


async def test_dns_right_at_the_third_check_is_verified_and_audited(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = DnsWorld([False, False, True])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        result = await handle.result()
        status = await status_of(handle)
    assert (result.outcome, result.checks, world.checks) == ("dns_verified", 3, 3)
    # Whole minutes: the checks themselves take real (not skipped) milliseconds.
    assert (
        result.waited_seconds // 60 == sum(w.total_seconds() for w in check_intervals()[:3]) // 60
    )
    assert status.state == "dns_verified" and status.missing == []
    assert [e.event for e in world.audit] == [DNS_VERIFIED_EVENT]
    assert world.audit[0].details["domain"] == DOMAIN


async def test_dns_never_right_gives_up_after_30_days_and_deletes_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = DnsWorld()
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        result = await handle.result()
        status = await status_of(handle)
    assert result.outcome == "gave_up"
    assert result.checks == world.checks == len(check_intervals())
    assert result.waited_seconds // 60 == DNS_WAIT_LIMIT.total_seconds() // 60
    assert result.missing == [DKIM_MISSING]
    assert status.state == "gave_up" and status.missing == [DKIM_MISSING]
    [event] = world.audit
    assert event.event == GAVE_UP_EVENT
    assert event.details["deleted"] == "nothing"
    assert "TXT dkim._domainkey.acme.example. (absent)" in event.details["missing"]


async def test_a_signal_checks_at_once(time_skipping_env: WorkflowEnvironment) -> None:
    world = DnsWorld([True])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        result = await handle.result()
    assert (result.outcome, result.checks) == ("dns_verified", 1)
    assert result.waited_seconds < check_intervals()[0].total_seconds()


async def test_a_signal_too_early_shows_what_is_missing_and_the_wait_goes_on(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = DnsWorld([False, True])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        while world.checks < 1 or (await status_of(handle)).state != "waiting_for_dns":
            await time_skipping_env.sleep(1)
        waiting = await status_of(handle)
        result = await handle.result()
    assert waiting.checks == 1 and waiting.missing == [DKIM_MISSING]
    assert waiting.next_check_at is not None and waiting.give_up_at is not None
    assert (result.outcome, result.checks) == ("dns_verified", 2)


async def test_a_check_that_cannot_run_is_waited_past_and_a_gone_tenant_ends_the_run(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    unavailable = ApplicationError("ssh down", type="SshUnavailable", non_retryable=True)
    gone = ApplicationError("no server", type="ServerGone", non_retryable=True)
    world = DnsWorld([unavailable, gone])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        result = await handle.result()
        status = await status_of(handle)
    assert (result.outcome, result.checks, world.checks) == ("tenant_gone", 2, 2)
    assert status.state == "tenant_gone" and status.error == "no server"
    assert world.audit == []


async def test_a_cancel_ends_a_waiting_activation_without_audit(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = DnsWorld()
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        while (await status_of(handle)).give_up_at is None:
            await time_skipping_env.sleep(1)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await status_of(handle)
    assert isinstance(failure.value.cause, CancelledError)
    assert status.state == "cancelled" and world.audit == []


@pytest.mark.parametrize(
    ("args", "wid", "field_name"),
    [
        ([{"tenant_id": "ACME"}], "activate-ACME", "tenant_id"),
        ([{"tenant_id": TENANT, "domain": "evil.example"}], "", "domain"),
        ([{"tenant_id": "other"}], "", "tenant_id"),
        ([], "", "(input)"),
        (["acme"], "", "(input)"),
    ],
)
async def test_a_bad_start_ends_at_once_with_nothing_checked(
    time_skipping_env: WorkflowEnvironment, args: list[Any], wid: str, field_name: str
) -> None:
    world = DnsWorld([True])
    worker, handle = await start(time_skipping_env, world, args, wid)
    async with worker:
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidActivationRequest"
    assert cause.details[0]["field"] == field_name
    assert world.checks == 0 and world.audit == []


async def test_starter_activate_dns_published_starts_over_after_giving_up(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """`starter.py activate TENANT --dns-published`: a run that gave up is not touched;
    a new run starts and checks at once. `activation-status` reads the latest run."""
    from starter import StarterError, activate, activation_status

    client = time_skipping_env.client
    with pytest.raises(StarterError) as missing:
        await activation_status(client, "nobody")
    assert missing.value.args[0].startswith("no activation of tenant 'nobody'")
    world = DnsWorld()
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        assert (await handle.result()).outcome == "gave_up"
        checks_before = world.checks
        world.answers = [True]
        again = await activate(client, TENANT, worker.task_queue, dns_published=True)
        result = await client.get_workflow_handle(
            again.id, run_id=again.result_run_id, result_type=ActivationResult
        ).result()
        status = await activation_status(client, TENANT)
    assert again.result_run_id != handle.result_run_id
    assert (result.outcome, result.checks) == ("dns_verified", 1)
    assert world.checks == checks_before + 1
    assert status.state == "dns_verified"
    assert [e.event for e in world.audit] == [GAVE_UP_EVENT, DNS_VERIFIED_EVENT]


async def test_the_purchase_start_is_idempotent_and_a_removal_cancels_the_wait(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """What ensure_rotation_schedule / remove_rotation_schedule do for the activation
    (activities/activation.py): a retried start joins the waiting run; removal cancels
    it once, and again finds nothing to cancel."""
    from activities.activation import cancel_activation, start_activation

    client = time_skipping_env.client
    world = DnsWorld()
    task_queue = f"activate-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant],
        activities=world.activities(),
    ):
        first = await start_activation(client, TENANT, task_queue)
        run = (await client.get_workflow_handle(first).describe()).run_id
        assert await start_activation(client, TENANT, task_queue) == first
        assert (await client.get_workflow_handle(first).describe()).run_id == run
        assert await cancel_activation(client, TENANT) is True
        with pytest.raises(WorkflowFailureError):
            await client.get_workflow_handle(first).result()
        assert await cancel_activation(client, TENANT) is False
        assert await cancel_activation(client, "never-bought") is False
    assert world.checks == 0 and world.audit == []


async def test_signals_in_a_loop_cost_one_check_a_minute(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    from workflows.activation import SIGNAL_CHECK_GAP

    env = time_skipping_env
    world = DnsWorld([False, False, True])
    worker, handle = await start(env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        while world.checks < 1 or (await status_of(handle)).state != "waiting_for_dns":
            await env.sleep(1)
        for _ in range(5):
            await handle.signal(DNS_PUBLISHED_SIGNAL)
        await env.sleep(SIGNAL_CHECK_GAP.total_seconds() / 2)
        assert world.checks == 1  # the signals wait for the gap
        result = await handle.result()
    # The five signals made one check, after the gap; the next check was a scheduled one.
    assert (result.outcome, result.checks, world.checks) == ("dns_verified", 3, 3)
