"""DeprovisionMailTenant: a customer cancelled; remove the tenant for good.

    decode {"tenant_id", "requested_by", "reason"?} ─► inspect_tenant (our records;
        refused while a purchase of the tenant runs) ─► remove_rotation_schedule
        ─► take_final_snapshot (only a plan that promises backups; waits until it is
           available) ─► start ExpireFinalSnapshot (a child that outlives this run)
        ─► delete_tenant_servers (each with its login key; the firewall once unused)
        ─► destroy_tenant_credentials (every version and the metadata)
        ─► release_deprovisioned_claim (verifies nothing is left first)
        ─► audit tenant_deprovisioned

Workflow id `deprovision-{tenant_id}` (`starter.py deprovision TENANT`). The argument
names only the tenant, who asked and why: every target is read by the worker from our
own records (activities/deprovision.py), never from a client.

Order matters against a rotation racing it: the schedule goes first (no new rotation
starts), the servers before the Vault record (a rotation already running then finds no
server and stops as ServerGone, or fails its check-and-set write on the destroyed
record; it can only re-issue a record for a tenant that still has a server). Each step
is idempotent and the targets live in this run's history, so a crashed worker resumes
where it was; a second run finds less, or nothing (outcome `nothing_found`, no audit
row). If something of the tenant appears while a pass runs (the claim step verifies),
the run goes over the records again, at most MAX_PASSES times.

A running purchase of the tenant is never overtaken: the run is refused at once with
PurchaseInProgress (cancel the purchase first: its own compensation undoes it). Why
refuse instead of cancelling it: the back end decides what a cancelled half-made
purchase means to the customer; a refusal with a clear reason costs one activity.

A plan of the worker's catalog with `backups = true` gets a final snapshot of each
server before it is deleted (activities/final_snapshot.py): labelled with the tenant,
the server and when it may be deleted, found again by those labels on a retry, so a
resumed run never takes two. Its timer `final-snapshot-expiry-{image_id}` is started as
a child with ParentClosePolicy.ABANDON: this run ends at once, the timer deletes the
snapshot after the retention (workflows/final_snapshot_expiry.py).

Like the rotation, the argument arrives raw through the queue's dynamic workflow
(ProvisionMailTenant in workflows/dispatch.py), so a bad argument ends the run at once
with InvalidDeprovisionRequest naming the field, with nothing touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    WorkflowAlreadyStartedError,
)

from workflows.contracts import (
    VAULT_KV_MOUNT,
    AuditEvent,
    StepProgress,
    vault_secret_path_for,
)
from workflows.deprovision_contracts import (
    DEPROVISIONED_EVENT,
    MAX_PASSES,
    PURCHASE_IN_PROGRESS,
    TENANT_NOT_EMPTY,
    DeletedServers,
    DeleteServersRequest,
    DeprovisionRequest,
    DeprovisionResult,
    DeprovisionStatus,
    DestroyCredentialsRequest,
    InspectRequest,
    InvalidDeprovisionRequest,
    ReleaseClaimRequest,
    TenantHoldings,
    deprovision_request_from_payloads,
    deprovision_workflow_id,
)
from workflows.final_snapshot_contracts import (
    EXPIRY_WORKFLOW_TYPE,
    FinalSnapshot,
    FinalSnapshotRequest,
    expiry_workflow_id,
)
from workflows.rotation_contracts import RotationRequest

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AuditActivities,
        DeprovisionActivities,
        RotationScheduleActivities,
    )
    from workflows.failures import cancel_requested, error_type, reason
    from workflows.policies import (
        AUDIT,
        DELETE_TENANT_SERVERS,
        DESTROY_CREDENTIALS,
        INSPECT_TENANT,
        RELEASE_DEPROVISIONED_CLAIM,
        REMOVE_SCHEDULE,
        TAKE_FINAL_SNAPSHOT,
    )


class Deprovision:
    """One deprovisioning run; ProvisionMailTenant runs it for the DeprovisionMailTenant type."""

    def __init__(self) -> None:
        self.status = DeprovisionStatus(tenant_id=None, state="running")

    async def run(self, args: Sequence[RawValue]) -> DeprovisionResult:
        request = self._validate(args)
        self.status.tenant_id = request.tenant_id
        try:
            result = await self._deprovision(request)
        except ActivityError as err:
            if error_type(err) == PURCHASE_IN_PROGRESS:
                self._finish("refused", reason(err))
                raise ApplicationError(
                    reason(err), type=PURCHASE_IN_PROGRESS, non_retryable=True
                ) from None
            self._finish("failed", reason(err))
            raise ApplicationError(
                f"deprovisioning of tenant {request.tenant_id} failed: {reason(err)}",
                {"error_type": error_type(err)},
                type="DeprovisionFailed",
                non_retryable=True,
            ) from err
        except BaseException:
            self._finish("cancelled" if cancel_requested() else "failed")
            raise
        self._finish(result.outcome)
        return result

    def _validate(self, args: Sequence[RawValue]) -> DeprovisionRequest:
        try:
            request = deprovision_request_from_payloads(
                [(arg.payload.metadata.get("encoding", b""), arg.payload.data) for arg in args]
            )
            expected = deprovision_workflow_id(request.tenant_id)
            if workflow.info().workflow_id != expected:
                raise InvalidDeprovisionRequest(
                    "tenant_id", f"must match the workflow id (expected {expected!r})"
                )
        except InvalidDeprovisionRequest as err:
            self._finish("refused", str(err))
            raise ApplicationError(
                str(err),
                {"field": err.field, "rule": err.rule},
                type="InvalidDeprovisionRequest",
                non_retryable=True,
            ) from None
        return request

    async def _deprovision(self, request: DeprovisionRequest) -> DeprovisionResult:
        tenant = request.tenant_id
        servers_deleted: list[int] = []
        firewalls: list[int] = []
        ssh_keys: list[str] = []
        snapshots: list[FinalSnapshot] = []
        versions = 0
        schedule_removed = claim_released = False
        for passes in range(1, MAX_PASSES + 1):
            holdings: TenantHoldings = await self._step(
                "inspect_tenant",
                DeprovisionActivities.inspect_tenant,
                InspectRequest(tenant),
                INSPECT_TENANT,
            )
            if holdings.empty and passes == 1:
                return DeprovisionResult(tenant, "nothing_found")
            if holdings.rotation_schedule:
                # Gone once the step returns (False only says an earlier attempt did it).
                await self._step(
                    "remove_rotation_schedule",
                    RotationScheduleActivities.remove_rotation_schedule,
                    RotationRequest(tenant),
                    REMOVE_SCHEDULE,
                )
                schedule_removed = True
            if holdings.servers:
                snapshots += await self._final_snapshots(holdings)
                deleted: DeletedServers = await self._step(
                    "delete_tenant_servers",
                    DeprovisionActivities.delete_tenant_servers,
                    DeleteServersRequest(tenant, holdings.servers, holdings.claim_run_id),
                    DELETE_TENANT_SERVERS,
                )
                servers_deleted += deleted.server_ids
                firewalls += deleted.firewalls_deleted
                ssh_keys += deleted.ssh_keys
            if holdings.vault_version:
                # Gone once the step returns; a retry after a lost answer finds nothing
                # (0), so what inspection saw is reported unless more was destroyed.
                destroyed: int = await self._step(
                    "destroy_tenant_credentials",
                    DeprovisionActivities.destroy_tenant_credentials,
                    DestroyCredentialsRequest(tenant, holdings.claim_run_id),
                    DESTROY_CREDENTIALS,
                )
                versions = max(versions, destroyed, holdings.vault_version)
            try:
                claim_released |= await self._step(
                    "release_deprovisioned_claim",
                    DeprovisionActivities.release_deprovisioned_claim,
                    ReleaseClaimRequest(
                        tenant,
                        holdings.claim_run_id,
                        sorted({s.purchase_id for s in holdings.servers}),
                        f"deprovisioned by {workflow.info().workflow_id}",
                    ),
                    RELEASE_DEPROVISIONED_CLAIM,
                )
            except ActivityError as err:
                if error_type(err) != TENANT_NOT_EMPTY or passes == MAX_PASSES:
                    raise
                workflow.logger.warning("the tenant still has records; going over them again")
                continue
            result = DeprovisionResult(
                tenant,
                "deprovisioned",
                servers_deleted=sorted(set(servers_deleted)),
                vault_versions_destroyed=versions,
                rotation_schedule_removed=schedule_removed,
                claim_released=claim_released,
                passes=passes,
                final_snapshots=[s.image_id for s in snapshots],
            )
            await self._audit(
                request, result, sorted(set(ssh_keys)), sorted(set(firewalls)), snapshots
            )
            return result
        raise ApplicationError(  # not reached: the last pass returns or raises
            f"tenant {tenant} still has records after {MAX_PASSES} passes",
            type="DeprovisionIncomplete",
            non_retryable=True,
        )

    async def _final_snapshots(self, holdings: TenantHoldings) -> list[FinalSnapshot]:
        """A final snapshot of each server whose plan promises backups, each with its
        expiry timer started; none for the others (retention 0, read by the worker)."""
        taken: list[FinalSnapshot] = []
        for server in holdings.servers:
            if server.final_snapshot_retention_seconds <= 0:
                continue
            snapshot: FinalSnapshot | None = await self._step(
                "take_final_snapshot",
                DeprovisionActivities.take_final_snapshot,
                FinalSnapshotRequest(
                    holdings.tenant_id,
                    server.server_id,
                    server.name,
                    server.purchase_id,
                    holdings.claim_run_id,
                    server.final_snapshot_retention_seconds,
                    int(workflow.now().timestamp()),
                ),
                TAKE_FINAL_SNAPSHOT,
            )
            if snapshot is None:
                continue  # the server was gone already: nothing to keep
            # An earlier run of this tenant may have started its timer already.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await workflow.start_child_workflow(
                    EXPIRY_WORKFLOW_TYPE,
                    id=expiry_workflow_id(snapshot.image_id),
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                )
            taken.append(snapshot)
        return taken

    async def _audit(
        self,
        request: DeprovisionRequest,
        result: DeprovisionResult,
        ssh_keys: list[str],
        firewalls: list[int],
        snapshots: list[FinalSnapshot],
    ) -> None:
        info = workflow.info()
        details = {
            "requested_by": request.requested_by,
            "reason": request.reason or "",
            "servers_deleted": ",".join(str(s) for s in result.servers_deleted),
            "ssh_keys_deleted": ",".join(ssh_keys),
            "firewalls_deleted": ",".join(str(f) for f in firewalls),
            "vault_record_destroyed": (
                f"{VAULT_KV_MOUNT}/{vault_secret_path_for(request.tenant_id)}: "
                f"{result.vault_versions_destroyed} versions and metadata"
                if result.vault_versions_destroyed
                else ""
            ),
            "rotation_schedule_removed": str(result.rotation_schedule_removed).lower(),
            # image id:delete-after (UNIX seconds) of each final snapshot kept.
            "final_snapshots": ",".join(f"{s.image_id}:{s.delete_after}" for s in snapshots),
            "claim_released": str(result.claim_released).lower(),
        }
        event = AuditEvent(
            f"{info.workflow_id}/{info.run_id}/{DEPROVISIONED_EVENT}",
            DEPROVISIONED_EVENT,
            request.tenant_id,
            details,
        )
        await self._step("audit", AuditActivities.record_audit_event, event, AUDIT)

    async def _step(
        self, name: str, activity: Callable[..., Any], arg: Any, options: dict[str, Any]
    ) -> Any:
        """One activity, shown in the status query as the step `name`."""
        step = StepProgress(name, "running", self._now())
        self.status.steps.append(step)
        self.status.current_step = name
        try:
            result = await workflow.execute_activity_method(activity, arg, **options)
        except ActivityError as err:
            step.state, step.finished_at = "failed", self._now()
            self.status.error = reason(err)
            raise
        step.state, step.finished_at = "done", self._now()
        return result

    def _finish(self, state: str, error: str | None = None) -> None:
        self.status.state = state
        self.status.current_step = None
        if error:
            self.status.error = error

    @staticmethod
    def _now() -> str:
        return workflow.now().isoformat(timespec="seconds")
