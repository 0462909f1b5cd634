"""Input rules and derived names: what becomes a Vault path, a hostname, a label."""

from __future__ import annotations

import re

import pytest

from workflows.contracts import PurchaseRequest, server_name_for
from workflows.input_rules import InvalidPurchaseRequest, validate_domain

HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def request(**overrides: str) -> PurchaseRequest:
    raw = {
        "purchase_id": "p-1",
        "tenant_id": "acme",
        "domain": "acme.example",
        "plan": "starter",
        "requested_by": "shop",
    }
    raw.update(overrides)
    return PurchaseRequest.parse(raw)


@pytest.mark.parametrize(
    "domain",
    [
        "acme.example",
        "mail.acme.co.uk",
        "xn--bcher-kva.example",
        "a.bc",
        "x" * 63 + ".example",
        "xn--zca.example",  # "ß": PVALID in IDNA 2008 (IDNA 2003 mapped it to "ss")
        "xn--nxasmq6b.example",  # "βόλοσ": final sigma stays distinct in IDNA 2008
    ],
)
def test_valid_domains(domain: str) -> None:
    validate_domain(domain)


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("xn--ls8h.example", "U+1F4A9"),  # a symbol: DISALLOWED in IDNA 2008, 2003 took it
        ("xn--zz.example", "Invalid A-label"),  # not decodable punycode
        ("xn--a.example", "U+0080"),  # decodes to a control character
    ],
)
def test_punycode_labels_follow_idna_2008(domain: str, reason: str) -> None:
    with pytest.raises(InvalidPurchaseRequest) as err:
        validate_domain(domain)
    assert err.value.field == "domain"
    assert "IDNA 2008" in err.value.rule and reason in err.value.rule


@pytest.mark.parametrize(
    "domain",
    [
        "example",
        "-acme.example",
        "acme-.example",
        "ac_me.example",
        "acme..example",
        "acme.example.",
        "xn--zz-.example",
        "acme.123",
        ("a" * 60 + ".") * 5 + "example",
    ],
)
def test_invalid_domains_name_the_field(domain: str) -> None:
    with pytest.raises(InvalidPurchaseRequest) as err:
        validate_domain(domain)
    assert err.value.field == "domain"


def test_server_name_is_a_deterministic_hostname_unique_per_purchase() -> None:
    long_tenant = "t" * 62 + "-"[:0] + "x"
    one = server_name_for(request(purchase_id="p-1", tenant_id=long_tenant))
    assert one == server_name_for(request(purchase_id="p-1", tenant_id=long_tenant))
    assert one != server_name_for(request(purchase_id="p-2", tenant_id=long_tenant))
    assert HOSTNAME.fullmatch(one) and len(one) <= 63
    assert HOSTNAME.fullmatch(server_name_for(request(tenant_id="a" * 45 + "-b")))


def test_error_message_names_field_and_rule() -> None:
    with pytest.raises(InvalidPurchaseRequest) as err:
        request(tenant_id="ACME")
    assert str(err.value) == (
        "invalid purchase request: field 'tenant_id' must be 1-63 characters of [a-z0-9-], "
        "starting and ending with [a-z0-9]"
    )


def test_a_notify_host_gets_the_same_idna_2008_rule_as_the_domain() -> None:
    assert request(notify_url="https://xn--zca.example/hook").notify_url
    with pytest.raises(InvalidPurchaseRequest) as err:
        request(notify_url="https://hooks.xn--ls8h.example/hook")
    assert err.value.field == "notify_url"
    assert "IDNA 2008" in err.value.rule and "U+1F4A9" in err.value.rule
