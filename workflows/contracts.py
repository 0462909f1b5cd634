"""The data contracts of the ProvisionMailTenant workflow.

Everything here is plain data and pure functions: it is imported by the workflow
(which runs in Temporal's deterministic sandbox), by the activities, by the
starter, and it describes the JSON a non-Python back end sends and receives.
Field names are the JSON keys, so renaming one is a breaking change.

No secret ever appears in these types: the admin password only exists inside
the activity that generates it; what travels is the encrypted envelope.
"""

import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# IDNA 2008 (RFC 5890-5893), the rules registries and MailU's own `idna` use; the
# standard library's "idna" codec is IDNA 2003. Pure functions over static tables,
# so deterministic (worker.PASSED_THROUGH_LIBRARIES).
import idna
from temporalio.exceptions import ApplicationError

WORKFLOW_TYPE = "ProvisionMailTenant"
DEFAULT_TASK_QUEUE = "mail-provisioning"
VAULT_KV_MOUNT = "smtp"
ROTATION_POLICY = "180_days"
AUDIT_USER_ID = "system"


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


# Plan names are what a back end sends; the catalog itself is the worker's configuration.
PLAN_NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


# --------------------------------------------------------------------------- input


class InvalidPurchaseRequest(ValueError):
    """Bad input, found before anything is created. Names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"invalid purchase request: field '{field_name}' {rule}")
        self.field = field_name
        self.rule = rule

    def as_failure(self) -> ApplicationError:
        """What the workflow and the activities raise for it, made here only: final
        (retrying cannot fix input), typed, details {field, rule} for clients
        (README "bad input"; clients/typescript reads the same details)."""
        return ApplicationError(
            str(self),
            {"field": self.field, "rule": self.rule},
            type="InvalidPurchaseRequest",
            non_retryable=True,
        )


# --------------------------------------------------------------------------- limits
#
# Every value in a purchase ends up in some outside system. Each limit below is the
# strictest rule among the systems that value reaches, with its source, so that an
# input the contract accepts can never be refused downstream after money is spent.

# Tenant ids become Vault paths, server names and the Hetzner label `tenant`. Hetzner
# label values: at most 63 characters, alphanumeric at both ends, `-_.` inside
# (https://docs.hetzner.cloud/#labels); Vault path segments and RFC 1123 host name
# labels (the server name) then narrow it to lowercase `[a-z0-9-]`.
TENANT_ID_RULE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Purchase ids become the Hetzner label `purchase` (label value rule above, case kept)
# and the workflow id `purchase-{id}`.
PURCHASE_ID_RULE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
# RFC 1035 section 2.3.4 / RFC 1123 section 2.1: labels of 1-63 letters, digits, hyphens,
# not starting or ending with a hyphen.
DOMAIN_LABEL_RULE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# MailU 2024.06 validates domains with python-validators 0.28.1 `validators.domain`
# (core/admin/mailu/api/v1/domain.py; core/base/requirements-prod.txt): the top-level
# label is 2-63 characters, starts alphanumeric and ends with a letter.
TOP_LEVEL_LABEL_RULE = re.compile(r"[a-z0-9][a-z0-9-]{0,61}[a-z]")
# RFC 1035 section 2.3.4: a name is at most 255 octets on the wire, 253 characters as text.
MAX_DNS_NAME = 253
# The longest name we derive from the customer's domain and publish or set as PTR:
# `mail.{domain}` (webmail host, reverse DNS via Hetzner change_dns_ptr, MailU HOSTNAMES).
LONGEST_DERIVED_PREFIX = "mail."
# MailU 2024.06 stores domains in `IdnaDomain = String(80)` (core/admin/mailu/models.py,
# Domain.name): longer names are refused by its PostgreSQL and MySQL back ends.
MAILU_MAX_DOMAIN = 80
MAX_DOMAIN = min(MAILU_MAX_DOMAIN, MAX_DNS_NAME - len(LONGEST_DERIVED_PREFIX))
# The admin mailbox we create. MailU 2024.06 (core/admin/mailu/ui/forms.py LOCALPART_REGEX;
# models.py Email.localpart String(80), IdnaEmail String(255)) and RFC 5321 section 4.5.3.1
# (local part <= 64, path <= 256 with brackets, so address <= 254).
ADMIN_LOCALPART = "admin"
MAILU_LOCALPART_RULE = re.compile(
    r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)
MAX_LOCALPART = 64
MAX_EMAIL = 254
MAX_REQUESTED_BY = 200
# Common client and proxy limit (RFC 9110 section 4.1 recommends supporting >= 8000).
MAX_URL = 2048
# RFC 6335 section 6: ports are 16-bit; 0 is reserved and cannot be connected to.
PORT_RANGE = range(1, 65536)
# The whole start argument: a flat object of short strings fits easily; anything larger or
# deeper is refused before it is decoded (a 5000-deep array would exhaust Python's stack).
MAX_INPUT_BYTES = 16 * 1024
MAX_INPUT_DEPTH = 8
# Names that resolve to the machine itself, to private networks or to cloud metadata
# services: RFC 6761 section 6.3 (localhost), RFC 6762 (local, mDNS), RFC 8375 (home.arpa),
# ICANN 2024 reservation of `internal`; metadata.google.internal / metadata.goog (GCE).
REFUSED_HOST_SUFFIXES = ("localhost", "local", "localdomain", "internal", "home.arpa", "arpa")
REFUSED_HOSTS = frozenset({"metadata.goog", "metadata.google.internal", "metadata.azure.com"})
# The codec marks a payload it could not decrypt with this encoding instead of failing the
# whole workflow task, so a bad start becomes InvalidPurchaseRequest (runtime/codec.py).
UNDECODABLE_ENCODING = b"binary/x-mailprov-undecodable"


# --------------------------------------------------------------------------- raw input


def purchase_input_from_payloads(payloads: Sequence[tuple[bytes, bytes]]) -> Any:
    """The start arguments, as (encoding, data) pairs, into the one JSON value they hold.

    Any client can start the workflow with anything: no argument, several, a payload in
    an encoding we do not read, bytes that are not JSON. Each becomes an
    InvalidPurchaseRequest naming the problem, never an exception that would fail the
    workflow task and retry it forever.
    """
    if len(payloads) != 1:
        raise InvalidPurchaseRequest(
            "(input)", f"must be exactly one argument, the purchase object (got {len(payloads)})"
        )
    encoding, data = payloads[0]
    if encoding == b"binary/null":
        return None
    if encoding == UNDECODABLE_ENCODING:
        reason = data.decode("utf-8", "replace")[:200]
        raise InvalidPurchaseRequest("(input)", f"could not be decoded: {reason}")
    if encoding != b"json/plain":
        shown = encoding.decode("ascii", "replace")[:60]
        raise InvalidPurchaseRequest(
            "(input)", f"must be JSON (encoding json/plain), got encoding {shown!r}"
        )
    return decode_purchase_json(data)


def decode_purchase_json(data: bytes) -> Any:
    """Bounded JSON decoding: size and nesting are checked before the parser runs."""
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidPurchaseRequest(
            "(input)", f"must be at most {MAX_INPUT_BYTES} bytes of JSON (got {len(data)})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPurchaseRequest("(input)", "must be UTF-8 encoded JSON") from None
    if _nesting_depth(text) > MAX_INPUT_DEPTH:
        raise InvalidPurchaseRequest(
            "(input)", f"must not nest arrays or objects deeper than {MAX_INPUT_DEPTH}"
        )
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except ValueError as err:
        # JSONDecodeError names line and column; our own hooks name the key or constant.
        raise InvalidPurchaseRequest("(input)", f"is not valid JSON: {err}") from None


def _nesting_depth(text: str) -> int:
    """Deepest [ or { nesting outside strings; a linear scan that cannot recurse."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; refusing them leaves nothing to disagree on.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def json_type_name(value: Any) -> str:
    """How an error message names a JSON value's type ("a string", "an array", "null")."""
    names = {type(None): "null", bool: "a boolean", str: "a string", list: "an array"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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
        if not isinstance(raw, dict):
            raise InvalidPurchaseRequest(
                "(input)", f"must be a JSON object, got {json_type_name(raw)}"
            )
        strings = {"purchase_id", "tenant_id", "domain", "plan", "requested_by", "notify_url"}
        unknown = sorted(str(key) for key in set(raw) - strings)
        if unknown:
            raise InvalidPurchaseRequest(repr(unknown[0][:60])[1:-1], "is not a known field")
        values: dict[str, str | None] = {}
        for name in sorted(strings):
            value = raw.get(name)
            if value is None and name == "notify_url":
                values[name] = None
                continue
            if value is None:
                raise InvalidPurchaseRequest(name, "is required")
            if not isinstance(value, str):
                raise InvalidPurchaseRequest(name, "must be a string")
            values[name] = value
        request = cls(**values)  # type: ignore[arg-type]
        request.validate()
        return request

    def validate(self) -> None:
        """Check every rule; the order is the order of the fields in the contract."""
        if not PURCHASE_ID_RULE.fullmatch(self.purchase_id):
            raise InvalidPurchaseRequest(
                "purchase_id",
                "must be 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric",
            )
        if not TENANT_ID_RULE.fullmatch(self.tenant_id):
            raise InvalidPurchaseRequest(
                "tenant_id",
                "must be 1-63 characters of [a-z0-9-], starting and ending with [a-z0-9]",
            )
        validate_domain(self.domain)
        if not PLAN_NAME_RULE.fullmatch(self.plan):
            # Membership in the operator's catalog is checked by the resolve_plan step.
            raise InvalidPurchaseRequest("plan", "must match [a-z0-9][a-z0-9_-]{0,62}")
        if not self.requested_by.strip() or len(self.requested_by) > MAX_REQUESTED_BY:
            raise InvalidPurchaseRequest(
                "requested_by", f"must be 1-{MAX_REQUESTED_BY} characters, not blank"
            )
        if any(not ch.isprintable() for ch in self.requested_by):
            raise InvalidPurchaseRequest("requested_by", "must not contain control characters")
        if self.notify_url is not None:
            validate_notify_url(self.notify_url)


def validate_domain(domain: str) -> None:
    """A lowercase IDNA (A-label) FQDN every downstream system accepts (see the limits)."""
    if domain != domain.lower():
        raise InvalidPurchaseRequest("domain", "must be lowercase")
    if not domain.isascii():
        raise InvalidPurchaseRequest("domain", "must be in IDNA ASCII form (xn--...), not Unicode")
    if len(domain) > MAX_DOMAIN:
        raise InvalidPurchaseRequest(
            "domain",
            f"must be at most {MAX_DOMAIN} characters (MailU stores at most "
            f"{MAILU_MAX_DOMAIN}; {LONGEST_DERIVED_PREFIX}{{domain}} must fit {MAX_DNS_NAME})",
        )
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidPurchaseRequest("domain", "must be a fully qualified name with >= 2 labels")
    for label in labels:
        if not DOMAIN_LABEL_RULE.fullmatch(label):
            raise InvalidPurchaseRequest(
                "domain",
                f"label '{label}' must be 1-63 characters of [a-z0-9-], "
                "not starting or ending with '-'",
            )
        if label[2:4] == "--" and not label.startswith("xn--"):
            # RFC 5891 section 4.2.3.1: '--' in positions 3-4 is reserved for A-labels.
            raise InvalidPurchaseRequest(
                "domain", f"label '{label}' must not have '--' in positions 3-4 unless xn--"
            )
        if label.startswith("xn--"):
            _check_a_label(label)
    if not TOP_LEVEL_LABEL_RULE.fullmatch(labels[-1]):
        raise InvalidPurchaseRequest(
            "domain", "top-level label must be 2-63 characters and end with a letter"
        )


def _check_a_label(label: str, field_name: str = "domain") -> None:
    """An `xn--` label must be an IDNA 2008 A-label (RFC 5891 section 5.4).

    IDNA 2003 (the stdlib codec) maps instead of refusing: it accepts symbols such as
    xn--ls8h (U+1F4A9) that IDNA 2008 disallows, and refuses xn--zca ("ß", PVALID in
    IDNA 2008) because 2003 maps it to "ss". `idna.ulabel` decodes the punycode and
    checks each code point's IDNA 2008 property, NFC, hyphens, joiners and the Bidi rule.
    """
    try:
        idna.ulabel(label)
    except (idna.IDNAError, UnicodeError) as err:
        raise InvalidPurchaseRequest(
            field_name, f"label '{label}' is not a valid IDNA 2008 punycode A-label: {err}"
        ) from None


@dataclass(frozen=True)
class NotifyTarget:
    """A notify_url taken apart: what the worker connects to."""

    scheme: str
    host: str  # lowercase DNS name, or the IP address without brackets
    port: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None  # when host is a literal


# RFC 3986 section 2: unreserved, reserved (without '#': no fragments) and '%'.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/?%\[\]-]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_AUTHORITY = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:@]+)(?::(?P<port>[0-9]{1,5}))?")
_DOTTED_QUAD = re.compile(r"[0-9]+(?:\.[0-9]+){3}")


def parse_notify_url(url: str) -> NotifyTarget:
    """Strict http(s) URL syntax, and no host that names an internal address.

    This is the check that needs no network: it refuses what cannot be right in any
    spelling (IPv4 as an integer, hex or octal, IPv4-mapped IPv6, metadata names). The
    worker repeats it and checks every resolved address at connect time
    (activities/notify.py), which is what stops a name that resolves inside.
    """
    if len(url) > MAX_URL:
        raise InvalidPurchaseRequest("notify_url", f"must be at most {MAX_URL} characters")
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in ("https", "http"):
        raise InvalidPurchaseRequest("notify_url", "must start with https:// (or http://)")
    if not _URL_CHARACTERS.fullmatch(rest) or _BAD_PERCENT.search(rest):
        raise InvalidPurchaseRequest(
            "notify_url",
            "must contain only RFC 3986 URL characters (no spaces, fragments or bad %-escapes)",
        )
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise InvalidPurchaseRequest("notify_url", "must not embed credentials")
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        raise InvalidPurchaseRequest("notify_url", f"has an invalid host or port: {authority!r}")
    port = int(match["port"]) if match["port"] else (443 if scheme == "https" else 80)
    if port not in PORT_RANGE:
        raise InvalidPurchaseRequest("notify_url", f"port must be 1-65535, got {port}")
    host = match["host"].lower()
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidPurchaseRequest(
                "notify_url", f"has an invalid IPv6 address {host}"
            ) from None
        host = host[1:-1]
    elif _DOTTED_QUAD.fullmatch(host):
        try:
            address = ipaddress.IPv4Address(host)  # refuses leading zeros (octal spellings)
        except ValueError:
            raise InvalidPurchaseRequest(
                "notify_url", f"host {host!r} is not a valid IPv4 address"
            ) from None
    else:
        _check_notify_host_name(host)
    if address is not None and (problem := address_problem(address)) is not None:
        raise InvalidPurchaseRequest("notify_url", f"must not point at {problem}")
    return NotifyTarget(scheme, host, port, address)


def _check_notify_host_name(host: str) -> None:
    labels = host.split(".")
    if len(labels) < 2 or not all(DOMAIN_LABEL_RULE.fullmatch(label) for label in labels):
        # Also what refuses IPv4 spelt as one integer, in hex or with fewer dots.
        raise InvalidPurchaseRequest(
            "notify_url", f"host {host!r} must be a DNS name with >= 2 labels or an IP address"
        )
    if not TOP_LEVEL_LABEL_RULE.fullmatch(labels[-1]) or len(host) > MAX_DNS_NAME:
        raise InvalidPurchaseRequest(
            "notify_url", f"host {host!r} must end in a top-level label that ends with a letter"
        )
    for label in labels:
        if label.startswith("xn--"):
            _check_a_label(label, "notify_url")  # the same IDNA 2008 rule as `domain`
    if host in REFUSED_HOSTS or any(
        host == suffix or host.endswith("." + suffix) for suffix in REFUSED_HOST_SUFFIXES
    ):
        raise InvalidPurchaseRequest(
            "notify_url", f"host {host!r} names a local, internal or metadata service"
        )


_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 shared address space
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")  # RFC 4193
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the low 32 bits are IPv4


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an outbound connection to this address is refused, or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and int(address) >> 32 == 0 and int(address) > 1:
            embedded = ipaddress.IPv4Address(int(address))  # deprecated IPv4-compatible ::a.b.c.d
        if embedded is not None:
            inner = address_problem(embedded)
            return f"{inner} (embedded in {address})" if inner else None
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (cloud metadata lives here)"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "a CGNAT address"),
        (
            isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL,
            "a unique-local address",
        ),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "an address that is not globally routable"),
    )
    for refused, what in checks:
        if refused:
            return f"{what} ({address})"
    return None


def validate_notify_url(url: str) -> None:
    """An absolute http(s) URL; the worker POSTs the 'VPS ready' event to it."""
    parse_notify_url(url)


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
    state: str  # "running" | "done" | "failed" | "skipped"
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
    state: str
    current_step: str | None
    steps: list[StepProgress] = field(default_factory=list)
    error: str | None = None
    dns_records: list[DnsRecord] = field(default_factory=list)
    # The step a failure, a cancel (or, filled in by the client, a terminate or a
    # timeout) stopped the purchase at: what `purchase cancelled at <step>` names.
    stopped_at: str | None = None
