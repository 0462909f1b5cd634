"""The activities of DeprovisionMailTenant (workflows/deprovision.py).

Each reads what it removes from our own records: the provider's servers labelled
`managed-by=mail-provisioning,tenant={tenant}`, the Vault record `smtp/{tenant}/admin`,
the rotation schedule `rotate-{tenant}` and the claim `tenant-{tenant}`. Each is
idempotent (a retry, or a second run, finds less or nothing to do and succeeds).

A purchase of the tenant that is still running is never overtaken: inspection refuses
(PurchaseInProgress), and each destructive step first checks that the tenant's claim
is still the one inspection saw, so a purchase that claims the tenant afresh while a
run goes on is left alone (the run is refused instead).
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.final_snapshot import FinalSnapshotPolicy, FinalSnapshots
from activities.rotation_schedule import rotation_schedule_exists
from activities.rotation_target import TENANT_LABEL, tenant_server_selector
from activities.vault import Vault, VaultError, vault_failure
from activities.vps_provider import (
    PURCHASE_LABEL,
    ProviderError,
    Server,
    VpsActivities,
    VpsProvider,
    provider_failure,
    ssh_key_name,
)
from activities.world import WorldRecords
from workflows.claim_contracts import tenant_claim_id
from workflows.contracts import ServerHandle, workflow_id_for
from workflows.deprovision_contracts import (
    PURCHASE_IN_PROGRESS,
    TENANT_NOT_EMPTY,
    DeletedServers,
    DeleteServersRequest,
    DestroyCredentialsRequest,
    InspectRequest,
    ReleaseClaimRequest,
    TenantHoldings,
    TenantServer,
)
from workflows.final_snapshot_contracts import FinalSnapshot, FinalSnapshotRequest
from workflows.rotation_contracts import rotation_schedule_id

# How long one attempt of release_claim watches the claim end after asking it to; the
# owner check the claim runs first is one activity (activities/tenant_claims.py).
CLAIM_END_WAIT_SECONDS = 30.0
CLAIM_POLL_SECONDS = 0.5


class DeprovisionActivities:
    def __init__(
        self,
        vault: Vault,
        provider: VpsProvider,
        vps: VpsActivities,
        records: WorldRecords,
        final_snapshots: FinalSnapshotPolicy | None = None,
    ) -> None:
        self._vault = vault
        self._provider = provider
        self._records = records
        # Which plans promise backups (the worker's catalog), never a client's say.
        self._snapshot_policy = final_snapshots or FinalSnapshotPolicy()
        self._snapshots = FinalSnapshots(provider)
        # Server deletion as the purchase's compensation does it (server, then its login
        # key and the firewall once no server uses it): one implementation.
        self._vps = vps

    # ------------------------------------------------------------------ inspect

    @activity.defn(name="inspect_tenant")
    async def inspect_tenant(self, request: InspectRequest) -> TenantHoldings:
        """What the tenant holds; PurchaseInProgress while a purchase of it is running."""
        client = activity.client()
        tenant = request.tenant_id
        servers = [
            TenantServer(
                server.id,
                server.name,
                server.labels.get(PURCHASE_LABEL, ""),
                server.firewall_ids[0] if server.firewall_ids else None,
                self._snapshot_policy.retention_for(server.labels, server.server_type),
            )
            for server in await self._find_servers(tenant)
        ]
        claim_run_id, holder = await _claim(client, tenant)
        running = [
            workflow_id
            for workflow_id in sorted(
                {holder or ""} | {workflow_id_for(s.purchase_id) for s in servers if s.purchase_id}
            )
            if workflow_id and await _running(client, workflow_id)
        ]
        if running:
            raise _in_progress(
                f"purchase {running[0]} of tenant {tenant!r} is still running: cancel it "
                "(its compensation undoes it) or let it finish, then deprovision"
            )
        data, version = await self._vault_call(self._vault.latest, tenant)
        return TenantHoldings(
            tenant_id=tenant,
            servers=servers,
            vault_version=version,
            vault_current=data is not None,
            rotation_schedule=await rotation_schedule_exists(client, tenant),
            claim_run_id=claim_run_id,
            claim_holder=holder,
        )

    # ------------------------------------------------------------------ servers

    @activity.defn(name="take_final_snapshot")
    async def take_final_snapshot(self, request: FinalSnapshotRequest) -> FinalSnapshot | None:
        """The server's final snapshot, available (activities/final_snapshot.py); None
        when the server is already gone. Only for a plan that promises backups: the
        retention in the request was read by inspect_tenant from the worker's catalog."""
        await _refuse_if_reclaimed(request.tenant_id, request.claim_run_id)
        return await self._snapshots.take(request)

    @activity.defn(name="delete_tenant_servers")
    async def delete_tenant_servers(self, request: DeleteServersRequest) -> DeletedServers:
        """Delete the servers inspection found, each with its login key, and the mail
        firewall once no server uses it (VpsActivities.delete_server); then any login key
        still labelled as one of their purchases.

        Reports what is gone when it returns, whichever attempt removed it, so a retry
        after a lost answer reports the same as the attempt that did the work.
        """
        await _refuse_if_reclaimed(request.tenant_id, request.claim_run_id)
        firewalls: list[int] = []
        for server in request.servers:
            handle = ServerHandle(
                request.tenant_id, server.server_id, server.name, "", firewall_id=server.firewall_id
            )
            await self._vps.delete_server(handle)  # returns once the server is gone
            fid = server.firewall_id
            if (
                fid is not None
                and fid not in firewalls
                and await self._call(self._provider.get_firewall(fid)) is None
            ):
                firewalls.append(fid)
        for purchase_id in sorted({s.purchase_id for s in request.servers if s.purchase_id}):
            selector = f"{tenant_server_selector(request.tenant_id)},{PURCHASE_LABEL}={purchase_id}"
            for key in await self._call(self._provider.find_ssh_keys(label_selector=selector)):
                await self._call(self._provider.delete_ssh_key(key.id))
        servers = [s.server_id for s in request.servers]
        activity.logger.info(
            "tenant servers deleted", extra={"servers": servers, "firewalls": firewalls}
        )
        return DeletedServers(
            servers, sorted(ssh_key_name(s.name) for s in request.servers), firewalls
        )

    # ------------------------------------------------------------------ Vault

    @activity.defn(name="destroy_tenant_credentials")
    async def destroy_tenant_credentials(self, request: DestroyCredentialsRequest) -> int:
        """Destroy smtp/{tenant}/admin: every version and its metadata (KV v2 metadata
        delete), then the tenant's Transit key `mail-credentials-{tenant}` (every key
        version), so a copy of the record in an old Vault backup can no longer be opened
        (crypto-shredding, docs/security.md). Returns how many versions the record had
        (0: none, already destroyed); a repeat finds neither and succeeds.
        """
        await _refuse_if_reclaimed(request.tenant_id, request.claim_run_id)
        versions = int(await self._vault_call(self._vault.destroy_record, request.tenant_id))
        key_deleted = bool(
            await self._vault_call(self._vault.destroy_tenant_key, request.tenant_id)
        )
        activity.logger.info(
            "tenant credentials destroyed",
            extra={
                "vault_versions": versions,
                "transit_key": self._vault.tenant_key(request.tenant_id),
                "transit_key_deleted": key_deleted,
            },
        )
        return versions

    # ------------------------------------------------------------------ claim

    @activity.defn(name="release_deprovisioned_claim")
    async def release_deprovisioned_claim(self, request: ReleaseClaimRequest) -> bool:
        """Once nothing of the tenant is left, end the claim inspection saw, so the tenant
        can buy again. True once that claim has ended (whichever attempt ended it),
        False when inspection saw no claim.

        TenantNotEmpty (final for this attempt; the workflow goes over the records again)
        if a server of the removed purchases, the Vault record or the rotation schedule
        is still there.
        """
        client = activity.client()
        tenant = request.tenant_id
        left = await self._leftovers(client, tenant, request.purchase_ids)
        if left:
            raise ApplicationError(
                f"tenant {tenant!r} still has {', '.join(left)}",
                {"left": left},
                type=TENANT_NOT_EMPTY,
                non_retryable=True,
            )
        if request.claim_run_id is None:
            return False
        handle = client.get_workflow_handle(tenant_claim_id(tenant), run_id=request.claim_run_id)
        try:
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                return True
            # A request: the claim's owner check ends it once its holder has no server
            # and no current record left, which is what was just verified.
            await handle.signal("release", request.reason)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return True  # ended and already removed by the namespace's retention
            raise
        waited = 0.0
        while waited < CLAIM_END_WAIT_SECONDS:
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                return True
            activity.heartbeat("waiting for the claim to end")
            await asyncio.sleep(CLAIM_POLL_SECONDS)
            waited += CLAIM_POLL_SECONDS
        raise ApplicationError(
            f"claim {tenant_claim_id(tenant)} still held after asking it to release",
            type="ClaimStillHeld",
        )

    async def _leftovers(self, client: Client, tenant: str, purchase_ids: list[str]) -> list[str]:
        left = [
            f"server {server.name}"
            for server in await self._find_servers(tenant)
            if server.labels.get(PURCHASE_LABEL) in purchase_ids
        ]
        _, version = await self._vault_call(self._vault.latest, tenant)
        if version:
            left.append(f"Vault record version {version}")
        if await rotation_schedule_exists(client, tenant):
            left.append(f"rotation schedule {rotation_schedule_id(tenant)}")
        return left

    # ------------------------------------------------------------------ helpers

    async def _find_servers(self, tenant: str) -> list[Server]:
        servers: list[Server] = await self._call(
            self._records.managed_servers(f"{TENANT_LABEL}={tenant}")
        )
        return servers

    @staticmethod
    async def _call(call: Any) -> Any:
        try:
            return await call
        except ProviderError as err:
            raise provider_failure(err) from None

    @staticmethod
    async def _vault_call(method: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(method, *args)
        except VaultError as err:
            raise vault_failure(err) from None


async def _claim(client: Client, tenant: str) -> tuple[str | None, str | None]:
    """The tenant's running claim: its run id and the holder its memo names."""
    claim = await WorldRecords.claim_of(client, tenant)
    return (claim.claim_run_id, claim.holder) if claim is not None else (None, None)


async def _running(client: Client, workflow_id: str) -> bool:
    facts = await WorldRecords.run_of(client, workflow_id, None)
    return facts.status == WorkflowExecutionStatus.RUNNING.name


async def _refuse_if_reclaimed(tenant: str, claim_run_id: str | None) -> None:
    """PurchaseInProgress if the tenant's claim is no longer the one inspection saw."""
    now, holder = await _claim(activity.client(), tenant)
    if now is not None and now != claim_run_id:
        raise _in_progress(
            f"tenant {tenant!r} was claimed by {holder} while it was being deprovisioned; "
            "that purchase is left alone"
        )


def _in_progress(message: str) -> ApplicationError:
    return ApplicationError(message, type=PURCHASE_IN_PROGRESS, non_retryable=True)
