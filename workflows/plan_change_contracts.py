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
    PLAN_NAME_RULE,
    PURCHASE_ID_RULE,
    TENANT_ID_RULE,
    InvalidPurchaseRequest,
    json_type_name,
    purchase_input_from_payloads,
)

PLAN_CHANGE_WORKFLOW_TYPE = "ChangeMailPlan"
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
        if not isinstance(raw, dict):
            raise InvalidPlanChangeRequest(
                "(input)", f"must be a JSON object, got {json_type_name(raw)}"
            )
        unknown = sorted(str(key) for key in raw if key not in _FIELDS)
        if unknown:
            raise InvalidPlanChangeRequest(repr(unknown[0][:60])[1:-1], "is not a known field")
        values: dict[str, str] = {}
        for name in _FIELDS:
            value = raw.get(name)
            if value is None:
                raise InvalidPlanChangeRequest(name, "is required")
            if not isinstance(value, str):
                raise InvalidPlanChangeRequest(name, "must be a string")
            values[name] = value
        request = cls(**values)
        request.validate()
        return request

    def validate(self) -> None:
        if not TENANT_ID_RULE.fullmatch(self.tenant_id):
            raise InvalidPlanChangeRequest(
                "tenant_id",
                "must be 1-63 characters of [a-z0-9-], starting and ending with [a-z0-9]",
            )
        if not PURCHASE_ID_RULE.fullmatch(self.request_id):
            raise InvalidPlanChangeRequest(
                "request_id",
                "must be 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric",
            )
        if not PLAN_NAME_RULE.fullmatch(self.plan):
            raise InvalidPlanChangeRequest("plan", "must match [a-z0-9][a-z0-9_-]{0,62}")
        if not self.requested_by.strip() or len(self.requested_by) > MAX_REQUESTED_BY:
            raise InvalidPlanChangeRequest(
                "requested_by", f"must be 1-{MAX_REQUESTED_BY} characters, not blank"
            )
        if any(not ch.isprintable() for ch in self.requested_by):
            raise InvalidPlanChangeRequest("requested_by", "must not contain control characters")


def plan_change_request_from_payloads(
    payloads: Sequence[tuple[bytes, bytes]], workflow_id: str
) -> PlanChangeRequest:
    """The raw start arguments, as (encoding, data) pairs, into a PlanChangeRequest.

    Decoded as the purchase's are (one argument, JSON only, bounded size and depth, no
    duplicate keys); the workflow id must be the one the request derives, so a client
    cannot run two changes of one request under different ids.
    """
    if len(payloads) != 1:
        raise InvalidPlanChangeRequest(
            "(input)", f"must be exactly one argument (got {len(payloads)})"
        )
    try:
        raw = purchase_input_from_payloads(payloads)
    except InvalidPurchaseRequest as err:
        raise InvalidPlanChangeRequest(err.field, err.rule) from None
    request = PlanChangeRequest.parse(raw)
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
    state: str  # "running" | "completed" | "refused" | "failed" | "compensating"
    current_step: str | None = None
    steps: list[StepProgress] = field(default_factory=list)
    error: str | None = None
