"""The scripted replay histories: one row per workflow, run on the time-skipping server.

Every workflow but the purchase is recorded from the scripted world of its workflow tests
(tests/workflow/test_<name>_workflow.py), so the histories hold no real secrets or
addresses and need no codec. `python -m tests.replay.record_histories` records the
missing ones from this table and tests/replay/test_replay.py replays every file under
each row's directory with the row's workflow id (each run checks its own id). Existing
files are never re-recorded: they stand for the runs that may be in flight (an
activation waits up to 30 days) when a new version is deployed. (Before the first
release, the rotation histories of the old argument, a client-supplied MailuTarget,
were deleted and recorded again when the workflow came to take the tenant id only:
issue 17.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from temporalio.exceptions import ApplicationError

from tests.workflow import test_activation_workflow as activation
from tests.workflow import test_deprovision_workflow as deprovision
from tests.workflow import test_final_snapshot_workflow as final_snapshot
from tests.workflow import test_plan_change_workflow as plan_change
from tests.workflow import test_rotation_workflow as rotation
from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    DNS_PUBLISHED_SIGNAL,
    activation_workflow_id,
)
from workflows.deprovision_contracts import (
    DEPROVISION_WORKFLOW_TYPE,
    TenantServer,
    deprovision_workflow_id,
)
from workflows.plan_change_contracts import PLAN_CHANGE_WORKFLOW_TYPE, plan_change_workflow_id
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE

HISTORIES = Path(__file__).parent / "histories"


class World(Protocol):
    """A workflow test's scripted outside world: the activities it answers with."""

    def activities(self) -> list[Any]: ...


@dataclass(frozen=True)
class Scenario:
    world: World
    # A signal sent with the start (signal-with-start), as a back end would.
    start_signal: str | None = None


@dataclass(frozen=True)
class ScriptedWorkflow:
    directory: str  # under tests/replay/histories/
    workflow_type: str
    argument: Any
    workflow_id: Callable[[str], str]  # scenario name -> the id it runs (and replays) under
    scenarios: Callable[[], dict[str, Scenario]]  # built anew per recording: worlds keep state

    @property
    def path(self) -> Path:
        return HISTORIES / self.directory

    def histories(self) -> list[Path]:
        return sorted(self.path.glob("*.json"))


def _rotation_scenarios() -> dict[str, Scenario]:
    def failing(message: str, kind: str, final: bool) -> list[Exception]:
        return [ApplicationError(message, type=kind, non_retryable=final)]

    return {
        "rotated": Scenario(
            rotation.RotationWorld(rotate_errors=failing("ssh down", "OSError", False))
        ),
        "failed": Scenario(
            rotation.RotationWorld(rotate_errors=failing("key changed", "HostKeyMismatch", True))
        ),
        "server_gone": Scenario(
            rotation.RotationWorld(rotate_errors=failing("no server", "ServerGone", True))
        ),
    }


def _deprovision_scenarios() -> dict[str, Scenario]:
    lost = ApplicationError("worker lost after the provider answered", type="OSError")
    world = deprovision.TenantWorld
    return {
        "deprovisioned": Scenario(world(crash_after={"delete_tenant_servers": [lost]})),
        "second_pass": Scenario(world(appear_on_release=[TenantServer(42, "mail-acme-p1", "p1")])),
        "nothing_found": Scenario(world(servers=[], vault_version=0, schedule=False, claim=None)),
        "refused": Scenario(world(purchase_running=True)),
        # A plan that promises backups: the snapshot, its expiry timer started as a child.
        "final_snapshot": Scenario(final_snapshot.World(final_snapshot.SnapshotCloud())),
    }


def _plan_change_scenarios() -> dict[str, Scenario]:
    shrink = ApplicationError(
        "plan change refused: field 'plan' a disk cannot shrink",
        {"field": "plan", "rule": "a disk cannot shrink"},
        type="PlanChangeImpossible",
        non_retryable=True,
    )
    never_healthy = ApplicationError(
        "admin never healthy", type="RemoteCommandNotFound", non_retryable=True
    )
    return {
        "changed": Scenario(plan_change.World()),
        "refused": Scenario(plan_change.World(check_error=shrink)),
        "restored": Scenario(plan_change.World(start_errors=[never_healthy])),
    }


def _activation_scenarios() -> dict[str, Scenario]:
    gone = ApplicationError("no server", type="ServerGone", non_retryable=True)
    dns = activation.DnsWorld
    return {
        # The scripted DNS answers, and whether the back end signals at the start.
        # DNS right at the third check; no certificate at first, then front restarted
        # for it (MailU 2024.06, Mailu/Mailu#3827); active, webhook sent.
        "signalled_then_active": Scenario(
            dns([False, False, True], tls=["none", "restart"]), DNS_PUBLISHED_SIGNAL
        ),
        "gave_up": Scenario(dns()),
        "tenant_gone": Scenario(dns([False, gone])),
        # DNS right at once, the certificate never: gave up at stage tls after 30 days.
        "tls_gave_up": Scenario(dns([True], tls=["none"] * 1000), DNS_PUBLISHED_SIGNAL),
    }


SCRIPTED: tuple[ScriptedWorkflow, ...] = (
    ScriptedWorkflow(
        "rotation",
        ROTATION_WORKFLOW_TYPE,
        rotation.REQUEST,
        lambda scenario: f"rotate-replay-{scenario}",
        _rotation_scenarios,
    ),
    ScriptedWorkflow(
        "deprovision",
        DEPROVISION_WORKFLOW_TYPE,
        deprovision.REQUEST,
        lambda _: deprovision_workflow_id(deprovision.TENANT),
        _deprovision_scenarios,
    ),
    ScriptedWorkflow(
        "plan_change",
        PLAN_CHANGE_WORKFLOW_TYPE,
        plan_change.REQUEST,
        lambda _: plan_change_workflow_id(
            plan_change.REQUEST.tenant_id, plan_change.REQUEST.request_id
        ),
        _plan_change_scenarios,
    ),
    ScriptedWorkflow(
        "activation",
        ACTIVATION_WORKFLOW_TYPE,
        {"tenant_id": activation.TENANT},
        lambda _: activation_workflow_id(activation.TENANT),
        _activation_scenarios,
    ),
)
