"""`make bench`: in-memory Temporal dev servers, no-op activities, five measurements.

1. overhead: purchases/s and worker CPU per purchase of ProvisionMailTenant (our codec,
   interceptors, sandbox settings, worker slots) against BareSameShape, interleaved
   trials; also our workflow with the SDK's default sandbox (the "before").
2. cost: Temporal Cloud billable actions per happy purchase for 0/60/120 s boots,
   from history and from the dev server's own `action` counter, for the heartbeating
   poll (today's wait_for_server) and the earlier retry-per-look design.
3. waiting at scale: many purchases at once, instant vs slow boot, on one worker:
   wall time, peak RSS, peak activity slots in use.
4. real work (bench/real.py): purchases at once through the local stack's real
   activities with one worker and then two, CPU per purchase of each stack process,
   each step's wall time, and the worker's CPU per step from purchases run one at a
   time. Runs beside part 2, which mostly sleeps through its boots.
5. simultaneous (only when named in --parts; bench/simultaneous.py): bare and ours at
   the same time, each on its own dev server in its own process, counted over the same
   windows: part 1's figures for a machine whose load moves, such as one running the
   test suite, where part 1's two halves of a pair see different loads.

The bench process is worker and client at once, so "worker CPU" is this process's
CPU (user + system, Rust core threads included); the server's CPU is shown beside it.
Prints one table, writes it as JSON, and ends with the overhead part's two ratios, each
the median of paired per-trial ratios with its 95% interval (bench/stats.py):
`overhead ratio: <x> (95% interval <lo>-<hi>, <n> paired trials)` and `worker CPU ratio: ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.admission import AdmissionActivities
from activities.notify import NotifyPolicy
from activities.plans import DEFAULT_CATALOG
from activities.tenant_claims import TenantClaimActivities, take_tenant_claim
from activities.vps_provider import VpsActivities
from bench.bare import BareSameShape, bare_step
from bench.fakes import (
    BootingProvider,
    NoopActivities,
    NoopClaims,
    noop_take_claim,
    public_dns,
    purchase,
)
from bench.procfs import all_processes, process_stat
from bench.real import real_purchases
from bench.simultaneous import simultaneous
from bench.stats import describe, median_interval
from devstack.stack import tool
from runtime.codec import KeyRing, data_converter
from runtime.exit import exit_without_teardown
from runtime.workflow_runner import ContextFreeSandboxRunner
from starter import watch
from worker import DEFAULT_MAX_CONCURRENT_ACTIVITIES, worker_interceptors, workflow_runner
from workflows.claim_contracts import tenant_claim_id
from workflows.contracts import WORKFLOW_TYPE, workflow_id_for
from workflows.dispatch import ProvisionMailTenant
from workflows.tenant_claim import TenantClaim

# Billable on Temporal Cloud and visible in history: a start, each scheduled activity
# (its retries are in ActivityTaskStarted.attempt), timers, signals, local activities.
ACTION_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_MARKER_RECORDED,
}


@dataclass(frozen=True)
class Sizes:
    purchases: int  # per overhead batch (one batch of each workflow per trial)
    trials: int  # the fewest paired overhead trials before narrow intervals may stop them
    min_trials: int  # the fewest before the time budget may stop them
    max_trials: int
    overhead_seconds: float  # no new overhead trial is begun after this
    warmup: int  # overhead trials run first and discarded (imports, caches, the JIT-less
    # first-run costs of the sandbox): the figures are those of a running worker
    boots: tuple[float, ...]
    scale_purchases: int
    scale_boot: float
    window: float  # simultaneous: seconds per counted window
    windows: int  # simultaneous: counted windows (purchases in flight per side: `purchases`)


# Small batches, many of them: a shared machine's bursts then land in few pairs, and the
# median of the paired ratios with its interval (bench/stats.py) needs trials, not size.
FULL = Sizes(
    purchases=20,
    trials=12,
    min_trials=6,  # the fewest that give a 95% interval (bench/stats.py)
    max_trials=60,
    overhead_seconds=140,
    warmup=1,
    boots=(0, 60, 120),
    scale_purchases=500,
    scale_boot=20,
    window=15,
    windows=20,
)
SMOKE = Sizes(
    purchases=2,
    trials=2,
    min_trials=2,
    max_trials=2,
    overhead_seconds=0,
    warmup=0,
    boots=(0, 3),
    scale_purchases=4,
    scale_boot=2,
    window=3,
    windows=2,
)

# The goals of issue 18, and so the widths the overhead intervals must get under: an
# interval wider than the distance from parity to the goal cannot tell the two apart.
THROUGHPUT_GOAL = 0.97  # ours / bare, purchases per second
CPU_GOAL = 1.08  # ours / bare, worker CPU per purchase
INTERVAL_LEVEL = 0.95


SECTIONS = ("overhead", "simultaneous", "cost", "scale", "real")


@dataclass
class Table:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, section: str, metric: str, values: Sequence[float], unit: str = "") -> None:
        self.rows.append(
            {
                "section": section,
                "metric": metric,
                "unit": unit,
                "min": min(values),
                "median": statistics.median(values),
                "max": max(values),
                "samples": list(values),
            }
        )
        # Parts may finish in any order (cost and real run side by side); rows keep theirs.
        self.rows.sort(key=lambda row: SECTIONS.index(row["section"]))

    def print(self) -> None:
        header = f"{'section':<9} {'metric':<72} {'min':>9} {'median':>9} {'max':>9}  unit"
        print(header)
        print("-" * len(header))
        for row in self.rows:
            print(
                f"{row['section']:<9} {row['metric']:<72} {row['min']:>9.3g} "
                f"{row['median']:>9.3g} {row['max']:>9.3g}  {row['unit']}"
            )


# ------------------------------------------------------------------ process figures


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_pids() -> list[int]:
    """Our child processes (the dev server), found once: scanning /proc for every batch
    would count a scan of every process on the machine as the batch's own CPU."""
    me = os.getpid()
    return [pid for pid, (parent, _) in all_processes().items() if parent == me]


