"""What the tenant claim (workflows/tenant_claim.py) and its users exchange.

Plain dataclasses and names, no I/O: the worker passes this module through the workflow
sandbox (worker.workflow_runner) instead of re-importing it for every run.
"""

from dataclasses import dataclass
from datetime import timedelta

TENANT_CLAIM_TYPE = "TenantClaim"
CLAIM_ID_PREFIX = "tenant-"
HOLDER_MEMO = "holder"  # the workflow id of the purchase holding the claim
# The run of that purchase which took the claim: a later run of the same purchase id
# (a start with another reuse policy, a cron or retry run) is not the holder.
HOLDER_RUN_MEMO = "holder_run_id"
# When the claim looks at its holder again after the look at its start: soon after
# (a purchase terminated during admission leaks no claim for long), then ever more
# rarely; each look costs a timer and one activity (3 billable actions).
HOLDER_CHECK_INTERVALS = (
    timedelta(minutes=10),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=7),
)
# After a `release` found the holder run still open (the purchase's compensation sends it
# before its run closes; a stranger may send it any time): look again this soon, each
# a timer and one activity, until the holder has closed; then HOLDER_CHECK_INTERVALS.
RELEASE_FOLLOW_UPS = (timedelta(seconds=15), timedelta(seconds=30), timedelta(minutes=1))


def tenant_claim_id(tenant_id: str) -> str:
    return f"{CLAIM_ID_PREFIX}{tenant_id}"


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
    # "held" | "released"
    state: str
    release_reason: str | None = None
    holder_run_id: str | None = None
    # The last owner check's answer (activities/tenant_claims.py check_claim_holder).
    last_check: str | None = None


@dataclass(frozen=True)
class ClaimHolderCheck:
    """Ask whether the claim's holder still has a right to it.

    The claim's tenant, holder and holder run are read by the activity from the claim
    workflow itself (its id and memo), never taken from here: only whether a release
    was asked for is, and it is only logged: anyone can send `release`, so the verdict
    never depends on it.
    """

    release_requested: bool = False


@dataclass(frozen=True)
class ClaimVerdict:
    keep: bool
    reason: str
    # The holder run is open: whatever a `release` says, the claim stays until it closes.
    holder_running: bool = False
