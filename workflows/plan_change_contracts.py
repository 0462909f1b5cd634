"""Data contracts of a plan change (ChangeMailPlan): input, what the steps exchange, result.

Plain data and pure functions, importable by the workflow sandbox, the activities and
the starter. Nothing secret: the admin login is proven again by the rotation activity,
inside which the new password lives and dies (activities/credentials.py).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from workflows.contracts import MailuTarget, OneOf, StepProgress
from workflows.input_rules import (
    MAX_REQUESTED_BY,
    check_plan_name,
    check_request_id,
    check_tenant_id,
    check_text,
    json_object,
    start_argument,
    string_field,
)

PLAN_CHANGE_WORKFLOW_TYPE = "ChangeMailPlan"
# The per-tenant lock a plan change holds while it runs (workflows/plan_change_lock.py).
PLAN_CHANGE_LOCK_TYPE = "PlanChangeLock"
# Error types the back end can tell apart.
# Another plan change of the tenant holds its lock: refused before anything is touched.
PLAN_CHANGE_IN_PROGRESS = "PlanChangeInProgress"
# DeprovisionMailTenant removed the tenant under the change: nothing restored or restarted.
TENANT_DEPROVISIONED = "TenantDeprovisioned"
# The provider label that names the plan a server runs on (set by each plan change;
# a server bought before this label existed has none until its first change).
PLAN_LABEL = "plan"
_FIELDS = ("tenant_id", "request_id", "plan", "requested_by")


class InvalidPlanChangeRequest(ValueError):
    """A start argument ChangeMailPlan refuses. Names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"invalid plan change request: field '{field_name}' {rule}")
        self.field = field_name
        self.rule = rule


def plan_change_workflow_id(tenant_id: str, request_id: str) -> str:
    """One run per back-end request: a repeated start joins it, never changes twice."""
    return f"change-plan-{tenant_id}-{request_id}"


def plan_change_lock_id(tenant_id: str) -> str:
    """The tenant's plan-change lock: one open workflow per id, so one change at a time."""
    return f"plan-change-lock-{tenant_id}"


@dataclass(frozen=True)
class PlanChangeRequest:
    """ChangeMailPlan's one argument. The server comes from our records, never from here.

    JSON: `{"tenant_id", "request_id", "plan", "requested_by"}`; `request_id` follows
    the purchase id's rule (it is part of the workflow id and of audit keys).
    """

    tenant_id: str
    request_id: str
    plan: str
    requested_by: str

    @classmethod
    def parse(cls, raw: Any) -> "PlanChangeRequest":
        fields = json_object(raw, _FIELDS, InvalidPlanChangeRequest)
        values = {name: string_field(fields, name, InvalidPlanChangeRequest) for name in _FIELDS}
        request = cls(**values)
        request.validate()
        return request

    def validate(self) -> None:
        refuse = InvalidPlanChangeRequest
        check_tenant_id(self.tenant_id, refuse)
        check_request_id(self.request_id, "request_id", refuse)
        check_plan_name(self.plan, refuse)
        check_text(self.requested_by, "requested_by", MAX_REQUESTED_BY, refuse)


def plan_change_request_from_payloads(
    payloads: Sequence[tuple[bytes, bytes]], workflow_id: str
) -> PlanChangeRequest:
    """The raw start arguments, as (encoding, data) pairs, into a PlanChangeRequest.

    Decoded as the purchase's are (one argument, JSON only, bounded size and depth, no
    duplicate keys); the workflow id must be the one the request derives, so a client
    cannot run two changes of one request under different ids.
    """
    request = PlanChangeRequest.parse(start_argument(payloads, InvalidPlanChangeRequest, ""))
    expected = plan_change_workflow_id(request.tenant_id, request.request_id)
    if workflow_id != expected:
        raise InvalidPlanChangeRequest(
            "request_id", f"must match the workflow id (expected {expected!r})"
        )
    return request


@dataclass(frozen=True)
class PlanChangeCheck:
    """What check_plan_change found possible: read from the provider and our records."""

    tenant_id: str
    server_id: int
    target: MailuTarget  # where SSH goes afterwards (rotation_target's answer)
    from_server_type: str
    to_server_type: str
    upgrade_disk: bool
    disk_gb_before: int
    disk_gb_after: int
    location: str
    previous_plan: str | None  # the server's plan label, if it has one


@dataclass(frozen=True)
class ServerTypeChange:
    """Argument of change_server_type (and of its undo, with the types swapped)."""

    tenant_id: str
    server_id: int
    server_type: str
    upgrade_disk: bool
    # The type the server must have now for this change to go ahead ("" = any): a
    # server of a third type was changed by another run, which is not undone or redone.
    from_server_type: str = ""


@dataclass(frozen=True)
class PlanChangeLockRequest:
    tenant_id: str


@dataclass(frozen=True)
class PlanChangeLockHolder:
    """Who holds the tenant's plan-change lock, as plan_change_lock_holder found it."""

    lock_workflow_id: str
    # The plan change holding it (or a description of a run squatting its id); None: free.
    holder: str | None
    holder_running: bool
    # The holder had closed and the lock not yet ended: the activity ended it.
    freed_stale: bool = False


@dataclass(frozen=True)
class ServerPowerRequest:
    tenant_id: str
    server_id: int


@dataclass(frozen=True)
class StoppedServer:
    """How the server went down and when (the worker's clock, ISO-8601 UTC)."""

    server_id: int
    how: str  # "shutdown" | "poweroff" | "already_off"
    stop_requested_at: str


@dataclass(frozen=True)
class MailuHealthy:
    """When MailU's admin container answered healthy again after the start."""

    healthy_at: str


@dataclass(frozen=True)
class PlanLabelRequest:
    tenant_id: str
    server_id: int
    plan: str


@dataclass(frozen=True)
class PlanChangeResult:
    tenant_id: str
    request_id: str
    plan: str
    previous_plan: str | None
    server_id: int
    server_type: str
    previous_server_type: str
    disk_gb: int
    # From the stop request to MailU healthy again, as the worker measured it.
    downtime_seconds: float
    stopped_how: Annotated[str, OneOf("shutdown", "poweroff", "already_off")]
    vault_version: int  # the admin credentials proven (rotated) after the change


@dataclass
class PlanChangeStatus:
    """Answer of the `status` query on a ChangeMailPlan run."""

    tenant_id: str | None
    request_id: str | None
    # "running" | "completed" | "refused" | "failed" | "compensating" | "cancelled"
    state: str
    current_step: str | None = None
    steps: list[StepProgress] = field(default_factory=list)
    error: str | None = None
