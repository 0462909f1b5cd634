"""ActivateMailDomain's waiting logic on the time-skipping server, scripted checks.

The scripted checks answer from lists (complete or not, or an error); the real DNS
check (activities/dns_check.py) resolves against a real authoritative server in
tests/integration/test_dns_check_knot.py, the real TLS stage runs against pebble,
certbot and the MailU front stand-in in tests/e2e/test_activation.py.
"""

from __future__ import annotations

import asyncio
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

from tests.workflow.sandbox import restricted_sandbox
from workflows.activation_contracts import (
    ACTIVATED_EVENT,
    ACTIVATION_WORKFLOW_TYPE,
    DNS_PUBLISHED_SIGNAL,
    DNS_VERIFIED_EVENT,
    DNS_WAIT_LIMIT,
    EXPIRED_WEBHOOK,
    FIRST_TLS_CHECK_AFTER,
    GAVE_UP_EVENT,
    MAIL_ACTIVE_WEBHOOK,
    ActivationContact,
    ActivationResult,
    ActivationStatus,
    CertificateFacts,
    DnsCheck,
    DnsCheckRequest,
    FrontRestart,
    PortCheck,
    RecordProblem,
    TlsCheck,
    activation_workflow_id,
    check_intervals,
)
from workflows.contracts import AuditEvent, Notification
from workflows.dispatch import ProvisionMailTenant

TENANT = "acme"
DOMAIN = "acme.example"
DKIM_MISSING = RecordProblem(
    f"dkim._domainkey.{DOMAIN}.", "TXT", "v=DKIM1; k=rsa; p=MIIB", "absent"
)


HOOK = "https://backend.example/hooks/mail"
# A check answer that never comes: the activity runs until it is cancelled.
BLOCK = RuntimeError("blocks")
CERT = CertificateFacts(
    [f"mail.{DOMAIN}"], "Pebble Intermediate CA", "2026-01-01T00:00:00+00:00",
    "2026-04-01T00:00:00+00:00", True,
)  # fmt: skip
REFUSED = "connection refused: nothing listens (front's TLS not up)"


def tls_answer(kind: str) -> TlsCheck:
    """ok | none (no certificate yet) | restart (certificate there, dovecot's ports refused)."""
    if kind == "ok":
        return TlsCheck(TENANT, DOMAIN, CERT, [PortCheck(443), PortCheck(465), PortCheck(993)])
    if kind == "none":
        return TlsCheck(
            TENANT, DOMAIN, None, [PortCheck(p, REFUSED) for p in (443, 465, 993)],
            missing=["no certificate for mail.acme.example yet", "443: refused"],
        )  # fmt: skip
    return TlsCheck(
        TENANT, DOMAIN, CERT, [PortCheck(443), PortCheck(465, REFUSED), PortCheck(993, REFUSED)],
        front_restart_needed=True, missing=[f"465: {REFUSED}", f"993: {REFUSED}"],
    )  # fmt: skip


@dataclass
class DnsWorld:
    # What each successive check answers: True complete, False DKIM missing, or an error.
    answers: list[bool | Exception] = field(default_factory=list)
    checks: int = 0
    audit: list[AuditEvent] = field(default_factory=list)
    # The TLS checks' answers (tls_answer kinds, or an error); once used up: "ok".
    tls: list[str | Exception] = field(default_factory=list)
    tls_checks: int = 0
    restarts: int = 0
    # What restart_mail_front answers: restarted (True), or found it not needed (False:
    # an earlier attempt's restart worked before its worker died); once used up: True.
    restart_answers: list[bool] = field(default_factory=list)
    notify_url: str | None = HOOK
    sent: list[Notification] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def activities(self) -> list[Any]:
        @activity.defn(name="activation_contact")
        async def activation_contact(request: DnsCheckRequest) -> ActivationContact:
            return ActivationContact(self.notify_url, f"purchase-{TENANT}")

        @activity.defn(name="check_mail_tls")
        async def check_mail_tls(request: DnsCheckRequest) -> TlsCheck:
            self.tls_checks += 1
            answer = self.tls.pop(0) if self.tls else "ok"
            if isinstance(answer, Exception):
                raise answer
            if answer == "restart" and self.restarts:
                answer = "ok"  # dovecot started with the certificate in place
            return tls_answer(answer)

        @activity.defn(name="restart_mail_front")
        async def restart_mail_front(request: DnsCheckRequest) -> FrontRestart:
            self.restarts += 1
            if self.restart_answers and not self.restart_answers.pop(0):
                return FrontRestart(False, "not needed: TLS is up")
            return FrontRestart(True, "dovecot's ports refused")

        @activity.defn(name="notify_customer")
        async def notify_customer(notification: Notification) -> None:
            self.sent.append(notification)

        @activity.defn(name="check_mail_dns")
        async def check_mail_dns(request: DnsCheckRequest) -> DnsCheck:
            assert request.tenant_id == TENANT
            self.checks += 1
            answer = self.answers.pop(0) if self.answers else False
            if answer is BLOCK:
                await self.release.wait()  # the test lets it end once it cancelled the run
            if isinstance(answer, Exception):
                raise answer
            return DnsCheck(TENANT, DOMAIN, 6, [] if answer else [DKIM_MISSING])

        @activity.defn(name="record_audit_event")
        async def record_audit_event(event: AuditEvent) -> bool:
            if event.event_key not in {e.event_key for e in self.audit}:
                self.audit.append(event)
            return True

        return [
            check_mail_dns,
            record_audit_event,
            activation_contact,
            check_mail_tls,
            restart_mail_front,
            notify_customer,
        ]


