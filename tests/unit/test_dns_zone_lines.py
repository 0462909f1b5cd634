"""Every zone line handed to a customer is read by a real zone-file parser (dnspython).

Issue 19 item 8: MailU's DKIM line is one TXT string of ~410 bytes; RFC 1035 allows 255
per character-string and dnspython refuses it ("string too long"). MailU's own zone
download (core/admin/mailu/ui/views/domains.py, tag 2024.06.57) splits every 250 bytes.
"""

from __future__ import annotations

import json

import dns.exception
import dns.rdatatype
import dns.zone
import pytest

from activities.dns_records import (
    DnsExportError,
    address_records,
    domain_records,
    parse_zone_line,
    txt_value,
)
from devstack.mailu_export import domain_dns, generate_dkim_key
from workflows.contracts import DnsRecord

ENV = {"HOSTNAMES": "mail.a.example", "DOMAIN": "a.example", "DMARC_RUA": "admin"}


def purchase_records() -> list[DnsRecord]:
    export = {
        "domain": [{"name": "a.example", **domain_dns("a.example", generate_dkim_key(), ENV)}]
    }
    return address_records("a.example", "203.0.113.5", "2001:db8::1") + domain_records(
        json.dumps(export), "a.example"
    )


def parsed_by_dnspython(record: DnsRecord) -> dns.rdata.Rdata:
    """dnspython's reading of the line, as a zone file holding only that line."""
    zone = dns.zone.from_text(
        record.zone_line + "\n", origin="a.example.", relativize=False, check_origin=False
    )
    [(name, ttl, rdata)] = list(zone.iterate_rdatas())
    assert name.to_text() == record.name
    assert ttl == record.ttl
    assert dns.rdatatype.to_text(rdata.rdtype) == record.type
    return rdata


def test_mailus_raw_dkim_line_is_refused_by_a_real_zone_parser() -> None:
    """The check can fail: MailU's export line as-is is not valid zone syntax."""
    export = domain_dns("a.example", generate_dkim_key(), ENV)
    with pytest.raises(dns.exception.SyntaxError, match="string too long"):
        dns.zone.from_text(export["dns_dkim"] + "\n", origin="a.example.", check_origin=False)


def test_every_zone_line_parses_and_txt_strings_join_to_the_value() -> None:
    records = purchase_records()
    assert [r.type for r in records] == ["A", "AAAA", "MX", "TXT", "TXT", "TXT"]
    for record in records:
        rdata = parsed_by_dnspython(record)
        if record.type == "TXT":
            strings = rdata.strings  # type: ignore[attr-defined]
            assert all(len(s) <= 250 for s in strings)
            assert b"".join(strings).decode() == record.value
        else:
            assert rdata.to_text() == record.value
    dkim = next(r for r in records if r.name.startswith("dkim._domainkey."))
    assert len(dkim.value) > 255  # the case that needs splitting is really exercised
    assert dkim.zone_line.count('" "') == len(dkim.value) // 250


def test_mailus_zone_download_form_is_read_back_as_one_key() -> None:
    """MailU's zonefile download splits the DKIM TXT at 250 bytes; the parts concatenate."""
    export = domain_dns("a.example", generate_dkim_key(), ENV)
    record = export["dns_dkim"].split('"', 1)[0].strip()
    txt = f"v=DKIM1; k=rsa; p={export['dkim_publickey']}"
    downloaded = f"{record} " + " ".join(f'"{txt[p : p + 250]}"' for p in range(0, len(txt), 250))
    parsed = parse_zone_line(downloaded)
    assert parsed.value == txt
    assert parsed.zone_line == downloaded
    assert parse_zone_line(export["dns_dkim"]) == parsed


def test_txt_escapes_are_undone_and_bad_data_is_refused() -> None:
    assert txt_value(r'"caf\195\169"') == "caf\N{LATIN SMALL LETTER E WITH ACUTE}"
    assert txt_value(r'"a\"b" "c\\d"') == 'a"bc\\d'
    assert txt_value('"v=spf1" " mx"') == "v=spf1 mx"
    with pytest.raises(DnsExportError):
        txt_value('"unterminated')
    line = parse_zone_line('x.a.example. 600 IN TXT "say \\"hi\\""')
    assert line.value == 'say "hi"'
    assert parsed_by_dnspython(line).strings == (b'say "hi"',)  # type: ignore[attr-defined]
