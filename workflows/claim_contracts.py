"""What the tenant claim (workflows/tenant_claim.py) and its users exchange.

Plain dataclasses and names, no I/O: the worker passes this module through the workflow
sandbox (worker.workflow_runner) instead of re-importing it for every run.
"""

from dataclasses import dataclass

TENANT_CLAIM_TYPE = "TenantClaim"
HOLDER_MEMO = "holder"  # the workflow id of the purchase holding the claim


def tenant_claim_id(tenant_id: str) -> str:
    return f"tenant-{tenant_id}"


@dataclass(frozen=True)
class TenantClaimRequest:
    """Take (or, with run_id and reason, release) a tenant's claim."""

    tenant_id: str
    holder: str  # the purchase's workflow id
    run_id: str | None = None  # the claim run this purchase started
    reason: str = ""


@dataclass(frozen=True)
class TenantClaimState:
    """Answer of the `claim` query: who holds the tenant, and whether it still does."""

    holder: str
    # "held" | "released"; "provisioned" on claims confirmed by older purchases
    state: str
    release_reason: str | None = None
