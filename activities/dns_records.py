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

MailU's DKIM line is one TXT character-string of about 410 bytes (a 2048-bit key),
over the 255-byte limit of a character-string (RFC 1035 3.3.14; a zone-file parser
such as dnspython refuses it: "string too long"). So the `zone_line` handed on is
rendered here, the TXT data split into strings of at most 250 bytes exactly as
MailU's own zone-file download does (core/admin/mailu/ui/views/domains.py
domain_download_zonefile, tag 2024.06.57); a TXT record's strings are one
concatenated value (RFC 6376 3.6.2.2, RFC 7208 3.3), which is the `value` given to a
DNS provider's form.

This module parses those lines into records and adds what MailU does not export: the
A and AAAA records of mail.{domain}, which the MX and SPF records point at. Only public
data passes through here; the export is requested without `--secrets`, so MailU shows
the private DKIM key as `<hidden>`, and this module drops that field unread.
"""

from __future__ import annotations

import json
import re
from typing import Any

from workflows.contracts import DnsRecord, mail_hostname_for

# The keys of MailU's export, in the order a customer is best told about them.
MAILU_DNS_KEYS = ("dns_mx", "dns_spf", "dns_dkim", "dns_dmarc")
ADDRESS_TTL = 600  # the TTL MailU uses for its own records
# MailU's zone download splits TXT data every 250 bytes (domains.py, tag 2024.06.57);
# RFC 1035 allows 255 per character-string.
TXT_STRING_BYTES = 250
_ZONE_LINE = re.compile(r"(?P<name>\S+)\s+(?P<ttl>\d+)\s+IN\s+(?P<type>[A-Z]+)\s+(?P<data>.+)")
# One TXT character-string: quoted (backslash escapes inside) or a bare word.
_TXT_STRING = re.compile(r'\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s"]+))')
_ZONE_ESCAPE = re.compile(r"\\(\d{3}|.)")


class DnsExportError(ValueError):
    """MailU's export did not have the shape MailU 2024.06 gives it."""


def txt_value(data: str) -> str:
    """The value of TXT record data: its character-strings unescaped and concatenated.

    A DKIM key split over several strings is one key again, with nothing in between
    (RFC 6376 3.6.2.2); joining with spaces would corrupt it.
    """
    value = bytearray()
    position, end = 0, len(data.rstrip())
    while position < end:
        match = _TXT_STRING.match(data, position)
        if match is None:
            raise DnsExportError(f"not TXT record data: {data[:80]!r}")
        raw = match["quoted"] if match["quoted"] is not None else match["bare"]
        value += _unescaped(raw)
        position = match.end()
    if position == 0:
        raise DnsExportError("TXT record without data")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DnsExportError(f"TXT data is not UTF-8: {data[:80]!r}") from None


def _unescaped(text: str) -> bytes:
    """Zone-file escapes (RFC 1035 5.1: \\X is X, \\DDD is the byte DDD) undone."""
    out = bytearray()
    position = 0
    for match in _ZONE_ESCAPE.finditer(text):
        out += text[position : match.start()].encode("utf-8")
        escaped = match.group(1)
        out += bytes([int(escaped)]) if escaped.isdigit() else escaped.encode("utf-8")
        position = match.end()
    return bytes(out + text[position:].encode("utf-8"))


def txt_zone_data(value: str) -> str:
    """`value` as zone-file TXT data: quoted strings of at most 250 bytes each."""
    encoded = value.encode("utf-8")
    chunks = [encoded[i : i + TXT_STRING_BYTES] for i in range(0, len(encoded), TXT_STRING_BYTES)]
    return " ".join(f'"{_zone_escape(chunk)}"' for chunk in chunks or [b""])


def _zone_escape(chunk: bytes) -> str:
    """Quote-safe text of one string; bytes outside printable ASCII as \\DDD."""
    return "".join(
        "\\" + chr(b) if chr(b) in '"\\' else chr(b) if 0x20 <= b < 0x7F else f"\\{b:03d}"
        for b in chunk
    )


def parse_zone_line(line: str) -> DnsRecord:
    """One `NAME TTL IN TYPE DATA` line; TXT data unquoted for the value.

    The record's `zone_line` is rendered afresh, so TXT data longer than one
    character-string may hold is split as a zone file needs it.
    """
    match = _ZONE_LINE.fullmatch(line.strip())
    if match is None:
        raise DnsExportError(f"not a zone-file record line: {line[:80]!r}")
    name, ttl, kind, data = match["name"], int(match["ttl"]), match["type"], match["data"]
    if kind != "TXT":
        return DnsRecord(name, kind, ttl, data, line.strip())
    value = txt_value(data)
    return DnsRecord(name, kind, ttl, value, f"{name} {ttl} IN TXT {txt_zone_data(value)}")


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