def children_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU of those child processes that are still running, from /proc."""
    total = 0.0
    for pid in pids:
        try:
            total += process_stat(pid)[1]
        except OSError:
            continue
    return total


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Samples this process's resident set while a batch runs."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(0.2)

    def __enter__(self) -> RssPeak:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task:
            self._task.cancel()


class SlotCounter(Interceptor):
    """Counts activities running at once: the worker slots in use."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        counter = self

        class Counting(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                counter.running += 1
                counter.peak = max(counter.peak, counter.running)
                try:
                    return await self.next.execute_activity(input)
                finally:
                    counter.running -= 1

        return Counting(next)


# ------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The cost part's runs, one namespace per boot length, so that they can run at once (and
# beside the overhead trials) while the server's `action` counter, labelled by
# namespace, still tells each boot's actions apart.
# One namespace per boot length and wait design, so each one's server counter is its own
# (metric labels turn "-" into "_", hence no hyphen).
WAIT_DESIGNS = ("heartbeat", "retry")
COST_NAMESPACES = tuple(f"benchcost{i}{design}" for i in range(3) for design in WAIT_DESIGNS)


@dataclass
class Server:
    env: WorkflowEnvironment
    metrics_url: str
    plain: Client
    ours: Client
    pids: list[int] = field(default_factory=list)  # the dev server's processes

    def in_namespace(self, namespace: str) -> Server:
        """The same server, our clients bound to another namespace."""
        config = self.ours.config()
        config["namespace"] = namespace
        return Server(self.env, self.metrics_url, self.plain, Client(**config), self.pids)

    async def actions(self) -> dict[str, float]:
        """The `action` counter once it stops moving: the server reports it with a lag."""
        current = await self._actions_now()
        while True:
            await asyncio.sleep(2.0)
            latest = await self._actions_now()
            if latest == current:
                return latest
            current = latest

    async def _actions_now(self) -> dict[str, float]:
        """The dev server's `action` counter for our client's namespace, by action_type."""
        async with httpx.AsyncClient() as http:
            text = (await http.get(self.metrics_url)).text
        counts: dict[str, float] = {}
        label = f'namespace="{self.ours.namespace}"'
        for line in text.splitlines():
            if line.startswith("action{") and label in line:
                labels, value = line.rsplit(" ", 1)
                kind = labels.split('action_type="', 1)[1].split('"', 1)[0]
                counts[kind] = counts.get(kind, 0.0) + float(value)
        return counts


@asynccontextmanager
async def dev_server() -> AsyncIterator[Server]:
    metrics_port = free_port()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=tool("temporal"),
        dev_server_extra_args=[
            "--metrics-port",
            str(metrics_port),
            *(arg for namespace in COST_NAMESPACES for arg in ("--namespace", namespace)),
        ],
        dev_server_log_level="error",
    )
    try:
        config = env.client.config()
        config["data_converter"] = data_converter(KeyRing.generate("bench"))
        yield Server(
            env,
            f"http://127.0.0.1:{metrics_port}/metrics",
            env.client,
            Client(**config),
            child_pids(),
        )
    finally:
        await env.shutdown()


