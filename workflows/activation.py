"""ActivateMailDomain: a purchased mail domain waits, cheaply, for the customer's DNS,
then for its certificate and the TLS ports that serve it.

    decode {"tenant_id"} ─► activation_contact (the purchase's notify_url, from its start)
        ─► wait (signal `dns_published`, or the next interval)
        ─► check_mail_dns (every record we handed out, resolved and compared)
        ─► ... until all match ─► audit mail_domain_dns_verified
        ─► check_mail_tls (front's certificate for mail.{domain}; a validating
           handshake on 443, 465, 993) ─► [restart_mail_front when MailU needs it]
        ─► ... until all pass ─► audit mail_domain_activated ─► webhook mail_active ─► active
    or, once DNS_WAIT_LIMIT (30 days from the start) has passed with something missing
        ─► audit mail_domain_activation_expired ─► webhook mail_activation_expired
        ─► gave_up (nothing deleted)

Workflow id `activate-{tenant_id}`. A completed purchase starts it (the purchase's
schedule_rotation step, activities/activation.py start_activation), and a
deprovisioning cancels it with the rotation schedule. The run costs nothing while it
waits: one timer per interval (workflows/activation_contracts.check_intervals:
minutes at first, then every 6 hours; the TLS stage starts again at one minute, since
MailU's front asks the CA within seconds of DNS being right) and one activity per
check; a `dns_published` signal from the back end checks at once, in either stage.

What is checked comes from our records only (activities/activation.py): the tenant's
server (A, AAAA, the address shaken hands with) and MailU's own export (MX, SPF,
DKIM, DMARC), never from a client; so does the webhook's URL (the purchase's). A
check that cannot run (SSH or the provider down after its retries) counts as a check
that found nothing yet; a tenant whose server or record is gone ends the run
`tenant_gone` at once.

The certificate is MailU's own: front's certbot (core/nginx/letsencrypt.py, MailU
2024.06) asks the CA once DNS points at the server. MailU 2024.06's front starts its
dovecot (465, 993) only if the certificate existed when front started, so the first
certificate needs a front restart (Mailu/Mailu#3827): the TLS check says so
(`front_restart_needed`) and restart_mail_front does it, once per need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activation_contracts import (
    ACTIVATED_EVENT,
    DNS_VERIFIED_EVENT,
    DNS_WAIT_LIMIT,
    EXPIRED_WEBHOOK,
    FIRST_TLS_CHECK_AFTER,
    GAVE_UP_EVENT,
    LONGEST_CHECK_INTERVAL,
    MAIL_ACTIVE_WEBHOOK,
    ActivationContact,
    ActivationRequest,
    ActivationResult,
    ActivationStatus,
    DnsCheck,
    DnsCheckRequest,
    FrontRestart,
    InvalidActivationRequest,
    RecordProblem,
    TlsCheck,
    activation_request_from_payloads,
    activation_workflow_id,
    check_intervals,
)
from workflows.contracts import AuditEvent, Notification, StepProgress, mail_hostname_for

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import ActivationActivities, AuditActivities, NotifyActivities
    from workflows.failures import cancel_requested, error_type, reason
    from workflows.policies import (
        ACTIVATION_CONTACT,
        AUDIT,
        CHECK_MAIL_DNS,
        CHECK_MAIL_TLS,
        NOTIFY,
        RESTART_MAIL_FRONT,
    )

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
        self._dns: DnsCheck | None = None
        self._tls: TlsCheck | None = None
        self._contact = ActivationContact(None)
        self._restarted = False

    async def run(self, args: Sequence[RawValue]) -> ActivationResult:
        request = self._validate(args)
        self.status.tenant_id = request.tenant_id
        started = self.started = workflow.now()
        deadline = started + DNS_WAIT_LIMIT
        self.status.give_up_at = _iso(deadline)
        try:
            self._contact = await self._read_contact(request)
            # 0, not the count now: a signal that came with or before the start (handled
            # before the run began) must check at once too.
            if not await self._until(
                check_intervals(), deadline, lambda: self._dns_round(request), "waiting_for_dns", 0
            ):
                return await self._gave_up(request, started, "dns")
            await self._dns_verified(request)
            if await self._tls_round(request) or await self._until(
                check_intervals(
                    FIRST_TLS_CHECK_AFTER, LONGEST_CHECK_INTERVAL, deadline - workflow.now()
                ),
                deadline,
                lambda: self._tls_round(request),
                "waiting_for_tls",
                self._signals(),
            ):
                return await self._activated(request, started)
            return await self._gave_up(request, started, "tls")
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

    async def _read_contact(self, request: ActivationRequest) -> ActivationContact:
        """The purchase's notify_url, read while the purchase that started us is fresh;
        a failure only means no webhook (the audit rows still say everything)."""
        try:
            contact: ActivationContact = await workflow.execute_activity_method(
                ActivationActivities.activation_contact,
                DnsCheckRequest(request.tenant_id),
                **ACTIVATION_CONTACT,
            )
        except ActivityError as err:
            _raise_if_cancelled()
            workflow.logger.warning("notify_url not readable; no webhook will be sent")
            return ActivationContact(None, None, reason(err))
        return contact

    async def _until(
        self,
        intervals: list[timedelta],
        deadline: datetime,
        check: Callable[[], Awaitable[bool]],
        waiting: str,
        seen: int,
    ) -> bool:
        """Run `check` after each interval (or at once on a `dns_published` signal)
        until it answers True; False once the deadline has passed."""
        for interval in intervals:
            wait = min(interval, deadline - workflow.now())
            while True:
                self.status.state = waiting
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
                if await check():
                    return True
                wait = min(interval, deadline - workflow.now())
                if wait <= timedelta(0):
                    break
            if await check():
                return True
            if workflow.now() >= deadline:
                break
        return False

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

    def _checking(self, state: str) -> None:
        self._last_check = workflow.now()
        self.status.state = state
        self.status.next_check_at = None

    async def _activity(self, method: Any, request: ActivationRequest, options: Any) -> Any:
        """One check-stage activity; None when it could not run (counted, the wait goes
        on); a tenant with nothing left to activate ends the run."""
        try:
            return await workflow.execute_activity_method(
                method, DnsCheckRequest(request.tenant_id), **options
            )
        except ActivityError as err:
            _raise_if_cancelled()
            if error_type(err) in TENANT_GONE_ERRORS:
                self._finish("tenant_gone", reason(err))
                raise _Gone(reason(err)) from None
            self.status.error = reason(err)
            workflow.logger.warning("activation check could not run; waiting for the next one")
            return None

    # --- stage 1: DNS ------------------------------------------------------------

    async def _dns_round(self, request: ActivationRequest) -> bool:
        self._checking("checking")
        self.status.checks += 1
        self.status.last_checked_at = _iso(workflow.now())
        check: DnsCheck | None = await self._activity(
            ActivationActivities.check_mail_dns, request, CHECK_MAIL_DNS
        )
        if check is None:
            return False
        self._dns = check
        self.status.error = None
        self.status.domain = check.domain
        self.status.missing = check.missing[:MAX_PROBLEMS_SHOWN]
        return check.complete

    async def _dns_verified(self, request: ActivationRequest) -> None:
        assert self._dns is not None
        await self._audit(
            request,
            DNS_VERIFIED_EVENT,
            {
                "domain": self._dns.domain,
                "records_checked": str(self._dns.records_checked),
                "checks": str(self.status.checks),
            },
        )
        self.status.dns_verified_at = _iso(workflow.now())

    # --- stage 2: the certificate and the TLS ports --------------------------------

    async def _tls_round(self, request: ActivationRequest) -> bool:
        """One TLS check; with the certificate in place and dovecot's ports refused,
        front's restart (MailU 2024.06, Mailu/Mailu#3827) and a check right after."""
        check = await self._tls_check(request)
        if check is None or check.complete:
            return check is not None
        if not check.front_restart_needed:
            return False
        self._checking("restarting_front")
        restart: FrontRestart | None = await self._activity(
            ActivationActivities.restart_mail_front, request, RESTART_MAIL_FRONT
        )
        if restart is None:
            return False
        if restart.restarted:
            self._restarted = True
            self.status.front_restarts += 1
        # Checked again even when the restart found it not needed: a retry after an
        # attempt whose worker died once front had restarted finds every port up (the
        # run would otherwise wait a whole interval for the check that says so).
        check = await self._tls_check(request)
        return check is not None and check.complete

    async def _tls_check(self, request: ActivationRequest) -> TlsCheck | None:
        self._checking("checking_tls")
        self.status.tls_checks += 1
        self.status.last_checked_at = _iso(workflow.now())
        check: TlsCheck | None = await self._activity(
            ActivationActivities.check_mail_tls, request, CHECK_MAIL_TLS
        )
        if check is None:
            return None
        self._tls = check
        self.status.error = None
        self.status.tls_missing = check.missing[:MAX_PROBLEMS_SHOWN]
        if check.certificate is not None:
            self.status.certificate_not_after = check.certificate.not_after
        return check

    # --- the ends ------------------------------------------------------------------

    async def _activated(self, request: ActivationRequest, started: datetime) -> ActivationResult:
        assert self._tls is not None and self._tls.certificate is not None
        certificate = self._tls.certificate
        domain = self._tls.domain
        await self._audit(
            request,
            ACTIVATED_EVENT,
            {
                "domain": domain,
                "host": mail_hostname_for(domain),
                "certificate_issuer": certificate.issuer,
                "certificate_not_after": certificate.not_after,
                "tls_ports": ",".join(str(p.port) for p in self._tls.ports),
                "front_restarted": str(self._restarted).lower(),
                "checks": str(self.status.checks),
                "tls_checks": str(self.status.tls_checks),
            },
        )
        notified = await self._notify(
            request,
            MAIL_ACTIVE_WEBHOOK,
            {
                "domain": domain,
                "webmail_url": f"https://{mail_hostname_for(domain)}",
                "certificate_not_after": certificate.not_after,
                "tls_ports": [p.port for p in self._tls.ports],
            },
        )
        self._finish("active")
        self.status.activated_at = _iso(workflow.now())
        return ActivationResult(
            request.tenant_id,
            "active",
            self.status.checks,
            self._waited(started),
            stage="active",
            tls_checks=self.status.tls_checks,
            certificate_not_after=certificate.not_after,
            front_restarted=self._restarted,
            notified=notified,
        )

    async def _gave_up(
        self, request: ActivationRequest, started: datetime, stage: str
    ) -> ActivationResult:
        last = self._dns
        missing = last.missing[:MAX_PROBLEMS_SHOWN] if stage == "dns" and last is not None else []
        tls_missing = self._tls.missing[:MAX_PROBLEMS_SHOWN] if stage == "tls" and self._tls else []
        if stage == "tls" and self._tls is None:
            tls_missing = ["no TLS check could run"]
        domain = last.domain if last is not None else ""
        await self._audit(
            request,
            GAVE_UP_EVENT,
            {
                "domain": domain,
                "stage": stage,
                "checks": str(self.status.checks),
                "tls_checks": str(self.status.tls_checks),
                "missing": ", ".join(f"{p.type} {p.name} ({p.problem})" for p in missing)
                or "; ".join(tls_missing),
                "deleted": "nothing",
            },
        )
        notified = await self._notify(
            request,
            EXPIRED_WEBHOOK,
            {
                "domain": domain,
                "stage": stage,
                "missing": [f"{p.type} {p.name} ({p.problem})" for p in missing] + tls_missing,
            },
        )
        what = "DNS not complete" if stage == "dns" else "TLS not up on every port"
        self._finish("gave_up", f"{what} after {DNS_WAIT_LIMIT.days} days")
        return ActivationResult(
            request.tenant_id,
            "gave_up",
            self.status.checks,
            self._waited(started),
            missing,
            stage=stage,
            tls_checks=self.status.tls_checks,
            tls_missing=tls_missing,
            certificate_not_after=self.status.certificate_not_after,
            front_restarted=self._restarted,
            notified=notified,
        )

    async def _notify(
        self, request: ActivationRequest, event: str, details: dict[str, Any]
    ) -> bool:
        """The webhook to the purchase's notify_url; a failure is logged, never fatal."""
        url = self._contact.notify_url
        if url is None:
            return False
        info = workflow.info()
        notification = Notification(
            request.tenant_id,
            url,
            f"{info.workflow_id}/{info.run_id}/{event}",
            {"event": event, "tenant_id": request.tenant_id, **details},
        )
        step = StepProgress("notify", "running", _iso(workflow.now()))
        self.status.steps.append(step)
        self.status.current_step = "notify"
        try:
            await workflow.execute_activity_method(
                NotifyActivities.notify_customer, notification, **NOTIFY
            )
        except ActivityError:
            step.state, step.finished_at = "failed", _iso(workflow.now())
            _raise_if_cancelled()
            workflow.logger.warning("activation webhook failed; the activation stands")
            return False
        step.state, step.finished_at = "done", _iso(workflow.now())
        return True

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


def _raise_if_cancelled() -> None:
    """An activity that failed because the run is being cancelled ends the run cancelled,
    not as a check that could not run (which would wait on and swallow the cancel)."""
    if cancel_requested():
        raise asyncio.CancelledError()


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
            stage="tls" if activation.status.dns_verified_at else "dns",
            tls_checks=activation.status.tls_checks,
        )


__all__ = ["Activation", "RecordProblem", "run_activation"]
