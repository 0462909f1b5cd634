"""Signals to a held TenantClaim from any client (issue 17 item 5).

On the time-skipping server, with the real owner check (TenantClaimActivities) over
scripted records: the holder purchase's run status, no servers, no Vault record.

- No signal, whatever its name, argument count or encoding, fails the claim (a `release`
  with two arguments used to raise TypeError in the handler, which
  failure_exception_types turned into a FAILED claim).
- A `release` while the holder run is open never ends the claim (anyone can send it);
  once the holder has closed, the claim's next short follow-up look ends it.
- A purchase's compensation asks a moment before its run closes: the check it asks for
  waits for that close and ends the claim itself, with no follow-up look.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import RawValue
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.tenant_claims import TenantClaimActivities
from activities.vps_provider import Server
from activities.world import RunFacts, WorldRecords
from tests.conftest import time_skipping_server
from tests.workflow.sandbox import restricted_sandbox
from workflows.claim_contracts import (
    HOLDER_MEMO,
    HOLDER_RUN_MEMO,
    RELEASE_FOLLOW_UPS,
    TENANT_CLAIM_TYPE,
    TenantClaimState,
)
from workflows.contracts import WORKFLOW_TYPE, workflow_id_for
from workflows.tenant_claim import TenantClaim


class ScriptedRecords(WorldRecords):
    """The holder run's status as the test sets it; no server, no Vault record."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.holder_status = WorkflowExecutionStatus.RUNNING.name
        self.looks = 0  # owner checks that reached a verdict on a purchase holder
        self.status_reads = 0  # every read of the holder run's status
        self._looked = asyncio.Condition()

    async def run_of(self, client: Client, workflow_id: str, run_id: str | None) -> RunFacts:  # type: ignore[override]
        async with self._looked:
            self.status_reads += 1
            self._looked.notify_all()
        return RunFacts(self.holder_status, WORKFLOW_TYPE, None, run_id)

    async def purchase_tenant(self, client: Client, workflow_id: str, run_id: str) -> str | None:  # type: ignore[override]
        async with self._looked:
            self.looks += 1
            self._looked.notify_all()
        return self.tenant_id

    async def purchase_servers(self, purchase_id: str, tenant_id: str) -> list[Server]:
        return []

    async def vault_version(self, tenant_id: str) -> int | None:
        return None

    async def wait_for_looks(self, looks: int) -> None:
        async with self._looked:
            await self._looked.wait_for(lambda: self.looks >= looks)

    async def wait_for_status_reads(self, reads: int) -> None:
        async with self._looked:
            await self._looked.wait_for(lambda: self.status_reads >= reads)


@asynccontextmanager
async def held_claim(
    env: WorkflowEnvironment, holder_close_wait: timedelta = timedelta(seconds=1)
) -> AsyncIterator[tuple[WorkflowHandle[Any, Any], ScriptedRecords]]:
    """A claim taken by a running purchase, after its first owner check kept it.

    The check a `release` asks for waits `holder_close_wait` (real time: activities run
    outside the skipped clock) for the holder to close.
    """
    tenant_id = f"t{uuid.uuid4().hex[:8]}"
    records = ScriptedRecords(tenant_id)
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    holder = workflow_id_for(f"p-{tenant_id}")
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[TenantClaim],
        workflow_runner=restricted_sandbox(),
        activities=[TenantClaimActivities(records, holder_close_wait).check_claim_holder],
    ):
        handle: WorkflowHandle[Any, Any] = await env.client.start_workflow(
            TENANT_CLAIM_TYPE,
            holder,
            id=f"tenant-{tenant_id}",
            task_queue=task_queue,
            memo={HOLDER_MEMO: holder, HOLDER_RUN_MEMO: "holder-run-1"},
            # On code that fails the workflow task for ever, the run times out instead.
            execution_timeout=timedelta(days=2),
        )
        await records.wait_for_looks(1)
        yield handle, records