# ------------------------------------------------------------------ workers and purchases


def our_activities(
    provider: BootingProvider, *, heartbeat_poll: bool, real_claims: bool = False
) -> list[Callable[..., Any]]:
    noop = NoopActivities(provider)
    claims = TenantClaimActivities() if real_claims else NoopClaims()
    # Only bring_up_server is used, which needs no SSH identity.
    bring_up = (
        VpsActivities(provider, cast(Any, None)).bring_up_server  # type: ignore[arg-type]
        if heartbeat_poll
        else noop.one_look_bring_up
    )
    return [
        # The real checks: no I/O (the catalog and the outbound policy are in memory,
        # the notify host's DNS answer is public_dns's).
        AdmissionActivities(
            DEFAULT_CATALOG,
            NotifyPolicy(),
            public_dns,
            take_tenant_claim if real_claims else noop_take_claim,
        ).admit_purchase,
        claims.release_tenant_claim,
        # The real claims' owner check runs on this worker too (workflows/tenant_claim.py).
        *([claims.check_claim_holder] if real_claims else []),
        noop.ensure_rotation_schedule,
        noop.create_server,
        bring_up,
        noop.rotate_host_key,
        noop.set_up_mailu,
        noop.create_admin_credentials,
        noop.store_credentials,
        noop.record_audit_event,
        noop.notify_customer,
        noop.remove_credentials,
        noop.delete_server,
    ]


def our_worker(
    server: Server,
    task_queue: str,
    provider: BootingProvider,
    *,
    tuned: bool = True,
    heartbeat_poll: bool = True,
    real_claims: bool = False,
    extra: Sequence[Interceptor] = (),
) -> Worker:
    """The product's worker settings (tuned) or the SDK defaults it had before."""
    return Worker(
        server.ours,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant, *([TenantClaim] if real_claims else [])],
        activities=our_activities(provider, heartbeat_poll=heartbeat_poll, real_claims=real_claims),
        interceptors=[*worker_interceptors(), *extra],
        workflow_runner=(
            workflow_runner(server.ours.data_converter) if tuned else SandboxedWorkflowRunner()
        ),
        max_concurrent_activities=DEFAULT_MAX_CONCURRENT_ACTIVITIES if tuned else 100,
    )


def bare_worker(
    server: Server,
    task_queue: str,
    *,
    context_free: bool = False,
    extra: Sequence[Interceptor] = (),
) -> Worker:
    """The yardstick's worker: the SDK's defaults (bench/bare.py)."""
    return Worker(
        server.plain,
        task_queue=task_queue,
        workflows=[BareSameShape],
        activities=[bare_step],
        interceptors=extra,
        # The goal's yardstick keeps the SDK's runner; the context-free one answers the
        # per-payload context questions as ours does (runtime/workflow_runner.py).
        workflow_runner=ContextFreeSandboxRunner() if context_free else SandboxedWorkflowRunner(),
    )


