"""Data contracts of credential rotation (RotateSmtpCredentials and its schedule).

Plain data and pure functions, importable by the workflow sandbox, the activities
and the starter. No secret appears in these types: the new password lives only
inside the rotating activity, which returns the Vault version it wrote.
"""

import re
from dataclasses import dataclass
from datetime import timedelta

from workflows.contracts import MailuTarget

ROTATION_WORKFLOW_TYPE = "RotateSmtpCredentials"
# A schedule that missed its time (Temporal server down, schedule paused) still runs
# when it comes back within this window; older misses are dropped, so a cluster
# restored after a long outage does not start a burst of rotations.
ROTATION_CATCHUP_WINDOW = timedelta(days=7)
_POLICY_RULE = re.compile(r"([1-9][0-9]{0,3})_days")


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

    The schedule's workflow argument is the MailuTarget: the server's name, address
    and pinned host public key. None of it is secret; it is what the rotation needs
    to reach the server over the same pinned SSH channel as provisioning.
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
