"""`make faults` clean-up: every tenant deprovisioned through DeprovisionMailTenant,
the runs in flight together (bounded), each outcome checked.

The last full run did not finish: its clean-up deprovisioned a 200-purchase burst one
tenant after another, 15-50 s each under the project's rate limit. Here the workflow
runs are scripted (a fake handle per tenant), so the test sees how many run at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from devstack import faults_run
from devstack.faults_run import CLEANUP_IN_FLIGHT, FaultRun, left_behind
from workflows.deprovision_contracts import DeprovisionRequest, DeprovisionResult
from workflows.world_check_contracts import WorldReport


class Runs:
    """DeprovisionMailTenant as the clean-up sees it: started, then awaited."""

    def __init__(self, outcomes: dict[str, Any]) -> None:
        self.outcomes = outcomes
        self.started: list[str] = []
        self.in_flight = 0
        self.peak = 0
        self.snapshots: dict[str, list[int]] = {}

    async def start(self, client: Any, request: DeprovisionRequest, queue: str) -> Any:
        assert (request.requested_by, queue) == ("faults", faults_run.TASK_QUEUE)
        self.started.append(request.tenant_id)
        return Handle(self, request.tenant_id)


class Handle:
    def __init__(self, runs: Runs, tenant: str) -> None:
        self.runs, self.tenant = runs, tenant

    async def result(self) -> DeprovisionResult:
        self.runs.in_flight += 1
        self.runs.peak = max(self.runs.peak, self.runs.in_flight)
        for _ in range(3):  # the run takes a while: the others get their turn
            await asyncio.sleep(0)
        self.runs.in_flight -= 1
        outcome = self.runs.outcomes.get(self.tenant, "deprovisioned")
        if isinstance(outcome, BaseException):
            raise outcome
        return DeprovisionResult(
            self.tenant,
            outcome,
            claim_released=outcome == "deprovisioned",
            final_snapshots=self.runs.snapshots.get(self.tenant, []),
        )


@pytest.mark.asyncio
async def test_clean_up_runs_the_deprovisions_together_up_to_the_bound_and_checks_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenants = [f"t{n}" for n in range(2 * CLEANUP_IN_FLIGHT + 5)]
    refused = ApplicationError("vault sealed", type="DeprovisionFailed")
    runs = Runs({"t3": WorkflowFailureError(cause=refused), "t7": "nothing_found"})
    monkeypatch.setattr(faults_run, "start_deprovision", runs.start)
    faults = FaultRun.__new__(FaultRun)  # no stack: only the client is used, by the fake
    faults.client = None  # type: ignore[assignment]

    problems = await faults.deprovision_all(tenants, "tenant released after its scenario")

    # Every tenant went through the product's own workflow, once.
    assert sorted(runs.started) == sorted(tenants)
    # Together (one at a time was the bug), never more than the bound at once.
    assert runs.peak == CLEANUP_IN_FLIGHT
    # A run that failed or did not end deprovisioned is reported, naming the tenant.
    assert len(problems) == 2
    assert problems[0].startswith("clean-up of t3: ") and "vault sealed" in problems[0]
    assert problems[1].startswith("clean-up of t7: ") and "nothing_found" in problems[1]


@pytest.mark.asyncio
async def test_clean_up_of_nothing_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = Runs({})
    monkeypatch.setattr(faults_run, "start_deprovision", runs.start)
    faults = FaultRun.__new__(FaultRun)
    assert await faults.deprovision_all([], "nothing") == []
    assert runs.started == []


def test_anything_a_tenant_could_keep_is_left_behind_after_the_clean_up() -> None:
    looked_at = {"audit_rows": 40, "completed_purchases": 20, "tenants": 20}
    assert left_behind(WorldReport([], {**looked_at, "servers": 0, "claims": 0})) == {}
    world = WorldReport([], {**looked_at, "servers": 1, "vault_records": 2, "claims": 0})
    # Agreeing records (no disagreement) are still left behind after every deprovision.
    assert left_behind(world) == {"servers": 1, "vault_records": 2}
    assert left_behind(WorldReport([], {"rotation_schedules": 1})) == {"rotation_schedules": 1}
    # A final snapshot agrees while its timer runs, but the deprovision scenario awaits
    # every timer it started: one still there at the end was never deleted.
    assert left_behind(WorldReport([], {"final_snapshots": 1})) == {"final_snapshots": 1}


@pytest.mark.asyncio
async def test_clean_up_names_the_final_snapshots_a_backup_plan_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = Runs({})
    runs.snapshots = {"t2": [900001]}
    monkeypatch.setattr(faults_run, "start_deprovision", runs.start)
    faults = FaultRun.__new__(FaultRun)
    faults.client = None  # type: ignore[assignment]
    assert await faults.deprovision_all(["t1", "t2"], "done") == []
    printed = capsys.readouterr()
    said = printed.out + printed.err
    assert "clean-up of t2: final snapshot(s) [900001] kept" in said
    assert "clean-up of t1: final" not in said