async def start_ours(
    server: Server, task_queue: str, purchase_id: str | None = None
) -> WorkflowHandle[Any, Any]:
    purchase_id = purchase_id or f"b{uuid.uuid4().hex[:12]}"
    return await server.ours.start_workflow(
        WORKFLOW_TYPE, purchase(purchase_id), id=workflow_id_for(purchase_id), task_queue=task_queue
    )


async def start_bare(server: Server, task_queue: str) -> WorkflowHandle[Any, Any]:
    purchase_id = f"b{uuid.uuid4().hex[:12]}"
    return await server.plain.start_workflow(
        BareSameShape.run, purchase_id, id=f"bare-{purchase_id}", task_queue=task_queue
    )


@dataclass(frozen=True)
class Batch:
    wall: float
    cpu: float
    server_cpu: float
    purchases: int
    rss_peak: int
    rss_before: int

    @property
    def rate(self) -> float:
        return self.purchases / self.wall


async def run_batch(
    server: Server,
    worker: Worker,
    start: Callable[[Server, str], Any],
    purchases: int,
) -> Batch:
    """Starts the worker, runs one batch on it (measure_batch), stops it."""
    async with worker:
        return await measure_batch(server, worker, start, purchases)


async def measure_batch(
    server: Server,
    worker: Worker,
    start: Callable[[Server, str], Any],
    purchases: int,
) -> Batch:
    """Starts `purchases` runs at once on a running worker; waits for all results."""
    rss_before = rss_bytes()
    server_cpu = children_cpu_seconds(server.pids)
    began, cpu = time.monotonic(), process_cpu_seconds()
    with RssPeak() as rss:
        handles = await asyncio.gather(
            *(start(server, worker.task_queue) for _ in range(purchases))
        )
        await asyncio.gather(*(handle.result() for handle in handles))
    cpu, wall = process_cpu_seconds() - cpu, time.monotonic() - began
    return Batch(
        wall=wall,
        cpu=cpu,
        server_cpu=children_cpu_seconds(server.pids) - server_cpu,
        purchases=purchases,
        rss_peak=rss.peak,
        rss_before=rss_before,
    )


async def history_actions(handle: WorkflowHandle[Any, Any]) -> int:
    actions = 0
    async for event in handle.fetch_history_events():
        if event.event_type in ACTION_EVENTS:
            actions += 1
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            actions += event.activity_task_started_event_attributes.attempt - 1
    return actions


# ------------------------------------------------------------------ the three parts


@dataclass(frozen=True)
class Overhead:
    """The overhead part's answer (and the simultaneous part's): per trial (window), ours /
    bare for throughput and CPU."""

    throughput: list[float]
    cpu: list[float]
    pairs: str = "paired trials"  # what gave each ratio

    def lines(self) -> list[str]:
        return [
            describe("overhead ratio", self.throughput, INTERVAL_LEVEL, self.pairs),
            describe("worker CPU ratio", self.cpu, INTERVAL_LEVEL, self.pairs),
        ]


def narrow_enough(throughput: Sequence[float], cpu: Sequence[float]) -> bool:
    """Both intervals narrower than the distance from parity to their goal."""
    wanted = ((throughput, 1 - THROUGHPUT_GOAL), (cpu, CPU_GOAL - 1))
    intervals = [(median_interval(values, INTERVAL_LEVEL), width) for values, width in wanted]
    return all(interval is not None and interval.width < width for interval, width in intervals)


