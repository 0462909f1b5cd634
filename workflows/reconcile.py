"""ReconcileOrphans: delete the servers that no run will ever clean up.

A terminated or timed-out purchase run stops where it is: no compensation runs, so
its server keeps running and costing money. This workflow (run by a Temporal
Schedule every 15 minutes, see `starter.py schedule-reconciler`) lists every server
labelled as ours, asks Temporal what became of each one's purchase run, and for a
server whose run was terminated, timed out or never existed, once the grace period
has passed: withdraws the Vault version that run stored, deletes the server (and
waits for the provider), and writes a `provisioning_failed` audit row with reason
`orphaned`. Servers of running, completed, failed or cancelled runs are never
touched (failed and cancelled runs compensate themselves), nor servers without our
labels (the provider query selects on them). `dry_run` reports without changing
anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import AuditEvent, RemoveCredentialsRequest, ServerHandle
from workflows.reconcile_contracts import (
    ORPHANED,
    ORPHANING_STATES,
    RECONCILE_WORKFLOW,
    ManagedServer,
    OrphanReport,
    PurchaseRun,
    ReconcileReport,
    ReconcileRequest,
)

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AuditActivities,
        TemporalRunsActivities,
        TenantClaimActivities,
        VaultActivities,
        VpsActivities,
    )
    from workflows.policies import AUDIT, DELETE_SERVER, REMOVE_CREDENTIALS
    from workflows.policies import policy as _policy

# Listing and describing are reads: quick, retried briefly (the next schedule retries).
LOOKUP = dict(start_to_close_timeout=timedelta(seconds=60), retry_policy=_policy(2, 30, 5))


@workflow.defn(name=RECONCILE_WORKFLOW)
class ReconcileOrphans:
    @workflow.run
    async def run(self, request: ReconcileRequest) -> ReconcileReport:
        servers: list[ManagedServer] = await _execute(
            VpsActivities.list_managed_servers, None, LOOKUP
        )
        report = ReconcileReport(dry_run=request.dry_run, servers_checked=len(servers))
        if not servers:
            return report
        runs: list[PurchaseRun] = await _execute(
            TemporalRunsActivities.describe_purchase_runs,
            sorted({server.purchase_id for server in servers}),
            LOOKUP,
        )
        by_purchase = {run.purchase_id: run for run in runs}
        for server in servers:
            run = by_purchase[server.purchase_id]
            if run.status not in ORPHANING_STATES:
                continue
            orphan = OrphanReport(
                server.server_id,
                server.name,
                server.purchase_id,
                server.tenant_id,
                run.status,
                action="would delete" if request.dry_run else "deleted",
            )
            if not self._past_grace(server, run, request.grace_seconds):
                orphan.action = "in grace period"
            elif not request.dry_run:
                orphan.vault_version_withdrawn = await self._clean_up(server, run)
            report.orphans.append(orphan)
        return report

    @staticmethod
    def _past_grace(server: ManagedServer, run: PurchaseRun, grace_seconds: int) -> bool:
        now = workflow.now()
        moments = [m for m in (server.created, run.closed_at) if m]
        latest = max(_parse(m) for m in moments) if moments else now
        return now - latest >= timedelta(seconds=grace_seconds)

    async def _clean_up(self, server: ManagedServer, run: PurchaseRun) -> int | None:
        """Withdraw the run's Vault version, delete the server, audit. All idempotent."""
        withdrawn = None
        if run.stored_version is not None:
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
        details: dict[str, Any] = {
            "step": "reconcile",
            "error_type": run.status,
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
        # The terminated run never released its tenant claim: free the tenant to buy again.
        holder = f"purchase-{server.purchase_id}"
        await _execute(
            TenantClaimActivities.release_tenant_claim,
            TenantClaimRequest(server.tenant_id, holder, reason=f"{ORPHANED}: run {run.status}"),
            REMOVE_CREDENTIALS,
        )
        return withdrawn


async def _execute(activity: Any, arg: Any, options: dict[str, Any]) -> Any:
    args = [] if arg is None else [arg]
    return await workflow.execute_activity_method(activity, args=args, **options)


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))
