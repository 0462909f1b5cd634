"""Data contracts of the final snapshot a deprovisioning keeps for plans that promise
backups, and of ExpireFinalSnapshot, the durable timer that deletes it.

Plain data and pure functions, importable by the workflow sandbox, the activities and
the starter. What a snapshot is kept for comes from the worker's catalog
(activities/plans.py `backups`, `final_snapshot_retention_days`), never from a client;
when it is deleted is written on the snapshot itself (its `delete-after` label), so an
operator extends or shortens the retention by relabelling it (docs/OPERATIONS.md).
"""

from dataclasses import dataclass
from typing import Annotated

from workflows.contracts import OneOf

# The provider labels of a final snapshot, beside managed-by=mail-provisioning.
PURPOSE_LABEL = "purpose"
FINAL_SNAPSHOT_PURPOSE = "final-snapshot"
# When it may be deleted: UNIX seconds (UTC). A label value allows only [A-Za-z0-9._-],
# so no ISO timestamp; the description carries the readable date.
DELETE_AFTER_LABEL = "delete-after"
# The server it was taken of: a retried or resumed step finds its own snapshot by it.
SERVER_LABEL = "server"
FINAL_SNAPSHOT_SELECTOR = f"{PURPOSE_LABEL}={FINAL_SNAPSHOT_PURPOSE}"

EXPIRY_WORKFLOW_TYPE = "ExpireFinalSnapshot"
EXPIRY_ID_PREFIX = "final-snapshot-expiry-"
FINAL_SNAPSHOT_DELETED_EVENT = "final_snapshot_deleted"
# The image is not a final snapshot of ours: the timer refuses to delete it.
NOT_A_FINAL_SNAPSHOT = "NotAFinalSnapshot"
# check-world: a final snapshot this long past its delete-after is a disagreement
# even while its timer runs (the timer's delete is failing).
EXPIRY_GRACE_SECONDS = 3600


def expiry_workflow_id(image_id: int) -> str:
    """One timer per snapshot: Temporal runs one open workflow per id."""
    return f"{EXPIRY_ID_PREFIX}{image_id}"


def image_id_of_expiry(workflow_id: str) -> int | None:
    """`final-snapshot-expiry-{id}` -> id; None for any other workflow id."""
    raw = workflow_id.removeprefix(EXPIRY_ID_PREFIX)
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if raw == workflow_id or not (raw.isascii() and raw.isdigit()):
        return None
    if len(raw) > 18 or raw.startswith("0"):
        return None
    return int(raw)


@dataclass(frozen=True)
class FinalSnapshotRequest:
    """Snapshot one server of the tenant before it is deleted (take_final_snapshot)."""

    tenant_id: str
    server_id: int
    server_name: str
    purchase_id: str
    # The claim seen at inspection: a different one now means a new purchase (refused).
    claim_run_id: str | None
    # From the worker's catalog, by the server's plan (inspect_tenant).
    retention_seconds: int
    # The deprovisioning's clock when it decided (workflow.now()): delete-after is
    # taken_at + retention_seconds, the same on every attempt.
    taken_at: int


@dataclass(frozen=True)
class FinalSnapshot:
    """A snapshot that is `available` (its create action succeeded)."""

    image_id: int
    server_id: int
    delete_after: int  # UNIX seconds
    image_size_gb: float | None = None


@dataclass(frozen=True)
class ExpiryRequest:
    image_id: int
    # The timer's clock (workflow.now()): the snapshot is deleted only once its
    # delete-after label is not later than this.
    now: int


@dataclass(frozen=True)
class ExpiryOutcome:
    # "deleted" by this step, "gone" already (deleted by hand), or "not_yet": its
    # delete-after (perhaps extended by an operator) is still ahead.
    state: Annotated[str, OneOf("deleted", "gone", "not_yet")]
    delete_after: int = 0
    tenant_id: str = ""


@dataclass
class ExpiryStatus:
    """Answer of the `status` query on an ExpireFinalSnapshot run."""

    image_id: int | None
    state: str  # "waiting" | "deleted" | "gone" | "refused"
    delete_after: int = 0
