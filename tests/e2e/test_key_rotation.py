"""A payload key rotation rolled out in the worst order loses no purchase (issue 21).

Rotation is two steps (runtime/codec.py): `python -m runtime.codec add` puts the
new key in the ring, not current; `starter.py switch-codec-key` makes it current and
refuses while a worker polling the task queue lacks it. Here every ring reaches the
back end before the worker, with purchases in flight, and the back end starts with
each new ring at once. A back end whose ring was switched by hand past the tooling
(a key the worker lacks) makes the worker fail its workflow task, retried by Temporal
within the worker's grace, not a final InvalidPurchaseRequest: the purchase completes
once the worker restarts with that key.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.worker import Worker

from devstack.stack import ROOT, StackInfo
from runtime.codec import KeyRing, UnknownKeyGrace, data_converter, worker_identity
from starter import start_purchase
from tests.e2e.conftest import new_request, polled_status
from worker import WORKFLOWS, Settings, build_activities, worker_interceptors, workflow_runner
from workflows.contracts import ProvisionResult

# This module's purchases run under rings (k1, k2, k3) that the check-world client of
# tests/e2e/conftest.py, on the stack's ring, does not have: it cannot read their
# claims' holder memo, so it reports their servers unclaimed and their claims holderless.
CHECK_WORLD_TOLERATES = ("server_without_claim", "claim_without_live_holder")
COMMAND_TIMEOUT = 300
# switch-codec-key is asked again while the stopped worker's identity ages out (90 s).
SWITCH_ATTEMPTS = 60
POLLS = 600
# Longer than the test: only the restart with the key ends the retries.
GRACE_SECONDS = 3600


@asynccontextmanager
async def worker_on(
    info: StackInfo, ring_file: Path, task_queue: str, name: str
) -> AsyncIterator[None]:
    """A worker as worker.py builds it, on its own copy of a ring file."""
    ring = KeyRing.from_file(ring_file)
    converter = data_converter(
        ring, mark_undecodable=True, unknown_key_grace=UnknownKeyGrace(GRACE_SECONDS)
    )
    client = await Client.connect(info.temporal_address, data_converter=converter)
    settings = replace(Settings.from_env(info.worker_env), task_queue=task_queue)
    async with build_activities(settings, client) as activities:
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=list(WORKFLOWS),
            activities=activities,
            interceptors=worker_interceptors(),
            workflow_runner=workflow_runner(converter),
            identity=worker_identity(f"{name}@key-rotation-test", ring),
        )
        async with worker:
            yield


async def back_end(info: StackInfo, ring_file: Path) -> Client:
    return await Client.connect(
        info.temporal_address, data_converter=data_converter(KeyRing.from_file(ring_file))
    )


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, cwd=ROOT
    )


def switch(info: StackInfo, ring_file: Path, task_queue: str, key_id: str) -> Any:
    command = info.starter_command(
        "--codec-keys-file", str(ring_file), "--task-queue", task_queue, "switch-codec-key", key_id
    )
    return tool(*command)


async def past_first_step(handle: WorkflowHandle[Any, Any]) -> None:
    """The worker has decoded the start and run at least one activity of it."""
    for _ in range(POLLS):
        status = await polled_status(handle)
        if any(step.state == "done" and step.name != "validate_input" for step in status.steps):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{handle.id} did not get past its first step")


async def workflow_task_failed(handle: WorkflowHandle[Any, Any]) -> None:
    for _ in range(POLLS):
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{handle.id}: no workflow task failed")


async def test_a_rotation_in_the_worst_order_loses_no_purchase(
    info: StackInfo, client: Client, tmp_path: Path
) -> None:
    task_queue = f"key-rotation-{uuid.uuid4().hex[:8]}"
    operator_ring = tmp_path / "ring.json"
    worker_ring = tmp_path / "worker-ring.json"
    codec = [sys.executable, "-m", "runtime.codec"]
    assert tool(*codec, "new", str(operator_ring), "k1").returncode == 0
    shutil.copy(operator_ring, worker_ring)
    # The old one-step rotation is refused: it is what lost purchases.
    assert tool(*codec, "rotate", str(operator_ring), "k2").returncode == 2
    handles: list[WorkflowHandle[Any, Any]] = []

    async with worker_on(info, worker_ring, task_queue, "w1"):
        assert tool(*codec, "add", str(operator_ring), "k2").returncode == 0
        refused = await asyncio.to_thread(switch, info, operator_ring, task_queue, "k2")
        assert refused.returncode == 1, refused.stderr
        assert "lack key 'k2'" in refused.stderr and "w1@key-rotation-test" in refused.stderr
        assert KeyRing.from_file(operator_ring).current_id == "k1"
        # Phase 1, worst order: the back end has the added ring before the worker.
        backend = await back_end(info, operator_ring)
        handle, _ = await start_purchase(backend, new_request(info), task_queue)
        handles.append(handle)
        await past_first_step(handle)

    shutil.copy(operator_ring, worker_ring)
    async with worker_on(info, worker_ring, task_queue, "w2"):
        for _ in range(SWITCH_ATTEMPTS):  # until w1's identity ages out of the poller list
            switched = await asyncio.to_thread(switch, info, operator_ring, task_queue, "k2")
            if switched.returncode == 0:
                break
            assert "w1@key-rotation-test" in switched.stderr, switched.stderr
            await asyncio.sleep(5)
        assert switched.returncode == 0, switched.stderr
        assert KeyRing.from_file(operator_ring).current_id == "k2"
        # Phase 2, worst order: the back end encrypts with k2 before the worker has
        # the switched ring (it has the key since phase 1).
        backend = await back_end(info, operator_ring)
        handle, _ = await start_purchase(backend, new_request(info), task_queue)
        handles.append(handle)
        for handle in handles:
            assert isinstance(await handle.result(), ProvisionResult)

        # Past the tooling: a ring switched by hand to a key no worker has.
        hand_made = tmp_path / "hand-made.json"
        KeyRing.from_file(operator_ring).rotated("k3").write(hand_made)
        rogue = await back_end(info, hand_made)
        pending, _ = await start_purchase(rogue, new_request(info), task_queue)
        await workflow_task_failed(pending)
        assert (await pending.describe()).status == WorkflowExecutionStatus.RUNNING

    # The worker gets that ring: Temporal's retry of the failed task now decodes.
    async with worker_on(info, hand_made, task_queue, "w3"):
        final = rogue.get_workflow_handle(pending.id, result_type=ProvisionResult)
        assert isinstance(await final.result(), ProvisionResult)
    # None lost, in the server's own words (describe needs no key).
    for run in [*handles, pending]:
        described = await client.get_workflow_handle(run.id).describe()
        assert described.status == WorkflowExecutionStatus.COMPLETED
