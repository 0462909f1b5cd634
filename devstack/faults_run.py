"""`make faults`: break the running local stack on purpose, count what survives.

    python -m devstack.faults_run                 # default size (see DEFAULT_SIZES)
    python -m devstack.faults_run --purchases 5 --burst 20 --only worker_kill,vault

Every scenario starts real purchases on the real stack (Temporal dev server, OpenBao
on raft storage, the local cloud and its SSH/SMTP VPSes, worker processes), injects
its faults while they run, waits for every run to end, then checks each purchase
against what the design promises:

    completed    exactly one server with its labels, Vault version 1 (its own, no
                 version added by retries), one `smtp_credentials_stored` audit row
                 and no `provisioning_failed` row, and the stored credentials log in
                 over SMTP (STARTTLS + AUTH) on the server
    compensated  no server, no current Vault record, one `provisioning_failed` row
    reconciled   (terminated runs) as compensated, after the reconciler ran

The `plan_change` and `deprovision` scenarios (devstack/faults_lifecycle.py), the
`rotation` and `activation` ones (devstack/faults_rotation_activation.py) and
`activation_tls` (devstack/faults_activation_tls.py: the certificate stage against a
real Knot, pebble and certbot) buy their tenants the same way, then run
ChangeMailPlan, DeprovisionMailTenant, RotateSmtpCredentials or ActivateMailDomain on
them under faults and check each run as well (completed or compensated; nothing left
without a tenant, server or claim owner).

A purchase (or run) that does not match is *lost*; the problems are printed. One table row per
scenario (injected faults, purchases survived / lost, slowest recovery), then the line
`faults: <injected> injected, <survived> survived, <lost> lost`. Then `check-world`
compares every record of the stack (servers, Vault records, claims, rotation
schedules, audit rows, runs) and prints each disagreement with its fix, ending with
`check-world: <n> disagreements`. Exit status 1 if anything was lost or disagrees.

Recovery (worker, Temporal and OpenBao faults): for each purchase in flight when the
fault hit, the seconds from the service being back (a new worker ready, Temporal
serving, OpenBao unsealed) until that purchase's next step completed. It includes
the step's own duration, so it is an upper bound on the time lost to the fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from activities.audit import SqliteAuditStore
from activities.credentials import read_admin_credentials
from activities.vault import Vault, VaultSettings
from devstack.demo import smtp_login
from devstack.hetzner import RATE_LIMIT
from devstack.mail_login import certificate_after_dns
from devstack.stack import Stack, StackInfo
from runtime.codec import KeyRing, data_converter
from starter import (
    check_world,
    print_world_report,
    run_reconciler,
    start_deprovision,
    start_purchase,
)
from workflows.contracts import (
    ProvisionResult,
    ProvisionStatus,
    PurchaseRequest,
)
from workflows.deprovision_contracts import DeprovisionRequest
from workflows.reconcile_contracts import ReconcileRequest
from workflows.world_check_contracts import WorldReport

T = TypeVar("T")

TASK_QUEUE = "mail-provisioning"
WORKERS = 2
RUN_TIMEOUT = 900.0
# The `status` query's states of a run that has not ended (purchases, plan changes,
# deprovisions, rotations: running / compensating; an activation: waiting or checking).
RUNNING_STATES = frozenset({"running", "compensating", "waiting_for_dns", "checking"})
# Clean-up deprovisions at most this many tenants at once (each DeprovisionMailTenant
# run is a handful of API calls and waits); the project's rate limit, not the workers,
# bounds how fast they can go.
CLEANUP_IN_FLIGHT = 20
# What check-world counts that no tenant may keep after its deprovision (a final
# snapshot is kept until its expiry timer deletes it; the deprovision scenario awaits
# those timers, so none may be left either).
LEFT_BEHIND = ("servers", "vault_records", "claims", "rotation_schedules", "final_snapshots")
# How often a long wait says how far it has got.
PROGRESS_EVERY_SECONDS = 15.0
# Purchases named in one label-selector look-up (`purchase in (...)`), so a look-up
# stays one request per page, and the URL short.
SELECTOR_CHUNK = 40
SCENARIOS = (
    "worker_kill",
    "temporal_restart",
    "vault",
    "cloud_api",
    "ssh",
    "mailu_unhealthy",
    "terminate",
    "burst",
    "plan_change",
    "deprovision",
    "rotation",
    "activation",
    "activation_tls",
)


@dataclass
class Purchase:
    request: PurchaseRequest
    handle: WorkflowHandle[Any, Any]
    expect: str = "completed"  # "completed" | "compensated" | "reconciled"
    result: ProvisionResult | None = None
    failure: BaseException | None = None


@dataclass
class ScenarioResult:
    name: str
    injected: int = 0
    survived: int = 0
    lost: int = 0
    # (seconds, the step the purchase was in when the fault hit)
    recoveries: list[tuple[float, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Hetzner API requests the project's bucket served / refused (429) in the scenario.
    api_requests: int = 0
    api_refused: int = 0

    @property
    def slowest_recovery(self) -> str:
        if not self.recoveries:
            return "-"
        seconds, step = max(self.recoveries)
        return f"{seconds:.1f} ({step})"

    def slowest_by_step(self) -> dict[str, float]:
        slowest: dict[str, float] = {}
        for seconds, step in self.recoveries:
            slowest[step] = max(seconds, slowest.get(step, 0.0))
        return slowest


async def freeze(pid: int, seconds: float) -> None:
    """SIGSTOP a process for a while: it neither answers nor dies (a hung service)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def with_progress(runs: list[Awaitable[T]], progress: Callable[[], str]) -> list[T]:
    """Await all of `runs` together, saying `progress()` every PROGRESS_EVERY_SECONDS
    until they have all ended (a long wait that shows it is not stuck)."""
    started = time.monotonic()
    together = asyncio.ensure_future(asyncio.gather(*runs))
    while True:
        done, _ = await asyncio.wait({together}, timeout=PROGRESS_EVERY_SECONDS)
        if done:
            return together.result()
        say(f"  {progress()} ({time.monotonic() - started:.0f} s)")


