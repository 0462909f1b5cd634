"""ProvisionMailTenant: one purchase becomes a running mail server with stored credentials.

    validate input ─► claim the tenant ─► create_server ─► wait_for_server ─► set_reverse_dns
        ─► rotate_host_key ─► configure_mailu ─► create_admin_credentials
        ─► store_credentials ─► audit ─► notify
    on a failure retries cannot fix, or on cancel, once the tenant is claimed:
        remove_credentials (if stored) ─► delete_server (if created)
        ─► audit provisioning_failed ─► release the tenant claim

The run takes its argument raw (a dynamic workflow gets every start argument as an
undecoded payload) and decodes it with bounded size and depth itself, so whatever a
client sends ends the run at once with InvalidPurchaseRequest instead of failing the
workflow task forever.

Each arrow is an activity with a timeout and retry policy chosen for what it
talks to (see the policies below). The workflow itself only sequences them: no
I/O, no clocks but workflow.now(), no secrets (the password lives and dies inside
create_admin_credentials; only its encrypted envelope passes through here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

from workflows.contracts import (
    PLAN_CATALOG,
    WORKFLOW_TYPE,
    AuditEvent,
    InvalidPurchaseRequest,
    MailuTarget,
    Notification,
    NotifyUrlCheck,
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
    purchase_input_from_payloads,
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
    from activities.tenant_claims import TenantClaimActivities
    from activities.vault import VaultActivities
    from activities.vps_provider import VpsActivities

from workflows.tenant_claim import TenantClaim, TenantClaimRequest

# Runs started before the tenant claim and the notify_url check existed replay without them.
CLAIM_PATCH = "tenant-claim-v1"


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


# Provider API calls are quick; rate limits and 5xx clear within minutes. Adoption on
# uniqueness_error makes a retried create safe.
CREATE_SERVER = dict(start_to_close_timeout=timedelta(seconds=60), retry_policy=_policy(2, 60, 8))
# Infrequent polling: each attempt is one GET; the retry policy is the poll loop, so no
# worker slot is held while the server boots. Gives up after 15 minutes.
WAIT_FOR_SERVER = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=_policy(3, 3, backoff=1.0),
)
# Image pulls and MailU's first start take minutes: long timeout, heartbeats prove life.
CONFIGURE_MAILU = dict(
    start_to_close_timeout=timedelta(minutes=20),
    heartbeat_timeout=timedelta(minutes=2),
    retry_policy=_policy(15, 120, 5),
)
# One Transit call and one SSH command; a retry sets a fresh password, which is harmless.
CREATE_CREDENTIALS = dict(
    start_to_close_timeout=timedelta(minutes=2), retry_policy=_policy(5, 60, 5)
)
# Vault writes are fast; outages (sealed, leader election) are short. CAS makes retries safe.
STORE_CREDENTIALS = dict(
    start_to_close_timeout=timedelta(seconds=30), retry_policy=_policy(1, 30, 10)
)
# The audit row must not be lost: retry for up to a day (unique key keeps it to one row).
AUDIT = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)
# The customer's webhook may be down for a while; the mail server is ready regardless.
NOTIFY = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(hours=6),
    retry_policy=_policy(5, 300),
)
# One provider call plus its action; same reasoning as create_server.
SET_REVERSE_DNS = dict(start_to_close_timeout=timedelta(seconds=60), retry_policy=_policy(2, 60, 8))
# Two short SSH sessions; a retry trusts the old or the new key, so it is idempotent.
ROTATE_HOST_KEY = dict(start_to_close_timeout=timedelta(minutes=2), retry_policy=_policy(5, 60, 5))
# Compensation must finish: a leaked server costs money every hour.
DELETE_SERVER = dict(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(5, 300),
)
# A policy check on the worker's settings, no I/O: a failure is an answer, not an outage.
CHECK_NOTIFY_URL: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=10), retry_policy=_policy(1, 5, 3)
)
# One start (or describe) against Temporal itself; a refusal is final, outages are short.
TENANT_CLAIM = dict(start_to_close_timeout=timedelta(seconds=30), retry_policy=_policy(1, 30, 10))
# Releasing must happen, or the tenant stays blocked: retry for as long as deletion does.
TENANT_CLAIM_RELEASE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)
# Withdrawing a written record is one Vault call; like deletion, it must finish.
REMOVE_CREDENTIALS = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)


@workflow.defn(dynamic=True)
class ProvisionMailTenant:
    """Workflow type ProvisionMailTenant; dynamic only so that it receives raw arguments.

    As the task queue's dynamic workflow it also answers a start of any type the worker
    does not know (a typo, a retired name) with UnknownWorkflowType at once.
    """

    def __init__(self) -> None:
        self._status = ProvisionStatus(
            purchase_id=None, tenant_id=None, state="running", current_step=None
        )

    @workflow.query(name="status")
    def status(self) -> ProvisionStatus:
        return self._status

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> ProvisionResult:
        workflow_type = workflow.info().workflow_type
        if workflow_type != WORKFLOW_TYPE:
            raise ApplicationError(
                f"unknown workflow type {workflow_type[:100]!r} on this task queue; "
                f"start {WORKFLOW_TYPE!r}",
                type="UnknownWorkflowType",
                non_retryable=True,
            )
        request = await self._validate(args)
        claim = await self._claim_tenant(request)
        server: ServerHandle | None = None
        stored: StoredCredentials | None = None
        try:
            server = await self._step(
                "create_server",
                VpsActivities.create_server,
                self._server_spec(request),
                CREATE_SERVER,
            )
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
            failure = await self._compensate(request, server, stored, err)
            if claim is not None:
                await workflow.execute_activity_method(
                    TenantClaimActivities.release_tenant_claim,
                    replace(claim, reason=f"purchase failed: {failure.message}"),
                    summary="release tenant claim",
                    **TENANT_CLAIM_RELEASE,
                )
            if isinstance(err, asyncio.CancelledError):
                raise
            raise failure from err

        if claim is not None:
            await workflow.execute_activity_method(
                TenantClaimActivities.confirm_tenant_claim,
                claim,
                summary="confirm tenant claim",
                **TENANT_CLAIM_RELEASE,
            )

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
        result = replace(result, notified=await self._notify(request, result))
        self._status.state = "completed"
        self._status.current_step = None
        return result

    # ------------------------------------------------------------------ steps

    async def _validate(self, args: Sequence[RawValue]) -> PurchaseRequest:
        started = self._begin("validate_input")
        try:
            raw = purchase_input_from_payloads(
                [(arg.payload.metadata.get("encoding", b""), arg.payload.data) for arg in args]
            )
            request = PurchaseRequest.parse(raw)
            expected_id = workflow_id_for(request.purchase_id)
            if workflow.info().workflow_id != expected_id:
                raise InvalidPurchaseRequest(
                    "purchase_id", f"must match the workflow id (expected {expected_id!r})"
                )
            if request.notify_url is not None and workflow.patched(CLAIM_PATCH):
                await self._check_notify_url(request)
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
    async def _check_notify_url(request: PurchaseRequest) -> None:
        """The worker's outbound policy (https only, allowlists), before anything is bought."""
        assert request.notify_url is not None
        try:
            await workflow.execute_activity_method(
                NotifyActivities.check_notify_url,
                NotifyUrlCheck(request.tenant_id, request.notify_url),
                summary="check notify url",
                **CHECK_NOTIFY_URL,
            )
        except ActivityError as err:
            raise InvalidPurchaseRequest("notify_url", _reason(err)) from None

    async def _claim_tenant(self, request: PurchaseRequest) -> TenantClaimRequest | None:
        """Take the tenant's claim (workflows/tenant_claim.py) or refuse the purchase."""
        if not workflow.patched(CLAIM_PATCH):
            return None
        claim = TenantClaimRequest(request.tenant_id, workflow.info().workflow_id)
        try:
            run_id: str = await self._step(
                "claim_tenant", TenantClaimActivities.claim_tenant, claim, TENANT_CLAIM
            )
        except ActivityError as err:
            inner = _innermost(err)
            if isinstance(inner, ApplicationError) and inner.type == "TenantAlreadyProvisioned":
                raise ApplicationError(
                    inner.message, *inner.details, type=inner.type, non_retryable=True
                ) from None
            raise
        return replace(claim, run_id=run_id)

    @staticmethod
    def _server_spec(request: PurchaseRequest) -> ServerSpec:
        plan = PLAN_CATALOG[request.plan]
        return ServerSpec(
            tenant_id=request.tenant_id,
            name=server_name_for(request),
            server_type=plan.server_type,
            image=plan.image,
            location=plan.location,
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
        except ActivityError:
            workflow.logger.warning("customer notification failed; provisioning stands")
            return False
        return True

    async def _compensate(
        self,
        request: PurchaseRequest,
        server: ServerHandle | None,
        stored: StoredCredentials | None,
        err: BaseException,
    ) -> ApplicationError:
        """Undo what exists, newest first, then record why provisioning failed.

        Runs after a cancel too: Temporal lets a cancelled workflow schedule cleanup.
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
        kept = server is not None and request.keep_server_on_failure
        if kept:
            workflow.logger.warning("keeping the failed server for debugging, as requested")
        elif server is not None:
            await self._step("delete_server", VpsActivities.delete_server, server, DELETE_SERVER)
        await self._step(
            "audit_failure",
            AuditActivities.record_audit_event,
            self._audit_event(
                "provisioning_failed",
                request.tenant_id,
                {
                    "step": failed_step,
                    "error_type": _error_type(err),
                    "reason": reason,
                    "server_name": server.name if server else server_name_for(request),
                    "server_kept": str(kept).lower(),
                },
            ),
            AUDIT,
        )
        self._status.state = "failed"
        self._status.current_step = None
        return ApplicationError(
            f"provisioning failed at {failed_step}: {reason}",
            {"step": failed_step, "error_type": _error_type(err)},
            type="ProvisioningFailed",
            non_retryable=True,
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


def _innermost(err: BaseException) -> BaseException:
    while isinstance(err, ActivityError) and err.cause is not None:
        err = err.cause
    return err


def _reason(err: BaseException) -> str:
    """The innermost message: for an ActivityError, the activity's own error."""
    inner = _innermost(err)
    if isinstance(inner, asyncio.CancelledError):
        return "workflow cancelled"
    if isinstance(inner, FailureError):
        return inner.message or type(inner).__name__
    return str(inner) or type(inner).__name__


def _error_type(err: BaseException) -> str:
    inner = _innermost(err)
    if isinstance(inner, ApplicationError) and inner.type:
        return inner.type
    return type(inner).__name__


# Every workflow a worker of the task queue hosts: a worker without TenantClaim would let
# the dynamic ProvisionMailTenant answer the claim as an unknown type, releasing it.
WORKFLOWS = (ProvisionMailTenant, TenantClaim)
