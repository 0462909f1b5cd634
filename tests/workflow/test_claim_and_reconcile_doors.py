"""TenantClaim and ReconcileOrphans opened by any client (issue 17 items 5 and 6).

On the time-skipping server with scripted activities: a hostile start ends at once
with nothing looked up or changed; a claim checks its holder at start and again on a
durable timer, and ends when the owner check says the holder is gone.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflow.sandbox import restricted_sandbox
from workflows.claim_contracts import TENANT_CLAIM_TYPE, ClaimHolderCheck, ClaimVerdict
from workflows.reconcile import ReconcileOrphans
from workflows.reconcile_contracts import (
    RECONCILE_WORKFLOW,
    ManagedServer,
    PurchaseRun,
    RunQuery,
    StaleClaimsRequest,
    TenantRecord,
)
from workflows.tenant_claim import TenantClaim


class Scripted:
    """The activities both workflows may call, counting each call."""

    def __init__(self, verdicts: list[ClaimVerdict]) -> None:
        self.calls: Counter[str] = Counter()
        self.verdicts = verdicts

    def activities(self) -> list[Any]:
        @activity.defn(name="check_claim_holder")
        async def check_claim_holder(check: ClaimHolderCheck) -> ClaimVerdict:
            self.calls["check_claim_holder"] += 1
            return self.verdicts.pop(0)

        @activity.defn(name="list_managed_servers")
        async def list_managed_servers() -> list[ManagedServer]:
            self.calls["list_managed_servers"] += 1
            return []

        @activity.defn(name="tenant_records")
        async def tenant_records(tenants: list[str]) -> list[TenantRecord]:
            self.calls["tenant_records"] += 1
            return []

        @activity.defn(name="describe_purchase_runs")
        async def describe_purchase_runs(queries: list[RunQuery]) -> list[PurchaseRun]:
            self.calls["describe_purchase_runs"] += 1
            return []

        @activity.defn(name="release_stale_claims")
        async def release_stale_claims(request: StaleClaimsRequest) -> list[str]:
            self.calls["release_stale_claims"] += 1
            return []

        return [
            check_claim_holder,
            list_managed_servers,
            tenant_records,
            describe_purchase_runs,
            release_stale_claims,
        ]


def raw(encoding: bytes, data: bytes) -> RawValue:
    return RawValue(Payload(metadata={"encoding": encoding}, data=data))


async def run_workflow(
    env: WorkflowEnvironment, scripted: Scripted, workflow_type: str, args: list[Any]
) -> Any:
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[TenantClaim, ReconcileOrphans],
        workflow_runner=restricted_sandbox(),
        activities=scripted.activities(),
    ):
        # On code that fails the workflow task for ever, the run times out instead of
        # the test waiting for ever (the time-skipping server skips to it).
        handle = await env.client.start_workflow(
            workflow_type,
            args=args,
            id=f"tenant-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            execution_timeout=timedelta(days=2),
        )
        return await handle.result()


@pytest.mark.parametrize(
    ("args", "field", "rule"),
    [
        ([], "(input)", "(got 0)"),
        ([raw(b"json/plain", b'"hello"')], "(input)", "must be a JSON object"),
        ([raw(b"json/plain", b"[" * 5000 + b"]" * 5000)], "(input)", "nest"),
        ([raw(b"binary/plain", b"\x00")], "(input)", "encoding"),
        ([raw(b"binary/x-mailprov-undecodable", b"unknown key id 'k9'")], "(input)", "k9"),
        ([{"grace_seconds": -1}], "grace_seconds", "from 0 to"),
        ([{"grace_seconds": True}], "grace_seconds", "whole number"),
        ([{"dry_run": "yes"}], "dry_run", "true or false"),
        ([{"delete_everything": 1}], "delete_everything", "unknown field"),
    ],
)
async def test_a_hostile_reconcile_start_ends_at_once_naming_the_field(
    time_skipping_env: WorkflowEnvironment, args: list[Any], field: str, rule: str
) -> None:
    scripted = Scripted([])
    with pytest.raises(WorkflowFailureError) as failure:
        await run_workflow(time_skipping_env, scripted, RECONCILE_WORKFLOW, args)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidReconcileRequest"
    assert cause.non_retryable and cause.details[0]["field"] == field
    assert rule in cause.details[0]["rule"]
    assert sum(scripted.calls.values()) == 0


async def test_a_valid_reconcile_start_runs(time_skipping_env: WorkflowEnvironment) -> None:
    scripted = Scripted([])
    report = await run_workflow(
        time_skipping_env, scripted, RECONCILE_WORKFLOW, [{"grace_seconds": 0, "dry_run": True}]
    )
    assert report == {"dry_run": True, "servers_checked": 0, "orphans": [], "stale_claims": []}
    assert scripted.calls == Counter({"list_managed_servers": 1, "release_stale_claims": 1})


@pytest.mark.parametrize("workflow_type", [RECONCILE_WORKFLOW, TENANT_CLAIM_TYPE])
@pytest.mark.parametrize(
    "args",
    [
        [raw(b"json/plain", b"{}"), raw(b"json/plain", b"{}")],
        [raw(b"binary/x-unknown", b"?"), raw(b"binary/x-unknown", b"?")],
    ],
)
async def test_more_arguments_than_a_run_takes_fail_the_run_not_the_task(
    time_skipping_env: WorkflowEnvironment, workflow_type: str, args: list[Any]
) -> None:
    """Without failure_exception_types the SDK fails the workflow task for ever."""
    scripted = Scripted([])
    with pytest.raises(WorkflowFailureError) as failure:
        await run_workflow(time_skipping_env, scripted, workflow_type, args)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type in ("RuntimeError", "TypeError")
    assert sum(scripted.calls.values()) == 0


@pytest.mark.parametrize(
    "args", [[], [raw(b"binary/x-mailprov-undecodable", b"k9")], ["purchase-x"]]
)
async def test_a_claim_the_owner_check_refuses_ends_at_its_start(
    time_skipping_env: WorkflowEnvironment, args: list[Any]
) -> None:
    scripted = Scripted([ClaimVerdict(False, "no valid holder")])
    result = await run_workflow(time_skipping_env, scripted, TENANT_CLAIM_TYPE, args)
    assert result == "released: no valid holder"
    assert scripted.calls == Counter({"check_claim_holder": 1})


async def test_a_claim_whose_holder_goes_away_ends_at_a_later_check(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Held at start (the purchase is running), gone by the timer's checks."""
    scripted = Scripted(
        [
            ClaimVerdict(True, "holder is provisioning"),
            ClaimVerdict(True, "holder is provisioning"),
            ClaimVerdict(False, "holder run terminated and has no server"),
        ]
    )
    result = await run_workflow(time_skipping_env, scripted, TENANT_CLAIM_TYPE, ["purchase-x"])
    assert result == "released: holder run terminated and has no server"
    assert scripted.calls == Counter({"check_claim_holder": 3})
