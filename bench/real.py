"""Part 4 of `make bench`: real activities against the local stack (devstack/).

Purchases run at once through the stack's own worker process; CPU is read from /proc
for every process of the stack (worker, Temporal, OpenBao, local cloud, the local
VPSes with their SSH and SMTP servers), and each step's wall time comes from history
(scheduled -> completed). Per-step *CPU* is not split: the worker runs the steps
concurrently on one event loop, so only the worker's total is measured.
"""

from __future__ import annotations

import asyncio
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

from activities.codec import KeyRing, data_converter
from bench.fakes import purchase
from devstack.stack import Stack
from starter import STEP_OF_ACTIVITY, start_purchase
from workflows.contracts import PurchaseRequest


def _descendants(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds) for every process below `root`."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    found: dict[int, tuple[str, float]] = {}
    for pid in cpu:
        ancestor = parent.get(pid)
        while ancestor and ancestor != root:
            ancestor = parent.get(ancestor)
        if ancestor == root:
            found[pid] = (_role(pid), cpu[pid])
    return found


def _role(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
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


def _cpu_by_role(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    after = _descendants(os.getpid())
    totals: dict[str, float] = defaultdict(float)
    for pid, (role, seconds) in after.items():
        totals[role] += seconds - (before[pid][1] if pid in before else 0.0)
    return dict(totals)


async def _step_walls(handle: WorkflowHandle[Any, Any]) -> dict[str, float]:
    scheduled: dict[int, tuple[str, float]] = {}
    walls: dict[str, float] = {}
    async for event in handle.fetch_history_events():
        when = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (STEP_OF_ACTIVITY.get(name, name), when)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes = event.activity_task_completed_event_attributes
            step, began = scheduled[attributes.scheduled_event_id]
            walls[step] = when - began
    return walls


async def real_purchases(concurrency: int) -> dict[str, Any]:
    """Runs `concurrency` purchases at once on the local stack; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as state:
        async with Stack(Path(state)) as stack:
            info = await stack.start()
            client = await Client.connect(
                info.temporal_address,
                data_converter=data_converter(KeyRing.from_file(info.codec_keys_file)),
            )
            before = _descendants(os.getpid())
            began = time.monotonic()
            handles = []
            for _ in range(concurrency):
                request = PurchaseRequest.parse(
                    purchase(f"bench-{uuid.uuid4().hex[:8]}", info.notify_url)
                )
                handle, _ = await start_purchase(client, request, "mail-provisioning")
                handles.append(handle)
            await asyncio.gather(*(handle.result() for handle in handles))
            wall = time.monotonic() - began
            cpu = _cpu_by_role(before)
            walls = [await _step_walls(handle) for handle in handles]
    steps = sorted({step for run in walls for step in run})
    return {
        "purchases": concurrency,
        "wall": wall,
        "cpu_per_purchase_ms": {role: 1000 * s / concurrency for role, s in cpu.items()},
        "step_wall_median_s": {
            step: statistics.median(run[step] for run in walls if step in run) for step in steps
        },
    }