class FaultRun:
    """The scenarios, against one running stack."""

    def __init__(self, stack: Stack, client: Client) -> None:
        self.stack = stack
        self.info: StackInfo = stack.info
        self.client = client
        token = (self.info.state_dir / "cloud.token").read_text().strip()
        self.api = httpx.AsyncClient(
            base_url=self.info.cloud_url + "/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        self.devstack = httpx.AsyncClient(
            base_url=self.info.cloud_url.removesuffix("/v1") + "/_devstack/", timeout=30
        )
        self.reader = Vault(
            VaultSettings(
                url=self.info.vault_addr, token=self.info.reader_token_file.read_text().strip()
            )
        )

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.devstack.aclose()

    # ------------------------------------------------------------------ purchases

    async def start(self, count: int, scenario: str, plan: str = "starter") -> list[Purchase]:
        purchases = []
        for _ in range(count):
            suffix = uuid.uuid4().hex[:8]
            request = PurchaseRequest.parse(
                {
                    "purchase_id": f"f-{scenario.replace('_', '-')}-{suffix}",
                    "tenant_id": f"f{suffix}",
                    "domain": f"f{suffix}.example",
                    "plan": plan,
                    "requested_by": "faults",
                    "notify_url": self.info.notify_url,
                }
            )
            handle, _ = await start_purchase(self.client, request, TASK_QUEUE)
            purchases.append(Purchase(request, handle))
        return purchases

    async def finish(self, purchases: list[Purchase]) -> None:
        """Wait for every purchase that is to end by itself (progress on a long wait)."""
        awaited = [p for p in purchases if p.expect != "reconciled"]
        ended: list[Purchase] = []

        async def one(purchase: Purchase) -> None:
            try:
                purchase.result = await asyncio.wait_for(purchase.handle.result(), RUN_TIMEOUT)
            except (WorkflowFailureError, TimeoutError) as err:
                purchase.failure = err
            ended.append(purchase)

        await with_progress(
            [one(p) for p in awaited], lambda: f"purchases: {len(ended)}/{len(awaited)} ended"
        )

    @staticmethod
    def handles(purchases: list[Purchase]) -> dict[str, WorkflowHandle[Any, Any]]:
        return {p.request.purchase_id: p.handle for p in purchases}

    async def progress(
        self, handle: WorkflowHandle[Any, Any], status_type: type[Any] = ProvisionStatus
    ) -> tuple[int, str] | None:
        """Steps finished so far and the current one; None once the run is closed (or
        unanswerable). `status_type`: the run's `status` answer (every workflow of the
        queue answers with `state`; all but the rotation with `current_step` and `steps`)."""
        try:
            status = await asyncio.wait_for(
                handle.query("status", result_type=status_type, rpc_timeout=timedelta(seconds=5)),
                5,
            )
        except Exception:  # a query fails while workers or Temporal are down
            return None
        if status.state not in RUNNING_STATES:
            return None
        # A rotation's status has no steps (one activity); an activation names no step
        # while it checks: its state says what it does.
        steps = getattr(status, "steps", [])
        done = sum(1 for step in steps if step.state == "done")
        return done, getattr(status, "current_step", None) or status.state

    async def snapshot(
        self, runs: dict[str, WorkflowHandle[Any, Any]], status_type: type[Any] = ProvisionStatus
    ) -> dict[str, tuple[int, str]]:
        found = await asyncio.gather(*(self.progress(h, status_type) for h in runs.values()))
        return {key: progress for key, progress in zip(runs, found, strict=True) if progress}

    async def recovery(
        self,
        runs: dict[str, WorkflowHandle[Any, Any]],
        before: dict[str, tuple[int, str]],
        restored_at: float,
        status_type: type[Any] = ProvisionStatus,
    ) -> list[tuple[float, str]]:
        """Seconds from `restored_at` until each in-flight run finished a new step,
        with the step it was in when the fault hit."""
        pending = {key: handle for key, handle in runs.items() if key in before}
        times: list[tuple[float, str]] = []
        deadline = time.monotonic() + RUN_TIMEOUT
        while pending and time.monotonic() < deadline:
            for key, handle in list(pending.items()):
                now = await self.progress(handle, status_type)
                moved_on = now is None and await self._moved_on(handle, status_type)
                done_before, step = before[key]
                if moved_on or (now is not None and now[0] > done_before):
                    times.append((time.monotonic() - restored_at, step))
                    del pending[key]
            await asyncio.sleep(0.5)
        return times

    async def _moved_on(self, handle: WorkflowHandle[Any, Any], status_type: type[Any]) -> bool:
        """The run has ended, or answers with a state this runner does not watch (an
        activation gone on from its DNS stage to the certificate stage): either way it
        recovered from the fault. False while its status cannot be asked."""
        with contextlib.suppress(Exception):
            status = await asyncio.wait_for(
                handle.query("status", result_type=status_type, rpc_timeout=timedelta(seconds=5)),
                5,
            )
            if status.state not in RUNNING_STATES:
                return True
        return await self._closed(handle)

    async def _closed(self, handle: WorkflowHandle[Any, Any]) -> bool:
        with contextlib.suppress(Exception):
            return (await handle.describe()).close_time is not None
        return False

    # ------------------------------------------------------------------ checks

    async def servers_of(self, purchase_id: str) -> list[dict[str, Any]]:
        """The purchase's servers, as the provider lists them."""
        return (await self.servers_by_purchase([purchase_id]))[purchase_id]

    async def servers_by_purchase(self, purchase_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each purchase's servers, as the provider lists them: one label-selector
        look-up (`purchase in (...)`) per SELECTOR_CHUNK purchases and page, so that
        checking a burst costs a few requests, not one per purchase."""
        found: dict[str, list[dict[str, Any]]] = {purchase_id: [] for purchase_id in purchase_ids}
        for start in range(0, len(purchase_ids), SELECTOR_CHUNK):
            chunk = purchase_ids[start : start + SELECTOR_CHUNK]
            page: int | None = 1
            while page is not None:
                body = await self.api_get(
                    "servers",
                    {
                        "label_selector": f"purchase in ({','.join(chunk)})",
                        "per_page": 50,
                        "page": page,
                    },
                )
                for server in body["servers"]:
                    found[server["labels"]["purchase"]].append(server)
                page = body["meta"]["pagination"]["next_page"]
        return found

    async def api_get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """One GET of the Hetzner API, as the runner's own checks make it.

        The checks share the project's rate limit with the workers (Hetzner's 3600
        requests an hour, one more each second): an observer that finds the bucket
        empty waits for it like any client (up to about five minutes) instead of
        failing the run on a 429.
        """
        delay = 1.0
        for _ in range(40):
            response = await self.api.get(path, params=params)
            if response.status_code != 429:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def api_usage(self) -> dict[str, Any]:
        """The cloud's bucket: requests served and refused so far (devstack/cloud.py)."""
        response = await self.devstack.get("rate-limit")
        response.raise_for_status()
        usage: dict[str, Any] = response.json()
        return usage

    async def verify(self, purchases: list[Purchase], result: ScenarioResult) -> None:
        rows = SqliteAuditStore(self.info.audit_db).rows()
        servers = await self.servers_by_purchase([p.request.purchase_id for p in purchases])
        for purchase in purchases:
            problem = await self._problem(purchase, rows, servers[purchase.request.purchase_id])
            if problem is None:
                result.survived += 1
            else:
                result.lost += 1
                result.problems.append(f"{purchase.request.purchase_id}: {problem}")

    async def _problem(
        self, purchase: Purchase, rows: list[Any], servers: list[dict[str, Any]]
    ) -> str | None:
        request = purchase.request
        prefix = purchase.handle.id + "/"
        events = [row.event for row in rows if row.event_key.startswith(prefix)]
        record = await asyncio.to_thread(self.reader.read_credentials, request.tenant_id)
        if purchase.expect == "completed":
            if purchase.result is None:
                failure = purchase.failure
                if isinstance(failure, WorkflowFailureError):
                    return f"did not complete: {failure.cause}"
                return f"did not complete: {failure!r}"
            if [s["id"] for s in servers] != [purchase.result.server_id]:
                return f"servers {[s['id'] for s in servers]}, expected one"
            if record is None or record.version != 1 or purchase.result.vault_version != 1:
                return f"vault record {record and record.version}, expected version 1"
            if events.count("smtp_credentials_stored") != 1 or "provisioning_failed" in events:
                return f"audit rows {events}"
            return await self._smtp_problem(purchase.result)
        if purchase.expect == "compensated" and purchase.result is not None:
            return "completed, expected compensation"
        if servers:
            return f"{len(servers)} server(s) left behind"
        if record is not None:
            return f"vault record v{record.version} left behind"
        failed = events.count("provisioning_failed")
        if failed != 1 and not (purchase.expect == "reconciled" and failed == 0):
            return f"audit rows {events}, expected one provisioning_failed"
        return None

    async def _smtp_problem(self, result: ProvisionResult) -> str | None:
        """None when the credentials Vault holds now log in over SMTP on the server."""
        credentials = await asyncio.to_thread(read_admin_credentials, self.reader, result.tenant_id)
        try:
            reply = await self.smtp_login(result, credentials.username, credentials.password)
        except OSError as err:  # smtplib's errors, a refused login (535) among them
            return f"SMTP login failed: {err}"
        return None if reply.startswith("235") else f"SMTP login refused: {reply}"

    async def smtp_login(self, result: ProvisionResult, username: str, password: str) -> str:
        """One SMTP AUTH on the purchase's server (submissions, implicit TLS); its reply.
        Raises smtplib.SMTPAuthenticationError when MailU refuses the password."""
        server = await self.devstack.get(f"servers/{result.server_id}")
        server.raise_for_status()
        state_dir = Path(server.json()["server"]["state_dir"])
        cafile = self.info.state_dir / f"faults-{result.server_id}-cert.pem"
        # MailU has a certificate only once the customer's DNS points at the server.
        cafile.write_text(await asyncio.to_thread(certificate_after_dns, state_dir))
        reply: str = await asyncio.to_thread(
            smtp_login, str(result.ipv4), self.info.smtp_port, cafile, username, password
        )
        return reply

    async def release(self, purchases: list[Purchase], result: ScenarioResult) -> None:
        """Deprovision the verified tenants so later scenarios do not carry their
        processes, as a cancelled customer's tenant is (DeprovisionMailTenant,
        docs/OPERATIONS.md): server, login key, Vault record, rotation schedule,
        activation, claim, so that check-world finds a world that agrees at the end.

        The runs go at once, at most CLEANUP_IN_FLIGHT at a time (each mostly waits: for
        its server's delete action, for the claim to end); a run that does not end
        `deprovisioned` counts the tenant as lost in `result`.
        """
        servers = await self.servers_by_purchase([p.request.purchase_id for p in purchases])
        # Compensated or reconciled purchases have nothing left to remove.
        tenants = [p.request.tenant_id for p in purchases if servers[p.request.purchase_id]]
        for problem in await self.deprovision_all(tenants, "tenant released after its scenario"):
            result.lost += 1
            result.problems.append(problem)

    async def deprovision_all(self, tenants: list[str], reason: str) -> list[str]:
        """DeprovisionMailTenant for each tenant, CLEANUP_IN_FLIGHT at a time, waiting for
        all (progress every PROGRESS_EVERY_SECONDS); the problems, one per tenant whose
        run did not end `deprovisioned` with its claim released."""
        if not tenants:
            return []
        in_flight = asyncio.Semaphore(CLEANUP_IN_FLIGHT)
        ended: list[str] = []

        async def one(tenant: str) -> str | None:
            async with in_flight:
                try:
                    handle = await start_deprovision(
                        self.client, DeprovisionRequest(tenant, "faults", reason), TASK_QUEUE
                    )
                    done = await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
                except Exception as err:  # failed, timed out, or not started: lost, shown
                    return f"clean-up of {tenant}: {getattr(err, 'cause', None) or err!r}"
                finally:
                    ended.append(tenant)
            if done.outcome != "deprovisioned" or not done.claim_released:
                return f"clean-up of {tenant}: {done}"
            if done.final_snapshots:
                # A plan that promises backups: kept until its expiry timer deletes it.
                say(f"clean-up of {tenant}: final snapshot(s) {done.final_snapshots} kept")
            return None

        return [
            problem
            for problem in await with_progress(
                [one(tenant) for tenant in tenants],
                lambda: f"clean-up: {len(ended)}/{len(tenants)} tenants deprovisioned",
            )
            if problem is not None
        ]

    async def settle(
        self,
        purchases: list[Purchase],
        result: ScenarioResult,
        count_unused: Callable[[], Awaitable[int]] | None = None,
    ) -> ScenarioResult:
        """Wait for the runs, check them, take unconsumed faults off `injected`, clean up."""
        await self.finish(purchases)
        await self.verify(purchases, result)
        if count_unused is not None:
            result.injected -= await count_unused()
        await self.release(purchases, result)
        return result

    async def outage(
        self,
        runs: list[Purchase] | dict[str, WorkflowHandle[Any, Any]],
        result: ScenarioResult,
        fault: Callable[[], Awaitable[None]],
        status_type: type[Any] = ProvisionStatus,
    ) -> None:
        """Inject `fault` (it returns once the service is back) and measure the recovery
        of the runs (purchases, or other workflows' handles by key) in flight."""
        handles = self.handles(runs) if isinstance(runs, list) else runs
        before = await self.snapshot(handles, status_type)
        await fault()
        result.injected += 1
        result.recoveries += await self.recovery(handles, before, time.monotonic(), status_type)

    # ------------------------------------------------------------------ fault tools

    def workers(self) -> list[Any]:
        return [p for p in self.stack.processes("worker") if p.popen.poll() is None]

    async def kill_workers(self, count: int | None) -> None:
        """SIGKILL `count` random workers (None: all), start as many; returns when ready."""
        running = self.workers()
        victims = running if count is None else random.sample(running, count)
        for victim in victims:
            victim.popen.kill()
            self.stack.stop_process(victim)
        for _ in victims:
            await self.stack.start_worker()

    async def arm(self, rule: dict[str, Any]) -> None:
        (await self.devstack.post("faults", json=rule)).raise_for_status()

    async def unused_rule_uses(self) -> int:
        response = await self.devstack.get("faults")
        response.raise_for_status()
        return sum(int(rule["times"]) for rule in response.json()["faults"])

    async def on_each_server(
        self, purchases: list[Purchase], arm: Callable[[int], Awaitable[None]]
    ) -> None:
        """Call `arm(server_id)` once per purchase, as soon as its server exists."""
        waiting = {p.request.purchase_id for p in purchases}
        deadline = time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            # One look-up for all of them per round: polling each purchase every 0.1 s
            # drew hundreds of requests a minute from the project's bucket in a burst.
            for purchase_id, servers in (await self.servers_by_purchase(sorted(waiting))).items():
                if servers:
                    await arm(int(servers[0]["id"]))
                    waiting.discard(purchase_id)
            await asyncio.sleep(0.5)

    async def vps_fault(self, server_id: int, kind: str, body: dict[str, Any]) -> None:
        response = await self.devstack.post(f"servers/{server_id}/{kind}", json=body)
        response.raise_for_status()

    async def unused_vps_faults(self, purchases: list[Purchase], kind: str) -> int:
        unused = 0
        found = await self.servers_by_purchase([p.request.purchase_id for p in purchases])
        for servers in found.values():
            for server in servers:
                response = await self.devstack.get(f"servers/{server['id']}/{kind}")
                if response.status_code == 200:
                    faults = response.json()[kind.replace("-", "_")]
                    unused += sum(int(f["times"]) for f in faults)
        return unused

    # ------------------------------------------------------------------ scenarios

    async def worker_kill(self, size: int) -> ScenarioResult:
        """SIGKILL random workers at random moments, then all of them at once."""
        result = ScenarioResult("worker SIGKILL (random, then all)")
        purchases = await self.start(size, "worker_kill")
        for count in (1, 1, 1, None):
            await asyncio.sleep(random.uniform(1.0, 4.0))  # noqa: S311
            await self.outage(purchases, result, functools.partial(self.kill_workers, count))
        return await self.settle(purchases, result)

    async def temporal_restart(self, size: int) -> ScenarioResult:
        """SIGKILL the Temporal dev server mid-run, start it again on its database."""
        result = ScenarioResult("Temporal server killed + restarted")
        purchases = await self.start(size, "temporal_restart")
        await asyncio.sleep(3)
        await self.outage(purchases, result, self.stack.restart_temporal)
        return await self.settle(purchases, result)

    async def vault(self, size: int) -> ScenarioResult:
        """Freeze OpenBao (SIGSTOP) for 10 s, then restart it on its storage."""
        result = ScenarioResult("OpenBao frozen (SIGSTOP) + restarted")
        purchases = await self.start(size, "vault")
        await asyncio.sleep(3)
        [openbao] = self.stack.processes("openbao")
        await self.outage(purchases, result, lambda: freeze(openbao.popen.pid, 10))
        await self.outage(purchases, result, self.stack.restart_vault)
        return await self.settle(purchases, result)

    async def cloud_api(self, size: int) -> ScenarioResult:
        """429 with RateLimit-Reset, 500/502/503/504, lost create responses, slow answers."""
        result = ScenarioResult("cloud API 429/5xx/lost/slow")
        rules: list[dict[str, Any]] = [
            {
                # The cloud answers with Hetzner's headers for an empty bucket: reset
                # (bucket full again) an hour ahead, devstack/cloud.py _fault_error.
                "method": "POST",
                "path": "/v1/servers",
                "status": 429,
                "code": "rate_limit_exceeded",
                "times": 2,
            },
            *(
                {
                    "method": "POST",
                    "path": "/v1/servers",
                    "status": status,
                    "code": code,
                    "times": 1,
                }
                for status, code in (
                    (500, "server_error"),
                    (502, "server_error"),
                    (503, "unavailable"),
                    (504, "timeout"),
                )
            ),
            # Lost response: the server is created, the client sees a gateway timeout.
            {
                "method": "POST",
                "path": "/v1/servers",
                "status": 504,
                "code": "timeout",
                "after_effect": True,
                "times": 2,
            },
            {
                "method": "GET",
                "path": "/v1/servers/*",
                "status": 503,
                "code": "unavailable",
                "times": 3,
            },
            {
                "method": "GET",
                "path": "/v1/actions/*",
                "status": 502,
                "code": "server_error",
                "times": 2,
            },
        ]
        armed = 0
        for rule in rules:
            await self.arm(rule)
            armed += int(rule["times"])
        purchases = await self.start(size, "cloud_api")
        # Slow answers: the whole API stalls for 3 s, twice.
        [cloud] = self.stack.processes("cloud")
        for _ in range(2):
            await asyncio.sleep(2)
            await freeze(cloud.popen.pid, 3)
            result.injected += 1
        result.injected += armed
        await self.settle(purchases, result, self.unused_rule_uses)
        await self.devstack.delete("faults")
        return result

    async def ssh(self, size: int) -> ScenarioResult:
        """SSH refused while the server boots, and connections closed before the banner."""
        result = ScenarioResult("SSH refused while booting / closed")
        purchases = await self.start(size, "ssh")

        async def arm(server_id: int) -> None:
            await self.vps_fault(server_id, "ssh-faults", {"mode": "refuse", "times": 3})
            await self.vps_fault(server_id, "ssh-faults", {"mode": "close", "times": 2})

        await self.on_each_server(purchases, arm)
        result.injected = 5 * size
        return await self.settle(
            purchases, result, lambda: self.unused_vps_faults(purchases, "ssh-faults")
        )

    async def mailu_unhealthy(self, size: int) -> ScenarioResult:
        """MailU's admin container reports unhealthy for a while (4 health polls)."""
        result = ScenarioResult("MailU admin unhealthy for a while")
        purchases = await self.start(size, "mailu_unhealthy")
        unhealthy = json.dumps({"Service": "admin", "State": "running", "Health": "unhealthy"})

        async def arm(server_id: int) -> None:
            body = {
                "match": "ps --format json admin",
                "exit_status": 0,
                "stdout": unhealthy + "\n",
                "times": 4,
            }
            await self.vps_fault(server_id, "command-faults", body)

        await self.on_each_server(purchases, arm)
        result.injected = 4 * size
        return await self.settle(
            purchases, result, lambda: self.unused_vps_faults(purchases, "command-faults")
        )

    async def terminate(self, size: int) -> ScenarioResult:
        """Terminate half the runs mid-way; the reconciler must clean up after them."""
        result = ScenarioResult("terminate mid-run + reconciler")
        purchases = await self.start(size, "terminate")
        victims = purchases[: max(1, size // 2)]
        for victim in victims:
            await asyncio.sleep(random.uniform(0.5, 3.0))  # noqa: S311
            await victim.handle.terminate("faults: terminated mid-run")
            victim.expect = "reconciled"
            result.injected += 1
        # Let attempts of the terminated runs notice (heartbeat) and stop before looking.
        await asyncio.sleep(5)
        await run_reconciler(
            self.client, TASK_QUEUE, ReconcileRequest(grace_seconds=0), uuid.uuid4().hex[:8]
        )
        return await self.settle(purchases, result)

    async def burst(self, size: int) -> ScenarioResult:
        """`size` purchases at once; 10% faulted: half of those for good (the server fails
        to boot: must compensate), half transiently (SSH refused 3 times: must complete)."""
        result = ScenarioResult(f"{size} purchases at once, 10% faulted")
        faulted = max(2, size // 10)
        # A boot failure hits the next server that boots, so each doomed purchase is
        # started alone and its failure consumed before the burst begins.
        doomed = []
        for _ in range(faulted // 2):
            (await self.devstack.post("boot-failures", json={"times": 1})).raise_for_status()
            [purchase] = await self.start(1, "burst")
            purchase.expect = "compensated"
            doomed.append(purchase)
            while (await self.devstack.get("faults")).json()["boot_failures"]:
                await asyncio.sleep(0.1)
            result.injected += 1
        purchases = doomed + await self.start(size - len(doomed), "burst")
        shaky = purchases[len(doomed) : faulted]

        async def refuse(server_id: int) -> None:
            await self.vps_fault(server_id, "ssh-faults", {"mode": "refuse", "times": 3})

        await self.on_each_server(shaky, refuse)
        result.injected += 3 * len(shaky)
        return await self.settle(
            purchases, result, lambda: self.unused_vps_faults(shaky, "ssh-faults")
        )


# A tenant bought and deprovisioned costs about 23 Hetzner API requests (measured with
# GET /_devstack/rate-limit): a burst of 100 (about 2300) and the other scenarios fit a
# real project's bucket over the run (3600 requests, one more each second: Hetzner
# Cloud API reference, "Rate Limiting", docs.hetzner.cloud/#rate-limiting); a burst of
# 200 emptied it, and the run then crawled at one request a second (docs/RELIABILITY.md).
DEFAULT_SIZES = {"purchases": 20, "burst": 100}


async def run(
    names: list[str], purchases: int, burst: int, state_dir: Path
) -> tuple[list[ScenarioResult], WorldReport]:
    async with Stack(state_dir, worker=False) as stack:
        say(f"starting the local stack in {state_dir}")
        info = await stack.start(say)
        for _ in range(WORKERS):
            await stack.start_worker()
        client = await Client.connect(
            info.temporal_address,
            data_converter=data_converter(KeyRing.from_file(info.codec_keys_file)),
        )
        results = await run_on(stack, client, names, purchases, burst)
        say("check-world: comparing every record of the stack")
        return results, await check_world(client, TASK_QUEUE, uuid.uuid4().hex[:8])


async def run_on(
    stack: Stack, client: Client, names: list[str], purchases: int, burst: int
) -> list[ScenarioResult]:
    """Run the named scenarios on a running stack (also used by the test suite)."""
    # The scenarios of the later workflows extend FaultRun (devstack/faults_lifecycle.py,
    # devstack/faults_rotation_activation.py and devstack/faults_activation_tls.py, which
    # import this module, hence here).
    from devstack.faults_activation_tls import ActivationTlsFaultRun

    faults = ActivationTlsFaultRun(stack, client)
    sizes = {
        "worker_kill": purchases,
        "temporal_restart": max(2, purchases // 4),
        "vault": max(2, purchases // 4),
        "cloud_api": max(2, purchases // 4),
        "ssh": max(2, purchases // 5),
        "mailu_unhealthy": max(2, purchases // 5),
        "terminate": max(2, purchases // 5),
        "burst": burst,
        # Each buys its tenants first, then runs the workflow on them under faults.
        "plan_change": max(2, purchases // 10),
        # Tenants on starter, plus `backups` (below) on the plan that promises backups.
        "deprovision": max(2, purchases // 10) + purchases // 10,
        "rotation": max(2, purchases // 10),
        "activation": max(2, purchases // 10),
        # One tenant per fault group (devstack/faults_activation_tls.GROUPS) by default;
        # a single tenant (make test's small run) meets the worker kills only.
        "activation_tls": max(1, purchases // 5),
    }
    # The deprovision scenario's tenants on the plan that promises backups (a final
    # snapshot each, its expiry timer awaited: minutes, so none at make test's size).
    options: dict[str, dict[str, int]] = {"deprovision": {"backups": purchases // 10}}
    results = []
    try:
        for name in names:
            say(f"scenario {name}: {sizes[name]} purchases")
            started, before = time.monotonic(), await faults.api_usage()
            result = await getattr(faults, name)(sizes[name], **options.get(name, {}))
            after = await faults.api_usage()
            result.api_requests = after["served"] - before["served"]
            result.api_refused = after["refused"] - before["refused"]
            say(
                f"  done in {time.monotonic() - started:.0f} s: "
                f"{result.survived} survived, {result.lost} lost; cloud API "
                f"{result.api_requests} requests, {result.api_refused} refused (429), "
                f"{after['remaining']} left in the bucket"
            )
            say(f"  cloud API by route: {route_delta(before, after)}")
            for problem in result.problems:
                say(f"  LOST {problem}")
            results.append(result)
    finally:
        await faults.aclose()
    return results


def route_delta(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The requests each API route served between two readings of the bucket, most first."""
    old = before.get("served_by_route", {})
    delta = {
        route: count - old.get(route, 0)
        for route, count in after.get("served_by_route", {}).items()
        if count > old.get(route, 0)
    }
    return ", ".join(
        f"{route} {count}" for route, count in sorted(delta.items(), key=lambda kv: -kv[1])
    )


def table(results: list[ScenarioResult]) -> str:
    header = ("scenario", "injected", "survived", "lost", "slowest recovery s", "API req (429)")
    rows = [header] + [
        (
            r.name,
            str(r.injected),
            str(r.survived),
            str(r.lost),
            r.slowest_recovery,
            f"{r.api_requests} ({r.api_refused})",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def recovery_by_step(results: list[ScenarioResult]) -> str:
    """One line per scenario with recoveries: the slowest per step the fault hit."""
    lines = []
    for result in results:
        slowest = result.slowest_by_step()
        if slowest:
            steps = ", ".join(f"{step} {seconds:.1f}" for step, seconds in sorted(slowest.items()))
            lines.append(f"slowest recovery by step, {result.name}: {steps}")
    return "\n".join(lines)


def api_budget(results: list[ScenarioResult], wall_seconds: float) -> str:
    """The scenarios' Hetzner API requests against what a real project's bucket allows
    over the run: 3600, plus one a second (docs.hetzner.cloud, "Rate Limiting")."""
    requests = sum(r.api_requests for r in results)
    refused = sum(r.api_refused for r in results)
    allowed = RATE_LIMIT + int(wall_seconds)
    return (
        f"cloud API: {requests} requests, {refused} refused (429); a Hetzner project's "
        f"bucket allows {allowed} in {wall_seconds:.0f} s ({RATE_LIMIT} + 1/s)"
    )


def left_behind(world: WorldReport) -> dict[str, int]:
    """What check-world still found of any tenant once every scenario cleaned up after
    itself: each scenario deprovisions what it bought, so any server, Vault record,
    claim or rotation schedule left is one a tenant should no longer have, and any
    final snapshot one whose expiry timer the deprovision scenario awaited in vain."""
    return {kind: world.checked[kind] for kind in LEFT_BEHIND if world.checked.get(kind)}


def summary(results: list[ScenarioResult]) -> str:
    injected = sum(r.injected for r in results)
    survived = sum(r.survived for r in results)
    lost = sum(r.lost for r in results)
    return f"faults: {injected} injected, {survived} survived, {lost} lost"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--purchases",
        type=int,
        default=DEFAULT_SIZES["purchases"],
        help="purchases in the worker SIGKILL scenario (others scale from it)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=DEFAULT_SIZES["burst"],
        help="purchases started at once in the burst scenario",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for the fault moments")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    random.seed(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mailprov-faults-") as directory:
        results, world = asyncio.run(run(names, args.purchases, args.burst, Path(directory)))
    print(table(results))
    print(recovery_by_step(results))
    wall = time.monotonic() - started
    print(f"wall time: {wall:.0f} s")
    print(api_budget(results, wall))
    print(summary(results))
    print_world_report(world)
    print(f"check-world: {len(world.disagreements)} disagreements")
    left = left_behind(world)
    print(f"left behind: {', '.join(f'{n} {kind}' for kind, n in left.items()) or 'nothing'}")
    return 1 if any(r.lost for r in results) or world.disagreements or left else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (temporalio/sdk-python#300), as the worker does.
    os._exit(code)