async def overhead(
    server: Server,
    sizes: Sizes,
    table: Table,
    report: dict[str, Any],
    *,
    with_sdk_default: bool = False,
    bare_context_free: bool = False,
) -> Overhead:
    """Paired, interleaved trials: each runs a batch of bare and of ours back to back
    (the order alternating), on workers that run for the whole part, so a trial costs
    seconds and a burst of other work on the machine lands in few pairs. Trials are
    added until both intervals are narrower than their goal's margin (or the time or
    trial budget is spent): the stopping rule looks at the widths only, never at where
    the ratios lie."""
    configs: dict[str, tuple[Worker, Callable[[Server, str], Any]]] = {
        "bare": (
            bare_worker(server, f"tq-{uuid.uuid4().hex[:8]}", context_free=bare_context_free),
            start_bare,
        ),
    }
    if with_sdk_default:
        configs["ours, SDK default sandbox and slots"] = (
            our_worker(server, f"tq-{uuid.uuid4().hex[:8]}", BootingProvider(), tuned=False),
            start_ours,
        )
    configs["ours"] = (
        our_worker(server, f"tq-{uuid.uuid4().hex[:8]}", BootingProvider()),
        start_ours,
    )
    names = list(configs)
    batches: dict[str, list[Batch]] = {name: [] for name in names}
    began = time.monotonic()
    async with AsyncExitStack() as running:
        for worker, _ in configs.values():
            await running.enter_async_context(worker)
        for _ in range(sizes.warmup):
            for worker, start in configs.values():
                await measure_batch(server, worker, start, sizes.purchases)
        trials = 0
        while trials < sizes.max_trials:
            # Alternate who goes first, so a drift within a trial favours neither side.
            for name in names if trials % 2 == 0 else reversed(names):
                worker, start = configs[name]
                batches[name].append(await measure_batch(server, worker, start, sizes.purchases))
            trials += 1
            throughput, cpu = _ratios(batches["bare"], batches["ours"])
            narrow = trials >= sizes.trials and narrow_enough(throughput, cpu)
            elapsed = time.monotonic() - began
            if narrow or (trials >= sizes.min_trials and elapsed >= sizes.overhead_seconds):
                break
    for name, runs in batches.items():
        table.add("overhead", f"{name}: purchases/s", [b.rate for b in runs], "1/s")
        table.add(
            "overhead",
            f"{name}: worker CPU/purchase",
            [1000 * b.cpu / b.purchases for b in runs],
            "ms",
        )
        table.add(
            "overhead",
            f"{name}: server CPU/purchase",
            [1000 * b.server_cpu / b.purchases for b in runs],
            "ms",
        )
    for name in names[1:]:
        throughput, cpu = _ratios(batches["bare"], batches[name])
        table.add("overhead", f"{name}: throughput ratio vs bare", throughput)
        table.add("overhead", f"{name}: CPU ratio vs bare", cpu)
    result = Overhead(*_ratios(batches["bare"], batches["ours"]))
    report["overhead_ratio"] = statistics.median(result.throughput)
    report["overhead"] = {
        "method": (
            f"median of paired per-trial ratios (ours / bare), {INTERVAL_LEVEL:.0%} "
            "distribution-free order-statistic interval (bench/stats.py)"
        ),
        "bare_runner": "context-free" if bare_context_free else "SDK default",
        "purchases_per_batch": sizes.purchases,
        "warmup_trials": sizes.warmup,
        "seconds": time.monotonic() - began,
        "narrower_than_goal_margin": narrow_enough(result.throughput, result.cpu),
        "throughput": _interval_report(result.throughput),
        "cpu": _interval_report(result.cpu),
        "lines": result.lines(),
    }
    return result


def _ratios(bare: Sequence[Batch], ours: Sequence[Batch]) -> tuple[list[float], list[float]]:
    """Per trial, ours / bare: purchases per second, and worker CPU per purchase."""
    pairs = list(zip(ours, bare, strict=True))
    return (
        [o.rate / b.rate for o, b in pairs],
        [(o.cpu / o.purchases) / (b.cpu / b.purchases) for o, b in pairs],
    )


def _interval_report(values: Sequence[float]) -> dict[str, Any]:
    interval = median_interval(values, INTERVAL_LEVEL)
    return {"samples": list(values), **(interval.__dict__ if interval else {})}


