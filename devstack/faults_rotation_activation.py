"""`make faults` for RotateSmtpCredentials and ActivateMailDomain.

Each scenario buys its tenants first (purchases checked as in every scenario), then
runs the workflow on them while it breaks the stack, then deprovisions them:

    rotation      every tenant's password rotated now (`starter.py rotate`, through the
                  tenant's schedule); MailU refuses the first config-import on each
                  server (the rotation writes the previous record back and retries); the
                  provider's server list answers 503 once per tenant (the rotation reads
                  its target there); all workers SIGKILLed while the rotations run;
                  OpenBao frozen 10 s while they still run
    activation    the customers' records published on a real authoritative DNS server
                  (Knot, devstack/dns_server.py) the workers resolve through, then the back
                  end's `dns_published` signal; around the DNS check: the provider's
                  server list answers 503 once per tenant, MailU's DNS export fails once
                  per server, all workers SIGKILLed while a run checks, OpenBao frozen
                  10 s while a run checks

A run that does not end as the design promises is *lost*:

    rotation      outcome `rotated`; one server; the Vault record at the version the
                  result names; one smtp_credentials_rotated row and no
                  smtp_credentials_rotation_failed; the new credentials log in over SMTP
                  and the password before the rotation is refused
    activation    the run got past the DNS stage (one mail_domain_dns_verified row, the
                  run no longer waiting or checking); after the clean-up, no activation
                  of the tenant still running (a deprovision ends it)

A check that could not run (its retries used up by the faults) is a check that found
nothing yet (workflows/activation.py): the run waits again, and the scenario, as the
back end would, signals `dns_published` again (the workflow checks at most once a
minute however often it is signalled) until the run gets past DNS or WATCH_SECONDS pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import smtplib
import time
from typing import Any

from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle

from activities.credentials import AdminCredentials, read_admin_credentials
from activities.rotation_schedule import rotate_now
from devstack.dns_server import knot_serving
from devstack.faults_lifecycle import WATCH_SECONDS, Handles, LifecycleFaultRun
from devstack.faults_run import Purchase, ScenarioResult, say
from workflows.activation_contracts import (
    DNS_PUBLISHED_SIGNAL,
    DNS_VERIFIED_EVENT,
    ActivationStatus,
    activation_workflow_id,
)
from workflows.rotation_contracts import RotationResult, RotationStatus

# The events a rotation run audits (workflows/rotation.py).
ROTATED_EVENT, ROTATION_FAILED_EVENT = (
    "smtp_credentials_rotated",
    "smtp_credentials_rotation_failed",
)
# What MailU's admin answers when it cannot take the import (the exit status is what
# the rotation sees; the text is only shown).
IMPORT_REFUSED = "sqlalchemy.exc.OperationalError: database is locked\n"
# An activation that is still at the DNS stage (ActivationStatus.state).
AT_DNS_STAGE = frozenset({"waiting_for_dns", "checking"})
# How often the scenario repeats the back end's `dns_published` signal to a run still
# waiting (the workflow checks at most once a minute: SIGNAL_CHECK_GAP).
RESIGNAL_SECONDS = 30.0
# The worker setting naming the resolvers its DNS checks ask (README, worker settings).
RESOLVERS = "MAILPROV_DNS_RESOLVERS"


class RotationActivationFaultRun(LifecycleFaultRun):
    """The rotation and activation scenarios, on the same stack."""

    # ------------------------------------------------------------------ rotation

    async def rotation(self, size: int) -> ScenarioResult:
        result = ScenarioResult("rotation: SIGKILL, MailU refusing, server list 503, OpenBao")
        purchases = await self.bought(size, "rotation", result)
        before = {
            p.request.tenant_id: await asyncio.to_thread(
                read_admin_credentials, self.reader, p.request.tenant_id
            )
            for p in purchases
        }
        armed = await self.server_list_down_once_each(purchases)
        armed += await self.on_each_bought_server(
            purchases,
            "command-faults",
            {"match": "config-import", "exit_status": 1, "stderr": IMPORT_REFUSED, "times": 1},
        )
        runs: Handles = {}
        for purchase in purchases:
            tenant = purchase.request.tenant_id
            workflow_id = await rotate_now(self.client, tenant)
            runs[tenant] = self.client.get_workflow_handle(workflow_id, result_type=RotationResult)
        if await self.when_in(runs, RotationStatus, {"running"}):
            await self.outage(
                runs, result, functools.partial(self.kill_workers, None), RotationStatus
            )
        if await self.when_in(runs, RotationStatus, {"running"}):
            await self.outage(runs, result, self.freeze_vault(), RotationStatus)
        ended = {tenant: await self.ended(handle) for tenant, handle in runs.items()}
        # Counted and cleared before the checks, which list servers themselves.
        result.injected += armed - await self.unused_faults(purchases, "command-faults")
        await self.devstack.delete("faults")
        for purchase in purchases:
            tenant = purchase.request.tenant_id
            problem = await self._rotation_problem(
                purchase, runs[tenant].id, ended[tenant], before[tenant]
            )
            self.count(result, f"rotation of {runs[tenant].id}", problem)
        await self.release(purchases, result)
        return result

    @staticmethod
    async def ended(handle: WorkflowHandle[Any, Any]) -> Any:
        """The run's result, or what it failed with (or TimeoutError after 900 s)."""
        try:
            return await asyncio.wait_for(handle.result(), 900)
        except (WorkflowFailureError, TimeoutError) as err:
            return err

    async def _rotation_problem(
        self, purchase: Purchase, workflow_id: str, rotated: Any, old: AdminCredentials
    ) -> str | None:
        if purchase.result is None:
            return "not bought"
        if isinstance(rotated, BaseException):
            return f"rotation did not complete: {getattr(rotated, 'cause', None) or rotated!r}"
        say(f"  rotation of {purchase.request.tenant_id}: {rotated.outcome}")
        if rotated.outcome != "rotated":
            return f"result {rotated}"
        servers = await self.servers_of(purchase.request.purchase_id)
        if [s["id"] for s in servers] != [purchase.result.server_id]:
            return f"servers {[s['id'] for s in servers]}, expected {purchase.result.server_id}"
        record = await asyncio.to_thread(self.reader.read_credentials, rotated.tenant_id)
        if record is None or record.version != rotated.vault_version:
            return f"vault record {record and record.version}, result {rotated.vault_version}"
        events = self.events_of(workflow_id)
        if events.count(ROTATED_EVENT) != 1 or ROTATION_FAILED_EVENT in events:
            return f"audit rows {events}"
        # MailU took the new password (the stored credentials log in) and no longer
        # takes the old one.
        problem = await self._smtp_problem(purchase.result)
        if problem is not None:
            return problem
        try:
            reply = await self.smtp_login(purchase.result, old.username, old.password)
        except smtplib.SMTPAuthenticationError:
            return None
        return f"the password before the rotation still logs in: {reply}"

    # ------------------------------------------------------------------ activation

    async def activation(self, size: int) -> ScenarioResult:
        result = ScenarioResult("activation: DNS check under SIGKILL, 503, MailU export, OpenBao")
        purchases = await self.bought(size, "activation", result)
        # The customers published every record we handed them.
        zones = {
            p.request.domain: [record.zone_line for record in p.result.dns_records]
            for p in purchases
            if p.result is not None
        }
        runs: Handles = {
            p.request.tenant_id: self.client.get_workflow_handle(
                activation_workflow_id(p.request.tenant_id)
            )
            for p in purchases
        }
        with knot_serving(zones) as dns_server:
            # The workers resolve through it for this scenario only (restarted back after).
            resolvers = self.info.worker_env.get(RESOLVERS)
            await self.restart_workers({RESOLVERS: dns_server.resolver_setting})
            try:
                armed = await self.faulted_dns_checks(purchases, runs, result)
            finally:
                await self.restart_workers({RESOLVERS: resolvers})
        result.injected += armed - await self.unused_faults(purchases, "command-faults")
        await self.devstack.delete("faults")
        problems = {
            tenant: await self._activation_problem(handle) for tenant, handle in runs.items()
        }
        await self.release(purchases, result)
        for tenant, handle in runs.items():
            # A deprovision ends the tenant's activation, whatever stage it is at.
            if problems[tenant] is None and await self._still_running(handle):
                problems[tenant] = "still running after the tenant was deprovisioned"
            self.count(result, f"activation of {tenant}", problems[tenant])
        return result

    async def server_list_down_once_each(self, purchases: list[Purchase]) -> int:
        """The provider's server list answers 503 once per purchase (a look-up each run
        makes meets it); returns how many faults were armed."""
        return await self.arm_each(
            [
                {
                    "method": "GET",
                    "path": "/v1/servers",
                    "status": 503,
                    "code": "unavailable",
                    "times": len(purchases),
                }
            ]
        )

    async def faulted_dns_checks(
        self, purchases: list[Purchase], runs: Handles, result: ScenarioResult
    ) -> int:
        """Signal `dns_published` to every run and break the stack around its checks,
        until every run is past DNS; the fault uses armed."""
        armed = await self.server_list_down_once_each(purchases)
        armed += await self.on_each_bought_server(
            purchases,
            "command-faults",
            {"match": "config-export", "exit_status": 1, "stderr": "export failed\n"},
        )
        for handle in runs.values():
            await handle.signal(DNS_PUBLISHED_SIGNAL)
        if await self.when_checking(runs):
            await self.outage(
                runs, result, functools.partial(self.kill_workers, None), ActivationStatus
            )
        if await self.when_checking(runs):
            await self.outage(runs, result, self.freeze_vault(), ActivationStatus)
        await self.past_dns(runs)
        return armed

    async def when_checking(self, runs: Handles) -> bool:
        """Wait until a run checks its DNS; False once none is at the DNS stage any more
        (all verified, ended, or gone on to the later stages) or after WATCH_SECONDS."""
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            states = [await self._state(handle) for handle in runs.values()]
            if "checking" in states:
                return True
            # None: not answerable just now (a query needs a worker); keep watching.
            if None not in states and not AT_DNS_STAGE.intersection(states):
                return False
            await asyncio.sleep(0.05)
        return False

    async def past_dns(self, runs: Handles) -> None:
        """Until every run has got past the DNS stage (or WATCH_SECONDS): a run waiting
        again (its check could not run) is signalled again, as the back end would."""
        deadline = time.monotonic() + WATCH_SECONDS
        signalled = time.monotonic()
        while time.monotonic() < deadline:
            states = {key: await self._state(handle) for key, handle in runs.items()}
            # None: not answerable just now; asked again on the next round.
            waiting = [key for key, state in states.items() if state in AT_DNS_STAGE | {None}]
            if not waiting:
                return
            if time.monotonic() - signalled >= RESIGNAL_SECONDS:
                for key in waiting:
                    if states[key] == "waiting_for_dns":
                        await runs[key].signal(DNS_PUBLISHED_SIGNAL)
                signalled = time.monotonic()
            await asyncio.sleep(1)

    async def _state(self, handle: WorkflowHandle[Any, Any]) -> str | None:
        """The run's status state; None when it cannot be asked (closed and gone)."""
        with contextlib.suppress(Exception):
            status = await handle.query("status", result_type=ActivationStatus)
            return str(status.state)
        return None

    async def _activation_problem(self, handle: WorkflowHandle[Any, Any]) -> str | None:
        state = await self._state(handle)
        say(f"  activation {handle.id}: {state}")
        if state in AT_DNS_STAGE or state is None:
            return f"still at the DNS stage ({state}) after {WATCH_SECONDS:.0f} s"
        events = self.events_of(handle.id)
        if events.count(DNS_VERIFIED_EVENT) != 1:
            return f"audit rows {events}, expected one {DNS_VERIFIED_EVENT}"
        return None

    async def _still_running(self, handle: WorkflowHandle[Any, Any]) -> bool:
        description = await handle.describe()
        return description.status == WorkflowExecutionStatus.RUNNING

    # ------------------------------------------------------------------ helpers

    async def on_each_bought_server(
        self, purchases: list[Purchase], kind: str, rule: dict[str, Any]
    ) -> int:
        """Arm one VPS fault `rule` on each purchase's server; the uses armed."""
        for purchase in purchases:
            if purchase.result is not None:
                await self.vps_fault(purchase.result.server_id, kind, rule)
        return int(rule.get("times", 1)) * sum(1 for p in purchases if p.result is not None)

    async def unused_faults(self, purchases: list[Purchase], kind: str) -> int:
        """The armed uses nothing consumed: the cloud's rules and the `kind` VPS faults
        on the purchases' servers (asked by server id: the API may still be faulted)."""
        unused = await self.unused_rule_uses()
        for purchase in purchases:
            if purchase.result is not None:
                response = await self.devstack.get(f"servers/{purchase.result.server_id}/{kind}")
                response.raise_for_status()
                unused += sum(int(f["times"]) for f in response.json()[kind.replace("-", "_")])
        return unused
