"""ProvisionMailTenant: one purchase becomes a running mail server with stored credentials.

    validate input ─► create_server ─► wait_for_server ─► set_reverse_dns
        ─► rotate_host_key ─► configure_mailu ─► create_admin_credentials
        ─► store_credentials ─► audit ─► notify
    on a failure retries cannot fix, or on cancel, after the server exists:
        remove_credentials (if stored) ─► delete_server ─► audit provisioning_failed

A cancel at any step before the run completes, notification included, undoes the
purchase: the same compensation runs (a cancel during create_server deletes whatever
server carries the purchase's label), then the run ends CANCELLED. A completed run
cannot be cancelled (Temporal refuses); terminated runs are cleaned up by the
reconciler (workflows/reconcile.py).

Each arrow is an activity with a timeout and retry policy chosen for what it
talks to (see the policies below). The workflow itself only sequences them: no
I/O, no clocks but workflow.now(), no secrets (the password lives and dies inside
create_admin_credentials; only its encrypted envelope passes through here).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

from workflows.contracts import (
    PLAN_CATALOG,
    AuditEvent,
    InvalidPurchaseRequest,
    MailuTarget,
    Notification,
    ProvisionResult,
    ProvisionStatus,
    PurchaseRequest,
    RemoveCredentialsRequest,
    ReverseDnsRequest,
    SealedCredentials,
    ServerAddress,
    ServerHandle,
    ServerSpec,
    StepProgress,
    StoreCredentialsRequest,
    StoredCredentials,
    mail_hostname_for,
    server_name_for,
    webmail_url_for,
    workflow_id_for,
)

with workflow.unsafe.imports_passed_through():
    from activities.audit import AuditActivities
    from activities.credentials import CredentialsActivities
    from activities.mailu import MailuActivities
    from activities.notify import NotifyActivities
    from activities.ssh import SshTrustActivities
    from activities.vault import VaultActivities
    from activities.vps_provider import VpsActivities


def _policy(
    initial: float,
    maximum: float,
    attempts: int = 0,
    backoff: float = 2.0,
    final: tuple[str, ...] = (),
) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=initial),
        backoff_coefficient=backoff,
        maximum_interval=timedelta(seconds=maximum),
        maximum_attempts=attempts,
        non_retryable_error_types=list(final),
    )


# Every activity heartbeats from a side task while it runs (activities/heartbeat.py), so a
# worker that dies mid-attempt is noticed after HEARTBEAT, not after the attempt's
# start-to-close: with a first retry within 5 s, a purchase resumes within ~20 s of a
# worker being available (measured by `make faults`, docs/RELIABILITY.md).
HEARTBEAT = timedelta(seconds=15)
# Provider API calls are quick; rate limits and 5xx clear within minutes. Adoption on
# uniqueness_error makes a retried create safe.
CREATE_SERVER = dict(
    start_to_close_timeout=timedelta(seconds=60),
    heartbeat_timeout=HEARTBEAT,
    retry_policy=_policy(2, 60, 8),
    # On cancel, wait until the attempt has really stopped, so the clean-up that looks
    # for the purchase's server runs after any server it could create exists.
    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
)
# One attempt polls until the server runs (activities/vps_provider.py), heartbeating: a
# 2-minute boot costs the activity plus ~3 heartbeats instead of 40 retries (billable
# actions, docs/PERFORMANCE.md). The longer heartbeat timeout is what keeps heartbeats
# rare (the SDK sends one per 80% of it); a dead worker is noticed within a minute.
# Retries are for provider errors only. Gives up after 15 minutes.
WAIT_FOR_SERVER = dict(
    start_to_close_timeout=timedelta(minutes=15),
    heartbeat_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=_policy(3, 3, backoff=1.0),
)
# Image pulls and MailU's first start take minutes: long timeout, heartbeats prove life.
# Bounded by time, not attempts: dropped SSH connections must not end the purchase.
CONFIGURE_MAILU = dict(
    start_to_close_timeout=timedelta(minutes=20),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(hours=1),
    retry_policy=_policy(5, 120),
)
# One Transit call and one SSH command; a retry sets a fresh password, which is harmless.
# No attempt cap: a sealed or denying Vault is retried for a bounded time (10 min,
# activities/vault.py) and only then final; 15 min overall covers that bound.
CREATE_CREDENTIALS = dict(
    start_to_close_timeout=timedelta(minutes=2),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=_policy(2, 30),
)
# Vault writes are fast; outages (sealed, leader election, lost policies) are retried as
# above. CAS makes retries safe.
STORE_CREDENTIALS = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=_policy(1, 30),
)
# The audit row must not be lost: retry for up to a day (unique key keeps it to one row).
AUDIT = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)
# The customer's webhook may be down for a while; the mail server is ready regardless.
NOTIFY = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(hours=6),
    retry_policy=_policy(5, 300),
)
# One provider call plus its action; same reasoning as create_server.
SET_REVERSE_DNS = dict(
    start_to_close_timeout=timedelta(seconds=60),
    heartbeat_timeout=HEARTBEAT,
    retry_policy=_policy(2, 60, 8),
)
# Two short SSH sessions; a retry trusts the old or the new key, so it is idempotent.
# The first SSH step: sshd may refuse or drop connections while the server still boots
# (`make faults` found 5 capped attempts too few), so it is bounded by time instead.
ROTATE_HOST_KEY = dict(
    start_to_close_timeout=timedelta(minutes=2),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=_policy(2, 30),
)
# Compensation must finish: a leaked server costs money every hour.
DELETE_SERVER = dict(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(5, 300),
)
# Withdrawing a written record is one Vault call; like deletion, it must finish.
REMOVE_CREDENTIALS = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)


@workflow.defn(name="ProvisionMailTenant")
class ProvisionMailTenant:
    def __init__(self) -> None:
        self._status = ProvisionStatus(
            purchase_id=None, tenant_id=None, state="running", current_step=None
        )

    @workflow.query(name="status")
    def status(self) -> ProvisionStatus:
        return self._status

    @workflow.run
    async def run(self, raw_request: dict[str, Any]) -> ProvisionResult:
        request = self._validate(raw_request)
        spec = self._server_spec(request)
        try:
            server: ServerHandle = await self._step(
                "create_server", VpsActivities.create_server, spec, CREATE_SERVER
            )
        except (ActivityError, asyncio.CancelledError) as err:
            if not _is_cancel(err):
                raise
            raise await self._cancel_during_create(request, spec, err) from None
        stored: StoredCredentials | None = None
        try:
            address: ServerAddress = await self._step(
                "wait_for_server", VpsActivities.wait_for_server, server, WAIT_FOR_SERVER
            )
            await self._step(
                "set_reverse_dns",
                VpsActivities.set_reverse_dns,
                ReverseDnsRequest(
                    request.tenant_id,
                    server.server_id,
                    address.ipv4,
                    mail_hostname_for(request.domain),
                ),
                SET_REVERSE_DNS,
            )
            target = MailuTarget(
                request.tenant_id,
                request.domain,
                server.name,
                address.ipv4,
                server.host_public_key,
            )
            new_host_key: str = await self._step(
                "rotate_host_key", SshTrustActivities.rotate_host_key, target, ROTATE_HOST_KEY
            )
            target = replace(target, host_public_key=new_host_key)
            await self._step(
                "configure_mailu", MailuActivities.configure_mailu, target, CONFIGURE_MAILU
            )
            credentials: SealedCredentials = await self._step(
                "create_admin_credentials",
                CredentialsActivities.create_admin_credentials,
                target,
                CREATE_CREDENTIALS,
            )
            stored = await self._step(
                "store_credentials",
                VaultActivities.store_credentials,
                StoreCredentialsRequest(
                    request.tenant_id, credentials, webmail_url_for(request.domain)
                ),
                STORE_CREDENTIALS,
            )
            await self._step(
                "audit",
                AuditActivities.record_audit_event,
                self._audit_event(
                    "smtp_credentials_stored",
                    request.tenant_id,
                    {
                        "username": credentials.username,
                        "webmail_url": webmail_url_for(request.domain),
                    },
                ),
                AUDIT,
            )
        except (ActivityError, asyncio.CancelledError) as err:
            raise await self._compensate(request, server, stored, err) from err

        result = ProvisionResult(
            purchase_id=request.purchase_id,
            tenant_id=request.tenant_id,
            server_id=server.server_id,
            server_name=server.name,
            ipv4=address.ipv4,
            webmail_url=webmail_url_for(request.domain),
            vault_path=stored.vault_path,
            vault_version=stored.version,
            notified=False,
        )
        try:
            notified = await self._notify(request, result)
        except (ActivityError, asyncio.CancelledError) as err:
            # Only a cancel gets here: the purchase is void, so undo it all.
            raise await self._compensate(request, server, stored, err) from err
        result = replace(result, notified=notified)
        self._status.state = "completed"
        self._status.current_step = None
        return result

    # ------------------------------------------------------------------ steps

    def _validate(self, raw_request: dict[str, Any]) -> PurchaseRequest:
        started = self._begin("validate_input")
        try:
            request = PurchaseRequest.parse(raw_request)
            expected_id = workflow_id_for(request.purchase_id)
            if workflow.info().workflow_id != expected_id:
                raise InvalidPurchaseRequest(
                    "purchase_id", f"must match the workflow id (expected {expected_id!r})"
                )
        except InvalidPurchaseRequest as err:
            self._end(started, "failed", error=str(err))
            raise ApplicationError(
                str(err),
                {"field": err.field, "rule": err.rule},
                type="InvalidPurchaseRequest",
                non_retryable=True,
            ) from None
        self._status.purchase_id = request.purchase_id
        self._status.tenant_id = request.tenant_id
        self._end(started, "done")
        return request

    @staticmethod
    def _server_spec(request: PurchaseRequest) -> ServerSpec:
        plan = PLAN_CATALOG[request.plan]
        return ServerSpec(
            tenant_id=request.tenant_id,
            name=server_name_for(request),
            server_type=plan.server_type,
            image=plan.image,
            location=plan.location,
            docker_install=plan.docker_install,
            labels={
                "purchase": request.purchase_id,
                "tenant": request.tenant_id,
                "managed-by": "mail-provisioning",
            },
        )

    async def _step(self, name: str, activity: Any, arg: Any, options: dict[str, Any]) -> Any:
        started = self._begin(name)
        try:
            result = await workflow.execute_activity_method(
                activity, arg, summary=name.replace("_", " "), **options
            )
        except ActivityError as err:
            self._end(started, "failed", error=_reason(err))
            raise
        except asyncio.CancelledError:
            self._end(started, "failed", error="cancelled")
            raise
        self._end(started, "done")
        return result

    async def _notify(self, request: PurchaseRequest, result: ProvisionResult) -> bool:
        """The server is ready whether or not the webhook answers: a failure is reported."""
        if request.notify_url is None:
            self._status.steps.append(StepProgress("notify", "skipped", self._now(), self._now()))
            return False
        payload = {"event": "mail_server_ready", **asdict(result)}
        payload.pop("notified")
        notification = Notification(
            request.tenant_id, request.notify_url, workflow.info().workflow_id, payload
        )
        try:
            await self._step("notify", NotifyActivities.notify_customer, notification, NOTIFY)
        except ActivityError as err:
            if _is_cancel(err):
                raise
            workflow.logger.warning("customer notification failed; provisioning stands")
            return False
        return True

    async def _compensate(
        self,
        request: PurchaseRequest,
        server: ServerHandle,
        stored: StoredCredentials | None,
        err: BaseException,
    ) -> Exception:
        """Undo what exists, newest first, then record why provisioning failed.

        Runs after a cancel too: Temporal lets a cancelled workflow schedule cleanup.
        Returns what the run ends with: CancelledError (CANCELLED) after a cancel,
        else ProvisioningFailed.
        """
        failed_step = self._status.current_step or "unknown"
        reason = _reason(err)
        self._status.state = "compensating"
        self._status.error = reason
        if stored is not None:
            await self._step(
                "remove_credentials",
                VaultActivities.remove_credentials,
                RemoveCredentialsRequest(request.tenant_id, stored.version),
                REMOVE_CREDENTIALS,
            )
        if request.keep_server_on_failure:
            workflow.logger.warning("keeping the failed server for debugging, as requested")
        else:
            await self._step("delete_server", VpsActivities.delete_server, server, DELETE_SERVER)
        await self._audit_failure(
            request, failed_step, err, server.name, kept=request.keep_server_on_failure
        )
        self._status.current_step = None
        if _is_cancel(err):
            self._status.state = "cancelled"
            return CancelledError(f"purchase cancelled at {failed_step}; compensated")
        self._status.state = "failed"
        return ApplicationError(
            f"provisioning failed at {failed_step}: {reason}",
            {"step": failed_step, "error_type": _error_type(err)},
            type="ProvisioningFailed",
            non_retryable=True,
        )

    async def _cancel_during_create(
        self, request: PurchaseRequest, spec: ServerSpec, err: BaseException
    ) -> Exception:
        """A cancel while the server was being bought: no handle, so delete by label."""
        self._status.state = "compensating"
        self._status.error = _reason(err)
        deleted: list[int] = await self._step(
            "delete_server",
            VpsActivities.delete_purchase_servers,
            request.purchase_id,
            DELETE_SERVER,
        )
        await self._audit_failure(
            request, "create_server", err, spec.name, kept=False, servers_deleted=str(len(deleted))
        )
        self._status.state = "cancelled"
        self._status.current_step = None
        return CancelledError("purchase cancelled at create_server; compensated")

    async def _audit_failure(
        self,
        request: PurchaseRequest,
        step: str,
        err: BaseException,
        server_name: str,
        *,
        kept: bool,
        **extra: str,
    ) -> None:
        details = {
            "step": step,
            "error_type": _error_type(err),
            "reason": _reason(err),
            "server_name": server_name,
            "server_kept": str(kept).lower(),
            **extra,
        }
        await self._step(
            "audit_failure",
            AuditActivities.record_audit_event,
            self._audit_event("provisioning_failed", request.tenant_id, details),
            AUDIT,
        )

    # ------------------------------------------------------------------ bookkeeping

    def _audit_event(self, event: str, tenant_id: str, details: dict[str, str]) -> AuditEvent:
        info = workflow.info()
        return AuditEvent(f"{info.workflow_id}/{info.run_id}/{event}", event, tenant_id, details)

    def _now(self) -> str:
        return workflow.now().isoformat(timespec="seconds")

    def _begin(self, name: str) -> StepProgress:
        step = StepProgress(name, "running", self._now())
        self._status.steps.append(step)
        self._status.current_step = name
        return step

    def _end(self, step: StepProgress, state: str, error: str | None = None) -> None:
        step.state = state
        step.finished_at = self._now()
        if error:
            self._status.error = error
            if self._status.state == "running":
                self._status.state = "failed"


def _is_cancel(err: BaseException) -> bool:
    """The workflow itself was cancelled (not an activity that gave up on its own)."""
    return workflow.cancellation_reason() is not None and is_cancelled_exception(err)


def _innermost(err: BaseException) -> BaseException:
    while isinstance(err, ActivityError) and err.cause is not None:
        err = err.cause
    return err


def _reason(err: BaseException) -> str:
    """The innermost message: for an ActivityError, the activity's own error."""
    inner = _innermost(err)
    if isinstance(inner, asyncio.CancelledError | CancelledError):
        return "workflow cancelled"
    if isinstance(inner, FailureError):
        return inner.message or type(inner).__name__
    return str(inner) or type(inner).__name__


def _error_type(err: BaseException) -> str:
    inner = _innermost(err)
    if isinstance(inner, ApplicationError) and inner.type:
        return inner.type
    return type(inner).__name__
