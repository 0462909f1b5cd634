"""`make faults` for the rest of a tenant's life: ChangeMailPlan and DeprovisionMailTenant.

Each scenario buys its tenants first (purchases checked as in every scenario), then
runs the workflow on them while it breaks the stack:

    plan_change   every tenant moved starter -> business; its change_type answers 503,
                  then 429 (Hetzner's codes, per server); all workers SIGKILLed once a
                  run has its server stopped (stop_server / change_server_type);
                  OpenBao frozen 10 s once a run brings MailU back or proves the admin
                  login (which stores a new Vault version)
    deprovision   every tenant deprovisioned; OpenBao frozen 10 s as the starter
                  tenants' runs start (inspect_tenant reads Vault); each server's DELETE
                  answers 503, then 429, then a lost answer (deleted, 504 seen); all
                  workers SIGKILLed once a run is deleting its servers. The tenants on
                  the plan that promises backups (enterprise; `backups`, purchases // 10
                  at make faults' sizes, none at make test's) are deprovisioned first,
                  with the workers restarted on a final-snapshot retention of
                  BACKUP_RETENTION_SECONDS: each server's create_image answers 503, then
                  a lost answer (image made, 504 seen); the cloud holds the snapshot
                  `creating` until the one SIGKILL of all workers, which waits until
                  every such run's take_final_snapshot attempt waits for its image
                  (heartbeat) and a starter run deletes its servers; each snapshot's
                  DELETE (the expiry timer's) answers 503 once

A run that does not end as the design promises is *lost*, as a purchase is:

    plan change   completed: one server, running, on cx33, labelled plan=business, the
                  Vault record at the version the result names, one mail_plan_changed
                  row; or compensated (PlanChangeFailed): the server running on its old
                  type cx23. Either way MailU is healthy: the stored credentials log in
                  over SMTP on the server.
    deprovision   deprovisioned: no server of the purchase, no Vault record, no claim
                  held by the tenant, one tenant_deprovisioned row. On the backup plan
                  also: exactly one snapshot labelled with the purchase ever created
                  (the cloud's GET /_devstack/images counts deleted ones too), named by
                  the result and by the tenant_deprovisioned row with its delete-after;
                  its ExpireFinalSnapshot ends `deleted`, the image is gone, deleted no
                  earlier than its delete-after, one final_snapshot_deleted row.
                  Printed per snapshot: how long its timer slept (0: the retention ran
                  out before the deprovisioning ended, so no timer was tested).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import asdict
from typing import Any

from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from activities.audit import AuditRow, SqliteAuditStore
from activities.vps_provider import PURCHASE_LABEL
from activities.world import WorldRecords
from devstack.faults_run import TASK_QUEUE, FaultRun, Purchase, ScenarioResult, freeze, say
from starter import start_deprovision
from workflows.deprovision_contracts import (
    DeprovisionRequest,
    DeprovisionResult,
    DeprovisionStatus,
)
from workflows.final_snapshot_contracts import (
    DELETE_AFTER_LABEL,
    FINAL_SNAPSHOT_DELETED_EVENT,
    expiry_workflow_id,
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
# The catalog's plan that promises backups (activities/plans.py DEFAULT_BACKUP_PROMISES):
# a deprovisioning snapshots its server first, and a timer deletes the snapshot later.
BACKUP_PLAN = "enterprise"
# The worker's final-snapshot retention while the deprovision scenario runs (restarted
# with it, then with what it had): longer than a faulted snapshot step lasts (about
# 2 min: the SIGKILLed attempt is noticed at its 90 s heartbeat timeout, workflows/
# policies.py TAKE_FINAL_SNAPSHOT), so each expiry really sleeps on its timer, and short
# enough to await it in the scenario.
RETENTION_ENV = "MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS"
BACKUP_RETENTION_SECONDS = 240
# How long past a snapshot's delete-after its expiry may take to end (a look, the
# delete's injected 503 and its retry, the audit row).
EXPIRY_MARGIN_SECONDS = 120.0

Handles = dict[str, WorkflowHandle[Any, Any]]


class LifecycleFaultRun(FaultRun):
    """The scenarios of the workflows after a purchase, on the same stack."""

    async def bought(
        self, size: int, scenario: str, result: ScenarioResult, backups: int = 0
    ) -> list[Purchase]:
        """`size` purchases (`backups` of them on BACKUP_PLAN, the others on starter),
        awaited and checked; the completed ones."""
        purchases = await self.start(size - backups, scenario)
        purchases += await self.start(backups, scenario, BACKUP_PLAN)
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

    async def restart_workers(self, env: dict[str, str | None]) -> None:
        """Stop every worker (SIGTERM: drained, not a fault) and start as many with
        `env` changed in their settings (None: unset)."""
        for name, value in env.items():
            if value is None:
                self.info.worker_env.pop(name, None)
            else:
                self.info.worker_env[name] = value
        running = self.workers()
        for worker in running:
            self.stack.stop_process(worker)
        for _ in running:
            await self.stack.start_worker()

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

    async def deprovision(self, size: int, backups: int = 0) -> ScenarioResult:
        """`size` tenants deprovisioned, `backups` of them on BACKUP_PLAN (a final
        snapshot each, faulted, its expiry timer awaited)."""
        name = "deprovision: OpenBao, DELETE 5xx/429/lost, SIGKILL"
        result = ScenarioResult(name + ("; snapshot 5xx/lost/SIGKILL" if backups else ""))
        purchases = await self.bought(size, "deprovision", result, backups)
        backed_up = [p for p in purchases if p.request.plan == BACKUP_PLAN]
        saved = self.info.worker_env.get(RETENTION_ENV)
        if backed_up:
            # The retention is read by inspect_tenant, from the worker's settings.
            await self.restart_workers({RETENTION_ENV: str(BACKUP_RETENTION_SECONDS)})
        try:
            await self._deprovision_under_faults(purchases, backed_up, result)
        finally:
            await self.devstack.delete("faults")  # also releases the image holds
            if backed_up:
                await self.restart_workers({RETENTION_ENV: saved})
        return result

    async def _deprovision_under_faults(
        self, purchases: list[Purchase], backed_up: list[Purchase], result: ScenarioResult
    ) -> None:
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
        # The backup plan's runs first: each waits for its snapshot, which the cloud
        # holds `creating` until all workers have been killed.
        waiting: set[str] = set()
        if backed_up:
            armed += await self._arm_snapshot_faults(backed_up)
            for purchase in backed_up:
                runs[purchase.request.tenant_id] = await self._start_deprovision(purchase)
            waiting, images_armed = await self._until_waiting_for_images(backed_up, runs)
            armed += images_armed
        others: Handles = {}
        for purchase in purchases:
            if purchase not in backed_up:
                tenant = purchase.request.tenant_id
                runs[tenant] = others[tenant] = await self._start_deprovision(purchase)
        # inspect_tenant reads the tenant's Vault record first (the held runs are past it).
        await self.outage(others, result, self.freeze_vault(), DeprovisionStatus)
        deleting = await self.when_in(others, DeprovisionStatus, {"delete_tenant_servers"})
        if deleting or waiting:
            # One kill for both: runs deleting their servers, runs waiting for a snapshot.
            kill = functools.partial(self._kill_and_release, backed_up)
            await self.outage(runs, result, kill, DeprovisionStatus)
        await self._release_images(backed_up)
        for purchase in purchases:
            handle = runs[purchase.request.tenant_id]
            problem = await self._deprovision_problem(purchase, handle)
            if problem is None and purchase in backed_up:
                problem = await self._final_snapshot_problem(purchase, handle)
            self.count(result, f"deprovision of {purchase.request.tenant_id}", problem)
        result.injected += armed - await self.unused_rule_uses()

    async def _start_deprovision(self, purchase: Purchase) -> WorkflowHandle[Any, Any]:
        request = DeprovisionRequest(purchase.request.tenant_id, "faults", "faults scenario")
        return await start_deprovision(self.client, request, TASK_QUEUE)

    async def _arm_snapshot_faults(self, backed_up: list[Purchase]) -> int:
        """Per server: its snapshots held `creating` (until _release_images), and its
        create_image answering 503, then a lost answer (the image made, a 504 seen)."""
        rules = []
        for purchase in backed_up:
            assert purchase.result is not None
            server_id = purchase.result.server_id
            (await self.devstack.post(f"servers/{server_id}/image-hold")).raise_for_status()
            rules += [
                {
                    "method": "POST",
                    "path": f"/v1/servers/{server_id}/actions/create_image",
                    "status": status,
                    "code": code,
                    "after_effect": after_effect,
                    "times": 1,
                }
                for status, code, after_effect in (
                    (503, "unavailable", False),
                    (504, "timeout", True),
                )
            ]
        return await self.arm_each(rules)

    async def _until_waiting_for_images(
        self, backed_up: list[Purchase], runs: Handles
    ) -> tuple[set[str], int]:
        """Wait until each backup run's take_final_snapshot attempt waits for its held
        image (its heartbeat names the image); arm each image's DELETE to answer 503
        once (the expiry's delete) as soon as the image exists. The tenants waiting
        (all, unless WATCH_SECONDS passed) and the rules armed."""
        images: dict[str, int] = {}
        waiting: set[str] = set()
        deadline = time.monotonic() + WATCH_SECONDS
        while len(waiting) < len(backed_up) and time.monotonic() < deadline:
            for purchase in backed_up:
                tenant = purchase.request.tenant_id
                if tenant not in images:
                    made = await self.snapshots_ever_made(purchase.request.purchase_id)
                    if not made:
                        continue
                    images[tenant] = made[0]["id"]
                    await self.arm(
                        {
                            "method": "DELETE",
                            "path": f"/v1/images/{images[tenant]}",
                            "status": 503,
                            "code": "unavailable",
                            "times": 1,
                        }
                    )
                if tenant not in waiting and images[tenant] == await self._image_awaited(
                    runs[tenant]
                ):
                    waiting.add(tenant)
            await asyncio.sleep(0.2)
        if len(waiting) < len(backed_up):
            say(f"  only {sorted(waiting)} of the backup runs seen waiting for a snapshot")
        return waiting, len(images)

    async def _image_awaited(self, handle: WorkflowHandle[Any, Any]) -> int | None:
        """The image a running take_final_snapshot attempt of the run waits for (its
        last heartbeat, activities/final_snapshot.py); None if none does."""
        with contextlib.suppress(Exception):  # a describe fails while workers restart
            description = await handle.describe()
            for pending in description.raw_description.pending_activities:
                if (
                    pending.activity_type.name == "take_final_snapshot"
                    and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                    and pending.HasField("heartbeat_details")
                ):
                    details = await self.client.data_converter.decode(
                        pending.heartbeat_details.payloads
                    )
                    if details and isinstance(details[0], dict):
                        image_id = details[0].get("image_id")
                        return image_id if isinstance(image_id, int) else None
        return None

    async def _kill_and_release(self, backed_up: list[Purchase]) -> None:
        """SIGKILL every worker, start as many, then let the held snapshots finish."""
        await self.kill_workers(None)
        await self._release_images(backed_up)

    async def _release_images(self, backed_up: list[Purchase]) -> None:
        for purchase in backed_up:
            assert purchase.result is not None
            hold = f"servers/{purchase.result.server_id}/image-hold"
            (await self.devstack.delete(hold)).raise_for_status()

    async def snapshots_ever_made(self, purchase_id: str) -> list[dict[str, Any]]:
        """Every snapshot labelled with the purchase the cloud ever created, deleted
        ones too (GET /_devstack/images, devstack/images.py), by id."""
        response = await self.devstack.get(
            "images", params={"label_selector": f"{PURCHASE_LABEL}={purchase_id}"}
        )
        response.raise_for_status()
        made: list[dict[str, Any]] = response.json()["images"]
        return made

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

    async def _final_snapshot_problem(
        self, purchase: Purchase, handle: WorkflowHandle[Any, Any]
    ) -> str | None:
        """A backup plan's tenant: exactly one snapshot of its server was ever created,
        the run and its audit row name it, and its expiry timer deleted it once its
        delete-after had passed, with one final_snapshot_deleted row."""
        tenant = purchase.request.tenant_id
        done: DeprovisionResult = await handle.result()
        made = await self.snapshots_ever_made(purchase.request.purchase_id)
        if len(made) != 1:
            return f"{len(made)} snapshots created {[i['id'] for i in made]}, expected one"
        [image] = made
        image_id, delete_after = image["id"], int(image["labels"][DELETE_AFTER_LABEL])
        if done.final_snapshots != [image_id]:
            return f"result names snapshots {done.final_snapshots}, the cloud made {image_id}"
        [row] = self.rows_of(handle.id, "tenant_deprovisioned")
        if row.details.get("final_snapshots") != f"{image_id}:{delete_after}":
            return f"tenant_deprovisioned names snapshots {row.details.get('final_snapshots')!r}"
        expiry = self.client.get_workflow_handle(expiry_workflow_id(image_id))
        wait = max(0.0, delete_after - time.time()) + EXPIRY_MARGIN_SECONDS
        try:
            outcome = await asyncio.wait_for(expiry.result(), wait)
        except (WorkflowFailureError, TimeoutError) as err:
            return f"expiry of snapshot {image_id} did not end: {getattr(err, 'cause', err)!r}"
        if outcome.get("state") != "deleted" or outcome.get("delete_after") != delete_after:
            return f"expiry of snapshot {image_id} ended {outcome}"
        [image] = await self.snapshots_ever_made(purchase.request.purchase_id)
        gone = image["gone"] or {}
        if gone.get("how") != "deleted" or (await self.api.get(f"images/{image_id}")).is_success:
            return f"snapshot {image_id} still there after its expiry: {image}"
        if gone["at"] < delete_after:
            return f"snapshot {image_id} deleted {delete_after - gone['at']:.0f} s early"
        deleted_rows = self.events_of(expiry.id).count(FINAL_SNAPSHOT_DELETED_EVENT)
        if deleted_rows != 1:
            return f"{deleted_rows} {FINAL_SNAPSHOT_DELETED_EVENT} rows for snapshot {image_id}"
        events = (await expiry.fetch_history()).events
        fired = sum(1 for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED)
        slept = sum(
            e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
            for e in events
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
        )
        note = "" if fired else " (due at its first look: the retention ran out first)"
        say(
            f"  final snapshot {image_id} of {tenant}: its timer slept {slept:.0f} s "
            f"({fired} fired); deleted {gone['at'] - delete_after:.1f} s after its "
            f"delete-after{note}"
        )
        return None

    # ------------------------------------------------------------------ helpers

    def events_of(self, workflow_id: str) -> list[str]:
        rows = SqliteAuditStore(self.info.audit_db).rows()
        return [row.event for row in rows if row.event_key.startswith(workflow_id + "/")]

    def rows_of(self, workflow_id: str, event: str) -> list[AuditRow]:
        rows = SqliteAuditStore(self.info.audit_db).rows()
        return [r for r in rows if r.event_key.startswith(workflow_id + "/") and r.event == event]

    @staticmethod
    def count(result: ScenarioResult, what: str, problem: str | None) -> None:
        if problem is None:
            result.survived += 1
        else:
            result.lost += 1
            result.problems.append(f"{what}: {problem}")