async def start(
    env: WorkflowEnvironment, world: DnsWorld, args: list[Any] | None = None, wid: str = ""
) -> tuple[Worker, WorkflowHandle[Any, ActivationResult]]:
    task_queue = f"activate-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant],
        workflow_runner=restricted_sandbox(),
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
    assert (result.outcome, result.checks, world.checks) == ("active", 3, 3)
    # Whole minutes: the checks themselves take real (not skipped) milliseconds.
    assert (
        result.waited_seconds // 60 == sum(w.total_seconds() for w in check_intervals()[:3]) // 60
    )
    assert status.state == "active" and status.missing == []
    assert [e.event for e in world.audit] == [DNS_VERIFIED_EVENT, ACTIVATED_EVENT]
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
    assert result.missing == [DKIM_MISSING] and result.stage == "dns"
    assert status.state == "gave_up" and status.missing == [DKIM_MISSING]
    [event] = world.audit
    assert event.event == GAVE_UP_EVENT
    assert event.details["deleted"] == "nothing" and event.details["stage"] == "dns"
    assert "TXT dkim._domainkey.acme.example. (absent)" in event.details["missing"]
    assert world.tls_checks == 0
    [expired] = world.sent
    assert expired.payload["event"] == EXPIRED_WEBHOOK and expired.url == HOOK


async def test_a_signal_checks_at_once(time_skipping_env: WorkflowEnvironment) -> None:
    world = DnsWorld([True])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        result = await handle.result()
    assert (result.outcome, result.checks) == ("active", 1)
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
    assert (result.outcome, result.checks) == ("active", 2)


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
    assert (result.outcome, result.checks) == ("active", 1)
    assert world.checks == checks_before + 1
    assert status.state == "active"
    assert [e.event for e in world.audit] == [GAVE_UP_EVENT, DNS_VERIFIED_EVENT, ACTIVATED_EVENT]


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
        workflow_runner=restricted_sandbox(),
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
    assert (result.outcome, result.checks, world.checks) == ("active", 3, 3)


# --- stage 2: the certificate, front's restart, the TLS ports ------------------------


