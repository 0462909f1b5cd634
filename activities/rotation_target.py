"""Where a tenant's rotation goes, read from our own records, never from a client.

RotateSmtpCredentials can be started by any client of the namespace, so its argument
names only the tenant (workflows/rotation_contracts.RotationRequest). What the rotation
touches comes from the records the worker itself wrote, and they must agree:

- the provider: the one server labelled `managed-by=mail-provisioning,tenant={tenant}`;
  its name must be the one provisioning derives from its `purchase` and `tenant` labels
  (workflows/contracts.server_name_of), and its public address is what SSH connects to;
- the host key: derived from the worker's SSH identity and that server name, generation
  2, exactly as provisioning's rotate_host_key installed it (activities/ssh.py); it is
  computed here, not stored anywhere a client could write;
- Vault: the record `smtp/{tenant}/admin` names the admin mailbox (`username`
  `admin@{domain}`, `webmail_url` `https://mail.{domain}`);
- the provider's reverse DNS of that address, set by provisioning to `mail.{domain}`:
  it must name the same domain (and names it alone when Vault lost the record).

Disagreement refuses the rotation before anything is written (RotationRecordsDisagree,
naming the field), because the worker cannot tell which record is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from temporalio.exceptions import ApplicationError

from activities.ssh import SshIdentity, host_key_files
from activities.vps_provider import MANAGED_BY_SELECTOR, PURCHASE_LABEL, Server
from workflows.contracts import (
    MailuTarget,
    admin_username_for,
    mail_hostname_for,
    server_name_of,
    webmail_url_for,
)
from workflows.input_rules import InvalidPurchaseRequest, validate_domain

TENANT_LABEL = "tenant"
# The host key generation a completed purchase's server presents (activities/ssh.py).
PROVISIONED_HOST_KEY_GENERATION = 2


def tenant_server_selector(tenant_id: str) -> str:
    """The provider's label selector for the tenant's servers (ours only)."""
    return f"{MANAGED_BY_SELECTOR},{TENANT_LABEL}={tenant_id}"


class TenantGone(Exception):
    """The tenant has no server, or its record was withdrawn: nothing left to rotate."""

    def __init__(self, reason: str, error_type: str) -> None:
        super().__init__(reason)
        self.error_type = error_type


class RecordsDisagree(Exception):
    """Our records about the tenant contradict each other; names the field that does."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"rotation refused: field '{field_name}' {rule}")
        self.field = field_name
        self.rule = rule


@dataclass(frozen=True)
class TenantRecords:
    """What the provider and Vault say about one tenant, read in one attempt."""

    tenant_id: str
    servers: Sequence[Server]
    record: dict[str, str] | None  # the latest Vault version's data; None if deleted/absent
    record_version: int  # 0 when Vault never held a record (or lost it entirely)


def rotation_target(records: TenantRecords, identity: SshIdentity) -> MailuTarget:
    """The one target the records agree on; TenantGone or RecordsDisagree otherwise."""
    tenant = records.tenant_id
    if records.record is None and records.record_version > 0:
        # Compensation (or an operator) withdrew the record: the tenant is gone.
        raise TenantGone(
            f"smtp/{tenant}/admin was withdrawn (latest version {records.record_version} deleted)",
            "CredentialsWithdrawn",
        )
    if not records.servers:
        raise TenantGone(
            f"no server labelled {tenant_server_selector(tenant)} at the provider", "ServerGone"
        )
    if len(records.servers) > 1:
        ids = sorted(server.id for server in records.servers)
        raise RecordsDisagree(
            "server", f"must be one per tenant; the provider has {len(ids)} labelled so: {ids}"
        )
    [server] = records.servers
    purchase = server.labels.get(PURCHASE_LABEL, "")
    expected_name = server_name_of(purchase, tenant)
    if server.name != expected_name:
        raise RecordsDisagree(
            "server_name",
            f"of server {server.id} is {server.name[:80]!r}; its labels "
            f"(purchase={purchase[:80]!r}, tenant={tenant!r}) make it {expected_name!r}",
        )
    # What provisioning connected to (ServerAddress.ssh_address): IPv4, else IPv6.
    if server.ipv4 is not None:
        address, ptr = server.ipv4, server.dns_ptr
    elif server.ipv6 is not None:
        address, ptr = server.ipv6, server.ipv6_dns_ptr
    else:
        raise RecordsDisagree("address", f"server {server.id} has no public address")
    domain = _domain(records, server, ptr)
    _, host_public = host_key_files(
        identity.host_key_for(server.name, PROVISIONED_HOST_KEY_GENERATION)
    )
    return MailuTarget(tenant, domain, server.name, address, host_public)


def target_or_refusal(
    records: TenantRecords, identity: SshIdentity, disagreement_type: str
) -> MailuTarget:
    """rotation_target as an activity reports it: a gone tenant and records that disagree
    are final (non-retryable), the latter under the calling workflow's own error type."""
    try:
        return rotation_target(records, identity)
    except TenantGone as err:
        raise ApplicationError(str(err), type=err.error_type, non_retryable=True) from None
    except RecordsDisagree as err:
        raise ApplicationError(
            str(err),
            {"field": err.field, "rule": err.rule},
            type=disagreement_type,
            non_retryable=True,
        ) from None


def _domain(records: TenantRecords, server: Server, ptr: str | None) -> str:
    """The tenant's domain as Vault's record and the server's reverse DNS both say."""
    from_ptr = None
    if ptr is not None and ptr.startswith(mail_hostname_for("")):
        from_ptr = ptr.removeprefix(mail_hostname_for(""))
    record = records.record
    if record is None:
        # Vault lost the record (restored backup): the provider alone names the domain.
        if from_ptr is None:
            raise RecordsDisagree(
                "dns_ptr",
                f"of server {server.id} is {str(ptr)[:80]!r}, not mail.<domain>, and Vault "
                "has no record to name the domain",
            )
        return _valid("dns_ptr", from_ptr)
    username = str(record.get("username", ""))
    domain = _valid("username", username.partition("@")[2])
    if username != admin_username_for(domain):
        raise RecordsDisagree("username", f"{username[:80]!r} is not admin@<domain>")
    if record.get("webmail_url") != webmail_url_for(domain):
        raise RecordsDisagree(
            "webmail_url", f"must be {webmail_url_for(domain)!r} for username {username!r}"
        )
    if from_ptr != domain:
        raise RecordsDisagree(
            "domain",
            f"Vault's record names {domain!r}, the reverse DNS of server {server.id} "
            f"is {str(ptr)[:80]!r}",
        )
    return domain


def _valid(field_name: str, domain: str) -> str:
    try:
        validate_domain(domain)
    except InvalidPurchaseRequest as err:
        raise RecordsDisagree(field_name, f"names no valid domain: {err.rule}") from None
    return domain
