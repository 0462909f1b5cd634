"""ProvisionMailTenant: one purchase becomes a running mail server with stored credentials.

    validate input ─► admit (plan, notify URL policy, claim the tenant) ─► create_server
        ─► wait_for_server (then its reverse DNS) ─► rotate_host_key
        ─► configure_mailu (then the domain's DNS records) ─► create_admin_credentials
        ─► store_credentials ─► audit
    on a failure retries cannot fix, or on cancel, once the tenant is claimed:
        remove_credentials (if stored) ─► delete_server (if created)
        ─► audit provisioning_failed ─► release the tenant claim
    after the audit: ensure the tenant's rotation schedule, notify

Runs started before the FEWER_ACTIONS patch replay their own, longer sequence (separate
notify URL check, plan and claim activities, reverse DNS and DNS records as steps of
their own, a final claim confirmation): see the `_legacy_*` methods, to be removed with
`workflow.deprecate_patch` once no such run is open.

The run takes its argument raw (a dynamic workflow gets every start argument as an
undecoded payload) and decodes it with bounded size and depth itself, so whatever a
client sends ends the run at once with InvalidPurchaseRequest instead of failing the
workflow task forever.

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
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import (
    WORKFLOW_TYPE,
    Admission,
    AdmissionRequest,
    AuditEvent,
    DnsRecord,
    DnsRecordsRequest,
    InvalidPurchaseRequest,
    MailuTarget,
    Notification,
    NotifyUrlCheck,
    Plan,
    PlanRequest,
    ProvisionResult,
    ProvisionStatus,
    PurchaseRequest,
    RemoveCredentialsRequest,
    ReverseDnsRequest,
    SealedCredentials,
    ServerAddress,
    ServerHandle,
    ServerSpec,
    ServerUpRequest,
    StepProgress,
    StoreCredentialsRequest,
    StoredCredentials,
    mail_hostname_for,
    purchase_input_from_payloads,
    server_name_for,
    webmail_url_for,
    workflow_id_for,
)
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE, RotationScheduleRequest

# One module, one pass through the sandbox's importer per run (workflows/activity_refs.py).
with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AdmissionActivities,
        AuditActivities,
        CredentialsActivities,
        MailuActivities,
        NotifyActivities,
        PlanActivities,
        RotationScheduleActivities,
        SshTrustActivities,
        TenantClaimActivities,
        VaultActivities,
        VpsActivities,
    )


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
# Runs started since this patch admit a purchase in one activity, wait and set reverse
# DNS in one, configure MailU and export its DNS records in one, and no longer confirm
# the claim: 5 billable actions fewer per purchase (docs/PERFORMANCE.md). The patch's
# marker is recorded once per run.
FEWER_ACTIONS = "fewer-actions-per-purchase"
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
# One attempt polls until the server runs (activities/vps_provider.py), then sets its
# reverse DNS (one quick provider call). It heartbeats from half the heartbeat timeout on
# and the SDK sends one per 80% of it, so a 2-minute boot costs the activity plus 2
# heartbeats instead of 40 retries, and a boot under 45 s none (each is a billable
# action, docs/PERFORMANCE.md). The price: a worker that dies mid-wait is noticed after
# 90 s, which delays the purchase only by what exceeds the boot still under way.
# Retries are for provider errors only. Gives up after 15 minutes.
WAIT_FOR_SERVER = dict(
    start_to_close_timeout=timedelta(minutes=15),
    heartbeat_timeout=timedelta(seconds=90),
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
# One start (or describe) against Temporal itself; a refusal is final, outages are short.
TENANT_CLAIM: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30), retry_policy=_policy(1, 30, 10)
)
# Two lookups in the worker's configuration and one start (or describe) against Temporal
# itself (activities/admission.py): a refusal is final, outages are short.
ADMIT_PURCHASE = TENANT_CLAIM
# Releasing must happen, or the tenant stays blocked: retry for as long as deletion does.
TENANT_CLAIM_RELEASE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)
# One Temporal call; a working server must not lose its rotation to a short outage.
SCHEDULE_ROTATION = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)
# Withdrawing a written record is one Vault call; like deletion, it must finish.
REMOVE_CREDENTIALS = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=_policy(1, 60),
)

# Only for runs started before FEWER_ACTIONS, whose steps these were.
# A dictionary lookup in the worker's catalog. A regular activity, not a local one:
# Temporal writes a local activity's marker metadata as json/plain, past the payload
# codec, and every payload of a purchase's history is to be encrypted.
RESOLVE_PLAN: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=10), retry_policy=_policy(1, 10, 3)
)
# A policy check on the worker's settings, no I/O: a failure is an answer, not an outage.
CHECK_NOTIFY_URL: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=10), retry_policy=_policy(1, 5, 3)
)
# One provider call plus its action; same reasoning as create_server.
SET_REVERSE_DNS = dict(
    start_to_close_timeout=timedelta(seconds=60),
    heartbeat_timeout=HEARTBEAT,
    retry_policy=_policy(2, 60, 8),
)
# One export over SSH (plus a one-time DKIM key generation): like a short MailU step.
DNS_RECORDS = dict(
    start_to_close_timeout=timedelta(minutes=2),
    heartbeat_timeout=HEARTBEAT,
    retry_policy=_policy(5, 60, 5),
)


@workflow.defn(dynamic=True)
class ProvisionMailTenant:
    """Workflow type ProvisionMailTenant; dynamic only so that it receives raw arguments.

    Only the queue's one dynamic workflow gets every start argument undecoded (the SDK
    decodes a named workflow's arguments before its code runs, and a bad one fails the
    workflow task forever), so it also runs the other types any client may start with
    anything: RotateSmtpCredentials (workflows/rotation.py). A start of any type the
    worker does not know (a typo, a retired name) ends with UnknownWorkflowType at once.

    The class is a thin shell around Purchase: the sandbox re-executes this module for
    every run, and the SDK then inspects every member of a workflow class (a runtime
    protocol check each), so the steps live on a plain class (docs/PERFORMANCE.md).
    """

    def __init__(self) -> None:
        self._purchase = Purchase()
        self._rotation: Any = None

    @workflow.query(name="status")
    def status(self) -> Any:
        """ProvisionStatus, or RotationStatus on a RotateSmtpCredentials run."""
        return self._purchase.status if self._rotation is None else self._rotation.status

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> Any:
        if workflow.info().workflow_type == ROTATION_WORKFLOW_TYPE:
            # Imported here, on purpose (so without the sandbox's warning about a late
            # import): a purchase run's sandbox never loads the rotation module.
            with workflow.unsafe.sandbox_import_notification_policy(
                workflow.SandboxImportNotificationPolicy.SILENT
            ):
                from workflows.rotation import Rotation

            self._rotation = Rotation()
            return await self._rotation.run(args)
        return await self._purchase.run(args)


class Purchase:
    """One purchase's sequence, its compensation and its progress (the `status` query)."""

    def __init__(self) -> None:
        self.status = ProvisionStatus(
            purchase_id=None, tenant_id=None, state="running", current_step=None
        )
        # Decided by workflow.patched(FEWER_ACTIONS) as the run starts.
        self._fewer_actions = True

    async def run(self, args: Sequence[RawValue]) -> ProvisionResult:
        workflow_type = workflow.info().workflow_type
        if workflow_type != WORKFLOW_TYPE:
            raise ApplicationError(
                f"unknown workflow type {workflow_type[:100]!r} on this task queue; "
                f"start {WORKFLOW_TYPE!r}",
                type="UnknownWorkflowType",
                non_retryable=True,
            )
        # Before any command, so that a run from before the patch replays unchanged.
        self._fewer_actions = workflow.patched(FEWER_ACTIONS)
        request = await self._validate(args)
        plan, claim = await self._admit(request)
        spec = self._server_spec(request, plan)
        try:
            server: ServerHandle = await self._step(
                "create_server", VpsActivities.create_server, spec, CREATE_SERVER
            )
        except (ActivityError, asyncio.CancelledError) as err:
            if _is_cancel(err):
                outcome = await self._cancel_during_create(request, spec, err)
            else:
                outcome = await self._fail_before_server(request, spec, err)
            await self._release_claim(claim, outcome)
            raise outcome from None
        stored: StoredCredentials | None = None
        try:
            address = await self._bring_up(request, server)
            target = MailuTarget(
                request.tenant_id,
                request.domain,
                server.name,
                address.ssh_address,
                server.host_public_key,
            )
            new_host_key: str = await self._step(
                "rotate_host_key", SshTrustActivities.rotate_host_key, target, ROTATE_HOST_KEY
            )
            target = replace(target, host_public_key=new_host_key)
            dns_records = await self._set_up_mailu(
                DnsRecordsRequest(request.tenant_id, target, address.ipv4, address.ipv6)
            )
            self.status.dns_records = dns_records
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
            outcome = await self._compensate(request, server, stored, err)
            await self._release_claim(claim, outcome)
            raise outcome from err

        await self._schedule_rotation(target)
        result = ProvisionResult(
            purchase_id=request.purchase_id,
            tenant_id=request.tenant_id,
            server_id=server.server_id,
            server_name=server.name,
            ipv4=address.ipv4,
            ipv6=address.ipv6,
            webmail_url=webmail_url_for(request.domain),
            vault_path=stored.vault_path,
            vault_version=stored.version,
            notified=False,
            dns_records=dns_records,
        )
        try:
            notified = await self._notify(request, result)
        except (ActivityError, asyncio.CancelledError) as err:
            # Only a cancel gets here: the purchase is void, so undo it all.
            outcome = await self._compensate(request, server, stored, err)
            await self._release_claim(claim, outcome)
            raise outcome from err
        if not self._fewer_actions:
            await self._legacy_confirm_claim(claim)
        result = replace(result, notified=notified)
        self.status.state = "completed"
        self.status.current_step = None
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
            if request.notify_url is not None and not self._fewer_actions:
                await self._legacy_check_notify_url(request)
        except InvalidPurchaseRequest as err:
            self._end(started, "failed", error=str(err))
            raise err.as_failure() from None
        self.status.purchase_id = request.purchase_id
        self.status.tenant_id = request.tenant_id
        self._end(started, "done")
        return request

    async def _admit(self, request: PurchaseRequest) -> tuple[Plan, TenantClaimRequest]:
        """The plan, the notify URL under the worker's policy, the tenant's claim.

        Bad input (an unknown plan, a refused URL) and a tenant that already has a
        server end the run at once, before anything is bought.
        """
        if not self._fewer_actions:
            return await self._legacy_admit(request)
        holder = workflow.info().workflow_id
        admission_request = AdmissionRequest(
            request.tenant_id, request.plan, request.notify_url, holder
        )
        started = self._begin("admit_purchase")
        try:
            admission: Admission = await workflow.execute_activity_method(
                AdmissionActivities.admit_purchase, admission_request, **ADMIT_PURCHASE
            )
        except ActivityError as err:
            self._end(started, "failed", error=_reason(err))
            _raise_if_refused(err)
            # Out of retries: an earlier attempt may have taken the claim (released
            # only if this purchase holds it).
            await self._release_claim(TenantClaimRequest(request.tenant_id, holder), err)
            raise
        self._end(started, "done")
        return admission.plan, TenantClaimRequest(
            request.tenant_id, holder, run_id=admission.claim_run_id
        )

    async def _bring_up(self, request: PurchaseRequest, server: ServerHandle) -> ServerAddress:
        """Wait until the server runs, then point its reverse DNS at the mail host name."""
        dns_ptr = mail_hostname_for(request.domain)
        if not self._fewer_actions:
            return await self._legacy_bring_up(request, server, dns_ptr)
        address: ServerAddress = await self._step(
            "wait_for_server",
            VpsActivities.bring_up_server,
            ServerUpRequest(server, dns_ptr),
            WAIT_FOR_SERVER,
        )
        return address

    async def _set_up_mailu(self, request: DnsRecordsRequest) -> list[DnsRecord]:
        """Configure MailU, then read the records the customer must publish."""
        if not self._fewer_actions:
            return await self._legacy_set_up_mailu(request)
        dns_records: list[DnsRecord] = await self._step(
            "configure_mailu", MailuActivities.set_up_mailu, request, CONFIGURE_MAILU
        )
        return dns_records

    async def _release_claim(self, claim: TenantClaimRequest, outcome: Exception) -> None:
        """Compensation's last step: the tenant may buy again."""
        await workflow.execute_activity_method(
            TenantClaimActivities.release_tenant_claim,
            replace(claim, reason=f"purchase failed: {outcome}"),
            **TENANT_CLAIM_RELEASE,
        )

    @staticmethod
    def _server_spec(request: PurchaseRequest, plan: Plan) -> ServerSpec:
        return ServerSpec(
            tenant_id=request.tenant_id,
            name=server_name_for(request),
            plan=plan,
            labels={
                "purchase": request.purchase_id,
                "tenant": request.tenant_id,
                "managed-by": "mail-provisioning",
            },
        )

    async def _step(self, name: str, activity: Any, arg: Any, options: dict[str, Any]) -> Any:
        started = self._begin(name)
        try:
            result = await workflow.execute_activity_method(activity, arg, **options)
        except ActivityError as err:
            self._end(started, "failed", error=_reason(err))
            raise
        except asyncio.CancelledError:
            self._end(started, "failed", error="cancelled")
            raise
        self._end(started, "done")
        return result

    async def _schedule_rotation(self, target: MailuTarget) -> None:
        """Create `rotate-{tenant}` (workflows/rotation.py); the server stands either way."""
        request = RotationScheduleRequest(target, workflow.info().task_queue)
        try:
            await self._step(
                "schedule_rotation",
                RotationScheduleActivities.ensure_rotation_schedule,
                request,
                SCHEDULE_ROTATION,
            )
        except ActivityError:
            workflow.logger.error("rotation schedule not created; provisioning stands")

    async def _notify(self, request: PurchaseRequest, result: ProvisionResult) -> bool:
        """The server is ready whether or not the webhook answers: a failure is reported."""
        if request.notify_url is None:
            self.status.steps.append(StepProgress("notify", "skipped", self._now(), self._now()))
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
        failed_step = self.status.current_step or "unknown"
        reason = _reason(err)
        self.status.state = "compensating"
        self.status.error = reason
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
        self.status.current_step = None
        if _is_cancel(err):
            self.status.state = "cancelled"
            return CancelledError(f"purchase cancelled at {failed_step}; compensated")
        self.status.state = "failed"
        return _provisioning_failed(failed_step, err)

    async def _cancel_during_create(
        self, request: PurchaseRequest, spec: ServerSpec, err: BaseException
    ) -> Exception:
        """A cancel while the server was being bought: no handle, so delete by label."""
        self.status.state = "compensating"
        self.status.error = _reason(err)
        deleted: list[int] = await self._step(
            "delete_server",
            VpsActivities.delete_purchase_servers,
            request.purchase_id,
            DELETE_SERVER,
        )
        await self._audit_failure(
            request, "create_server", err, spec.name, kept=False, servers_deleted=str(len(deleted))
        )
        self.status.state = "cancelled"
        self.status.current_step = None
        return CancelledError("purchase cancelled at create_server; compensated")

    async def _fail_before_server(
        self, request: PurchaseRequest, spec: ServerSpec, err: BaseException
    ) -> Exception:
        """create_server gave up (e.g. resource_limit_exceeded): nothing to undo but the
        claim; the failure is audited like any other."""
        self.status.state = "compensating"
        self.status.error = _reason(err)
        await self._audit_failure(request, "create_server", err, spec.name, kept=False)
        self.status.state = "failed"
        self.status.current_step = None
        return _provisioning_failed("create_server", err)

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

    # ------------------------------------------------------------------ legacy
    # Runs started before FEWER_ACTIONS replay these; no new run takes them.

    @staticmethod
    async def _legacy_check_notify_url(request: PurchaseRequest) -> None:
        assert request.notify_url is not None
        try:
            await workflow.execute_activity_method(
                NotifyActivities.check_notify_url,
                NotifyUrlCheck(request.tenant_id, request.notify_url),
                **CHECK_NOTIFY_URL,
            )
        except ActivityError as err:
            raise InvalidPurchaseRequest("notify_url", _reason(err)) from None

    async def _legacy_admit(self, request: PurchaseRequest) -> tuple[Plan, TenantClaimRequest]:
        started = self._begin("resolve_plan")
        try:
            plan: Plan = await workflow.execute_activity_method(
                PlanActivities.resolve_plan,
                PlanRequest(request.tenant_id, request.plan),
                **RESOLVE_PLAN,
            )
        except ActivityError as err:
            self._end(started, "failed", error=_reason(err))
            _raise_if_refused(err)
            raise
        self._end(started, "done")
        claim = TenantClaimRequest(request.tenant_id, workflow.info().workflow_id)
        try:
            run_id: str = await self._step(
                "claim_tenant", TenantClaimActivities.claim_tenant, claim, TENANT_CLAIM
            )
        except ActivityError as err:
            _raise_if_refused(err)
            raise
        return plan, replace(claim, run_id=run_id)

    async def _legacy_bring_up(
        self, request: PurchaseRequest, server: ServerHandle, dns_ptr: str
    ) -> ServerAddress:
        address: ServerAddress = await self._step(
            "wait_for_server", VpsActivities.wait_for_server, server, WAIT_FOR_SERVER
        )
        await self._step(
            "set_reverse_dns",
            VpsActivities.set_reverse_dns,
            ReverseDnsRequest(
                request.tenant_id, server.server_id, address.ipv4, dns_ptr, ipv6=address.ipv6
            ),
            SET_REVERSE_DNS,
        )
        return address

    async def _legacy_set_up_mailu(self, request: DnsRecordsRequest) -> list[DnsRecord]:
        await self._step(
            "configure_mailu", MailuActivities.configure_mailu, request.target, CONFIGURE_MAILU
        )
        dns_records: list[DnsRecord] = await self._step(
            "dns_records", MailuActivities.mail_dns_records, request, DNS_RECORDS
        )
        return dns_records

    @staticmethod
    async def _legacy_confirm_claim(claim: TenantClaimRequest) -> None:
        await workflow.execute_activity_method(
            TenantClaimActivities.confirm_tenant_claim, claim, **TENANT_CLAIM_RELEASE
        )

    # ------------------------------------------------------------------ bookkeeping

    def _audit_event(self, event: str, tenant_id: str, details: dict[str, str]) -> AuditEvent:
        info = workflow.info()
        return AuditEvent(f"{info.workflow_id}/{info.run_id}/{event}", event, tenant_id, details)

    def _now(self) -> str:
        return workflow.now().isoformat(timespec="seconds")

    def _begin(self, name: str) -> StepProgress:
        step = StepProgress(name, "running", self._now())
        self.status.steps.append(step)
        self.status.current_step = name
        return step

    def _end(self, step: StepProgress, state: str, error: str | None = None) -> None:
        step.state = state
        step.finished_at = self._now()
        if error:
            self.status.error = error
            if self.status.state == "running":
                self.status.state = "failed"


def _is_cancel(err: BaseException) -> bool:
    """The workflow itself was cancelled (not an activity that gave up on its own)."""
    return workflow.cancellation_reason() is not None and is_cancelled_exception(err)


def _provisioning_failed(step: str, err: BaseException) -> ApplicationError:
    """What a run ends with after compensating a failure at `step`."""
    return ApplicationError(
        f"provisioning failed at {step}: {_reason(err)}",
        {"step": step, "error_type": _error_type(err)},
        type="ProvisioningFailed",
        non_retryable=True,
    )


def _raise_if_refused(err: ActivityError) -> None:
    """Bad input or a tenant that has a server: the run ends at once, nothing bought."""
    cause = _innermost(err)
    if isinstance(cause, ApplicationError) and cause.type in (
        "InvalidPurchaseRequest",
        "TenantAlreadyProvisioned",
    ):
        raise ApplicationError(
            cause.message, *cause.details, type=cause.type, non_retryable=True
        ) from None


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