async def test_the_certificate_comes_front_restarts_once_and_the_domain_is_active(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """No certificate at DNS time; the next check finds it with dovecot's ports refused
    (MailU 2024.06, Mailu/Mailu#3827): front restarted once, every port then validates."""
    world = DnsWorld([True], tls=["none", "restart"])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        while world.tls_checks < 1 or (await status_of(handle)).state != "waiting_for_tls":
            await time_skipping_env.sleep(1)
        waiting = await status_of(handle)
        result = await handle.result()
        status = await status_of(handle)
    assert waiting.dns_verified_at is not None and waiting.tls_checks == 1
    assert waiting.tls_missing[0].startswith("no certificate for mail.acme.example")
    assert (result.outcome, result.stage, result.tls_checks) == ("active", "active", 3)
    assert result.front_restarted and world.restarts == 1 and status.front_restarts == 1
    # The second check came one FIRST_TLS_CHECK_AFTER after the first, not 5 minutes.
    assert result.waited_seconds // 60 == FIRST_TLS_CHECK_AFTER.total_seconds() // 60
    assert result.certificate_not_after == CERT.not_after and result.notified
    assert status.state == "active" and status.activated_at is not None
    assert [e.event for e in world.audit] == [DNS_VERIFIED_EVENT, ACTIVATED_EVENT]
    activated = world.audit[1].details
    assert activated["tls_ports"] == "443,465,993" and activated["front_restarted"] == "true"
    [active] = world.sent
    assert active.url == HOOK and active.payload["event"] == MAIL_ACTIVE_WEBHOOK
    assert active.payload["webmail_url"] == f"https://mail.{DOMAIN}"
    assert active.idempotency_key.endswith(f"/{MAIL_ACTIVE_WEBHOOK}")


async def test_a_restart_found_done_already_is_checked_at_once_not_an_interval_later(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """The worker died after `docker compose restart front` ran: the retried
    restart_mail_front finds it not needed (every port up); the run checks again at
    once and is active, instead of waiting FIRST_TLS_CHECK_AFTER for that check."""
    world = DnsWorld([True], tls=["restart"], restart_answers=[False])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        result = await handle.result()
        status = await status_of(handle)
    assert (result.outcome, result.tls_checks, world.restarts) == ("active", 2, 1)
    assert result.waited_seconds < FIRST_TLS_CHECK_AFTER.total_seconds()
    # This run restarted nothing itself: the audit row says so.
    assert not result.front_restarted and status.front_restarts == 0
    assert world.audit[-1].details["front_restarted"] == "false"


async def test_tls_never_up_gives_up_at_the_same_bound_naming_what_is_missing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """The certificate never comes (say port 80 is firewalled): checks on the growing
    interval until 30 days after the start, then gave_up at stage tls, nothing deleted."""
    world = DnsWorld([True], tls=["none"] * 1000)
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        result = await handle.result()
        status = await status_of(handle)
    assert (result.outcome, result.stage) == ("gave_up", "tls")
    assert result.waited_seconds // 60 == DNS_WAIT_LIMIT.total_seconds() // 60
    remaining = DNS_WAIT_LIMIT - timedelta(seconds=result.waited_seconds)
    # One check at DNS time, then one per interval of the TLS schedule.
    assert result.tls_checks == world.tls_checks > 1
    assert result.tls_checks <= 1 + len(check_intervals(FIRST_TLS_CHECK_AFTER)) + 1
    assert remaining < timedelta(minutes=1)
    assert result.tls_missing[0].startswith("no certificate") and world.restarts == 0
    assert status.state == "gave_up" and "TLS not up" in (status.error or "")
    event = world.audit[-1]
    assert (event.event, event.details["stage"], event.details["deleted"]) == (
        GAVE_UP_EVENT, "tls", "nothing",
    )  # fmt: skip
    [expired] = world.sent
    assert expired.payload["event"] == EXPIRED_WEBHOOK and expired.payload["stage"] == "tls"


async def test_without_a_notify_url_the_activation_ends_active_and_sends_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = DnsWorld([True], notify_url=None)
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        result = await handle.result()
    assert (result.outcome, result.notified, world.sent) == ("active", False, [])
    assert [e.event for e in world.audit] == [DNS_VERIFIED_EVENT, ACTIVATED_EVENT]


async def test_a_tls_check_that_cannot_run_waits_and_a_gone_tenant_ends_the_run(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    unavailable = ApplicationError("ssh down", type="SshUnavailable", non_retryable=True)
    gone = ApplicationError("no server", type="ServerGone", non_retryable=True)
    world = DnsWorld([True], tls=[unavailable, gone])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        result = await handle.result()
    assert (result.outcome, result.stage, result.tls_checks) == ("tenant_gone", "tls", 2)
    assert [e.event for e in world.audit] == [DNS_VERIFIED_EVENT] and world.sent == []


async def test_a_cancel_during_a_check_ends_the_run_cancelled_not_waiting(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """The check's activity fails with the cancel: not a check that could not run (which
    would wait on and swallow the cancel), the run ends CANCELLED."""
    world = DnsWorld([BLOCK])
    worker, handle = await start(time_skipping_env, world)
    async with worker:
        await handle.signal(DNS_PUBLISHED_SIGNAL)
        while (await status_of(handle)).state != "checking":
            await asyncio.sleep(0.05)
        await handle.cancel()
        world.release.set()  # the activity ends; its answer comes after the cancel
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await status_of(handle)
    assert isinstance(failure.value.cause, CancelledError)
    assert status.state == "cancelled" and world.audit == [] and world.sent == []
