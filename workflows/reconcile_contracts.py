"""What the orphan reconciler (workflows/reconcile.py) and its activities exchange.

Kept apart from workflows/contracts.py: these are operator-facing, not part of the
purchase contract a back end uses.
"""

from dataclasses import dataclass, field
from typing import Any

from workflows.contracts import workflow_id_for
from workflows.input_rules import InvalidPurchaseRequest

RECONCILE_WORKFLOW = "ReconcileOrphans"
RECONCILE_SCHEDULE_ID = "mail-provisioning-reconciler"

# States (Temporal's WorkflowExecutionStatus names) of a claim's holder run that prove
# the purchase never completed: its server, still claimed, is an orphan. A run that is
# NOT_FOUND proves nothing (Temporal deletes closed runs after the retention period).
UNFINISHED_STATES = ("TERMINATED", "TIMED_OUT", "FAILED", "CANCELED")
# Evidence for a server that neither the tenant's claim nor a current Vault record
# protects (e.g. kept by keep_server_on_failure, then cancelled), whatever its run did.
UNCLAIMED = "UNCLAIMED"
MAX_GRACE_SECONDS = 30 * 24 * 3600
# Audit reason written for a server the reconciler deleted.
ORPHANED = "orphaned"


@dataclass(frozen=True)
class ManagedServer:
    """A server carrying our labels (managed-by=mail-provisioning, purchase=...)."""

    server_id: int
    name: str
    purchase_id: str
    tenant_id: str
    created: str  # ISO-8601 from the provider
    firewall_id: int | None = None  # released with the server once nothing else uses it


@dataclass(frozen=True)
class PurchaseRun:
    """The latest run of workflow purchase-{purchase_id}, as Temporal reports it."""

    purchase_id: str
    status: str  # RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, TIMED_OUT, NOT_FOUND, ...
    closed_at: str | None = None  # ISO-8601
    run_id: str | None = None
    # The Vault version the run stored before it stopped, if it got that far.
    stored_version: int | None = None


@dataclass(frozen=True)
class TenantRecord:
    """What our own records say about a tenant: its Vault record and its claim."""

    tenant_id: str
    vault_version: int | None  # the current record's version; None: none current
    claim_run_id: str | None = None  # the running claim, if any
    holder: str | None = None  # the purchase workflow id its memo names
    holder_run_id: str | None = None  # the purchase run that took it


@dataclass(frozen=True)
class RunQuery:
    """Which run to describe: the claim's holder run, or (None) the purchase's latest."""

    purchase_id: str
    run_id: str | None = None


@dataclass(frozen=True)
class StaleClaimsRequest:
    dry_run: bool
    # Tenants this pass already asked to release (after deleting their orphan).
    skip_tenants: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReconcileRequest:
    # A server younger than this (and a run closed more recently) is left alone: the
    # run may be about to adopt it, or an operator may be looking at it.
    grace_seconds: int = 3600
    dry_run: bool = False

    @classmethod
    def parse(cls, raw: Any) -> "ReconcileRequest":
        """A start argument from any client: an object with these two fields at most."""
        if not isinstance(raw, dict):
            raise InvalidPurchaseRequest("(input)", "must be a JSON object")
        unknown = sorted(set(raw) - {"grace_seconds", "dry_run"})
        if unknown:
            raise InvalidPurchaseRequest(str(unknown[0])[:60], "unknown field")
        grace = raw.get("grace_seconds", cls.grace_seconds)
        if type(grace) is not int or not 0 <= grace <= MAX_GRACE_SECONDS:
            raise InvalidPurchaseRequest(
                "grace_seconds", f"must be a whole number from 0 to {MAX_GRACE_SECONDS}"
            )
        dry_run = raw.get("dry_run", cls.dry_run)
        if type(dry_run) is not bool:
            raise InvalidPurchaseRequest("dry_run", "must be true or false")
        return cls(grace_seconds=grace, dry_run=dry_run)


def orphan_evidence(server: ManagedServer, tenant: TenantRecord, run: PurchaseRun) -> str | None:
    """Why `server` is an orphan, or None if a live tenant may use it.

    Decided from our own records: the tenant's claim and its Vault record. A server
    whose purchase holds the tenant's claim is an orphan only if Temporal still shows
    that holder run ended without completing; one whose purchase does not hold the
    claim is an orphan if the tenant has no current record either and its purchase is
    not running. So a completed purchase's server is never an orphan, whatever
    Temporal still remembers (`run` is `run` of the claim's holder run when it holds).
    """
    if tenant.holder == workflow_id_for(server.purchase_id):
        return run.status if run.status in UNFINISHED_STATES else None
    if run.status == "RUNNING" or tenant.vault_version is not None:
        return None
    return UNCLAIMED


@dataclass
class OrphanReport:
    server_id: int
    server_name: str
    purchase_id: str
    tenant_id: str
    run_status: str
    action: str  # "deleted" | "would delete" | "in grace period"
    vault_version_withdrawn: int | None = None


@dataclass
class ReconcileReport:
    dry_run: bool
    servers_checked: int
    orphans: list[OrphanReport] = field(default_factory=list)
    # Tenants whose claim failed its owner check (asked to release unless a dry run).
    stale_claims: list[str] = field(default_factory=list)