async def at_once(sizes: Sizes, table: Table, report: dict[str, Any]) -> Overhead:
    """Bare and ours at the same time, each on its own server (bench/simultaneous.py):
    the figure for a machine whose load moves under the overhead part's pairs."""
    result = await simultaneous(
        windows=sizes.windows,
        window=sizes.window,
        concurrency=sizes.purchases,
        settle=min(5.0, sizes.window),
    )
    for name, side in result.sides.items():
        counted = [k for k in range(sizes.windows) if side.steps[k]]  # a rate to divide by
        table.add(
            "simultaneous",
            f"{name}: purchases/s (activities / {side.steps_per_purchase})",
            [side.rate(k) / sizes.window for k in range(sizes.windows)],
            "1/s",
        )
        table.add(
            "simultaneous",
            f"{name}: purchases/s (whole purchases)",
            [n / sizes.window for n in side.purchases],
            "1/s",
        )
        if counted:
            table.add(
                "simultaneous",
                f"{name}: worker CPU/purchase",
                [1000 * side.worker_cpu[k] / side.rate(k) for k in counted],
                "ms",
            )
            table.add(
                "simultaneous",
                f"{name}: server CPU/purchase",
                [1000 * side.server_cpu[k] / side.rate(k) for k in counted],
                "ms",
            )
            # The two ways of counting agree over a run (a check on the finer one).
            table.add(
                "simultaneous",
                f"{name}: whole purchases / purchases from activities, all windows",
                [sum(side.purchases) / sum(side.rate(k) for k in counted)],
            )
        table.add("simultaneous", f"{name}: history events per purchase", [side.history_events])
        table.add(
            "simultaneous", f"{name}: history size per purchase", [side.history_bytes], "bytes"
        )
        table.add("simultaneous", f"{name}: activity retries", [side.retries])
    if result.throughput:
        table.add("simultaneous", "ours: throughput ratio vs bare", result.throughput)
        table.add("simultaneous", "ours: CPU ratio vs bare", result.cpu)
    answer = Overhead(result.throughput, result.cpu, "windows")
    report["simultaneous"] = {
        "method": (
            f"both at once, each on its own dev server in its own process, {sizes.purchases} "
            f"purchases in flight each; per {sizes.window:.0f} s window, ours / bare; median "
            f"with its {INTERVAL_LEVEL:.0%} order-statistic interval (bench/stats.py)"
        ),
        "sides": {name: side.__dict__ for name, side in result.sides.items()},
        "throughput": _interval_report(result.throughput),
        "cpu": _interval_report(result.cpu),
        "lines": answer.lines(),
    }
    return answer


async def cost(server: Server, sizes: Sizes, table: Table, report: dict[str, Any]) -> None:
    """One purchase per wait design per boot length, all at once, each in its own
    namespace, so the server counter's difference there belongs to that one purchase.

    The tenant claims are the real ones (a TenantClaim workflow per purchase): their
    start is a billable action of the purchase too, counted here from its history.
    """
    assert len(sizes.boots) * len(WAIT_DESIGNS) <= len(COST_NAMESPACES)
    runs = [(boot, design) for boot in sizes.boots for design in WAIT_DESIGNS]
    figures = await asyncio.gather(
        *(
            _cost_of_one(server.in_namespace(namespace), boot, design)
            for namespace, (boot, design) in zip(COST_NAMESPACES, runs, strict=False)
        )
    )
    by_run = dict(zip(runs, figures, strict=True))
    report["cost_metric_by_type"] = {
        f"{boot:.0f}s {design}": by_type for (boot, design), (_, by_type, _) in by_run.items()
    }
    for boot in sizes.boots:
        retry_history, retry_counter, _ = by_run[(boot, "retry")]
        history, by_type, gets = by_run[(boot, "heartbeat")]
        table.add("cost", f"boot {boot:.0f}s: retry per look, actions (history)", [retry_history])
        table.add(
            "cost",
            f"boot {boot:.0f}s: retry per look, actions (server counter)",
            [sum(retry_counter.values())],
        )
        table.add("cost", f"boot {boot:.0f}s: heartbeat poll, actions (history)", [history])
        table.add(
            "cost",
            f"boot {boot:.0f}s: heartbeat poll + starter --wait, actions (server counter)",
            [sum(by_type.values())],
        )
        table.add("cost", f"boot {boot:.0f}s: provider GETs, heartbeat poll", [gets])


