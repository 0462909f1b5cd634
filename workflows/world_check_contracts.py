"""check-world: do the world's records agree? (activities/world.py reads them.)

Plain data and one pure function, `disagreements`, which compares what the survey
read: per tenant its labelled servers, current Vault record, claim (and the owner
check's verdict on it), rotation schedule and whether a purchase for it is in flight;
per completed purchase run its audit row. Every disagreement names the fix an
operator applies (docs/OPERATIONS.md, "check-world").
"""

from dataclasses import dataclass, field

from workflows.final_snapshot_contracts import (
    EXPIRY_GRACE_SECONDS,
    EXPIRY_ID_PREFIX,
    EXPIRY_WORKFLOW_TYPE,
)
from workflows.reconcile_contracts import ManagedServer, TenantRecord

WORLD_CHECK_WORKFLOW = "CheckWorld"
WORLD_CHECK_SCHEDULE_ID = "mail-provisioning-check-world"
# The gauges check_world sets (runtime/metrics.py lists them with the others):
# disagreements by kind, zeros included, and when that worker last compared the
# records (the alert reads the disagreements of the worker with the newest check only).
WORLD_DISAGREEMENTS = "mailprov_world_disagreements"
WORLD_CHECKED = "mailprov_world_checked_timestamp_seconds"
# Every kind check-world reports; the metric has one series per kind, zeros included.
KINDS = (
    "orphaned_server",
    "server_without_claim",
    "server_without_record",
    "tenant_with_several_servers",
    "claim_without_live_holder",
    "claim_without_server",
    "record_without_server",
    "live_tenant_without_rotation_schedule",
    "rotation_schedule_without_server",
    "completed_purchase_without_audit_row",
    "final_snapshot_without_timer",
    "final_snapshot_past_expiry",
)


@dataclass
class TenantView:
    tenant_id: str
    servers: list[ManagedServer]
    record: TenantRecord  # Vault version and the running claim's holder
    claim_keep: bool | None = None  # the owner check's verdict; None: no claim
    claim_reason: str = ""
    # Server id -> why the reconciler would delete it (reconcile_contracts.orphan_evidence).
    orphan_evidence: dict[int, str] = field(default_factory=dict)
    rotation_schedule: bool = False
    in_flight: bool = False  # a purchase of this tenant is running: mid-way is fine


@dataclass(frozen=True)
class FinalSnapshotView:
    """A final snapshot a deprovisioning kept (workflows/final_snapshot_contracts.py)."""

    image_id: int
    tenant_id: str
    delete_after: int  # UNIX seconds, its label (0: unreadable)
    timer_running: bool  # its ExpireFinalSnapshot run is open
    deprovision_running: bool  # the tenant's deprovisioning is still taking it


@dataclass(frozen=True)
class CompletedPurchase:
    workflow_id: str
    run_id: str
    audited: bool


@dataclass(frozen=True)
class Disagreement:
    kind: str
    subject: str  # tenant-{id}, server name, or purchase run
    detail: str
    fix: str


@dataclass
class WorldReport:
    disagreements: list[Disagreement]
    # What was looked at: servers, tenants, claims, records, schedules, completed runs.
    checked: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)


def disagreements(
    tenants: list[TenantView],
    completed: list[CompletedPurchase],
    snapshots: list[FinalSnapshotView] | None = None,
    now: int = 0,
) -> list[Disagreement]:
    found: list[Disagreement] = []
    for tenant in tenants:
        if not tenant.in_flight:
            found.extend(_tenant_disagreements(tenant))
    for snapshot in snapshots or []:
        found.extend(_snapshot_disagreements(snapshot, now))
    for run in completed:
        if not run.audited:
            found.append(
                Disagreement(
                    "completed_purchase_without_audit_row",
                    f"{run.workflow_id}/{run.run_id}",
                    "the run completed but the audit log has no smtp_credentials_stored row for it",
                    "find who removed it (`starter.py audit-verify`); the run's history "
                    "shows what was stored",
                )
            )
    return found


