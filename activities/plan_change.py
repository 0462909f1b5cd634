"""Activities of a plan change (ChangeMailPlan): check, stop, change_type, start, label.

What Hetzner documents for POST /servers/{id}/actions/change_type ("Change the Type
of a Server", docs.hetzner.cloud, Server Actions), which these rules follow:
- "Server must be powered off for this command to succeed" (error `server_not_stopped`);
- "You can only migrate to Server types with the same storage_type and equal or bigger
  disks. Shrinking disks is not possible as it might destroy data."
- "If the disk gets upgraded, the Server type can not be downgraded any more. If you
  plan to downgrade the Server type, set upgrade_disk to false."
- `invalid_server_type`: "The server type does not fit for the given server or is
  deprecated"; since 2025-09-24 types are sold per location (activities/hetzner.py).
- change_type keeps the server's location, image (its disk is copied), and public
  addresses; moving any of those is a new server, not a plan change.

So check_plan_change refuses, before anything is touched, every change that would be
refused later or would not give the plan: same type, another location, another
network or image, a type not sold (or deprecated, or out of stock) in the server's
location, another storage type, a disk smaller than the server's current disk.

Disk policy: the disk is upgraded when the new type's disk is bigger (a customer who
buys a bigger plan gets its storage). The price, said by check_plan_change up front: a
later downgrade to a type with a smaller disk than the upgraded one is refused.

The target server comes from our records only (activities/rotation_target.py: the
one server labelled for the tenant, its name, its pinned host key, Vault's record).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.mailu import MailuHost, MailuSettings
from activities.plan_change_guard import TenantRuns, tenant_deprovisioned
from activities.plans import plan_for
from activities.rotation_target import (
    TenantRecords,
    target_or_refusal,
    tenant_server_selector,
)
from activities.server_power import stop_cleanly
from activities.ssh import RemoteCommandError, ServerAccess, command_failure
from activities.vault import Vault, VaultError, vault_failure
from activities.vps_provider import (
    Action,
    ProviderError,
    Server,
    ServerTypeInfo,
    VpsActivities,
    VpsProvider,
    provider_failure,
)
from workflows.contracts import Plan, ServerHandle
from workflows.input_rules import InvalidPurchaseRequest
from workflows.plan_change_contracts import (
    PLAN_LABEL,
    MailuHealthy,
    PlanChangeCheck,
    PlanChangeLockHolder,
    PlanChangeLockRequest,
    PlanChangeRequest,
    PlanLabelRequest,
    ServerPowerRequest,
    ServerTypeChange,
    StoppedServer,
)

T = TypeVar("T")


@dataclass(frozen=True)
class PlanChangeSettings:
    # An ACPI shutdown that has not powered the server off after this long is followed
    # by a poweroff (Hetzner's shutdown only sends the signal; an OS may ignore it).
    shutdown_grace_seconds: float = 120.0
    poll_seconds: float = 2.0


class ChangeRefused(Exception):
    """The change is impossible; names the field and the rule (no side effect yet)."""

    def __init__(self, error_type: str, field_name: str, rule: str) -> None:
        super().__init__(f"plan change refused: field '{field_name}' {rule}")
        self.error_type = error_type
        self.field = field_name
        self.rule = rule


def plan_change_decision(
    server: Server,
    plan_name: str,
    plan: Plan,
    wanted: ServerTypeInfo,
    storage_type: str = "local",
) -> bool:
    """Whether change_type may take `server` to `plan`; returns upgrade_disk.

    `storage_type` is the server's current type's. Raises ChangeRefused naming the
    rule (module docstring: Hetzner's documented rules).
    A server that is not running is refused too: another plan change (or an operator)
    has it stopped or migrating, and two changes must not interleave their steps.
    """
    if server.status != "running":
        raise ChangeRefused(
            "ServerBusy",
            "tenant_id",
            f"server {server.id} is {server.status!r}, not running: another change or an "
            "operator holds it; ask again once it runs",
        )
    if server.server_type == plan.server_type:
        raise ChangeRefused(
            "PlanUnchanged",
            "plan",
            f"{plan_name!r} is the server's current type ({server.server_type})",
        )
    if server.location not in plan.locations:
        raise ChangeRefused(
            "PlanChangeImpossible",
            "plan",
            f"{plan_name!r} is sold in {', '.join(plan.locations)}; the server is in "
            f"{server.location} and change_type cannot move a server",
        )
    if (server.ipv4 is not None) != plan.ipv4 or (server.ipv6 is not None) != plan.ipv6:
        raise ChangeRefused(
            "PlanChangeImpossible",
            "plan",
            f"{plan_name!r} has other public addresses (ipv4={plan.ipv4}, ipv6={plan.ipv6}) "
            "than the server; change_type keeps the server's addresses",
        )
    if server.image is not None and server.image != plan.image:
        raise ChangeRefused(
            "PlanChangeImpossible",
            "plan",
            f"{plan_name!r} installs {plan.image}; the server runs {server.image} and "
            "change_type keeps its disk",
        )
    sold, in_stock = wanted.locations.get(server.location, (False, False))
    if not sold:
        raise ChangeRefused(
            "PlanChangeImpossible",
            "plan",
            f"server type {wanted.name} is not sold in {server.location} "
            "(Hetzner: invalid_server_type)",
        )
    if wanted.deprecated:
        raise ChangeRefused(
            "PlanChangeImpossible",
            "plan",
            f"server type {wanted.name} is deprecated (Hetzner: invalid_server_type)",
        )
    if not in_stock:
        raise ChangeRefused(
            "PlanChangeUnavailable",
            "plan",
            f"server type {wanted.name} is out of stock in {server.location} now; ask again later",
        )
    if wanted.storage_type != storage_type:
        raise ChangeRefused(
            "PlanChangeImpossible",
            "plan",
            f"server type {wanted.name} has {wanted.storage_type} storage, the server "
            f"{storage_type}: change_type keeps the storage type",
        )
    if wanted.disk_gb < server.disk_gb:
        raise ChangeRefused(
            "PlanChangeImpossible",
            "plan",
            f"server type {wanted.name} has a {wanted.disk_gb} GB disk; the server's disk "
            f"is {server.disk_gb} GB and a disk cannot shrink (an upgraded disk cannot "
            "be downgraded)",
        )
    return wanted.disk_gb > server.disk_gb


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PlanChangeActivities:
    def __init__(
        self,
        provider: VpsProvider,
        vault: Vault,
        access: ServerAccess,
        catalog: Mapping[str, Plan],
        settings: PlanChangeSettings | None = None,
        mailu_settings: MailuSettings | None = None,
        runs: TenantRuns | None = None,
    ) -> None:
        self._provider = provider
        # The tenant's deprovisioning and plan-change lock, as Temporal knows them.
        self._runs = runs or TenantRuns()
        self._vault = vault
        self._access = access
        self._catalog = catalog
        self._settings = settings or PlanChangeSettings()
        self._mailu_settings = mailu_settings or MailuSettings()
        # Its wait for a running server (and its address checks) are reused as they are.
        self._vps = VpsActivities(provider, access.identity)

    @activity.defn(name="check_plan_change")
    async def check_plan_change(self, request: PlanChangeRequest) -> PlanChangeCheck:
        """Read the tenant's server from our records and decide; touches nothing."""
        try:
            plan = plan_for(self._catalog, request.plan)
        except InvalidPurchaseRequest as err:
            raise ApplicationError(
                f"invalid plan change request: field 'plan' {err.rule}",
                {"field": "plan", "rule": err.rule},
                type="InvalidPlanChangeRequest",
                non_retryable=True,
            ) from None
        await self._refuse_if_deprovisioning(request.tenant_id)
        try:
            record, version = await asyncio.to_thread(self._vault.latest, request.tenant_id)
        except VaultError as err:
            raise vault_failure(err) from None
        servers = await self._call(
            self._provider.find_servers(label_selector=tenant_server_selector(request.tenant_id))
        )
        target = target_or_refusal(
            TenantRecords(request.tenant_id, servers, record, version),
            self._access.identity,
            "PlanChangeRecordsDisagree",
        )
        [server] = servers
        wanted = await self._call(self._provider.get_server_type(plan.server_type))
        current = await self._call(self._provider.get_server_type(server.server_type))
        try:
            if wanted is None:
                raise ChangeRefused(
                    "PlanChangeImpossible",
                    "plan",
                    f"server type {plan.server_type} does not exist at the provider",
                )
            upgrade_disk = plan_change_decision(
                server,
                request.plan,
                plan,
                wanted,
                current.storage_type if current is not None else wanted.storage_type,
            )
        except ChangeRefused as err:
            raise ApplicationError(
                str(err),
                {"field": err.field, "rule": err.rule},
                type=err.error_type,
                non_retryable=True,
            ) from None
        return PlanChangeCheck(
            tenant_id=request.tenant_id,
            server_id=server.id,
            target=target,
            from_server_type=server.server_type,
            to_server_type=plan.server_type,
            upgrade_disk=upgrade_disk,
            disk_gb_before=server.disk_gb,
            disk_gb_after=max(server.disk_gb, wanted.disk_gb) if upgrade_disk else server.disk_gb,
            location=server.location,
            previous_plan=server.labels.get(PLAN_LABEL),
        )

    @activity.defn(name="plan_change_lock_holder")
    async def plan_change_lock_holder(self, request: PlanChangeLockRequest) -> PlanChangeLockHolder:
        """Who holds the tenant's plan-change lock (the workflow could not start it).

        A lock whose plan change has closed is stale (Temporal ends it through the parent
        close policy, moments later): it is ended here, so the caller can take it now.
        """
        held = await self._runs.lock_holder(request.tenant_id)
        freed = await self._runs.end_stale_lock(held)
        return PlanChangeLockHolder(
            held.lock_workflow_id, held.holder, held.holder_running, freed_stale=freed
        )

    @activity.defn(name="stop_server")
    async def stop_server(self, request: ServerPowerRequest) -> StoppedServer:
        """Shut down cleanly (ACPI), then power off after the grace; idempotent."""
        await self._refuse_if_deprovisioning(request.tenant_id)
        return await self._stop(request.server_id)

    async def _stop(self, server_id: int) -> StoppedServer:
        requested_at = _now()
        how = await stop_cleanly(
            self._provider,
            server_id,
            self._settings.shutdown_grace_seconds,
            self._settings.poll_seconds,
        )
        if how is None:
            await self._get(server_id)  # raises ServerGone
        return StoppedServer(server_id, str(how), _now() if how == "already_off" else requested_at)

    @activity.defn(name="change_server_type")
    async def change_server_type(self, request: ServerTypeChange) -> int:
        """change_type to `server_type`; returns the disk size after. Idempotent: a
        server already of that type (an earlier attempt's answer was lost) is done."""
        await self._refuse_if_deprovisioning(request.tenant_id)
        server = await self._get(request.server_id)
        if request.from_server_type and server.server_type not in (
            request.server_type,
            request.from_server_type,
        ):
            raise ApplicationError(
                f"server {request.server_id} is of type {server.server_type}, neither "
                f"{request.from_server_type} nor {request.server_type}: another plan change "
                "ran meanwhile; nothing changed by this one",
                type="PlanChangeRaced",
                non_retryable=True,
            )
        return await self._change_type(request.server_id, request.server_type, request.upgrade_disk)

    async def _change_type(self, server_id: int, server_type: str, upgrade_disk: bool) -> int:
        server = await self._get(server_id)
        if server.server_type == server_type:
            return server.disk_gb
        action = await self._finish(
            await self._call(
                self._provider.change_server_type(server_id, server_type, upgrade_disk)
            )
        )
        if action.status == "error":
            raise ApplicationError(
                f"change_type of server {server_id} to {server_type} failed: {action.error}",
                type="ChangeTypeFailed",
                non_retryable=True,
            )
        return (await self._get(server_id)).disk_gb

    @activity.defn(name="start_mail_server")
    async def start_mail_server(self, check: PlanChangeCheck) -> MailuHealthy:
        """Power on (unless change_type already started it), wait until running, then
        until MailU's admin container is healthy over the pinned SSH connection (its
        containers restart with Docker at boot)."""
        await self._refuse_if_deprovisioning(check.tenant_id)
        await self._power_on(check.server_id)
        handle = ServerHandle(
            check.tenant_id,
            check.server_id,
            check.target.server_name,
            check.target.host_public_key,
            needs_ipv4=False,
            needs_ipv6=False,
        )
        await self._vps.wait_for_server(handle)
        async with await self._access.open(check.target) as conn:
            try:
                await MailuHost(conn, self._mailu_settings).wait_admin_healthy()
            except RemoteCommandError as err:
                raise command_failure(err) from None
        return MailuHealthy(_now())

    @activity.defn(name="restore_server_type")
    async def restore_server_type(self, request: ServerTypeChange) -> str:
        """Compensation: the server back on its old type and running. Idempotent.

        `from_server_type` is the type this run set: a server of any third type was
        changed by another run meanwhile and is only powered on ("kept_other_change").

        An upgraded disk cannot shrink (Hetzner), so a server whose disk grew stays on
        the new type and is only powered on again: "kept_new_type" says so.

        A tenant being deprovisioned is left alone ("tenant_deprovisioned"): nothing is
        changed back or powered on for a tenant that is leaving; a server deleted under
        the restore is the same outcome when a deprovisioning of the tenant ran, else
        "server_gone". Neither is an error: there is nothing left to bring back.
        """
        tenant = request.tenant_id
        if await self._runs.deprovisioning(tenant) is not None:
            return "tenant_deprovisioned"
        try:
            return await self._restore(request)
        except ApplicationError as err:
            if err.type != "ServerGone":
                raise
        if await self._runs.deprovisioned(tenant) is not None:
            return "tenant_deprovisioned"
        return "server_gone"

    async def _restore(self, request: ServerTypeChange) -> str:
        # A change_type still migrating (its step was cancelled or timed out while the
        # action ran: Hetzner's action cannot be cancelled) ends first, and a server
        # booting or stopping settles: only then is its type the one to judge.
        server = await self._settled(request.server_id)
        outcome = "unchanged"
        if request.from_server_type and server.server_type not in (
            request.server_type,
            request.from_server_type,
        ):
            # Another run changed it to a third type: that change is not ours to undo.
            outcome = "kept_other_change"
        elif server.server_type != request.server_type:
            wanted = await self._call(self._provider.get_server_type(request.server_type))
            if wanted is not None and wanted.disk_gb >= server.disk_gb:
                await self._stop(request.server_id)
                await self._change_type(request.server_id, request.server_type, False)
                outcome = "restored"
            else:
                outcome = "kept_new_type"
        await self._power_on(request.server_id)
        await self._wait_status(request.server_id, "running")
        return outcome

    @activity.defn(name="label_server_plan")
    async def label_server_plan(self, request: PlanLabelRequest) -> None:
        """The server's `plan` label names its plan (labels are replaced whole)."""
        await self._refuse_if_deprovisioning(request.tenant_id)
        server = await self._get(request.server_id)
        if server.labels.get(PLAN_LABEL) == request.plan:
            return
        labels = {**server.labels, PLAN_LABEL: request.plan}
        await self._call(self._provider.set_server_labels(request.server_id, labels))

    # ------------------------------------------------------------------ helpers

    async def _power_on(self, server_id: int) -> None:
        """poweron only when off: change_type "starts it again" by itself (API reference),
        so after a change the server is usually booting already."""
        if (await self._get(server_id)).status == "off":
            await self._finish(await self._call(self._provider.poweron_server(server_id)))

    async def _get(self, server_id: int) -> Server:
        server = await self._call(self._provider.get_server(server_id))
        if server is None:
            raise ApplicationError(
                f"server {server_id} no longer exists at the provider",
                type="ServerGone",
                non_retryable=True,
            )
        return server

    async def _refuse_if_deprovisioning(self, tenant_id: str) -> None:
        """TenantDeprovisioned (final) while DeprovisionMailTenant of the tenant runs: it
        deletes the server, so stopping, changing or starting it is wasted or worse."""
        by = await self._runs.deprovisioning(tenant_id)
        if by is not None:
            raise tenant_deprovisioned(tenant_id, by)

    async def _settled(self, server_id: int) -> Server:
        """The server once it is neither migrating, booting nor stopping."""
        while (server := await self._get(server_id)).status not in ("running", "off"):
            activity.heartbeat(f"waiting for the server to settle ({server.status})")
            await asyncio.sleep(self._settings.poll_seconds)
        return server

    async def _wait_status(self, server_id: int, status: str) -> None:
        while (await self._get(server_id)).status != status:
            activity.heartbeat(f"waiting for server status {status}")
            await asyncio.sleep(self._settings.poll_seconds)

    async def _finish(self, action: Action) -> Action:
        while action.status == "running":
            activity.heartbeat(f"waiting for {action.command}")
            await asyncio.sleep(self._settings.poll_seconds)
            action = await self._call(self._provider.get_action(action.id))
        return action

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ProviderError as err:
            raise provider_failure(err) from None
