"""Data contracts of ActivateMailDomain: a purchased mail domain waits for its DNS,
then for its certificate and the TLS ports that serve it.

Plain data and pure functions, importable by the workflow sandbox, the activities and
the starter. The start argument names only the tenant: the records a check expects are
read by the worker from our own records (the tenant's server, MailU's export over SSH),
never taken from a client.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from workflows.contracts import StepProgress
from workflows.input_rules import check_tenant_id, json_object, start_argument, string_field

ACTIVATION_WORKFLOW_TYPE = "ActivateMailDomain"
DNS_PUBLISHED_SIGNAL = "dns_published"
DNS_VERIFIED_EVENT = "mail_domain_dns_verified"
ACTIVATED_EVENT = "mail_domain_activated"
GAVE_UP_EVENT = "mail_domain_activation_expired"
# The webhook events, POSTed to the purchase's notify_url (with its SSRF policy).
MAIL_ACTIVE_WEBHOOK = "mail_active"
EXPIRED_WEBHOOK = "mail_activation_expired"

# How long the customer has to publish the records: after that the run ends
# `gave_up` (nothing is deleted; `starter.py activate TENANT --dns-published` on a new
# run starts the wait over).
DNS_WAIT_LIMIT = timedelta(days=30)
# The first check comes one interval after the purchase (the customer only gets the
# records with the purchase's notification); each next interval doubles up to a cap.
FIRST_CHECK_AFTER = timedelta(minutes=5)
LONGEST_CHECK_INTERVAL = timedelta(hours=6)
# Once DNS is right, MailU's front polls every 5 s and runs certbot at once
# (core/nginx/letsencrypt.py, 2024.06): the certificate is minutes away, so the TLS
# checks start sooner and grow the same way (to the same cap, within the same bound).
FIRST_TLS_CHECK_AFTER = timedelta(minutes=1)


def check_intervals(
    first: timedelta = FIRST_CHECK_AFTER,
    longest: timedelta = LONGEST_CHECK_INTERVAL,
    limit: timedelta = DNS_WAIT_LIMIT,
) -> list[timedelta]:
    """The waits before each scheduled check: doubling from `first` to `longest`, the
    last one shortened so that they add up to exactly `limit`.

    With the defaults: 5, 10, 20, 40, 80, 160, 320 min, then every 6 h: 126 checks
    over 30 days (docs/OPERATIONS.md counts their billable actions).
    """
    waits: list[timedelta] = []
    total = timedelta(0)
    wait = first
    while total < limit:
        step = min(wait, limit - total)
        waits.append(step)
        total += step
        wait = min(wait * 2, longest)
    return waits


def activation_workflow_id(tenant_id: str) -> str:
    """One activation per tenant at a time: Temporal runs one open workflow per id."""
    return f"activate-{tenant_id}"


class InvalidActivationRequest(ValueError):
    """A start argument ActivateMailDomain refuses. Names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"invalid activation request: field '{field_name}' {rule}")
        self.field = field_name
        self.rule = rule


@dataclass(frozen=True)
class ActivationRequest:
    """`{"tenant_id": "acme"}`."""

    tenant_id: str

    @classmethod
    def parse(cls, raw: Any) -> "ActivationRequest":
        fields = json_object(raw, {"tenant_id"}, InvalidActivationRequest)
        tenant = string_field(fields, "tenant_id", InvalidActivationRequest)
        check_tenant_id(tenant, InvalidActivationRequest)
        return cls(tenant)


def activation_request_from_payloads(
    payloads: Sequence[tuple[bytes, bytes]],
) -> ActivationRequest:
    """The raw start arguments decoded as the purchase's are (one argument, JSON only,
    bounded size and depth, no duplicate keys): a bad one ends the run at once."""
    expected = ', {"tenant_id": ...}'
    return ActivationRequest.parse(start_argument(payloads, InvalidActivationRequest, expected))


@dataclass(frozen=True)
class DnsCheckRequest:
    tenant_id: str


@dataclass(frozen=True)
class RecordProblem:
    """One record we handed out that the resolver does not give back as handed out."""

    name: str
    type: str
    expected: str
    # "absent" (no such name or no record of the type) | "different" | "unresolved"
    problem: str
    found: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DnsCheck:
    """One check's answer: public record data only."""

    tenant_id: str
    domain: str
    records_checked: int
    missing: list[RecordProblem] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class ActivationResult:
    tenant_id: str
    # "active" | "gave_up" | "tenant_gone"
    outcome: str
    checks: int
    waited_seconds: float
    missing: list[RecordProblem] = field(default_factory=list)
    # The stage reached: "dns" | "tls" (certificate and handshakes) | "active".
    stage: str = "dns"
    tls_checks: int = 0
    tls_missing: list[str] = field(default_factory=list)
    certificate_not_after: str | None = None
    front_restarted: bool = False
    notified: bool = False


@dataclass
class ActivationStatus:
    """Answer of the `status` query on an activation run."""

    tenant_id: str | None
    # "waiting_for_dns" | "checking" | "waiting_for_tls" | "checking_tls"
    # | "restarting_front" | "active" | "gave_up" | "tenant_gone" | "refused" | "failed"
    # | "cancelled"
    state: str
    domain: str | None = None
    checks: int = 0
    last_checked_at: str | None = None
    next_check_at: str | None = None
    give_up_at: str | None = None
    missing: list[RecordProblem] = field(default_factory=list)
    current_step: str | None = None
    steps: list[StepProgress] = field(default_factory=list)
    error: str | None = None
    # The certificate and TLS stage, once DNS is right.
    dns_verified_at: str | None = None
    tls_checks: int = 0
    tls_missing: list[str] = field(default_factory=list)
    certificate_not_after: str | None = None
    front_restarts: int = 0
    activated_at: str | None = None


@dataclass(frozen=True)
class ActivationContact:
    """Where the activation's webhook goes: the notify_url of the purchase that holds the
    tenant's claim (read by the worker from that purchase's start, never from the
    activation's own input). None when the purchase named none or cannot be read."""

    notify_url: str | None
    purchase: str | None = None
    note: str = ""


@dataclass(frozen=True)
class CertificateFacts:
    """The public facts of the certificate front's certbot holds (fullchain.pem's leaf)."""

    names: list[str]
    issuer: str
    not_before: str
    not_after: str
    names_host: bool  # mail.{domain} is among its names


@dataclass(frozen=True)
class PortCheck:
    """One TLS handshake: None when the chain validated for mail.{domain}."""

    port: int
    problem: str | None = None


@dataclass(frozen=True)
class TlsCheck:
    """One check of the certificate and the TLS ports: public facts only."""

    tenant_id: str
    domain: str
    certificate: CertificateFacts | None  # None: front's certbot has none yet
    ports: list[PortCheck] = field(default_factory=list)
    # Front holds both certificates but dovecot's ports refuse connections: MailU
    # 2024.06 needs front restarted (Mailu/Mailu#3827).
    front_restart_needed: bool = False
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class FrontRestart:
    restarted: bool
    reason: str
