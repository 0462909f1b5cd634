"""What the orphan reconciler (workflows/reconcile.py) and its activities exchange.

Kept apart from workflows/contracts.py: these are operator-facing, not part of the
purchase contract a back end uses.
"""

from dataclasses import dataclass, field

RECONCILE_WORKFLOW = "ReconcileOrphans"
RECONCILE_SCHEDULE_ID = "mail-provisioning-reconciler"

# Run states (Temporal's WorkflowExecutionStatus names) whose servers are orphans:
# nothing will ever compensate them. FAILED and CANCELED runs compensated themselves
# (and a failed run with keep_server_on_failure keeps its server on purpose).
ORPHANING_STATES = ("TERMINATED", "TIMED_OUT", "NOT_FOUND")
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
class ReconcileRequest:
    # A server younger than this (and a run closed more recently) is left alone: the
    # run may be about to adopt it, or an operator may be looking at it.
    grace_seconds: int = 3600
    dry_run: bool = False


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