def _tenant_disagreements(tenant: TenantView) -> list[Disagreement]:
    t = tenant.tenant_id
    record = tenant.record
    found: list[Disagreement] = []

    def add(kind: str, subject: str, detail: str, fix: str) -> None:
        found.append(Disagreement(kind, subject, detail, fix))

    live_servers = [s for s in tenant.servers if s.server_id not in tenant.orphan_evidence]
    for server in tenant.servers:
        evidence = tenant.orphan_evidence.get(server.server_id)
        if evidence is not None:
            add(
                "orphaned_server",
                server.name,
                f"server {server.server_id} of purchase {server.purchase_id} is an orphan "
                f"({evidence}): no run will clean it up",
                "`starter.py reconcile` deletes it once past the grace period",
            )
            continue
        if record.holder != f"purchase-{server.purchase_id}":
            add(
                "server_without_claim",
                server.name,
                f"server {server.server_id} of purchase {server.purchase_id} is live (the "
                f"tenant's record is current) but tenant-{t} is "
                + (f"held by {record.holder}" if record.holder else "not claimed"),
                f"restore the claim naming the purchase run (docs/OPERATIONS.md, "
                f"'Restoring a lost claim'); until then admission refuses tenant {t}",
            )
        if record.vault_version is None:
            add(
                "server_without_record",
                server.name,
                f"server {server.server_id} has no current Vault record smtp/{t}/admin",
                f"undelete the withdrawn version (`bao kv undelete -versions=N smtp/{t}/admin`)"
                f" or, if the server is not wanted, delete it and release tenant-{t}",
            )
    if len(live_servers) > 1:
        add(
            "tenant_with_several_servers",
            f"tenant-{t}",
            f"servers {sorted(s.server_id for s in live_servers)} all count as live",
            "keep the one its claim's holder bought; delete the others by hand",
        )
    if record.claim_run_id is not None:
        if tenant.claim_keep is False:
            add(
                "claim_without_live_holder",
                f"tenant-{t}",
                f"claim held by {record.holder}: {tenant.claim_reason}",
                "the claim ends itself at its next owner check; now: "
                f"`temporal workflow signal --workflow-id tenant-{t} --name release`",
            )
        elif not tenant.servers:
            add(
                "claim_without_server",
                f"tenant-{t}",
                f"claim held by {record.holder} ({tenant.claim_reason}) but no server",
                f"the server was deleted outside the product: withdraw smtp/{t}/admin, "
                f"then signal release to tenant-{t}",
            )
    if record.vault_version is not None and not tenant.servers:
        add(
            "record_without_server",
            f"tenant-{t}",
            f"smtp/{t}/admin version {record.vault_version} is current but no server exists",
            f"withdraw it (`bao kv delete smtp/{t}/admin`) or restore the server",
        )
    if tenant.rotation_schedule and not tenant.servers:
        add(
            "rotation_schedule_without_server",
            f"rotate-{t}",
            "a rotation schedule for a tenant without a server",
            f"`temporal schedule delete --schedule-id rotate-{t}`",
        )
    live = live_servers and record.vault_version is not None
    if live and not tenant.rotation_schedule:
        add(
            "live_tenant_without_rotation_schedule",
            f"tenant-{t}",
            "a live tenant's credentials are never rotated",
            f"recreate it: `starter.py rotate {t}` needs it; re-run the purchase's "
            "schedule_rotation step (docs/OPERATIONS.md)",
        )
    return found


def _snapshot_disagreements(snapshot: FinalSnapshotView, now: int) -> list[Disagreement]:
    """A final snapshot is expected while its expiry timer runs (or the deprovisioning
    that takes it still does) and until its delete-after; past it by more than the
    grace, its timer's delete is failing (or it has none)."""
    subject = f"image-{snapshot.image_id}"
    timer = f"{EXPIRY_ID_PREFIX}{snapshot.image_id}"
    found: list[Disagreement] = []
    if not snapshot.timer_running and not snapshot.deprovision_running:
        found.append(
            Disagreement(
                "final_snapshot_without_timer",
                subject,
                f"final snapshot {snapshot.image_id} of tenant {snapshot.tenant_id} has no "
                f"running {timer}: nothing will delete it (billed per GB-month)",
                f"start it: `temporal workflow start --type {EXPIRY_WORKFLOW_TYPE} "
                f"--task-queue mail-provisioning --workflow-id {timer}` (it reads the "
                "image's delete-after label)",
            )
        )
    if now > snapshot.delete_after + EXPIRY_GRACE_SECONDS:
        found.append(
            Disagreement(
                "final_snapshot_past_expiry",
                subject,
                f"final snapshot {snapshot.image_id} of tenant {snapshot.tenant_id} is past "
                f"its delete-after ({snapshot.delete_after}) by more than "
                f"{EXPIRY_GRACE_SECONDS} s",
                f"see why {timer} has not deleted it (`temporal workflow show -w {timer}`); "
                "to keep it longer, relabel delete-after (docs/OPERATIONS.md)",
            )
        )
    return found


def count_by_kind(found: list[Disagreement]) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for item in found:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return counts
