"""ActivateMailDomain: a purchased mail domain waits, cheaply, for the customer's DNS.

    decode {"tenant_id"} ─► wait (signal `dns_published`, or the next interval)
        ─► check_mail_dns (every record we handed out, resolved and compared)
        ─► ... until all match ─► audit mail_domain_dns_verified ─► dns_verified
    or, once DNS_WAIT_LIMIT (30 days) has passed with records still missing
        ─► audit mail_domain_activation_expired ─► gave_up (nothing deleted)

Workflow id `activate-{tenant_id}`. A completed purchase starts it (the purchase's
schedule_rotation step, activities/activation.py start_activation), and a
deprovisioning cancels it with the rotation schedule. The run costs nothing while it
waits: one timer per interval (workflows/activation_contracts.check_intervals:
minutes at first, then every 6 hours) and one activity per check; a `dns_published`
signal from the back end checks at once.

What is checked comes from our records only (activities/activation.py): the tenant's
server (A, AAAA) and MailU's own export (MX, SPF, DKIM, DMARC), never from a client.
A check that cannot run (SSH or the provider down after its retries) counts as a
check that found nothing yet; a tenant whose server or record is gone ends the run
`tenant_gone` at once.

Not done yet (issue 20 item 1, stage 2): the certificate for mail.{domain}, front's
restart, the TLS handshakes on 443/465/993, `mail_domain_activated`, `mail_active`.
The run ends at `dns_verified` and says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activation_contracts import (
    DNS_VERIFIED_EVENT,
    DNS_WAIT_LIMIT,
    GAVE_UP_EVENT,
    ActivationRequest,
    ActivationResult,
    ActivationStatus,
    DnsCheck,
    DnsCheckRequest,
    InvalidActivationRequest,
    RecordProblem,
    activation_request_from_payloads,
    activation_workflow_id,
    check_intervals,
)
from workflows.contracts import AuditEvent, StepProgress

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import ActivationActivities, AuditActivities
    from workflows.failures import error_type, reason
    from workflows.policies import AUDIT, CHECK_MAIL_DNS

# What a check answers when the tenant has nothing left to activate.
TENANT_GONE_ERRORS = frozenset({"ServerGone", "CredentialsWithdrawn"})
# The shortest time between two checks a `dns_published` signal can cause.
SIGNAL_CHECK_GAP = timedelta(minutes=1)
MAX_PROBLEMS_SHOWN = 12


class Activation:
    """One activation run; ProvisionMailTenant runs it for the ActivateMailDomain type.

    `signals` counts the `dns_published` signals the shell received (a signal may come
    before this object exists, so the shell keeps the count)."""

    def __init__(self, signals: Callable[[], int]) -> None:
        self.status = ActivationStatus(tenant_id=None, state="waiting_for_dns")
        self._signals = signals
        self.started: datetime | None = None
        self._last_check: datetime | None = None

    async def run(self, args: Sequence[RawValue]) -> ActivationResult:
        request = self._validate(args)
        self.status.tenant_id = request.tenant_id
        started = self.started = workflow.now()
        deadline = started + DNS_WAIT_LIMIT
        self.status.give_up_at = _iso(deadline)
        try:
            return await self._wait_for_dns(request, started, deadline)
        except asyncio.CancelledError:
            self._finish("cancelled")
            raise

    def _validate(self, args: Sequence[RawValue]) -> ActivationRequest:
        try:
            request = activation_request_from_payloads(
                [(arg.payload.metadata.get("encoding", b""), arg.payload.data) for arg in args]
            )
            expected = activation_workflow_id(request.tenant_id)
            if workflow.info().workflow_id != expected:
                raise InvalidActivationRequest(
                    "tenant_id", f"must match the workflow id (expected {expected!r})"
                )
        except InvalidActivationRequest as err:
            self._finish("refused", str(err))
            raise ApplicationError(
                str(err),
                {"field": err.field, "rule": err.rule},
                type="InvalidActivationRequest",
                non_retryable=True,
            ) from None
        return request

    async def _wait_for_dns(
        self, request: ActivationRequest, started: datetime, deadline: datetime
    ) -> ActivationResult:
        # 0, not the count now: a signal that came with or before the start (handled
        # before the run began) must check at once too.
        seen = 0
        last: DnsCheck | None = None
        for interval in check_intervals():
            wait = min(interval, deadline - workflow.now())
            while True:
                self.status.state = "waiting_for_dns"
                self.status.next_check_at = _iso(workflow.now() + wait)
                signalled = await self._sleep_or_signal(wait, seen)
                seen = self._signals()
                if signalled is None:
                    break
                # The back end says the records are published: check now (at most one
                # check per SIGNAL_CHECK_GAP, so a back end that signals in a loop costs
                # one activity a minute, not one per signal); if they are not all there
                # yet, wait the whole interval again from here.
                await self._keep_gap()
                seen = self._signals()
                last = await self._check(request)
                if last is not None and last.complete:
                    return await self._verified(request, last, started)
                wait = min(interval, deadline - workflow.now())
                if wait <= timedelta(0):
                    break
            last = await self._check(request)
            if last is not None and last.complete:
                return await self._verified(request, last, started)
            if workflow.now() >= deadline:
                break
        return await self._gave_up(request, last, started)

    async def _sleep_or_signal(self, wait: timedelta, seen: int) -> bool | None:
        """True when a `dns_published` signal came before `wait` ran out, else None."""
        if wait <= timedelta(0):
            return None
        try:
            await workflow.wait_condition(lambda: self._signals() > seen, timeout=wait)
        except TimeoutError:
            return None
        return True

    async def _keep_gap(self) -> None:
        """Wait until SIGNAL_CHECK_GAP has passed since the last check began."""
        if self._last_check is not None:
            remaining = self._last_check + SIGNAL_CHECK_GAP - workflow.now()
            if remaining > timedelta(0):
                await workflow.sleep(remaining)

    async def _check(self, request: ActivationRequest) -> DnsCheck | None:
        """One check; None when it could not run (counted, the wait goes on)."""
        self._last_check = workflow.now()
        self.status.state = "checking"
        self.status.next_check_at = None
        self.status.checks += 1
        self.status.last_checked_at = _iso(workflow.now())
        try:
            check: DnsCheck = await workflow.execute_activity_method(
                ActivationActivities.check_mail_dns,
                DnsCheckRequest(request.tenant_id),
                **CHECK_MAIL_DNS,
            )
        except ActivityError as err:
            if error_type(err) in TENANT_GONE_ERRORS:
                self._finish("tenant_gone", reason(err))
                raise _Gone(reason(err)) from None
            self.status.error = reason(err)
            workflow.logger.warning("DNS check could not run; waiting for the next one")
            return None
        self.status.error = None
        self.status.domain = check.domain
        self.status.missing = check.missing[:MAX_PROBLEMS_SHOWN]
        return check

    async def _verified(
        self, request: ActivationRequest, check: DnsCheck, started: datetime
    ) -> ActivationResult:
        await self._audit(
            request,
            DNS_VERIFIED_EVENT,
            {
                "domain": check.domain,
                "records_checked": str(check.records_checked),
                "checks": str(self.status.checks),
            },
        )
        self._finish("dns_verified")
        return ActivationResult(
            request.tenant_id, "dns_verified", self.status.checks, self._waited(started)
        )

    async def _gave_up(
        self, request: ActivationRequest, last: DnsCheck | None, started: datetime
    ) -> ActivationResult:
        missing = last.missing[:MAX_PROBLEMS_SHOWN] if last is not None else []
        await self._audit(
            request,
            GAVE_UP_EVENT,
            {
                "domain": last.domain if last is not None else "",
                "checks": str(self.status.checks),
                "missing": ", ".join(f"{p.type} {p.name} ({p.problem})" for p in missing),
                "deleted": "nothing",
            },
        )
        self._finish("gave_up", f"DNS not complete after {DNS_WAIT_LIMIT.days} days")
        return ActivationResult(
            request.tenant_id, "gave_up", self.status.checks, self._waited(started), missing
        )

    async def _audit(self, request: ActivationRequest, event: str, details: dict[str, str]) -> None:
        info = workflow.info()
        audit = AuditEvent(
            f"{info.workflow_id}/{info.run_id}/{event}", event, request.tenant_id, details
        )
        step = StepProgress("audit", "running", _iso(workflow.now()))
        self.status.steps.append(step)
        self.status.current_step = "audit"
        await workflow.execute_activity_method(AuditActivities.record_audit_event, audit, **AUDIT)
        step.state, step.finished_at = "done", _iso(workflow.now())

    def _finish(self, state: str, error: str | None = None) -> None:
        self.status.state = state
        self.status.current_step = None
        self.status.next_check_at = None
        if error:
            self.status.error = error

    @staticmethod
    def _waited(started: datetime) -> float:
        return (workflow.now() - started).total_seconds()


class _Gone(Exception):
    pass


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


async def run_activation(activation: Activation, args: Sequence[RawValue]) -> Any:
    """The run, with a tenant that vanished while waiting ending the run normally."""
    try:
        return await activation.run(args)
    except _Gone:
        started = activation.started or workflow.now()
        return ActivationResult(
            activation.status.tenant_id or "",
            "tenant_gone",
            activation.status.checks,
            (workflow.now() - started).total_seconds(),
        )


__all__ = ["Activation", "RecordProblem", "run_activation"]
