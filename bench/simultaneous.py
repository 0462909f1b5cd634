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

Per window: purchases completed in it (by each completion's time), this process's CPU
(worker and client, as the overhead part's "worker CPU") and its server's; activity
attempts after the first (a timeout under load would show there as retries).

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
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from bench.fakes import BootingProvider
from runtime.exit import exit_without_teardown

SIDES = ("bare", "ours")


@dataclass(frozen=True)
class Windows:
    """One side's figures, per window."""

    purchases: list[int]
    worker_cpu: list[float]  # seconds
    server_cpu: list[float]  # seconds
    retries: int  # activity attempts after the first, over the whole run


class RetryCounter(Interceptor):
    """Counts activity attempts after the first."""

    def __init__(self) -> None:
        self.retries = 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        counter = self

        class Counting(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                if activity.info().attempt > 1:
                    counter.retries += 1
                return await self.next.execute_activity(input)

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

    counter = RetryCounter()
    completed: list[float] = []
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

        async with worker:
            lanes = [asyncio.create_task(lane()) for _ in range(concurrency)]
            try:
                while not completed:
                    await asyncio.sleep(0.05)
                ready.touch()
                line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                began, window, count = _schedule(line)
                worker_cpu, server_cpu = [], []
                for k in range(count + 1):
                    await asyncio.sleep(max(0.0, began + k * window - time.monotonic()))
                    worker_cpu.append(process_cpu_seconds())
                    server_cpu.append(children_cpu_seconds(server.pids))
            finally:
                for task in lanes:
                    task.cancel()
                await asyncio.gather(*lanes, return_exceptions=True)
    purchases = [
        sum(began + k * window <= t < began + (k + 1) * window for t in completed)
        for k in range(count)
    ]
    windows = Windows(
        purchases=purchases,
        worker_cpu=[b - a for a, b in itertools.pairwise(worker_cpu)],
        server_cpu=[b - a for a, b in itertools.pairwise(server_cpu)],
        retries=counter.retries,
    )
    result.write_text(json.dumps(windows.__dict__))


def _schedule(line: str) -> tuple[float, float, int]:
    """`<start> <window seconds> <windows>`, as the parent writes it."""
    began, window, count = line.split()
    return float(began), float(window), int(count)


# ------------------------------------------------------------------ both sides (the parent)


class SideFailed(RuntimeError):
    def __init__(self, side: str, code: int, folder: Path) -> None:
        log = (folder / f"{side}.log").read_text(errors="replace")
        super().__init__(f"the {side} side exited with {code}; its last output:\n{log[-3000:]}")


@dataclass(frozen=True)
class Simultaneous:
    """Per window, ours / bare: purchases completed, and worker CPU per purchase."""

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
        children = {
            side: subprocess.Popen(
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
                # The dev server logs a failure for each poll cut short at the end.
                stderr=(folder / f"{side}.log").open("w"),
                text=True,
            )
            for side in SIDES
        }
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
        if bare.purchases[k] and ours.purchases[k]:
            throughput.append(ours.purchases[k] / bare.purchases[k])
            cpu.append(
                (ours.worker_cpu[k] / ours.purchases[k]) / (bare.worker_cpu[k] / bare.purchases[k])
            )
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
