"""The activation's DNS check (activities/dns_check.py) against a real authoritative
server: Knot DNS serving, on loopback, the zone lines we hand a customer.

The records are MailU 2024.06's own lines (activities/dns_records.py cites them) with
a real 2048-bit DKIM key, so the TXT record really spans two character-strings.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from activities.dns_check import missing_records, resolver_from_setting
from activities.dns_records import address_records, parse_zone_line
from tests.dns_server import DnsServer, knot_serving
from workflows.activation_contracts import RecordProblem
from workflows.contracts import DnsRecord

IPV4, IPV6 = "192.0.2.10", "2001:db8:10::1"


def dkim_public_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def handed_out(domain: str, dkim: str) -> list[DnsRecord]:
    """What a purchase hands the customer: A/AAAA plus MailU's four lines."""
    mailu = [
        f"{domain}. 600 IN MX 10 mail.{domain}.",
        f'{domain}. 600 IN TXT "v=spf1 mx a:mail.{domain} ~all"',
        f'dkim._domainkey.{domain}. 600 IN TXT "v=DKIM1; k=rsa; p={dkim}"',
        f'_dmarc.{domain}. 600 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"',
    ]
    return address_records(domain, IPV4, IPV6) + [parse_zone_line(line) for line in mailu]


DKIM = dkim_public_key()
COMPLETE = handed_out("acme.example", DKIM)
PARTIAL = handed_out("half.example", DKIM)


@pytest.fixture(scope="module")
def knot() -> Iterator[DnsServer]:
    partial_zone = [
        # DKIM not published yet; MX to the customer's old provider; the A record
        # still the old address; AAAA written in another (equal) form; a second TXT
        # beside the SPF record.
        "mail.half.example. 600 IN A 198.51.100.7",
        "mail.half.example. 600 IN AAAA 2001:0db8:0010:0000:0000:0000:0000:0001",
        "half.example. 600 IN MX 5 mx.oldmail.example.",
        next(r.zone_line for r in PARTIAL if r.value.startswith("v=spf1")),
        'half.example. 600 IN TXT "site-verification=abc"',
        next(r.zone_line for r in PARTIAL if r.value.startswith("v=DMARC1")),
    ]
    with knot_serving(
        {"acme.example": [r.zone_line for r in COMPLETE], "half.example": partial_zone}
    ) as server:
        yield server


async def test_records_published_as_handed_out_are_all_found(knot: DnsServer) -> None:
    dkim = next(r for r in COMPLETE if r.name.startswith("dkim."))
    assert dkim.zone_line.count('" "') >= 1  # the key really spans two strings
    resolver = resolver_from_setting(knot.resolver_setting)
    assert await missing_records(resolver, COMPLETE) == []


async def test_what_is_missing_or_different_is_named(knot: DnsServer) -> None:
    resolver = resolver_from_setting(knot.resolver_setting)
    problems = await missing_records(resolver, PARTIAL)
    by_type = {(p.type, p.name): p for p in problems}
    assert set(by_type) == {
        ("A", "mail.half.example."),
        ("MX", "half.example."),
        ("TXT", "dkim._domainkey.half.example."),
    }
    assert by_type[("A", "mail.half.example.")].found == ["198.51.100.7"]
    assert by_type[("MX", "half.example.")] == RecordProblem(
        "half.example.", "MX", "10 mail.half.example.", "different", ["5 mx.oldmail.example"]
    )
    assert by_type[("TXT", "dkim._domainkey.half.example.")].problem == "absent"


async def test_a_name_outside_any_zone_served_is_unresolved_not_found(knot: DnsServer) -> None:
    resolver = resolver_from_setting(knot.resolver_setting)
    [record] = address_records("nowhere.example", IPV4, None)
    [problem] = await missing_records(resolver, [record])
    # Knot refuses a zone it does not serve (REFUSED): the check says it could not tell.
    assert problem.problem == "unresolved"


def test_the_resolver_setting_names_addresses_and_ports() -> None:
    resolver = resolver_from_setting("127.0.0.1:5353, [::1]:53, 192.0.2.1")
    assert resolver.nameservers == ["127.0.0.1", "::1", "192.0.2.1"]
    assert resolver.nameserver_ports == {"127.0.0.1": 5353, "::1": 53}
    with pytest.raises(ValueError):
        resolver_from_setting("resolver.example:53")