async def _cost_of_one(
    server: Server, boot: float, design: str
) -> tuple[int, dict[str, float], int]:
    """One purchase with one wait design: actions by history, by the server's counter,
    and the provider GETs the wait made."""
    provider = BootingProvider(boot)
    worker = our_worker(
        server,
        f"tq-{uuid.uuid4().hex[:8]}",
        provider,
        heartbeat_poll=design == "heartbeat",
        real_claims=True,
    )
    async with worker:
        before = await server.actions()
        purchase_id = f"b{uuid.uuid4().hex[:12]}"
        handle = await start_ours(server, worker.task_queue, purchase_id)
        # `starter.py start --wait` watches the run: a history long-poll, no query.
        await watch(handle, quiet=True)
        after = await server.actions()
    by_type = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    claim = server.ours.get_workflow_handle(tenant_claim_id(purchase(purchase_id)["tenant_id"]))
    history = await history_actions(handle) + await history_actions(claim)
    return history, {k: v for k, v in by_type.items() if v}, provider.gets


async def scale(server: Server, sizes: Sizes, table: Table, report: dict[str, Any]) -> None:
    walls = {}
    for boot in (0.0, sizes.scale_boot):
        slots = SlotCounter()
        worker = our_worker(
            server, f"tq-{uuid.uuid4().hex[:8]}", BootingProvider(boot), extra=[slots]
        )
        batch = await run_batch(server, worker, start_ours, sizes.scale_purchases)
        walls[boot] = batch.wall
        label = f"{sizes.scale_purchases} at once, boot {boot:.0f}s"
        table.add("scale", f"{label}: wall", [batch.wall], "s")
        table.add("scale", f"{label}: peak worker RSS", [batch.rss_peak / 2**20], "MiB")
        table.add(
            "scale",
            f"{label}: RSS per in-flight purchase",
            [(batch.rss_peak - batch.rss_before) / 2**10 / sizes.scale_purchases],
            "KiB",
        )
        table.add("scale", f"{label}: peak activity slots in use", [slots.peak])
        table.add("scale", f"{label}: purchases/s per worker CPU s", [batch.purchases / batch.cpu])
    bound = sizes.scale_boot + 1.1 * walls[0.0]
    table.add("scale", "goal bound 20 s + 1.1 x wall(instant)", [bound], "s")
    report["scale_goal_met"] = walls[sizes.scale_boot] <= bound


