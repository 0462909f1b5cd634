"""The notify URL policy that needs no network: strict http(s) syntax and no host that
names an internal address in any spelling, plus the address check the worker repeats
on every resolved address (activities/notify.py). Pure functions, shared by the
workflow sandbox between runs (worker.PASSED_THROUGH).
"""

import ipaddress
import re
from dataclasses import dataclass

from workflows.input_rules import (
    DOMAIN_LABEL_RULE,
    MAX_DNS_NAME,
    TOP_LEVEL_LABEL_RULE,
    InvalidPurchaseRequest,
    check_a_label,
)

# Common client and proxy limit (RFC 9110 section 4.1 recommends supporting >= 8000).
MAX_URL = 2048
# RFC 6335 section 6: ports are 16-bit; 0 is reserved and cannot be connected to.
PORT_RANGE = range(1, 65536)
# Names that resolve to the machine itself, to private networks or to cloud metadata
# services: RFC 6761 section 6.3 (localhost), RFC 6762 (local, mDNS), RFC 8375 (home.arpa),
# ICANN 2024 reservation of `internal`; metadata.google.internal / metadata.goog (GCE).
REFUSED_HOST_SUFFIXES = ("localhost", "local", "localdomain", "internal", "home.arpa", "arpa")
REFUSED_HOSTS = frozenset({"metadata.goog", "metadata.google.internal", "metadata.azure.com"})


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
            check_a_label(label, "notify_url")  # the same IDNA 2008 rule as `domain`
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
