"""Data contracts of DeprovisionMailTenant: a cancelled tenant removed from the world.

Plain data and pure functions, importable by the workflow sandbox, the activities and
the starter. The start argument names only the tenant, who asked and why: what is
removed is read by the worker from our own records (the provider's labels, the Vault
record, the rotation schedule, the tenant's claim), never taken from a client.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from workflows.contracts import OneOf, StepProgress
from workflows.input_rules import (
    MAX_REQUESTED_BY,
    check_tenant_id,
    check_text,
    json_object,
    optional_string_field,
    start_argument,
    string_field,
)

DEPROVISION_WORKFLOW_TYPE = "DeprovisionMailTenant"
DEPROVISIONED_EVENT = "tenant_deprovisioned"
MAX_REASON = 500
# How often one run goes over the tenant's records before it gives up: a second pass
# only happens when something of the tenant appeared while the first one ran.
MAX_PASSES = 3
# Why the run refuses instead of deleting: a purchase of the tenant is still running
# (cancel it first; its own compensation undoes it), or a new purchase claimed the
# tenant while this run was removing the old one.
PURCHASE_IN_PROGRESS = "PurchaseInProgress"
# What the claim-release step answers when the tenant still has something of ours.
TENANT_NOT_EMPTY = "TenantNotEmpty"


def deprovision_workflow_id(tenant_id: str) -> str:
    """One deprovisioning per tenant at a time: Temporal runs one open workflow per id."""
    return f"deprovision-{tenant_id}"


class InvalidDeprovisionRequest(ValueError):
    """A start argument DeprovisionMailTenant refuses. Names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"invalid deprovision request: field '{field_name}' {rule}")
        self.field = field_name
        self.rule = rule


@dataclass(frozen=True)
class DeprovisionRequest:
    """`{"tenant_id": "acme", "requested_by": "billing", "reason": "cancelled"}`."""

    tenant_id: str
    requested_by: str
    reason: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> "DeprovisionRequest":
        refuse = InvalidDeprovisionRequest
        fields = json_object(raw, {"tenant_id", "requested_by", "reason"}, refuse)
        tenant = string_field(fields, "tenant_id", refuse)
        check_tenant_id(tenant, refuse)
        requested_by = string_field(fields, "requested_by", refuse)
        check_text(requested_by, "requested_by", MAX_REQUESTED_BY, refuse)
        reason = optional_string_field(fields, "reason", refuse)
        if reason is not None:
            check_text(reason, "reason", MAX_REASON, refuse)
        return cls(tenant, requested_by, reason)


def deprovision_request_from_payloads(
    payloads: Sequence[tuple[bytes, bytes]],
) -> DeprovisionRequest:
    """The raw start arguments into a DeprovisionRequest, decoded as the purchase's are
    (one argument, JSON only, bounded size and depth, no duplicate keys), so a bad or
    missing argument ends the run at once instead of failing the workflow task forever."""
    expected = ', {"tenant_id": ..., "requested_by": ...}'
    return DeprovisionRequest.parse(start_argument(payloads, InvalidDeprovisionRequest, expected))


@dataclass(frozen=True)
class TenantServer:
    """One server the provider labels as ours and as the tenant's."""

    server_id: int
    name: str
    purchase_id: str
    firewall_id: int | None = None
    # How long a final snapshot of it is kept, from the worker's catalog by the server's
    # plan (activities/final_snapshot.py); 0: its plan promises no backups, none taken.
    final_snapshot_retention_seconds: int = 0


@dataclass(frozen=True)
class TenantHoldings:
    """What our records hold for a tenant when the run looked (inspect_tenant).

    The later steps remove exactly these; the claim run is the one the tenant had then,
    so a purchase that claims the tenant afresh meanwhile is never touched.
    """

    tenant_id: str
    servers: list[TenantServer] = field(default_factory=list)
    # The latest KV v2 version of smtp/{tenant}/admin, current or soft-deleted (0: none).
    vault_version: int = 0
    vault_current: bool = False
    rotation_schedule: bool = False
    claim_run_id: str | None = None
    claim_holder: str | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.servers or self.vault_version or self.rotation_schedule or self.claim_run_id
        )


@dataclass(frozen=True)
class InspectRequest:
    tenant_id: str


@dataclass(frozen=True)
class DeleteServersRequest:
    tenant_id: str
    servers: list[TenantServer]
    # The claim seen at inspection: a different one now means a new purchase (refused).
    claim_run_id: str | None


@dataclass(frozen=True)
class DeletedServers:
    """What is gone once the step returns (whichever attempt removed it)."""

    server_ids: list[int]
    ssh_keys: list[str]  # the servers' login keys at the provider, by name
    firewalls_deleted: list[int]  # the mail firewall, when no other server used it


@dataclass(frozen=True)
class DestroyCredentialsRequest:
    tenant_id: str
    claim_run_id: str | None


@dataclass(frozen=True)
class ReleaseClaimRequest:
    tenant_id: str
    claim_run_id: str | None
    # The purchases whose servers this run removed: none of them may have one left.
    purchase_ids: list[str]
    reason: str


@dataclass(frozen=True)
class DeprovisionResult:
    tenant_id: str
    # "nothing_found": an earlier run (or nobody) left nothing of the tenant.
    outcome: Annotated[str, OneOf("deprovisioned", "nothing_found")]
    servers_deleted: list[int] = field(default_factory=list)
    vault_versions_destroyed: int = 0
    rotation_schedule_removed: bool = False
    claim_released: bool = False
    passes: int = 1
    # The final snapshots kept for a plan that promises backups (image ids), each
    # deleted by its ExpireFinalSnapshot timer (workflows/final_snapshot_expiry.py).
    final_snapshots: list[int] = field(default_factory=list)


@dataclass
class DeprovisionStatus:
    """Answer of the `status` query on a deprovisioning run."""

    tenant_id: str | None
    # "running" | "deprovisioned" | "nothing_found" | "refused" | "failed"
    state: str
    current_step: str | None = None
    steps: list[StepProgress] = field(default_factory=list)
    error: str | None = None
