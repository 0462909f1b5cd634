"""Part 4 of `make bench`: real activities against the local stack (devstack/).

Three phases on one stack:
1. `concurrency` purchases at once through the stack's own worker process; CPU is read
   from /proc for every process of the stack (worker, Temporal, OpenBao, local cloud,
   the local VPSes with their SSH and SMTP servers), and each step's wall time comes
   from history (scheduled -> completed).
2. the same with a second worker process on the task queue: which side limits.
3. a few purchases one after another, the worker's CPU sampled every 20 ms and each
   sample's share given to the step running then (history's started -> completed).
   Concurrent purchases interleave on the worker's one event loop, so CPU can be told
   apart by step only when one purchase runs at a time.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from bench.fakes import purchase
from bench.procfs import all_processes, command_line, descendants, process_stat
from devstack.stack import Stack
from runtime.codec import KeyRing, data_converter
from starter import STEP_OF_ACTIVITY, start_purchase
from workflows.contracts import PurchaseRequest


def _descendants(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds) for every process below `root`."""
    processes = all_processes()
    below = descendants(root, processes) - {root}
    return {pid: (_role(pid), processes[pid][1]) for pid in below}


def _role(pid: int) -> str:
    command = command_line(pid)
    if command is None:
        return "gone"
    for marker, role in (
        ("worker.py", "worker"),
        ("devstack.vps", "local VPSes (SSH, SMTP)"),
        ("devstack.cloud", "local cloud"),
        ("codec_server", "codec server"),
        ("bao", "OpenBao"),
        ("temporal", "Temporal"),
    ):
        if marker in command:
            return role
    return "other"


def _cpu_by_role(before: dict[int, tuple[str, float]], outside: set[int]) -> dict[str, float]:
    after = _descendants(os.getpid())
    totals: dict[str, float] = defaultdict(float)
    for pid, (role, seconds) in after.items():
        if pid not in outside:
            totals[role] += seconds - (before[pid][1] if pid in before else 0.0)
    return dict(totals)


async def _step_intervals(
    handle: WorkflowHandle[Any, Any],
) -> dict[str, tuple[float, float, float]]:
    """step -> (scheduled, started, completed) times of its last attempt, from history."""
    scheduled: dict[int, tuple[str, float]] = {}
    started: dict[int, float] = {}
    steps: dict[str, tuple[float, float, float]] = {}
    async for event in handle.fetch_history_events():
        when = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (STEP_OF_ACTIVITY.get(name) or name, when)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started[event.activity_task_started_event_attributes.scheduled_event_id] = when
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes = event.activity_task_completed_event_attributes
            step, queued = scheduled[attributes.scheduled_event_id]
            steps[step] = (queued, started.get(attributes.scheduled_event_id, queued), when)
    return steps


async def _at_once(client: Client, notify_url: str, count: int) -> list[WorkflowHandle[Any, Any]]:
    handles = []
    for _ in range(count):
        request = PurchaseRequest.parse(purchase(f"bench-{uuid.uuid4().hex[:8]}", notify_url))
        handle, _ = await start_purchase(client, request, "mail-provisioning")
        handles.append(handle)
    await asyncio.gather(*(handle.result() for handle in handles))
    return handles


async def _phase(
    client: Client, notify_url: str, count: int, outside: set[int]
) -> tuple[float, dict[str, float], list[WorkflowHandle[Any, Any]]]:
    """`count` purchases at once: wall time, CPU seconds by role, the handles."""
    before = _descendants(os.getpid())
    began = time.monotonic()
    handles = await _at_once(client, notify_url, count)
    return time.monotonic() - began, _cpu_by_role(before, outside), handles


async def _step_cpu(
    client: Client, notify_url: str, worker_pid: int, runs: int
) -> dict[str, float]:
    """Worker CPU seconds per step, averaged over `runs` purchases made one at a time."""
    samples: list[tuple[float, float]] = []

    async def sample() -> None:
        while True:
            samples.append((time.time(), process_stat(worker_pid)[1]))
            await asyncio.sleep(0.02)

    sampler = asyncio.get_running_loop().create_task(sample())
    handles = []
    try:
        for _ in range(runs):
            handles += await _at_once(client, notify_url, 1)
        await asyncio.sleep(0.1)
    finally:
        sampler.cancel()

    taken = [at for at, _ in samples]

    def cpu_at(when: float) -> float:
        # The last sample taken at or before `when` (samples are in time order).
        return samples[max(bisect.bisect_right(taken, when) - 1, 0)][1]

    totals: dict[str, float] = defaultdict(float)
    for handle in handles:
        for step, (_, started, completed) in (await _step_intervals(handle)).items():
            totals[step] += cpu_at(completed) - cpu_at(started)
    whole = samples[-1][1] - samples[0][1]
    totals["(between steps: workflow tasks, polling)"] = whole - sum(totals.values())
    return {step: seconds / runs for step, seconds in totals.items()}


async def real_purchases(concurrency: int, sequential: int = 3) -> dict[str, Any]:
    """The three phases on one local stack; returns the figures."""
    outside = set(_descendants(os.getpid()))  # e.g. the bench's in-memory dev server
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as state:
        async with Stack(Path(state)) as stack:
            info = await stack.start()
            client = await Client.connect(
                info.temporal_address,
                data_converter=data_converter(KeyRing.from_file(info.codec_keys_file)),
            )
            (worker,) = stack.processes("worker")
            step_cpu = await _step_cpu(client, info.notify_url, worker.popen.pid, sequential)
            one_wall, one_cpu, handles = await _phase(client, info.notify_url, concurrency, outside)
            await stack.start_worker()
            two_wall, two_cpu, _ = await _phase(client, info.notify_url, concurrency, outside)
            walls = [await _step_intervals(handle) for handle in handles]
    steps = sorted({step for run in walls for step in run})
    return {
        "purchases": concurrency,
        "wall": one_wall,
        "cpu_per_purchase_ms": {role: 1000 * s / concurrency for role, s in one_cpu.items()},
        "step_wall_median_s": {
            step: statistics.median(run[step][2] - run[step][0] for run in walls if step in run)
            for step in steps
        },
        "two_workers": {
            "wall": two_wall,
            "cpu_per_purchase_ms": {role: 1000 * s / concurrency for role, s in two_cpu.items()},
        },
        "worker_cpu_per_step_ms": {step: 1000 * s for step, s in step_cpu.items()},
        "sequential_purchases": sequential,
    }
