"""ReconcileOrphans: delete the servers that no run will ever clean up.

A terminated or timed-out purchase run stops where it is: no compensation runs, so its
server keeps running and costing money; a run that kept its server on failure and was
cancelled leaves one too. This workflow (run by a Temporal Schedule every 15 minutes,
see `starter.py schedule-reconciler`) lists every server labelled as ours and decides,
from our own records, which are orphans (reconcile_contracts.orphan_evidence):

- a server whose purchase holds the tenant's claim is an orphan only if Temporal still
  shows that holder run (by run id) terminated, timed out, failed or cancelled: a
  completed run's server, or one whose run Temporal has forgotten, is never touched;
- a server whose purchase does not hold the claim is an orphan when the tenant has no
  current Vault record and the purchase is not running.

Once the grace period has passed it withdraws the Vault version the holder run stored
(only if still current), deletes the server (and waits for the provider), writes a
`provisioning_failed` audit row with reason `orphaned`, removes the tenant's rotation
schedule and asks the claim to end (its
owner check agrees once the server is gone). Last, every running claim whose owner
check fails (e.g. its purchase was terminated during admission, before any server)
is asked to release. Servers without our labels are never
looked at (the provider query selects on them). `dry_run` reports without changing
anything.

The start argument is taken raw and decoded with bounds: whatever a client sends ends
the run at once with a non-retryable InvalidReconcileRequest naming the field.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import AuditEvent, RemoveCredentialsRequest, ServerHandle, workflow_id_for
from workflows.input_rules import InvalidPurchaseRequest, purchase_input_from_payloads
from workflows.reconcile_contracts import (
    ORPHANED,
    RECONCILE_WORKFLOW,
    ManagedServer,
    OrphanReport,
    PurchaseRun,
    ReconcileReport,
    ReconcileRequest,
    RunQuery,
    StaleClaimsRequest,
    TenantRecord,
    orphan_evidence,
)
from workflows.rotation_contracts import RotationRequest

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AuditActivities,
        RotationScheduleActivities,
        TemporalRunsActivities,
        TenantClaimActivities,
        VaultActivities,
        VpsActivities,
        WorldActivities,
    )
    from workflows.policies import AUDIT, DELETE_SERVER, REMOVE_CREDENTIALS
    from workflows.policies import policy as _policy

# Listing and describing are reads: quick, retried briefly (the next schedule retries).
LOOKUP = dict(start_to_close_timeout=timedelta(seconds=60), retry_policy=_policy(2, 30, 5))
_NO_ARGUMENT = RawValue(Payload())


@workflow.defn(name=RECONCILE_WORKFLOW, failure_exception_types=[RuntimeError, TypeError])
class ReconcileOrphans:
    @workflow.run
    async def run(self, raw: RawValue = _NO_ARGUMENT) -> ReconcileReport:
        request = _decode(raw)
        servers: list[ManagedServer] = await _execute(
            VpsActivities.list_managed_servers, None, LOOKUP
        )
        report = ReconcileReport(dry_run=request.dry_run, servers_checked=len(servers))
        if servers:
            await self._reconcile_servers(request, servers, report)
        # Last, and not for the tenants just cleaned up (their claims were asked already).
        cleaned = sorted({o.tenant_id for o in report.orphans if o.action == "deleted"})
        report.stale_claims = await _execute(
            WorldActivities.release_stale_claims,
            StaleClaimsRequest(request.dry_run, cleaned),
            LOOKUP,
        )
        return report

    async def _reconcile_servers(
        self, request: ReconcileRequest, servers: list[ManagedServer], report: ReconcileReport
    ) -> None:
        tenants: list[TenantRecord] = await _execute(
            WorldActivities.tenant_records, sorted({s.tenant_id for s in servers}), LOOKUP
        )
        by_tenant = {tenant.tenant_id: tenant for tenant in tenants}
        queries = [_run_query(server, by_tenant[server.tenant_id]) for server in servers]
        runs: list[PurchaseRun] = await _execute(
            TemporalRunsActivities.describe_purchase_runs, queries, LOOKUP
        )
        for server, run in zip(servers, runs, strict=True):
            tenant = by_tenant[server.tenant_id]
            evidence = orphan_evidence(server, tenant, run)
            if evidence is None:
                continue
            orphan = OrphanReport(
                server.server_id,
                server.name,
                server.purchase_id,
                server.tenant_id,
                evidence,
                action="would delete" if request.dry_run else "deleted",
            )
            if not self._past_grace(server, run, request.grace_seconds):
                orphan.action = "in grace period"
            elif not request.dry_run:
                orphan.vault_version_withdrawn = await self._clean_up(server, tenant, run, evidence)
            report.orphans.append(orphan)

    @staticmethod
    def _past_grace(server: ManagedServer, run: PurchaseRun, grace_seconds: int) -> bool:
        now = workflow.now()
        moments = [m for m in (server.created, run.closed_at) if m]
        latest = max(_parse(m) for m in moments) if moments else now
        return now - latest >= timedelta(seconds=grace_seconds)

    async def _clean_up(
        self, server: ManagedServer, tenant: TenantRecord, run: PurchaseRun, evidence: str
    ) -> int | None:
        """Withdraw the holder run's Vault version, delete the server, audit. All idempotent."""
        holds_claim = tenant.holder == workflow_id_for(server.purchase_id)
        withdrawn = None
        if holds_claim and run.stored_version is not None:
            removed: bool = await _execute(
                VaultActivities.remove_credentials,
                RemoveCredentialsRequest(server.tenant_id, run.stored_version),
                REMOVE_CREDENTIALS,
            )
            withdrawn = run.stored_version if removed else None
        handle = ServerHandle(
            server.tenant_id, server.server_id, server.name, "", firewall_id=server.firewall_id
        )
        await _execute(VpsActivities.delete_server, handle, DELETE_SERVER)
        # The tenant's server is gone (a held claim's, or one no record kept live): stop
        # rotating it. The rotation would remove its schedule too, but only at its next
        # run, up to 180 days later.
        await _execute(
            RotationScheduleActivities.remove_rotation_schedule,
            RotationRequest(server.tenant_id),
            REMOVE_CREDENTIALS,
        )
        details: dict[str, Any] = {
            "step": "reconcile",
            "error_type": evidence,
            "reason": ORPHANED,
            "server_name": server.name,
            "server_kept": "false",
        }
        # One row per orphaned purchase run, however often the reconciler meets it.
        key = f"purchase-{server.purchase_id}/{run.run_id or 'none'}/{ORPHANED}/provisioning_failed"
        await _execute(
            AuditActivities.record_audit_event,
            AuditEvent(key, "provisioning_failed", server.tenant_id, details),
            AUDIT,
        )
        if holds_claim and tenant.claim_run_id is not None:
            # The stopped run never released its tenant's claim: ask it to end (its
            # owner check agrees now that the server is gone).
            await _execute(
                TenantClaimActivities.release_tenant_claim,
                TenantClaimRequest(
                    server.tenant_id,
                    workflow_id_for(server.purchase_id),
                    run_id=tenant.claim_run_id,
                    reason=f"{ORPHANED}: run {evidence}",
                ),
                REMOVE_CREDENTIALS,
            )
        return withdrawn


def _decode(raw: RawValue) -> ReconcileRequest:
    payloads = [] if raw.payload == Payload() else [raw.payload]
    try:
        value = purchase_input_from_payloads(
            [(p.metadata.get("encoding", b""), p.data) for p in payloads]
        )
        return ReconcileRequest.parse(value)
    except InvalidPurchaseRequest as err:
        raise ApplicationError(
            f"invalid reconcile request: field {err.field!r} {err.rule}",
            {"field": err.field, "rule": err.rule},
            type="InvalidReconcileRequest",
            non_retryable=True,
        ) from None


def _run_query(server: ManagedServer, tenant: TenantRecord) -> RunQuery:
    """The claim's holder run when this server's purchase holds the claim, else the latest."""
    if tenant.holder == workflow_id_for(server.purchase_id):
        return RunQuery(server.purchase_id, tenant.holder_run_id)
    return RunQuery(server.purchase_id)


async def _execute(activity: Any, arg: Any, options: dict[str, Any]) -> Any:
    args = [] if arg is None else [arg]
    return await workflow.execute_activity_method(activity, args=args, **options)


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))
