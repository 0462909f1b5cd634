"""Our own records of the world, read together: what the reconciler, the tenant claim's
owner check, admission and check-world decide from.

Four records say whether a tenant has a mail server, and none of them is Temporal's
memory of a run (closed runs are deleted after the namespace's retention):
- the provider's servers carrying our labels (`managed-by`, `purchase`, `tenant`);
- the tenant's Vault record `smtp/{tenant}/admin`, current (latest version not deleted);
- the tenant's claim, the running TenantClaim `tenant-{tenant}`, whose memo names the
  purchase run that took it (workflow id and run id);
- the audit log and the rotation schedule, which check-world compares as well.
A run's status is used only as positive evidence (a run Temporal still knows was
terminated): a run that is NOT_FOUND says nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.audit import AuditStore
from activities.vault import Vault
from activities.vps_provider import (
    MANAGED_BY_SELECTOR,
    PURCHASE_LABEL,
    Image,
    Server,
    VpsProvider,
)
from workflows.claim_contracts import (
    CLAIM_ID_PREFIX,
    HOLDER_MEMO,
    HOLDER_RUN_MEMO,
    TENANT_CLAIM_TYPE,
    ClaimVerdict,
    tenant_claim_id,
)
from workflows.contracts import WORKFLOW_TYPE, workflow_id_for
from workflows.deprovision_contracts import DEPROVISION_WORKFLOW_TYPE, deprovision_workflow_id
from workflows.final_snapshot_contracts import (
    DELETE_AFTER_LABEL,
    EXPIRY_WORKFLOW_TYPE,
    FINAL_SNAPSHOT_SELECTOR,
    image_id_of_expiry,
)
from workflows.reconcile_contracts import (
    ManagedServer,
    PurchaseRun,
    StaleClaimsRequest,
    TenantRecord,
    orphan_evidence,
)
from workflows.rotation_contracts import rotation_schedule_id
from workflows.world_check_contracts import (
    WORLD_CHECKED,
    WORLD_DISAGREEMENTS,
    CompletedPurchase,
    FinalSnapshotView,
    TenantView,
    WorldReport,
    count_by_kind,
    disagreements,
)

NOT_FOUND = "NOT_FOUND"
STORED_EVENT = "smtp_credentials_stored"
RUNNING_CLAIMS = f"WorkflowType = '{TENANT_CLAIM_TYPE}' AND ExecutionStatus = 'Running'"
PURCHASE_PREFIX = workflow_id_for("")


@dataclass(frozen=True)
class ClaimHolder:
    """A running claim and the purchase run its memo names (None when it names none)."""

    tenant_id: str
    claim_run_id: str
    holder: str | None
    holder_run_id: str | None


@dataclass(frozen=True)
class RunFacts:
    """One run of a workflow as Temporal reports it (status NOT_FOUND if it knows none)."""

    status: str
    workflow_type: str | None = None
    closed_at: str | None = None
    run_id: str | None = None


def purchase_id_of(holder: str | None) -> str | None:
    """`purchase-{id}` -> id; None for anything that is not a purchase's workflow id."""
    if not holder or not holder.startswith(PURCHASE_PREFIX) or len(holder) > 100:
        return None
    return holder.removeprefix(PURCHASE_PREFIX) or None


