"""The data contracts of the ProvisionMailTenant workflow.

The data shapes: plain dataclasses and the names derived from a purchase. They are
imported by the workflow (which runs in Temporal's deterministic sandbox), by the
activities, by the starter, and describe the JSON a non-Python back end sends and
receives. Field names are the JSON keys, so renaming one is a breaking change. The
rules a purchase is checked by are in workflows/input_rules.py (with their sources)
and workflows/url_policy.py (the notify URL); PurchaseRequest.parse applies them.

No secret ever appears in these types: the admin password only exists inside
the activity that generates it; what travels is the encrypted envelope.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Annotated, Any

from workflows.input_rules import (
    MAX_REQUESTED_BY,
    InvalidPurchaseRequest,
    check_plan_name,
    check_request_id,
    check_tenant_id,
    check_text,
    json_object,
    optional_string_field,
    string_field,
    validate_domain,
)
from workflows.url_policy import validate_notify_url

WORKFLOW_TYPE = "ProvisionMailTenant"
DEFAULT_TASK_QUEUE = "mail-provisioning"
VAULT_KV_MOUNT = "smtp"
ROTATION_POLICY = "180_days"
AUDIT_USER_ID = "system"


class OneOf:
    """The values a `str` field of a contract can hold, as `Annotated[str, OneOf(...)]`.

    Read by workflows/contract_schema.py into a JSON Schema `enum` (and so into the
    TypeScript package's string unions); Temporal's converter and mypy see a plain `str`,
    so a value outside the list still decodes (the workflow validates where it matters).
    """

    def __init__(self, *values: str) -> None:
        self.values = values


def workflow_id_for(purchase_id: str) -> str:
    """One workflow per purchase: the id is what makes starts idempotent."""
    return f"purchase-{purchase_id}"


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """What a plan buys at the provider (names from the provider's catalog).

    Plans are operator configuration (activities/plans.py loads them from the file
    named by MAILPROV_PLANS_FILE); the workflow gets one through the `resolve_plan`
    activity, so it never reads a file itself.
    """

    server_type: str
    image: str
    # Tried in order: the next one when the provider is out of capacity in a location.
    locations: list[str]
    # How the server gets Docker Engine + Compose v2: "docker-apt" (Docker's apt
    # repository through cloud-config) or "preinstalled" (an image that ships them).
    docker_install: str = "docker-apt"
    # The server's public addresses (Hetzner's public_net.enable_ipv4 / enable_ipv6).
    ipv4: bool = True
    ipv6: bool = True


@dataclass(frozen=True)
class PurchaseRequest:
    """The workflow input: one mail-hosting purchase."""

    purchase_id: str
    tenant_id: str
    domain: str
    plan: str
    requested_by: str
    notify_url: str | None = None
    # No `keep_server_on_failure`: whether compensation keeps a failed purchase's server
    # is the worker operator's choice (MAILPROV_KEEP_FAILED_SERVERS, carried by
    # Admission), never a client's, which could otherwise keep servers forever.

    @classmethod
    def parse(cls, raw: Any) -> "PurchaseRequest":
        """Validate untrusted JSON (from any client language) into a request.

        Raises InvalidPurchaseRequest naming the first field that breaks a rule.
        """
        strings = {"purchase_id", "tenant_id", "domain", "plan", "requested_by", "notify_url"}
        fields = json_object(raw, strings, InvalidPurchaseRequest)
        values: dict[str, str | None] = {
            name: (optional_string_field if name == "notify_url" else string_field)(
                fields, name, InvalidPurchaseRequest
            )
            for name in sorted(strings)
        }
        request = cls(**values)  # type: ignore[arg-type]
        request.validate()
        return request

    def validate(self) -> None:
        """Check every rule; the order is the order of the fields in the contract."""
        refuse = InvalidPurchaseRequest
        check_request_id(self.purchase_id, "purchase_id", refuse)
        check_tenant_id(self.tenant_id, refuse)
        validate_domain(self.domain)
        # Membership in the operator's catalog is checked by the admission step.
        check_plan_name(self.plan, refuse)
        check_text(self.requested_by, "requested_by", MAX_REQUESTED_BY, refuse)
        if self.notify_url is not None:
            validate_notify_url(self.notify_url)


# --------------------------------------------------------------------------- derived names


def server_name_for(request: PurchaseRequest) -> str:
    """Deterministic, unique per purchase, a valid hostname (<= 63 chars).

    Deterministic so that a retried create meets Hetzner's uniqueness_error and
    adopts the server it already made instead of buying a second one.
    """
    return server_name_of(request.purchase_id, request.tenant_id)


def server_name_of(purchase_id: str, tenant_id: str) -> str:
    """server_name_for from the two labels a server carries (rotation checks it)."""
    digest = hashlib.sha256(purchase_id.encode()).hexdigest()[:10]
    return f"mail-{tenant_id[:46].rstrip('-')}-{digest}"


def mail_hostname_for(domain: str) -> str:
    return f"mail.{domain}"


def admin_username_for(domain: str) -> str:
    return f"admin@{domain}"


def webmail_url_for(domain: str) -> str:
    return f"https://{mail_hostname_for(domain)}"


def vault_secret_path_for(tenant_id: str) -> str:
    """The KV v2 path (inside the `smtp` mount) of a tenant's admin credentials."""
    return f"{tenant_id}/admin"


# --------------------------------------------------------------------------- activity I/O


# Every activity argument carries `tenant_id`, so every log line can name the tenant.


@dataclass(frozen=True)
class ServerSpec:
    tenant_id: str
    name: str
    plan: Plan
    labels: dict[str, str]


@dataclass(frozen=True)
class ServerHandle:
    """A server at the provider, with the SSH host key pinned at creation."""

    tenant_id: str
    server_id: int
    name: str
    host_public_key: str
    create_action_id: int | None = None
    adopted: bool = False
    # The addresses the plan asked for: the server is not ready without them.
    needs_ipv4: bool = True
    needs_ipv6: bool = False
    # The Hetzner firewall applied at creation; compensation deletes it once unused.
    firewall_id: int | None = None


@dataclass(frozen=True)
class ServerAddress:
    """The server's public addresses; either is None when its plan has none.

    `ipv6` is the server's own address: ::1 of the /64 the provider routes to it.
    """

    server_id: int
    ipv4: str | None
    ipv6: str | None = None

    @property
    def ssh_address(self) -> str:
        """IPv4 when the plan has one (reachable from any worker), else IPv6."""
        address = self.ipv4 or self.ipv6
        if address is None:
            raise ValueError(f"server {self.server_id} has no public address")
        return address


@dataclass(frozen=True)
class ReverseDnsRequest:
    """Mail from an address without a matching PTR record is treated as spam."""

    tenant_id: str
    server_id: int
    ipv4: str | None
    dns_ptr: str
    ipv6: str | None = None


@dataclass(frozen=True)
class MailuTarget:
    """Where and what to configure; the host key makes the SSH connection trusted."""

    tenant_id: str
    domain: str
    server_name: str
    address: str  # what SSH connects to: the IPv4 or, on an IPv6-only plan, the IPv6
    host_public_key: str


@dataclass(frozen=True)
class SealedCredentials:
    """The admin credentials after encryption. `password_envelope` is ciphertext."""

    username: str
    password_envelope: str


@dataclass(frozen=True)
class StoreCredentialsRequest:
    tenant_id: str
    credentials: SealedCredentials
    webmail_url: str


@dataclass(frozen=True)
class StoredCredentials:
    vault_path: str
    version: int
    created_at: str


@dataclass(frozen=True)
class RemoveCredentialsRequest:
    """Compensation: withdraw the record version this run wrote (nothing older)."""

    tenant_id: str
    version: int


@dataclass(frozen=True)
class AuditEvent:
    """One append-only audit row. `event_key` makes a retried write a no-op."""

    event_key: str
    event: str
    tenant_id: str
    details: dict[str, str]
    user_id: str = AUDIT_USER_ID


@dataclass(frozen=True)
class NotifyUrlCheck:
    """Ask the worker whether its outbound policy lets it notify this URL."""

    tenant_id: str
    url: str


@dataclass(frozen=True)
class Notification:
    tenant_id: str
    url: str
    idempotency_key: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class DnsRecord:
    """One record the customer publishes. Public data only (never a private key).

    `value` is the record's data as a DNS provider's form wants it (TXT unquoted);
    `zone_line` is the same record as a zone-file line (TXT data split into strings of
    at most 250 bytes, as MailU's zone-file download splits them).
    """

    name: str
    type: str
    ttl: int
    value: str
    zone_line: str


@dataclass(frozen=True)
class PlanRequest:
    """Which plan of the worker's catalog a purchase buys."""

    tenant_id: str
    plan: str


@dataclass(frozen=True)
class AdmissionRequest:
    """Admit a purchase: its plan, its notify URL under the worker's policy, its tenant claim."""

    tenant_id: str
    plan: str
    notify_url: str | None
    holder: str  # the purchase's workflow id, which takes the tenant's claim


@dataclass(frozen=True)
class Admission:
    """An admitted purchase: the plan it buys and the tenant claim run it holds."""

    plan: Plan
    claim_run_id: str
    # The worker's MAILPROV_KEEP_FAILED_SERVERS (operator configuration, for debugging):
    # compensation keeps a failed purchase's server. Recorded in the run's history, so a
    # replay on a worker configured otherwise takes the same path.
    keep_failed_servers: bool = False


@dataclass(frozen=True)
class ServerUpRequest:
    """Wait until the server runs, then point its reverse DNS at `dns_ptr`."""

    server: ServerHandle
    dns_ptr: str

    @property
    def tenant_id(self) -> str:
        return self.server.tenant_id


@dataclass(frozen=True)
class DnsRecordsRequest:
    """Ask MailU for the domain's records (generating its DKIM key once); also what
    set_up_mailu configures before it asks."""

    tenant_id: str
    target: MailuTarget
    ipv4: str | None
    ipv6: str | None


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class ProvisionResult:
    """What the back end gets when the mail server is ready. Never a secret."""

    purchase_id: str
    tenant_id: str
    server_id: int
    server_name: str
    ipv4: str | None  # null on an IPv6-only plan
    ipv6: str | None  # null on an IPv4-only plan
    webmail_url: str
    vault_path: str
    vault_version: int
    notified: bool
    # What the customer must publish at their DNS provider (A/AAAA, MX, SPF, DKIM, DMARC).
    dns_records: list[DnsRecord] = field(default_factory=list)


# --------------------------------------------------------------------------- progress

STEPS: tuple[str, ...] = (
    "validate_input",
    "admit_purchase",  # plan, notify URL policy, tenant claim
    "create_server",
    "wait_for_server",  # then its reverse DNS
    "rotate_host_key",
    "configure_mailu",  # then the domain's DNS records
    "create_admin_credentials",
    "store_credentials",
    "audit",
    "schedule_rotation",
    "notify",
)


@dataclass
class StepProgress:
    name: str
    # `interrupted`: it was running when the server terminated the run or timed it out.
    state: Annotated[str, OneOf("running", "done", "failed", "skipped", "interrupted")]
    started_at: str
    finished_at: str | None = None


@dataclass
class ProvisionStatus:
    """Answer of the `status` query: what the progress display and the Web UI show."""

    purchase_id: str | None
    tenant_id: str | None
    # "running" | "compensating" | "completed" | "failed" | "cancelled"; a client that
    # sees the server report the run closed says "terminated" or "timed_out" instead
    # (the query answers from the history up to the end, where the code was still running).
    state: Annotated[
        str,
        OneOf(
            "running", "compensating", "completed", "failed", "cancelled", "terminated", "timed_out"
        ),
    ]
    current_step: str | None
    steps: list[StepProgress] = field(default_factory=list)
    error: str | None = None
    dns_records: list[DnsRecord] = field(default_factory=list)
    # The step a failure, a cancel (or, filled in by the client, a terminate or a
    # timeout) stopped the purchase at: what `purchase cancelled at <step>` names.
    stopped_at: str | None = None
