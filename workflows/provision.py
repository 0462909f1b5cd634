"""ProvisionMailTenant: one purchase becomes a running mail server with stored credentials.

    validate input ─► admit (plan, notify URL policy, claim the tenant) ─► create_server
        ─► wait_for_server (then its reverse DNS) ─► rotate_host_key
        ─► configure_mailu (then the domain's DNS records) ─► create_admin_credentials
        ─► store_credentials ─► audit ─► schedule_rotation ─► notify
    on a failure retries cannot fix, or on a cancel, once the tenant is claimed, the
    undo steps registered so far, newest first (workflows/saga.py):
        remove_rotation_schedule ─► remove_credentials ─► delete_server
        ─► audit provisioning_failed ─► release the tenant claim

Each arrow is an activity with a timeout and retry policy chosen for what it talks to
(workflows/policies.py). The workflow only sequences them: no I/O, no clocks but
workflow.now(), no secrets (the password lives and dies inside
create_admin_credentials; only its encrypted envelope passes through here).

The run takes its argument raw (a dynamic workflow gets every start argument as an
undecoded payload) and decodes it with bounded size and depth itself, so whatever a
client sends ends the run at once with InvalidPurchaseRequest instead of failing the
workflow task forever.

A cancel at any step before the run completes, notification included, undoes the
purchase and the run ends CANCELLED. The steps whose effect must be undone (claim,
server, Vault record, rotation schedule) are waited for on cancel, so their undo runs
after the effect exists; a step that completed after the cancel is undone too
(workflows/steps.py). A completed run cannot be cancelled (Temporal refuses);
terminated runs are cleaned up by the reconciler (workflows/reconcile.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import (
    WORKFLOW_TYPE,
    Admission,
    AdmissionRequest,
    AuditEvent,
    DnsRecord,
    DnsRecordsRequest,
    MailuTarget,
    Notification,
    ProvisionResult,
    ProvisionStatus,
    PurchaseRequest,
    RemoveCredentialsRequest,
    ServerHandle,
    ServerSpec,
    ServerUpRequest,
    StoreCredentialsRequest,
    StoredCredentials,
    mail_hostname_for,
    server_name_for,
    webmail_url_for,
    workflow_id_for,
)
from workflows.failures import (
    cancel_requested,
    cancelled_at,
    provisioning_failed,
    raise_if_refused,
    stop_cause,
)
from workflows.input_rules import InvalidPurchaseRequest, purchase_input_from_payloads
from workflows.policies import (
    ADMIT_PURCHASE,
    AUDIT,
    CONFIGURE_MAILU,
    CREATE_CREDENTIALS,
    CREATE_SERVER,
    DELETE_SERVER,
    NOTIFY,
    REMOVE_CREDENTIALS,
    REMOVE_SCHEDULE,
    ROTATE_HOST_KEY,
    SCHEDULE_ROTATION,
    STORE_CREDENTIALS,
    TENANT_CLAIM_RELEASE,
    WAIT_FOR_SERVER,
)
from workflows.rotation_contracts import RotationRequest, RotationScheduleRequest
from workflows.saga import Saga
from workflows.steps import StepTracker

# One module, one pass through the sandbox's importer per run (workflows/activity_refs.py).
with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AdmissionActivities,
        AuditActivities,
        CredentialsActivities,
        MailuActivities,
        NotifyActivities,
        RotationScheduleActivities,
        SshTrustActivities,
        TenantClaimActivities,
        VaultActivities,
        VpsActivities,
    )

# What ends the story early: a step's final failure, or a cancel of the run.
STOPPED = (ActivityError, CancelledError, asyncio.CancelledError)
# The webhook's fields (ready_event), in the result's order.
READY_FIELDS = tuple(f.name for f in fields(ProvisionResult) if f.name != "notified")
RECORD_FIELDS = tuple(f.name for f in fields(DnsRecord))


def ready_event(result: ProvisionResult) -> dict[str, Any]:
    """The webhook's body: `event`, then the result's fields but `notified`, DNS records
    as objects. The same dict as `{"event": ..., **dataclasses.asdict(result)}` without
    `notified`, built one level at a time: asdict copies every value and asks
    `isinstance` of each, and while a workflow task runs the sandbox makes every
    `isinstance` in the process a chain of Python calls (32 of them for this one dict;
    docs/PERFORMANCE.md, change 10)."""
    payload: dict[str, Any] = {"event": "mail_server_ready"}
    for name in READY_FIELDS:
        payload[name] = getattr(result, name)
    payload["dns_records"] = [
        {name: getattr(record, name) for name in RECORD_FIELDS} for record in result.dns_records
    ]
    return payload


class Purchase:
    """One purchase: the story, and the undo steps it registers as it advances."""

    def __init__(self) -> None:
        self.steps = StepTracker(
            ProvisionStatus(purchase_id=None, tenant_id=None, state="running", current_step=None)
        )
        self.status = self.steps.status
        self.undo = Saga()
        # What compensation must know: set as the steps answer, read by the undo steps.
        self.claim_run_id: str | None = None
        self.server: ServerHandle | None = None
        self.stored: StoredCredentials | None = None
        self.keep_failed_servers = False
        self.failure: tuple[str, BaseException] = ("unknown", CancelledError())
        self.audit_extra: dict[str, str] = {}

    async def run(self, args: Sequence[RawValue]) -> ProvisionResult:
        workflow_type = workflow.info().workflow_type
        if workflow_type != WORKFLOW_TYPE:
            raise ApplicationError(
                f"unknown workflow type {workflow_type[:100]!r} on this task queue; "
                f"start {WORKFLOW_TYPE!r}",
                type="UnknownWorkflowType",
                non_retryable=True,
            )
        request = self._validate(args)
        try:
            result = await self._story(request)
        except STOPPED as err:
            raise await self._compensate(err) from None
        self.steps.finish("completed")
        return result

    async def _story(self, request: PurchaseRequest) -> ProvisionResult:
        """The sequence diagram above; each effect's undo is registered before its step."""
        admission = await self._admit(request)
        spec = self._server_spec(request, admission)
        self.undo.add("audit_failure", lambda: self._audit_failure(request, spec.name))
        self.undo.add("delete_server", lambda: self._delete_server(request.purchase_id))
        server: ServerHandle = await self.steps.run(
            "create_server", VpsActivities.create_server, spec, CREATE_SERVER, self._created
        )
        address = await self.steps.run(
            "wait_for_server",
            VpsActivities.bring_up_server,
            ServerUpRequest(server, mail_hostname_for(request.domain)),
            WAIT_FOR_SERVER,
        )
        target = MailuTarget(
            request.tenant_id,
            request.domain,
            server.name,
            address.ssh_address,
            server.host_public_key,
        )
        new_host_key: str = await self.steps.run(
            "rotate_host_key", SshTrustActivities.rotate_host_key, target, ROTATE_HOST_KEY
        )
        target = replace(target, host_public_key=new_host_key)
        self.status.dns_records = await self.steps.run(
            "configure_mailu",
            MailuActivities.set_up_mailu,
            DnsRecordsRequest(request.tenant_id, target, address.ipv4, address.ipv6),
            CONFIGURE_MAILU,
        )
        credentials = await self.steps.run(
            "create_admin_credentials",
            CredentialsActivities.create_admin_credentials,
            target,
            CREATE_CREDENTIALS,
        )
        webmail_url = webmail_url_for(request.domain)
        self.undo.add("remove_credentials", lambda: self._remove_credentials(request.tenant_id))
        stored: StoredCredentials = await self.steps.run(
            "store_credentials",
            VaultActivities.store_credentials,
            StoreCredentialsRequest(request.tenant_id, credentials, webmail_url),
            STORE_CREDENTIALS,
            self._stored,
        )
        await self.steps.run(
            "audit",
            AuditActivities.record_audit_event,
            self._audit_event(
                "smtp_credentials_stored",
                request.tenant_id,
                {"username": credentials.username, "webmail_url": webmail_url},
            ),
            AUDIT,
        )
        self.undo.add("remove_rotation_schedule", lambda: self._remove_schedule(request.tenant_id))
        await self._schedule_rotation(target)
        result = ProvisionResult(
            purchase_id=request.purchase_id,
            tenant_id=request.tenant_id,
            server_id=server.server_id,
            server_name=server.name,
            ipv4=address.ipv4,
            ipv6=address.ipv6,
            webmail_url=webmail_url,
            vault_path=stored.vault_path,
            vault_version=stored.version,
            notified=False,
            dns_records=self.status.dns_records,
        )
        return replace(result, notified=await self._notify(request, result))

    # ------------------------------------------------------------------ steps

    def _validate(self, args: Sequence[RawValue]) -> PurchaseRequest:
        started = self.steps.begin("validate_input")
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
        except InvalidPurchaseRequest as err:
            self.steps.end(started, "failed", error=str(err))
            raise err.as_failure() from None
        self.status.purchase_id = request.purchase_id
        self.status.tenant_id = request.tenant_id
        self.steps.end(started, "done")
        return request

    async def _admit(self, request: PurchaseRequest) -> Admission:
        """The plan, the notify URL under the worker's policy, the tenant's claim.

        Bad input (an unknown plan, a refused URL) and a tenant that already has a
        server end the run at once, before anything is bought. Any other failure may
        follow an attempt that took the claim: the claim is released (only if this
        purchase holds it).
        """
        holder = workflow.info().workflow_id
        self.undo.add("release_claim", lambda: self._release_claim(request.tenant_id, holder))
        try:
            admission: Admission = await self.steps.run(
                "admit_purchase",
                AdmissionActivities.admit_purchase,
                AdmissionRequest(request.tenant_id, request.plan, request.notify_url, holder),
                ADMIT_PURCHASE,
                self._admitted,
            )
        except ActivityError as err:
            raise_if_refused(err)
            raise
        return admission

    async def _schedule_rotation(self, target: MailuTarget) -> None:
        """Create `rotate-{tenant}` (workflows/rotation.py); the server stands either way."""
        request = RotationScheduleRequest(target, workflow.info().task_queue)
        try:
            await self.steps.run(
                "schedule_rotation",
                RotationScheduleActivities.ensure_rotation_schedule,
                request,
                SCHEDULE_ROTATION,
            )
        except ActivityError:
            if cancel_requested():
                raise
            workflow.logger.error("rotation schedule not created; provisioning stands")

    async def _notify(self, request: PurchaseRequest, result: ProvisionResult) -> bool:
        """The server is ready whether or not the webhook answers: a failure is reported."""
        if request.notify_url is None:
            self.steps.skip("notify")
            return False
        notification = Notification(
            request.tenant_id, request.notify_url, workflow.info().workflow_id, ready_event(result)
        )
        try:
            await self.steps.run("notify", NotifyActivities.notify_customer, notification, NOTIFY)
        except ActivityError:
            if cancel_requested():
                raise
            workflow.logger.warning("customer notification failed; provisioning stands")
            return False
        return True

    # ------------------------------------------------------------------ compensation

    async def _compensate(self, err: BaseException) -> Exception:
        """Run the undo steps registered so far; returns what the run ends with:
        CancelledError (CANCELLED) once a cancel was requested, whatever the step that
        was running then answered, else ProvisioningFailed."""
        step = self.status.current_step or "unknown"
        cancelled = cancel_requested()
        self.failure = (step, err)
        self.status.stopped_at = step
        self.steps.compensate(stop_cause(err)["reason"])
        await self.undo.compensate()
        self.steps.finish("cancelled" if cancelled else "failed")
        return cancelled_at(step) if cancelled else provisioning_failed(step, err)

    async def _release_claim(self, tenant_id: str, holder: str) -> None:
        """The tenant may buy again (released only if this purchase holds the claim)."""
        step, err = self.failure
        outcome = cancelled_at(step) if cancel_requested() else provisioning_failed(step, err)
        await workflow.execute_activity_method(
            TenantClaimActivities.release_tenant_claim,
            TenantClaimRequest(tenant_id, holder, self.claim_run_id, f"purchase failed: {outcome}"),
            **TENANT_CLAIM_RELEASE,
        )

    async def _delete_server(self, purchase_id: str) -> None:
        """By id once create_server answered; else whatever server carries the label."""
        if self.keep_failed_servers:
            workflow.logger.warning("keeping the failed server for debugging, as configured")
        elif self.server is not None:
            await self.steps.run(
                "delete_server", VpsActivities.delete_server, self.server, DELETE_SERVER
            )
        else:
            deleted: list[int] = await self.steps.run(
                "delete_server", VpsActivities.delete_purchase_servers, purchase_id, DELETE_SERVER
            )
            self.audit_extra["servers_deleted"] = str(len(deleted))

    async def _remove_credentials(self, tenant_id: str) -> None:
        """Withdraw the version this run wrote, if it is still the current one."""
        if self.stored is not None:
            await self.steps.run(
                "remove_credentials",
                VaultActivities.remove_credentials,
                RemoveCredentialsRequest(tenant_id, self.stored.version),
                REMOVE_CREDENTIALS,
            )

    async def _remove_schedule(self, tenant_id: str) -> None:
        await self.steps.run(
            "remove_rotation_schedule",
            RotationScheduleActivities.remove_rotation_schedule,
            RotationRequest(tenant_id),
            REMOVE_SCHEDULE,
        )

    async def _audit_failure(self, request: PurchaseRequest, server_name: str) -> None:
        step, err = self.failure
        kept = self.keep_failed_servers and self.server is not None
        details = {
            "step": step,
            **stop_cause(err),
            "server_name": server_name,
            "server_kept": str(kept).lower(),
            **self.audit_extra,
        }
        event = self._audit_event("provisioning_failed", request.tenant_id, details)
        await self.steps.run("audit_failure", AuditActivities.record_audit_event, event, AUDIT)

    # ------------------------------------------------------------------ bookkeeping

    def _admitted(self, admission: Admission) -> None:
        self.claim_run_id = admission.claim_run_id
        self.keep_failed_servers = admission.keep_failed_servers

    def _created(self, server: ServerHandle) -> None:
        self.server = server

    def _stored(self, stored: StoredCredentials) -> None:
        self.stored = stored

    @staticmethod
    def _server_spec(request: PurchaseRequest, admission: Admission) -> ServerSpec:
        return ServerSpec(
            tenant_id=request.tenant_id,
            name=server_name_for(request),
            plan=admission.plan,
            labels={
                "purchase": request.purchase_id,
                "tenant": request.tenant_id,
                "managed-by": "mail-provisioning",
                # The plan it runs on (each plan change relabels it): deprovisioning
                # reads from it whether the plan promises a final snapshot.
                "plan": request.plan,
            },
        )

    @staticmethod
    def _audit_event(event: str, tenant_id: str, details: dict[str, str]) -> AuditEvent:
        info = workflow.info()
        return AuditEvent(f"{info.workflow_id}/{info.run_id}/{event}", event, tenant_id, details)