class WorldRecords:
    """Read-only look-ups in the provider, Vault and Temporal (the caller's client)."""

    def __init__(self, vault: Vault, provider: VpsProvider) -> None:
        self._vault = vault
        self._provider = provider

    async def vault_version(self, tenant_id: str) -> int | None:
        """The tenant's current record version; None if there is none (or it is withdrawn)."""
        data, version = await asyncio.to_thread(self._vault.latest, tenant_id)
        return version if data is not None else None

    async def final_snapshots(self, label_selector: str) -> list[Image]:
        return await self._provider.find_snapshots(label_selector=label_selector)

    async def managed_servers(self, selector: str = "") -> list[Server]:
        label_selector = f"{MANAGED_BY_SELECTOR},{selector or PURCHASE_LABEL}"
        return await self._provider.find_servers(label_selector=label_selector)

    async def purchase_servers(self, purchase_id: str, tenant_id: str) -> list[Server]:
        """The servers labelled as this purchase's and this tenant's."""
        return await self.managed_servers(f"{PURCHASE_LABEL}={purchase_id},tenant={tenant_id}")

    @staticmethod
    async def claim_of(client: Client, tenant_id: str) -> ClaimHolder | None:
        """The tenant's running claim, or None when no claim is held."""
        try:
            description = await client.get_workflow_handle(tenant_claim_id(tenant_id)).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if description.status != WorkflowExecutionStatus.RUNNING:
            return None
        return ClaimHolder(
            tenant_id,
            description.run_id,
            await _memo_str(description, HOLDER_MEMO),
            await _memo_str(description, HOLDER_RUN_MEMO),
        )

    @staticmethod
    async def run_of(client: Client, workflow_id: str, run_id: str | None) -> RunFacts:
        """That run (or, without a run id, the latest run) of the workflow."""
        try:
            description = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
        except RPCError as err:
            if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return RunFacts(NOT_FOUND)
            raise
        status = description.status or WorkflowExecutionStatus.RUNNING
        return RunFacts(
            status.name,
            description.workflow_type,
            description.close_time.isoformat() if description.close_time else None,
            description.run_id,
        )

    @staticmethod
    async def start_input(client: Client, workflow_id: str, run_id: str) -> object:
        """The decoded start argument of that run (its first event), None if unreadable."""
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        try:
            async for event in handle.fetch_history_events():
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                if len(payloads) != 1:
                    return None
                [value] = await client.data_converter.decode(list(payloads))
                return value
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        except Exception:  # a hostile start's input: whatever it is, it is not readable
            return None
        return None

    @staticmethod
    async def purchase_tenant(client: Client, workflow_id: str, run_id: str) -> str | None:
        """The tenant_id a purchase run was started with (its first event), if readable."""
        value = await WorldRecords.start_input(client, workflow_id, run_id)
        tenant = value.get("tenant_id") if isinstance(value, dict) else None
        return tenant if isinstance(tenant, str) else None

    async def assess_holder(
        self,
        client: Client,
        tenant_id: str,
        holder: str | None,
        holder_run_id: str | None,
    ) -> ClaimVerdict:
        """Does the claim's holder still have a right to the tenant? (the owner check)

        Keep while the holder purchase has a server of this tenant (the reconciler
        decides what becomes of it), while its run is open (whoever asked for a release:
        its own compensation asks before the run closes, so a `release` proves nothing;
        the claim looks again once it has closed), and when it completed and the
        tenant's credentials are current, also if Temporal has forgotten the run.
        Anything else, a claim nobody's admission took included, is released.
        """
        purchase_id = purchase_id_of(holder)
        if purchase_id is None or not holder_run_id:
            return ClaimVerdict(False, f"no valid holder (memo holder={str(holder)[:80]!r})")
        assert holder is not None
        run = await self.run_of(client, holder, holder_run_id)
        if run.status != NOT_FOUND:
            if run.workflow_type != WORKFLOW_TYPE:
                return ClaimVerdict(False, f"holder {holder} is not a purchase")
            started_for = await self.purchase_tenant(client, holder, holder_run_id)
            if started_for != tenant_id:
                return ClaimVerdict(False, f"holder {holder} is not a purchase of this tenant")
        running = run.status == WorkflowExecutionStatus.RUNNING.name
        servers = await self.purchase_servers(purchase_id, tenant_id)
        if servers:
            return ClaimVerdict(
                True, f"holder's server {servers[0].name} exists", holder_running=running
            )
        if running:
            return ClaimVerdict(True, "holder is provisioning", holder_running=True)
        completed = run.status in (WorkflowExecutionStatus.COMPLETED.name, NOT_FOUND)
        if completed and await self.vault_version(tenant_id) is not None:
            return ClaimVerdict(True, "holder completed and the tenant's record is current")
        return ClaimVerdict(False, f"holder run {run.status.lower()} and has no server")


