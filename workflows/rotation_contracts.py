"""Data contracts of credential rotation (RotateSmtpCredentials and its schedule).

Plain data and pure functions, importable by the workflow sandbox, the activities
and the starter. No secret appears in these types: the new password lives only
inside the rotating activity, which returns the Vault version it wrote.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from workflows.contracts import MailuTarget
from workflows.input_rules import check_tenant_id, json_object, start_argument, string_field

ROTATION_WORKFLOW_TYPE = "RotateSmtpCredentials"
# A schedule that missed its time (Temporal server down, schedule paused) still runs
# when it comes back within this window; older misses are dropped, so a cluster
# restored after a long outage does not start a burst of rotations.
ROTATION_CATCHUP_WINDOW = timedelta(days=7)
_POLICY_RULE = re.compile(r"([1-9][0-9]{0,3})_days")


class InvalidRotationRequest(ValueError):
    """A start argument RotateSmtpCredentials refuses. Names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"invalid rotation request: field '{field_name}' {rule}")
        self.field = field_name
        self.rule = rule


@dataclass(frozen=True)
class RotationRequest:
    """RotateSmtpCredentials' one argument: which tenant, and nothing else.

    Any client of the namespace can start the workflow, so the argument names only the
    tenant; where its server is, which host key it presents and which mailbox is its
    admin are read by the worker from our own records (activities/rotation_target.py),
    never taken from a client. JSON: `{"tenant_id": "acme"}`.
    """

    tenant_id: str

    @classmethod
    def parse(cls, raw: Any) -> "RotationRequest":
        fields = json_object(raw, {"tenant_id"}, InvalidRotationRequest)
        tenant = string_field(fields, "tenant_id", InvalidRotationRequest)
        check_tenant_id(tenant, InvalidRotationRequest)
        return cls(tenant)


def rotation_request_from_payloads(payloads: Sequence[tuple[bytes, bytes]]) -> RotationRequest:
    """The raw start arguments, as (encoding, data) pairs, into a RotationRequest.

    Decoded as the purchase's are (workflows/input_rules.py: one argument, JSON only,
    bounded size and depth, no duplicate keys), so a bad or missing argument ends the
    run at once with InvalidRotationRequest instead of failing the workflow task forever.
    """
    expected = ', {"tenant_id": ...}'
    return RotationRequest.parse(start_argument(payloads, InvalidRotationRequest, expected))


def rotation_schedule_id(tenant_id: str) -> str:
    """One rotation schedule per tenant: the id is what makes its creation idempotent."""
    return f"rotate-{tenant_id}"


def rotation_interval(policy: str) -> timedelta:
    """The interval a record's `rotation_policy` (e.g. `180_days`) asks for.

    The one place the policy string is read: the schedule's interval is derived
    from what the Vault record says, never from a second constant.
    """
    match = _POLICY_RULE.fullmatch(policy)
    if match is None:
        raise ValueError(f"rotation_policy {policy!r} is not of the form '<N>_days' (N in 1..9999)")
    return timedelta(days=int(match.group(1)))


@dataclass(frozen=True)
class RotationScheduleRequest:
    """Create (or bring up to date) the tenant's rotation schedule.

    Only `target.tenant_id` goes into the schedule: its runs start with a
    RotationRequest and read the server, host key and admin mailbox from our records,
    as every other start of RotateSmtpCredentials does.
    """

    target: MailuTarget
    task_queue: str

    @property
    def tenant_id(self) -> str:
        """Every activity argument names its tenant (the log context reads it)."""
        return self.target.tenant_id


@dataclass(frozen=True)
class RotatedCredentials:
    """What the rotating activity returns: where the new version is, never the password."""

    username: str
    vault_path: str
    version: int
    previous_version: int
    last_rotated: str
    # True when no record existed at all (Vault data loss) and one was issued afresh.
    reissued: bool = False


@dataclass(frozen=True)
class RotationResult:
    tenant_id: str
    # "rotated" | "schedule_removed" (the server or the record is gone)
    outcome: str
    vault_version: int | None = None
    last_rotated: str | None = None
    reason: str | None = None


@dataclass
class RotationStatus:
    """Answer of the `status` query on a rotation run."""

    tenant_id: str | None
    # "running" | "rotated" | "schedule_removed" | "failed"
    state: str
