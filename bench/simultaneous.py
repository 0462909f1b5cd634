"""Part 5 of `make bench`, for a machine whose load moves: bare and ours at the same time.

The overhead part runs a batch of bare and then one of ours. On a quiet machine the two
halves of a pair see the same machine; beside `make test` they do not: the suite's
bursts last seconds, as long as a half, so per-trial ratios there ran from 0.49 to 1.85
(74 trials at ae0fba5, docs/PERFORMANCE.md) and no interval got narrow in a suite's
length. Here the two run at once, each in its own process with its own in-memory dev
server, as closed loops (`concurrency` purchases in flight, a new one started as one
ends), and both are counted over the same time windows: whatever the suite does in a
window, it does to both sides. The two sides also compete with each other, for the
same two cores, symmetrically (same server binary, same process layout).

Throughput is counted in activities completed, divided by the activities one purchase
runs (read from a finished purchase's history: 10 on both sides): with 20 purchases in
flight a lane finishes one or two purchases in a 15 s window beside the suite, so whole
purchases per window (kept beside it) carry a counting noise of ~10%, and the ratio of
two such counts more; activities are ten times finer. In a closed loop every purchase
started is one running through the same steps, so the two rates agree over a run.
Per window also: this process's CPU (worker and client, as the overhead part's "worker
CPU") and its server's; and over the run, activity attempts after the first (a timeout
under load would show there as a retry).

The parent (`simultaneous`) starts both sides, waits until each has finished a purchase
(imports, the sandbox's first runs), then gives both the same start time, on the
machine-wide monotonic clock, through their stdin; each writes its windows as JSON to a
file the parent names. The dev server prints to stdout, so files, not stdout, carry them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from bench.fakes import BootingProvider
from runtime.exit import exit_without_teardown

SIDES = ("bare", "ours")


@dataclass(frozen=True)
class Windows:
    """One side's figures, per window."""

    steps: list[int]  # activities completed
    purchases: list[int]  # purchases completed
    worker_cpu: list[float]  # seconds
    server_cpu: list[float]  # seconds
    steps_per_purchase: int  # activities in a finished purchase's history
    history_events: int  # that history's length: the server's work per purchase
    history_bytes: int
    retries: int  # activity attempts after the first, over the whole run

    def rate(self, k: int) -> float:
        """Purchases per window `k`, from its activities."""
        return self.steps[k] / self.steps_per_purchase


