"""The DNS records a customer publishes for their mail domain.

MailU 2024.06 computes MX, SPF, DKIM and DMARC itself and exports them with
`flask mailu config-export --dns --json domain` (core/admin/mailu/manage.py
config_export; schemas.py DomainSchema includes `dns_mx`, `dns_spf`, `dns_dkim`,
`dns_dmarc` and `dkim_publickey` in the `dns` context, leaving out keys whose value is
None). Each is one zone-file line, from core/admin/mailu/models.py Domain:

    example.com. 600 IN MX 10 mail.example.com.
    example.com. 600 IN TXT "v=spf1 mx a:mail.example.com ~all"
    dkim._domainkey.example.com. 600 IN TXT "v=DKIM1; k=rsa; p=MIIBIjANBg..."
    _dmarc.example.com. 600 IN TXT "v=DMARC1; p=reject; rua=...; ruf=...; adkim=s; aspf=s"

This module parses those lines into records and adds what MailU does not export: the
A and AAAA records of mail.{domain}, which the MX and SPF records point at. Only public
data passes through here; the export is requested without `--secrets`, so MailU shows
the private DKIM key as `<hidden>`, and this module drops that field unread.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from workflows.contracts import DnsRecord, mail_hostname_for

# The keys of MailU's export, in the order a customer is best told about them.
MAILU_DNS_KEYS = ("dns_mx", "dns_spf", "dns_dkim", "dns_dmarc")
ADDRESS_TTL = 600  # the TTL MailU uses for its own records
_ZONE_LINE = re.compile(r"(?P<name>\S+)\s+(?P<ttl>\d+)\s+IN\s+(?P<type>[A-Z]+)\s+(?P<data>.+)")


class DnsExportError(ValueError):
    """MailU's export did not have the shape MailU 2024.06 gives it."""


def parse_zone_line(line: str) -> DnsRecord:
    """One `NAME TTL IN TYPE DATA` line; TXT data unquoted for the value."""
    match = _ZONE_LINE.fullmatch(line.strip())
    if match is None:
        raise DnsExportError(f"not a zone-file record line: {line[:80]!r}")
    kind, data = match["type"], match["data"]
    value = " ".join(shlex.split(data)) if kind == "TXT" else data
    return DnsRecord(match["name"], kind, int(match["ttl"]), value, line.strip())


def domain_records(export_json: str, domain: str) -> list[DnsRecord]:
    """The MX, SPF, DKIM and DMARC records of `domain` from MailU's JSON export.

    DKIM and DMARC are required: MailU leaves them out until the domain has a DKIM
    key, so their absence means key generation did not happen.
    """
    try:
        document: Any = json.loads(export_json)
    except json.JSONDecodeError as err:
        raise DnsExportError(f"config-export output is not JSON: {err}") from None
    domains = document.get("domain") if isinstance(document, dict) else None
    entry = next(
        (d for d in domains or [] if isinstance(d, dict) and d.get("name") == domain), None
    )
    if entry is None:
        raise DnsExportError(f"config-export has no domain {domain!r}")
    missing = [key for key in MAILU_DNS_KEYS if not isinstance(entry.get(key), str)]
    if missing:
        raise DnsExportError(f"config-export of {domain!r} lacks {', '.join(missing)}")
    return [parse_zone_line(entry[key]) for key in MAILU_DNS_KEYS]


def has_dkim_key(export_json: str, domain: str) -> bool:
    """True when MailU already exports a DKIM record for `domain` (no key to generate)."""
    try:
        domain_records(export_json, domain)
    except DnsExportError:
        return False
    return True


def address_records(domain: str, ipv4: str | None, ipv6: str | None) -> list[DnsRecord]:
    """A and AAAA of mail.{domain}: where MX and SPF (`a:mail.{domain}`) lead."""
    host = mail_hostname_for(domain) + "."
    records = []
    for kind, address in (("A", ipv4), ("AAAA", ipv6)):
        if address is not None:
            line = f"{host} {ADDRESS_TTL} IN {kind} {address}"
            records.append(DnsRecord(host, kind, ADDRESS_TTL, address, line))
    return records
