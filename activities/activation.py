"""Activities of ActivateMailDomain: start or stop a tenant's activation, check its DNS.

check_mail_dns reads what to expect from our own records only, as the rotation does
(activities/rotation_target.py: the one server labelled for the tenant, its pinned
host key, Vault's record naming the domain): the A and AAAA of mail.{domain} are the
server's addresses at the provider, MX, SPF, DKIM and DMARC are MailU's own export
(`flask mailu config-export --dns`, activities/dns_records.py) read over SSH at each
check, so a DKIM key MailU regenerated is what is checked. Then each record is
resolved (activities/dns_check.py).

start_activation / cancel_activation are called by the rotation-schedule activities
(activities/rotation_schedule.py): the schedule and the activation are the tenant's
two Temporal-side lives after its purchase, created by the purchase's
schedule_rotation step and removed by every path that removes the schedule
(compensation, deprovisioning, a rotation that finds the server gone, the
reconciler). Doing both in the same activity costs no extra billable action and
leaves the purchase's recorded histories as they are.
"""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.resolver
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.dns_check import missing_records, resolver_from_env
from activities.dns_records import DnsExportError, address_records, domain_records
from activities.mailu import MailuHost, MailuSettings
from activities.rotation_target import (
    RecordsDisagree,
    TenantGone,
    TenantRecords,
    rotation_target,
    tenant_server_selector,
)
from activities.ssh import RemoteCommandError, ServerAccess, command_failure
from activities.vault import Vault, VaultError, vault_failure
from activities.vps_provider import ProviderError, VpsProvider, provider_failure
from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    ActivationRequest,
    DnsCheck,
    DnsCheckRequest,
    activation_workflow_id,
)
from workflows.contracts import DnsRecord


async def start_activation(client: Client, tenant_id: str, task_queue: str) -> str:
    """Start `activate-{tenant}` unless one runs already (USE_EXISTING: a retried
    purchase step finds it). Returns the workflow id."""
    workflow_id = activation_workflow_id(tenant_id)
    await client.start_workflow(
        ACTIVATION_WORKFLOW_TYPE,
        ActivationRequest(tenant_id),
        id=workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return workflow_id


async def cancel_activation(client: Client, tenant_id: str) -> bool:
    """Cancel a waiting activation; False when none runs (idempotent)."""
    handle = client.get_workflow_handle(activation_workflow_id(tenant_id))
    try:
        # Asked first: a cancel of a closed run is not refused by every server.
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return False
        await handle.cancel()
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            return False
        raise
    return True


class ActivationActivities:
    def __init__(
        self,
        vault: Vault,
        provider: VpsProvider,
        access: ServerAccess,
        resolver: dns.asyncresolver.Resolver | None = None,
        mailu_settings: MailuSettings | None = None,
    ) -> None:
        self._vault = vault
        self._provider = provider
        self._access = access
        # Built at the first check, not here: a machine without /etc/resolv.conf must
        # not keep the worker from starting (its checks then fail and are retried).
        self._resolver = resolver
        self._mailu_settings = mailu_settings or MailuSettings()

    @activity.defn(name="check_mail_dns")
    async def check_mail_dns(self, request: DnsCheckRequest) -> DnsCheck:
        """Which of the records we handed out are not published as handed out."""
        domain, records = await self.expected_records(request.tenant_id)
        if self._resolver is None:
            try:
                self._resolver = resolver_from_env()
            except (ValueError, dns.resolver.NoResolverConfiguration) as err:
                raise ApplicationError(f"no DNS resolver: {err}", type="NoResolver") from None
        missing = await missing_records(self._resolver, records)
        activity.logger.info("DNS check", extra={"records": len(records), "missing": len(missing)})
        return DnsCheck(request.tenant_id, domain, len(records), missing)

    async def expected_records(self, tenant_id: str) -> tuple[str, list[DnsRecord]]:
        """The tenant's domain and its records, from the provider, Vault and MailU."""
        try:
            record, version = await asyncio.to_thread(self._vault.latest, tenant_id)
        except VaultError as err:
            raise vault_failure(err) from None
        try:
            servers = await self._provider.find_servers(
                label_selector=tenant_server_selector(tenant_id)
            )
        except ProviderError as err:
            raise provider_failure(err) from None
        try:
            target = rotation_target(
                TenantRecords(tenant_id, servers, record, version), self._access.identity
            )
        except TenantGone as err:
            raise ApplicationError(str(err), type=err.error_type, non_retryable=True) from None
        except RecordsDisagree as err:
            raise ApplicationError(
                str(err), {"field": err.field, "rule": err.rule}, type="ActivationRecordsDisagree"
            ) from None
        [server] = servers
        async with await self._access.open(target) as conn:
            try:
                export = await MailuHost(conn, self._mailu_settings).export_dns()
            except RemoteCommandError as err:
                raise command_failure(err) from None
        try:
            mailu_records = domain_records(export, target.domain)
        except DnsExportError as err:
            raise ApplicationError(str(err), type="MailuDnsExportFailed") from None
        addresses = address_records(target.domain, server.ipv4, server.ipv6)
        return target.domain, addresses + mailu_records