def _bins(times: Sequence[float], began: float, window: float, count: int) -> list[int]:
    """How many of `times` fall in each of `count` windows from `began`."""
    bins = [0] * count
    for t in times:
        k = int((t - began) // window)
        if 0 <= k < count:
            bins[k] += 1
    return bins


class StepCounter(Interceptor):
    """When each activity completed, and how many attempts came after a first."""

    def __init__(self) -> None:
        self.completed: list[float] = []
        self.retries = 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        counter = self

        class Counting(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                if activity.info().attempt > 1:
                    counter.retries += 1
                result = await self.next.execute_activity(input)
                counter.completed.append(time.monotonic())
                return result

        return Counting(next)


# ------------------------------------------------------------------ one side (a child)


async def run_side(side: str, concurrency: int, ready: Path, result: Path) -> None:
    """Runs `side`'s workflow in closed loops on its own dev server until the windows
    read from stdin (`<start> <window seconds> <windows>`) are over."""
    # Imported here: the parent needs none of the worker's modules.
    from bench.run import (
        bare_worker,
        children_cpu_seconds,
        dev_server,
        our_worker,
        process_cpu_seconds,
        start_bare,
        start_ours,
    )

    counter = StepCounter()
    completed: list[float] = []
    finished: list[WorkflowHandle[Any, Any]] = []
    async with dev_server() as server:
        task_queue = f"tq-{uuid.uuid4().hex[:8]}"
        if side == "ours":
            worker = our_worker(server, task_queue, BootingProvider(), extra=[counter])
            start: Callable[..., Any] = start_ours
        else:
            worker = bare_worker(server, task_queue, extra=[counter])
            start = start_bare

        async def lane() -> None:
            while True:
                handle = await start(server, task_queue)
                await handle.result()
                completed.append(time.monotonic())
                finished[:] = [handle]

        async with worker:
            lanes = [asyncio.create_task(lane()) for _ in range(concurrency)]
            try:
                while not completed:
                    _raise_if_failed(lanes)
                    await asyncio.sleep(0.05)
                ready.touch()
                line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                began, window, count = _schedule(line)
                worker_cpu, server_cpu = [], []
                for k in range(count + 1):
                    await asyncio.sleep(max(0.0, began + k * window - time.monotonic()))
                    worker_cpu.append(process_cpu_seconds())
                    server_cpu.append(children_cpu_seconds(server.pids))
                _raise_if_failed(lanes)  # a lane that died would have lowered the rate
            finally:
                for task in lanes:
                    task.cancel()
                await asyncio.gather(*lanes, return_exceptions=True)
        events = [event async for event in finished[0].fetch_history_events()]
    windows = Windows(
        steps=_bins(counter.completed, began, window, count),
        purchases=_bins(completed, began, window, count),
        worker_cpu=[b - a for a, b in itertools.pairwise(worker_cpu)],
        server_cpu=[b - a for a, b in itertools.pairwise(server_cpu)],
        steps_per_purchase=sum(
            event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED for event in events
        ),
        history_events=len(events),
        history_bytes=sum(event.ByteSize() for event in events),
        retries=counter.retries,
    )
    result.write_text(json.dumps(windows.__dict__))


def _raise_if_failed(lanes: Sequence[asyncio.Task[None]]) -> None:
    """A lane ends only by failing (a purchase that did not complete): say so."""
    for lane in lanes:
        if lane.done():
            lane.result()


def _schedule(line: str) -> tuple[float, float, int]:
    """`<start> <window seconds> <windows>`, as the parent writes it."""
    began, window, count = line.split()
    return float(began), float(window), int(count)


# ------------------------------------------------------------------ both sides (the parent)


def _start_side(side: str, concurrency: int, folder: Path) -> subprocess.Popen[str]:
    """One side as a child process; its files (ready, result, log) in `folder`."""
    # The dev server logs a failure for each poll cut short at the end: to a file, shown
    # only when the side fails. The child holds its own copy of the descriptor.
    with (folder / f"{side}.log").open("w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.simultaneous",
                side,
                "--concurrency",
                str(concurrency),
                "--ready",
                str(folder / f"{side}.ready"),
                "--result",
                str(folder / f"{side}.json"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )


class SideFailed(RuntimeError):
    def __init__(self, side: str, code: int, folder: Path) -> None:
        log = (folder / f"{side}.log").read_text(errors="replace")
        super().__init__(f"the {side} side exited with {code}; its last output:\n{log[-3000:]}")


@dataclass(frozen=True)
class Simultaneous:
    """Per window, ours / bare: purchases per second (from activities), and worker CPU
    per purchase."""

    throughput: list[float]
    cpu: list[float]
    sides: dict[str, Windows]


async def simultaneous(
    *, windows: int, window: float, concurrency: int, settle: float = 5.0
) -> Simultaneous:
    """Starts both sides, waits for each to be warm, counts `windows` windows of
    `window` seconds on both (after `settle` seconds of both running), and returns the
    per-window ratios. A window in which either side completed nothing gives no ratio."""
    with tempfile.TemporaryDirectory(prefix="bench-simultaneous-") as scratch:
        folder = Path(scratch)
        children = {side: _start_side(side, concurrency, folder) for side in SIDES}
        try:
            while not all((folder / f"{side}.ready").exists() for side in SIDES):
                for side, child in children.items():
                    if child.poll() is not None:
                        raise SideFailed(side, child.returncode, folder)
                await asyncio.sleep(0.1)
            schedule = f"{time.monotonic() + settle} {window} {windows}\n"
            for child in children.values():
                assert child.stdin is not None
                child.stdin.write(schedule)
                child.stdin.close()
            for side, child in children.items():
                code = await asyncio.get_running_loop().run_in_executor(None, child.wait)
                if code != 0:
                    raise SideFailed(side, code, folder)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.kill()
                    child.wait()
        sides = {
            side: Windows(**json.loads((folder / f"{side}.json").read_text())) for side in SIDES
        }
    bare, ours = sides["bare"], sides["ours"]
    throughput, cpu = [], []
    for k in range(windows):
        if bare.steps[k] and ours.steps[k]:
            throughput.append(ours.rate(k) / bare.rate(k))
            cpu.append((ours.worker_cpu[k] / ours.rate(k)) / (bare.worker_cpu[k] / bare.rate(k)))
    return Simultaneous(throughput, cpu, sides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one side of the simultaneous part")
    parser.add_argument("side", choices=SIDES)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--ready", type=Path, required=True, help="touched once warm")
    parser.add_argument("--result", type=Path, required=True, help="the windows, as JSON")
    args = parser.parse_args(argv)
    asyncio.run(run_side(args.side, args.concurrency, args.ready, args.result))
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
