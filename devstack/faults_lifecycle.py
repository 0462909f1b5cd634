"""`make faults` for the rest of a tenant's life: ChangeMailPlan and DeprovisionMailTenant.

Each scenario buys its tenants first (purchases checked as in every scenario), then
runs the workflow on them while it breaks the stack:

    plan_change   every tenant moved starter -> business; its change_type answers 503,
                  then 429 (Hetzner's codes, per server); all workers SIGKILLed once a
                  run has its server stopped (stop_server / change_server_type);
                  OpenBao frozen 10 s once a run brings MailU back or proves the admin
                  login (which stores a new Vault version)
    deprovision   every tenant deprovisioned; OpenBao frozen 10 s as the runs start
                  (inspect_tenant reads Vault); each server's DELETE answers 503, then
                  429, then a lost answer (deleted, 504 seen); all workers SIGKILLed
                  once a run is deleting its servers

A run that does not end as the design promises is *lost*, as a purchase is:

    plan change   completed: one server, running, on cx33, labelled plan=business, the
                  Vault record at the version the result names, one mail_plan_changed
                  row; or compensated (PlanChangeFailed): the server running on its old
                  type cx23. Either way MailU is healthy: the stored credentials log in
                  over SMTP on the server.
    deprovision   deprovisioned: no server of the purchase, no Vault record, no claim
                  held by the tenant, one tenant_deprovisioned row.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import asdict
from typing import Any

from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from activities.audit import SqliteAuditStore
from activities.world import WorldRecords
from devstack.faults_run import TASK_QUEUE, FaultRun, Purchase, ScenarioResult, freeze, say
from starter import start_deprovision
from workflows.deprovision_contracts import (
    DeprovisionRequest,
    DeprovisionResult,
    DeprovisionStatus,
)
from workflows.plan_change_contracts import (
    PLAN_CHANGE_WORKFLOW_TYPE,
    PlanChangeRequest,
    PlanChangeResult,
    PlanChangeStatus,
    plan_change_workflow_id,
)

# The catalog's starter (cx23) and business (cx33) plans (activities/plans.py).
OLD_TYPE, NEW_PLAN, NEW_TYPE = "cx23", "business", "cx33"
# How long to watch for a run to reach the step a fault is meant to hit.
WATCH_SECONDS = 300.0

Handles = dict[str, WorkflowHandle[Any, Any]]


class LifecycleFaultRun(FaultRun):
    """The scenarios of the workflows after a purchase, on the same stack."""

    async def bought(self, size: int, scenario: str, result: ScenarioResult) -> list[Purchase]:
        """`size` purchases, awaited and checked; the completed ones."""
        purchases = await self.start(size, scenario)
        await self.finish(purchases)
        await self.verify(purchases, result)
        return [p for p in purchases if p.result is not None and p.failure is None]

    async def when_in(self, runs: Handles, status_type: type[Any], steps: set[str]) -> bool:
        """Wait until a run's current step is one of `steps`; False if none got there
        (all ended first, or the watch timed out): the fault is then not injected."""
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            found = await self.snapshot(runs, status_type)
            if any(step in steps for _, step in found.values()):
                return True
            if not found and all([await self._closed(h) for h in runs.values()]):
                return False
            await asyncio.sleep(0.05)
        return False

    async def arm_each(self, rules: list[dict[str, Any]]) -> int:
        for rule in rules:
            await self.arm(rule)
        return sum(int(rule["times"]) for rule in rules)

    def freeze_vault(self) -> functools.partial[Any]:
        [openbao] = self.stack.processes("openbao")
        return functools.partial(freeze, openbao.popen.pid, 10)

    # ------------------------------------------------------------------ plan change

    async def plan_change(self, size: int) -> ScenarioResult:
        result = ScenarioResult("plan change: SIGKILL stopped, change_type 5xx/429, OpenBao")
        purchases = await self.bought(size, "plan_change", result)
        armed = await self.arm_each(
            [
                {
                    "method": "POST",
                    "path": f"/v1/servers/{p.result.server_id}/actions/change_type",
                    "status": status,
                    "code": code,
                    "times": 1,
                }
                for p in purchases
                if p.result is not None
                for status, code in ((503, "unavailable"), (429, "rate_limit_exceeded"))
            ]
        )
        changes: Handles = {}
        for purchase in purchases:
            request = PlanChangeRequest(purchase.request.tenant_id, "faults", NEW_PLAN, "faults")
            changes[purchase.request.tenant_id] = await self.client.start_workflow(
                PLAN_CHANGE_WORKFLOW_TYPE,
                asdict(request),
                id=plan_change_workflow_id(request.tenant_id, request.request_id),
                task_queue=TASK_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                result_type=PlanChangeResult,
            )
        if await self.when_in(changes, PlanChangeStatus, {"stop_server", "change_server_type"}):
            await self.outage(
                changes,
                result,
                functools.partial(self.kill_workers, None),
                PlanChangeStatus,
            )
        if await self.when_in(
            changes, PlanChangeStatus, {"start_mail_server", "prove_admin_login"}
        ):
            await self.outage(changes, result, self.freeze_vault(), PlanChangeStatus)
        for purchase in purchases:
            problem = await self._plan_change_problem(purchase, changes[purchase.request.tenant_id])
            self.count(result, f"plan change of {purchase.request.tenant_id}", problem)
        result.injected += armed - await self.unused_rule_uses()
        await self.devstack.delete("faults")
        await self.release(purchases, result)
        return result

    async def _plan_change_problem(
        self, purchase: Purchase, handle: WorkflowHandle[Any, Any]
    ) -> str | None:
        if purchase.result is None:
            return "not bought"
        try:
            changed: PlanChangeResult | None = await asyncio.wait_for(handle.result(), 900)
        except WorkflowFailureError as err:
            cause = err.cause
            if not (isinstance(cause, ApplicationError) and cause.type == "PlanChangeFailed"):
                return f"plan change failed without compensation: {cause}"
            changed = None
        except TimeoutError:
            return "plan change did not end"
        outcome = "completed" if changed else "compensated"
        say(f"  plan change of {purchase.request.tenant_id}: {outcome}")
        servers = await self.servers_of(purchase.request.purchase_id)
        if [s["id"] for s in servers] != [purchase.result.server_id]:
            return f"servers {[s['id'] for s in servers]}, expected {purchase.result.server_id}"
        [server] = servers
        expected_type = NEW_TYPE if changed else OLD_TYPE
        if (server["status"], server["server_type"]["name"]) != ("running", expected_type):
            return f"server {server['status']} on {server['server_type']['name']}"
        events = self.events_of(handle.id)
        if changed is not None:
            if server["labels"].get("plan") != NEW_PLAN:
                return f"server labels {server['labels']}"
            record = await asyncio.to_thread(self.reader.read_credentials, changed.tenant_id)
            if record is None or record.version != changed.vault_version:
                return f"vault record {record and record.version}, result {changed.vault_version}"
            if events.count("mail_plan_changed") != 1:
                return f"audit rows {events}"
        elif events.count("mail_plan_change_failed") != 1:
            return f"audit rows {events}, expected one mail_plan_change_failed"
        # MailU healthy again: the credentials Vault holds log in over SMTP.
        return await self._smtp_problem(purchase.result)

    # ------------------------------------------------------------------ deprovision

    async def deprovision(self, size: int) -> ScenarioResult:
        result = ScenarioResult("deprovision: OpenBao, DELETE 5xx/429/lost, SIGKILL")
        purchases = await self.bought(size, "deprovision", result)
        armed = await self.arm_each(
            [
                {
                    "method": "DELETE",
                    "path": f"/v1/servers/{p.result.server_id}",
                    "status": status,
                    "code": code,
                    "after_effect": after_effect,
                    "times": 1,
                }
                for p in purchases
                if p.result is not None
                for status, code, after_effect in (
                    (503, "unavailable", False),
                    (429, "rate_limit_exceeded", False),
                    # Lost answer: the server is deleted, the worker sees a 504.
                    (504, "timeout", True),
                )
            ]
        )
        runs: Handles = {}
        for purchase in purchases:
            tenant = purchase.request.tenant_id
            runs[tenant] = await start_deprovision(
                self.client, DeprovisionRequest(tenant, "faults", "faults scenario"), TASK_QUEUE
            )
        # inspect_tenant reads the tenant's Vault record first.
        await self.outage(runs, result, self.freeze_vault(), DeprovisionStatus)
        if await self.when_in(runs, DeprovisionStatus, {"delete_tenant_servers"}):
            await self.outage(
                runs, result, functools.partial(self.kill_workers, None), DeprovisionStatus
            )
        for purchase in purchases:
            problem = await self._deprovision_problem(purchase, runs[purchase.request.tenant_id])
            self.count(result, f"deprovision of {purchase.request.tenant_id}", problem)
        result.injected += armed - await self.unused_rule_uses()
        await self.devstack.delete("faults")
        return result

    async def _deprovision_problem(
        self, purchase: Purchase, handle: WorkflowHandle[Any, Any]
    ) -> str | None:
        tenant = purchase.request.tenant_id
        try:
            done: DeprovisionResult = await asyncio.wait_for(handle.result(), 900)
        except (WorkflowFailureError, TimeoutError) as err:
            return f"deprovision did not complete: {getattr(err, 'cause', err)!r}"
        if done.outcome != "deprovisioned" or not done.claim_released:
            return f"result {done}"
        servers = await self.servers_of(purchase.request.purchase_id)
        if servers:
            return f"{len(servers)} server(s) left without a tenant"
        record = await asyncio.to_thread(self.reader.read_credentials, tenant)
        if record is not None:
            return f"vault record v{record.version} left without a server"
        if await WorldRecords.claim_of(self.client, tenant) is not None:
            return "the deprovisioned tenant still holds its claim"
        events = self.events_of(handle.id)
        if events.count("tenant_deprovisioned") != 1:
            return f"audit rows {events}"
        return None

    # ------------------------------------------------------------------ helpers

    def events_of(self, workflow_id: str) -> list[str]:
        rows = SqliteAuditStore(self.info.audit_db).rows()
        return [row.event for row in rows if row.event_key.startswith(workflow_id + "/")]

    @staticmethod
    def count(result: ScenarioResult, what: str, problem: str | None) -> None:
        if problem is None:
            result.survived += 1
        else:
            result.lost += 1
            result.problems.append(f"{what}: {problem}")