async def real(concurrency: int, table: Table, report: dict[str, Any]) -> None:
    figures = await real_purchases(concurrency)
    report["real"] = figures
    label = f"{concurrency} at once"
    table.add("real", f"{label}, 1 worker: purchases/s", [concurrency / figures["wall"]], "1/s")
    two = figures["two_workers"]
    table.add("real", f"{label}, 2 workers: purchases/s", [concurrency / two["wall"]], "1/s")
    for role, ms in sorted(figures["cpu_per_purchase_ms"].items()):
        table.add("real", f"{label}, 1 worker: CPU/purchase, {role}", [ms], "ms")
    for role, ms in sorted(two["cpu_per_purchase_ms"].items()):
        table.add("real", f"{label}, 2 workers: CPU/purchase, {role}", [ms], "ms")
    for step, seconds in figures["step_wall_median_s"].items():
        table.add("real", f"{label}: step wall (median), {step}", [seconds], "s")
    one_at_a_time = f"one at a time ({figures['sequential_purchases']} runs)"
    for step, ms in figures["worker_cpu_per_step_ms"].items():
        table.add("real", f"{one_at_a_time}: worker CPU, {step}", [ms], "ms")


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="one tiny trial of each part")
    parser.add_argument("--json", default="bench-results.json", help="where to write the table")
    parser.add_argument(
        "--parts",
        default="overhead,cost,scale,real",
        help=(
            "comma-separated subset to run (--smoke leaves out real: it starts the stack); "
            "simultaneous, for a loaded machine, only when named"
        ),
    )
    parser.add_argument(
        "--real-purchases", type=int, default=50, help="purchases at once in the real part"
    )
    parser.add_argument(
        "--with-sdk-default",
        action="store_true",
        help="overhead: also our workflow under the SDK's default sandbox settings",
    )
    parser.add_argument(
        "--bare-context-free",
        action="store_true",
        help=(
            "overhead: run the bare workflow under the context-free sandbox runner too, "
            "to see what ours costs beyond it (the goal's yardstick is the SDK's runner)"
        ),
    )
    parser.add_argument(
        "--overhead-seconds",
        type=float,
        help=(
            "overhead: begin no trial after this many seconds (default "
            f"{FULL.overhead_seconds:.0f}); longer beside a loaded machine, whose trials spread"
        ),
    )
    parser.add_argument(
        "--windows",
        type=int,
        help=(
            f"simultaneous: how many {FULL.window:.0f} s windows to count (default {FULL.windows})"
        ),
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.overhead_seconds is not None:
        sizes = replace(sizes, overhead_seconds=args.overhead_seconds)
    if args.windows is not None:
        sizes = replace(sizes, windows=args.windows)
    parts = set(args.parts.split(",")) - ({"real"} if args.smoke else set())
    table = Table()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "sizes": sizes.__dict__,
    }
    began = time.monotonic()
    together = Overhead([], [])
    if "simultaneous" in parts:
        # First, and alone: its two servers are the only ones on the machine of ours.
        together = await at_once(sizes, table, report)
    result = Overhead([], [])
    if parts - {"simultaneous"}:
        async with dev_server() as server:
            if "overhead" in parts:
                result = await overhead(
                    server,
                    sizes,
                    table,
                    report,
                    with_sdk_default=args.with_sdk_default,
                    bare_context_free=args.bare_context_free,
                )
            if "scale" in parts:
                await scale(server, sizes, table, report)
            # Side by side: the cost part's six runs mostly sleep through their boots, in the
            # in-memory server; the real part's figures are the stack's own processes.
            # A task group: if one fails, the other is cancelled before the server stops.
            async with asyncio.TaskGroup() as side_by_side:
                if "cost" in parts:
                    side_by_side.create_task(cost(server, sizes, table, report))
                if "real" in parts:
                    side_by_side.create_task(real(args.real_purchases, table, report))
    report["rows"] = table.rows
    report["wall_seconds"] = time.monotonic() - began
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    table.print()
    print(f"json: {args.json}  ({report['wall_seconds']:.0f} s)")
    if "overhead" in parts:
        print(
            f"overhead method: median of paired per-trial ratios, {INTERVAL_LEVEL:.0%} "
            f"order-statistic interval; {sizes.purchases} purchases per batch; intervals "
            f"narrower than the goals' margins ({1 - THROUGHPUT_GOAL:.2f} throughput, "
            f"{CPU_GOAL - 1:.2f} CPU): "
            f"{'yes' if report['overhead']['narrower_than_goal_margin'] else 'no'}"
        )
    if "simultaneous" in parts:
        print(f"simultaneous method: {report['simultaneous']['method']}")
        for line in together.lines():
            print(f"simultaneous {line}")
    if "overhead" in parts and args.bare_context_free:
        print("yardstick: bare under the context-free runner (not the goal's, which is the SDK's)")
    if "overhead" in parts:
        for line in result.lines():
            print(line)
    return 0


if __name__ == "__main__":
    # The retry-per-look design logs a warning with a traceback per look (what
    # wait_for_server no longer does); the bench's output is the table.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    # The table is printed and the JSON written: exit without the interpreter teardown
    # that sometimes aborts a process holding Temporal clients (runtime/exit.py), which
    # turned a finished `make bench` into a failed make target.
    exit_without_teardown(asyncio.run(main()))
