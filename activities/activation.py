"""Activities of ActivateMailDomain: start or stop a tenant's activation, check its DNS.

check_mail_dns reads what to expect from our own records only, as the rotation does
(activities/rotation_target.py: the one server labelled for the tenant, its pinned
host key, Vault's record naming the domain): the A and AAAA of mail.{domain} are the
server's addresses at the provider, MX, SPF, DKIM and DMARC are MailU's own export
(`flask mailu config-export --dns`, activities/dns_records.py) read over SSH at each
check, so a DKIM key MailU regenerated is what is checked. Then each record is
resolved (activities/dns_check.py).

check_mail_tls (activities/mail_tls.py) reads the public chain files front's certbot
holds over SSH and shakes hands on 443, 465 and 993; restart_mail_front restarts front
when MailU 2024.06 needs it (both certificates there, dovecot's ports refused:
Mailu/Mailu#3827), and only then, so a retry after a restart does nothing.
activation_contact reads the notify_url of the purchase that holds the tenant's claim
(its start input, through the worker's data converter), never a client's word.

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

import asyncssh
import dns.asyncresolver
import dns.resolver
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.dns_check import missing_records, resolver_from_env
from activities.dns_records import DnsExportError, address_records, domain_records
from activities.mail_tls import (
    CERT_NAMES,
    DOVECOT_PORTS,
    TlsSettings,
    certificate_facts,
    check_ports,
    fullchain_path,
)
from activities.mailu import COMPOSE, MailuHost, MailuSettings
from activities.rotation_target import (
    RecordsDisagree,
    TenantGone,
    TenantRecords,
    rotation_target,
    tenant_server_selector,
)
from activities.ssh import RemoteCommandError, ServerAccess, command_failure, run_remote
from activities.vault import Vault, VaultError, vault_failure
from activities.vps_provider import ProviderError, Server, VpsProvider, provider_failure
from activities.world import WorldRecords
from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    ActivationContact,
    ActivationRequest,
    CertificateFacts,
    DnsCheck,
    DnsCheckRequest,
    FrontRestart,
    TlsCheck,
    activation_workflow_id,
)
from workflows.contracts import DnsRecord, MailuTarget, mail_hostname_for
from workflows.input_rules import InvalidPurchaseRequest
from workflows.url_policy import validate_notify_url

RESTART_FRONT = f"{COMPOSE} restart front"


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
        tls: TlsSettings | None = None,
    ) -> None:
        self._tls = tls or TlsSettings()
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
        try:
            resolver = self._dns_resolver()
        except (ValueError, dns.resolver.NoResolverConfiguration) as err:
            raise ApplicationError(f"no DNS resolver: {err}", type="NoResolver") from None
        missing = await missing_records(resolver, records)
        activity.logger.info("DNS check", extra={"records": len(records), "missing": len(missing)})
        return DnsCheck(request.tenant_id, domain, len(records), missing)

    def _dns_resolver(self) -> dns.asyncresolver.Resolver:
        """The worker's resolver (MAILPROV_DNS_RESOLVERS), built at its first use."""
        if self._resolver is None:
            self._resolver = resolver_from_env()
        return self._resolver

    async def expected_records(self, tenant_id: str) -> tuple[str, list[DnsRecord]]:
        """The tenant's domain and its records, from the provider, Vault and MailU."""
        target, server = await self._target(tenant_id)
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

    async def _target(self, tenant_id: str) -> tuple[MailuTarget, Server]:
        """The tenant's server and its SSH target, from our records only."""
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
        return target, server

    # --- stage 2: the certificate and the TLS ports -----------------------------------

    @activity.defn(name="check_mail_tls")
    async def check_mail_tls(self, request: DnsCheckRequest) -> TlsCheck:
        """front's certificate for mail.{domain} and a validating handshake per port."""
        target, server = await self._target(request.tenant_id)
        check = await self._tls_check(request.tenant_id, target, server)
        activity.logger.info(
            "TLS check",
            extra={"missing": len(check.missing), "restart": check.front_restart_needed},
        )
        return check

    @activity.defn(name="restart_mail_front")
    async def restart_mail_front(self, request: DnsCheckRequest) -> FrontRestart:
        """`docker compose restart front` when MailU needs it, else nothing (idempotent:
        the need is checked first, so a retry after a restart that worked does nothing)."""
        target, server = await self._target(request.tenant_id)
        check = await self._tls_check(request.tenant_id, target, server)
        if not check.front_restart_needed:
            return FrontRestart(False, "not needed: " + ("; ".join(check.missing) or "TLS is up"))
        async with await self._access.open(target) as conn:
            try:
                await run_remote(conn, RESTART_FRONT, timeout=300.0)
            except RemoteCommandError as err:
                raise command_failure(err) from None
        activity.logger.info("front restarted for its first certificate")
        return FrontRestart(True, "dovecot's ports refused with the certificate in place")

    async def _tls_check(self, tenant_id: str, target: MailuTarget, server: Server) -> TlsCheck:
        host = mail_hostname_for(target.domain)
        certificates: dict[str, CertificateFacts | None] = {}
        async with await self._access.open(target) as conn:
            for cert_name in CERT_NAMES:
                certificates[cert_name] = await _held_certificate(conn, cert_name, host)
        certificate = certificates[CERT_NAMES[0]]
        missing: list[str] = []
        if certificate is None:
            missing.append(
                f"no certificate for {host} yet: front's certbot has none "
                "(it asks the CA once DNS points at the server)"
            )
            missing += await self._address_problems(target.domain, server)
        elif not certificate.names_host:
            missing.append(f"the certificate names {', '.join(certificate.names)}, not {host}")
        both = all(c is not None and c.names_host for c in certificates.values())
        if certificate is not None and certificates[CERT_NAMES[1]] is None:
            missing.append("front's certbot has the RSA certificate, not yet the ECDSA one")
        address = server.ipv4 or server.ipv6
        ports = await check_ports(address, host, self._tls) if address else []
        missing += [f"{p.port}: {p.problem}" for p in ports if p.problem is not None]
        refused = any(
            p.port in DOVECOT_PORTS and p.problem is not None and "refused" in p.problem
            for p in ports
        )
        return TlsCheck(
            tenant_id,
            target.domain,
            certificate,
            ports,
            front_restart_needed=both and refused,
            missing=missing,
        )

    async def _address_problems(self, domain: str, server: Server) -> list[str]:
        """Why front's certbot may not be asking: the A/AAAA of mail.{domain} no longer
        lead to the server (the customer changed them after the DNS stage passed; the
        run does not check DNS again, workflows/activation.py). Nothing when the worker
        has no resolver: this only explains a missing certificate."""
        try:
            resolver = self._dns_resolver()
        except (ValueError, dns.resolver.NoResolverConfiguration):
            return []
        records = address_records(domain, server.ipv4, server.ipv6)
        return [
            f"{p.type} {p.name.rstrip('.')} {p.problem}"
            + (f" ({', '.join(p.found)})" if p.found else "")
            + ": front's certbot asks the CA only once it points at the server"
            for p in await missing_records(resolver, records)
        ]

    # --- the webhook's address ---------------------------------------------------

    @activity.defn(name="activation_contact")
    async def activation_contact(self, request: DnsCheckRequest) -> ActivationContact:
        """The notify_url of the purchase holding the tenant's claim (its start input)."""
        client = activity.client()
        claim = await WorldRecords.claim_of(client, request.tenant_id)
        if claim is None or claim.holder is None or claim.holder_run_id is None:
            return ActivationContact(None, None, "no claim names the tenant's purchase")
        start = await WorldRecords.start_input(client, claim.holder, claim.holder_run_id)
        if not isinstance(start, dict) or start.get("tenant_id") != request.tenant_id:
            return ActivationContact(None, claim.holder, "the purchase's start is not readable")
        url = start.get("notify_url")
        if url is None:
            return ActivationContact(None, claim.holder, "the purchase named no notify_url")
        try:
            validate_notify_url(url)  # the send-time policy checks it all again
        except (InvalidPurchaseRequest, TypeError):
            return ActivationContact(None, claim.holder, "the purchase's notify_url is refused")
        return ActivationContact(url, claim.holder)


async def _held_certificate(
    conn: asyncssh.SSHClientConnection, cert_name: str, host: str
) -> CertificateFacts | None:
    """The certificate certbot keeps as `cert_name`; None when it has none."""
    try:
        pem = await run_remote(conn, f"cat {fullchain_path(cert_name)}", timeout=60.0)
    except RemoteCommandError as err:
        if err.exit_status == 1:  # cat: ...: No such file or directory
            return None
        raise command_failure(err) from None
    try:
        return certificate_facts(pem, host)
    except ValueError:
        return None  # half-written by certbot: the next check reads it whole