async def claim_state(handle: WorkflowHandle[Any, Any], looks: int = 0) -> TenantClaimState:
    """The claim's state once its owner check has run `looks` times and each answer is
    recorded (a query is answered after every event the server has accepted)."""
    while (await handle.describe()).raw_description.pending_activities:
        await asyncio.sleep(0.05)
    state: TenantClaimState = await handle.query("claim", result_type=TenantClaimState)
    return state


def raw(encoding: bytes, data: bytes) -> RawValue:
    return RawValue(Payload(metadata={"encoding": encoding}, data=data))


HOSTILE_SIGNALS: list[tuple[str, list[Any]]] = [
    ("release", ["a", "b"]),
    ("release", [raw(b"json/plain", b"{}"), raw(b"binary/x-unknown", b"?"), 3]),
    ("release", [raw(b"binary/x-mailprov-undecodable", b"unknown key id 'k9'")]),
    ("release", [raw(b"json/plain", b"[" * 5000 + b"]" * 5000)]),
    ("release", [{"reason": "not a string"}]),
    ("provisioned", ["a", "b"]),
    ("provisioned", []),
    ("cancel", [1, 2, 3]),
    ("x" * 300, ["junk"]),
]


async def test_no_signal_of_any_shape_fails_a_held_claim(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    async with held_claim(time_skipping_env) as (handle, _):
        for name, args in HOSTILE_SIGNALS:
            await handle.signal(name, args=args)
        state = await claim_state(handle)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        assert state.state == "held" and state.last_check == "holder is provisioning", state
        failed_tasks = [
            event
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        assert failed_tasks == []
        # No check in flight when it ends: the test server would keep its time-skipping
        # lock (temporalio/sdk-java#1138) for the tests after this one.
        await claim_state(handle)
        await handle.terminate("test done")


async def test_a_release_while_the_holder_runs_is_not_granted_until_it_closes() -> None:
    # Its own test server: a run terminated with an activity in flight (as the test above
    # ends its claim) leaves the shared server's time-skipping lock taken for good
    # (temporalio/sdk-java#1138), and this test's skip then never ends.
    async with time_skipping_server() as env:
        await _release_while_the_holder_runs(env)


async def _release_while_the_holder_runs(time_skipping_env: WorkflowEnvironment) -> None:
    async with held_claim(time_skipping_env) as (handle, records):
        await handle.signal("release", "a stranger")
        await records.wait_for_looks(2)
        assert (await claim_state(handle)).state == "held"
        # Past every follow-up look (15 s, 30 s, 1 min) with the holder still running.
        for looks, gap in enumerate(RELEASE_FOLLOW_UPS, start=3):
            await time_skipping_env.sleep(gap)
            await records.wait_for_looks(looks)
            assert (await claim_state(handle)).state == "held"
        # Then no further look before the regular interval (10 min).
        await time_skipping_env.sleep(timedelta(minutes=3))
        assert (await claim_state(handle)).state == "held"
        assert records.looks == 5

        # The purchase's own compensation asks while its run is still open, then it fails.
        await handle.signal("release", "purchase compensated")
        await records.wait_for_looks(6)
        assert (await claim_state(handle)).state == "held"
        records.holder_status = WorkflowExecutionStatus.FAILED.name
        result = await handle.result()
        assert result == "released: purchase compensated; holder run failed and has no server"
        assert records.looks == 7


async def test_a_compensations_release_ends_the_claim_at_the_check_it_asks_for(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    # A wait far longer than the test needs, so the holder surely closes within it.
    async with held_claim(time_skipping_env, holder_close_wait=timedelta(minutes=1)) as (
        handle,
        records,
    ):
        reads = records.status_reads
        await handle.signal("release", "purchase compensated")
        # The asked-for check has found the holder open; the run closes a moment later.
        await records.wait_for_status_reads(reads + 1)
        records.holder_status = WorkflowExecutionStatus.CANCELED.name
        result = await handle.result()
        assert result == "released: purchase compensated; holder run canceled and has no server"
        assert records.looks == 2  # the start's check and the asked-for one: no follow-up
        follow_up = RELEASE_FOLLOW_UPS[0]
        follow_up_sleeps = [
            event
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED
            and event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            == follow_up
        ]
        assert follow_up_sleeps == []