def _managed(server: Server) -> ManagedServer:
    return ManagedServer(
        server_id=server.id,
        name=server.name,
        purchase_id=server.labels.get(PURCHASE_LABEL, ""),
        tenant_id=server.labels.get("tenant", ""),
        created=server.created,
        firewall_id=server.firewall_ids[0] if server.firewall_ids else None,
    )


def _tenant_of_schedule(schedule_id: str) -> str | None:
    prefix = rotation_schedule_id("")
    return schedule_id.removeprefix(prefix) if schedule_id.startswith(prefix) else None


def tenant_of_claim_id(workflow_id: str) -> str | None:
    return (
        workflow_id.removeprefix(CLAIM_ID_PREFIX)
        if workflow_id.startswith(CLAIM_ID_PREFIX)
        else None
    )


async def _memo_str(description: Any, key: str) -> str | None:
    try:
        value = await description.memo_value(key, default=None)
    except Exception:  # a hand-made memo in an encoding we do not read
        return None
    return value if isinstance(value, str) else None


def unique(values: Sequence[str]) -> list[str]:
    return sorted({v for v in values if v})


class WorldActivities:
    """The reconciler's and check-world's reads of our records (never a write)."""

    def __init__(
        self, records: WorldRecords, client: Client, audit: AuditStore | None = None
    ) -> None:
        self._records = records
        self._client = client
        self._audit = audit

    @activity.defn(name="tenant_records")
    async def tenant_records(self, tenant_ids: list[str]) -> list[TenantRecord]:
        """Per tenant: its current Vault record's version and its running claim's holder."""
        records = []
        for tenant_id in tenant_ids:
            claim = await self._records.claim_of(self._client, tenant_id)
            records.append(
                TenantRecord(
                    tenant_id,
                    await self._records.vault_version(tenant_id),
                    claim.claim_run_id if claim else None,
                    claim.holder if claim else None,
                    claim.holder_run_id if claim else None,
                )
            )
        return records

    @activity.defn(name="release_stale_claims")
    async def release_stale_claims(self, request: StaleClaimsRequest) -> list[str]:
        """Tenants whose running claim fails its owner check; unless a dry run, each such
        claim is asked to release (it checks itself again and ends). Without this, a
        purchase terminated during admission blocks its tenant until the claim's next
        timer (10 minutes at first)."""
        stale = []
        async for execution in self._client.list_workflows(RUNNING_CLAIMS):
            tenant_id = tenant_of_claim_id(execution.id)
            if tenant_id is None or tenant_id in request.skip_tenants:
                continue
            verdict = await self._records.assess_holder(
                self._client,
                tenant_id,
                await _memo_str(execution, HOLDER_MEMO),
                await _memo_str(execution, HOLDER_RUN_MEMO),
            )
            if verdict.keep:
                continue
            stale.append(tenant_id)
            if not request.dry_run:
                handle = self._client.get_workflow_handle(execution.id, run_id=execution.run_id)
                try:
                    await handle.signal("release", f"reconciler: {verdict.reason}")
                except RPCError as err:
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
        return stale

    @activity.defn(name="check_world")
    async def check_world(self) -> WorldReport:
        """Read every record, compare them, and set the disagreement gauges."""
        report = await self._survey()
        report.counts = count_by_kind(report.disagreements)
        meter = activity.metric_meter()
        gauge = meter.create_gauge(WORLD_DISAGREEMENTS, "check-world disagreements, by kind")
        for kind, count in report.counts.items():
            gauge.with_additional_attributes({"kind": kind}).set(count)
        meter.create_gauge(WORLD_CHECKED, "when check-world last compared the records", "s").set(
            int(time.time())
        )
        return report

    async def _survey(self) -> WorldReport:
        client = self._client
        servers = [_managed(server) for server in await self._records.managed_servers()]
        claims = {
            tenant: execution
            async for execution in client.list_workflows(RUNNING_CLAIMS)
            if (tenant := tenant_of_claim_id(execution.id)) is not None
        }
        schedules = {
            tenant
            async for listed in await client.list_schedules()
            if (tenant := _tenant_of_schedule(listed.id)) is not None
        }
        rows = await asyncio.to_thread(self._audit.rows) if self._audit is not None else []
        # event key `purchase-{p}/{run}/smtp_credentials_stored` -> (workflow id, tenant)
        stored = {
            row.event_key.split("/", 1)[0]: row.tenant_id
            for row in rows
            if row.event == STORED_EVENT
        }
        completed = []
        running_purchases: set[str] = set()
        async for execution in client.list_workflows(f"WorkflowType = '{WORKFLOW_TYPE}'"):
            status = execution.status or WorkflowExecutionStatus.RUNNING
            if status == WorkflowExecutionStatus.RUNNING:
                running_purchases.add(execution.id)
            elif status == WorkflowExecutionStatus.COMPLETED:
                # By workflow id: a run reset to a later point completes with the row
                # its first run wrote (the audit step is replayed, not run again).
                audited = execution.id in stored
                completed.append(CompletedPurchase(execution.id, execution.run_id, audited))
        tenant_ids = unique(
            [s.tenant_id for s in servers] + list(claims) + list(schedules) + list(stored.values())
        )
        views = []
        for record in await self.tenant_records(tenant_ids):
            views.append(await self._view(record, servers, schedules, running_purchases, claims))
        snapshots = await self._final_snapshots()
        checked = {
            "final_snapshots": len(snapshots),
            "servers": len(servers),
            "tenants": len(tenant_ids),
            "claims": len(claims),
            "vault_records": sum(1 for v in views if v.record.vault_version is not None),
            "rotation_schedules": len(schedules),
            "completed_purchases": len(completed),
            "audit_rows": len(rows),
        }
        found = disagreements(views, completed, snapshots, int(time.time()))
        return WorldReport(found, checked)

    async def _final_snapshots(self) -> list[FinalSnapshotView]:
        """The final snapshots deprovisionings kept, each with whether its expiry timer
        (or the deprovisioning taking it) still runs."""
        selector = f"{MANAGED_BY_SELECTOR},{FINAL_SNAPSHOT_SELECTOR}"
        images = await self._records.final_snapshots(selector)
        if not images:
            return []
        timers = {
            image_id
            async for execution in self._client.list_workflows(
                f"WorkflowType = '{EXPIRY_WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
            )
            if (image_id := image_id_of_expiry(execution.id)) is not None
        }
        deprovisioning = {
            execution.id
            async for execution in self._client.list_workflows(
                f"WorkflowType = '{DEPROVISION_WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
            )
        }
        views = []
        for image in images:
            tenant = image.labels.get("tenant", "")
            raw = image.labels.get(DELETE_AFTER_LABEL, "")
            views.append(
                FinalSnapshotView(
                    image.id,
                    tenant,
                    int(raw) if raw.isascii() and raw.isdigit() else 0,
                    image.id in timers,
                    deprovision_workflow_id(tenant) in deprovisioning,
                )
            )
        return views

    async def _view(
        self,
        record: TenantRecord,
        servers: list[ManagedServer],
        schedules: set[str],
        running_purchases: set[str],
        claims: dict[str, Any],
    ) -> TenantView:
        tenant_id = record.tenant_id
        own = [s for s in servers if s.tenant_id == tenant_id]
        view = TenantView(tenant_id, own, record, rotation_schedule=tenant_id in schedules)
        view.in_flight = any(workflow_id_for(s.purchase_id) in running_purchases for s in own) or (
            record.holder is not None and record.holder in running_purchases
        )
        if record.claim_run_id is not None:
            verdict = await self._records.assess_holder(
                self._client,
                tenant_id,
                record.holder,
                record.holder_run_id,
            )
            view.claim_keep, view.claim_reason = verdict.keep, verdict.reason
        for server in own:
            holds = record.holder == workflow_id_for(server.purchase_id)
            facts = await self._records.run_of(
                self._client,
                workflow_id_for(server.purchase_id),
                record.holder_run_id if holds else None,
            )
            run = PurchaseRun(server.purchase_id, facts.status)
            evidence = orphan_evidence(server, record, run)
            if evidence is not None:
                view.orphan_evidence[server.server_id] = evidence
        return view
