"""Property tests over the contract: whatever arrives, the answer is a request every
downstream system accepts, or InvalidPurchaseRequest; never anything else.

The downstream rules checked here are the local Hetzner stand-in's (devstack/hetzner.py,
which follows https://docs.hetzner.cloud/), MailU 2024.06's, and DNS's.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.hetzner import is_valid_hostname, validate_labels
from workflows.contracts import (
    PurchaseRequest,
    admin_username_for,
    mail_hostname_for,
    server_name_for,
)
from workflows.input_rules import (
    ADMIN_LOCALPART,
    MAILU_LOCALPART_RULE,
    MAX_DNS_NAME,
    MAX_DOMAIN,
    MAX_EMAIL,
    MAX_LOCALPART,
    InvalidPurchaseRequest,
    decode_purchase_json,
    purchase_input_from_payloads,
)
from workflows.url_policy import address_problem, parse_notify_url

# python-validators 0.28.1 `domain()` as MailU 2024.06's API applies it.
MAILU_DOMAIN = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9][a-z0-9-_]{0,61}[a-z]$", re.I
)
PROFILE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
top_level = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}[a-z]\Z")
# Mostly inside the rules, near their edges (lengths, hyphens, many labels), sometimes not.
near_valid = st.fixed_dictionaries(
    {
        "purchase_id": st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,66}[A-Za-z0-9])?\Z"),
        "tenant_id": st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,66}[a-z0-9-])?\Z"),
        "domain": st.builds(
            lambda labels, tld: ".".join([*labels, tld]),
            st.lists(label, min_size=1, max_size=4),
            top_level | label,
        ),
        "plan": st.sampled_from(["starter", "business", "enterprise", "gold"]),
        "requested_by": st.text(min_size=1, max_size=210),
    }
)


def parse_or_refuse(raw: Any) -> PurchaseRequest | None:
    try:
        return PurchaseRequest.parse(raw)
    except InvalidPurchaseRequest:
        return None


@PROFILE
@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    try:
        parse_or_refuse(decode_purchase_json(data))
    except InvalidPurchaseRequest as err:
        assert err.field == "(input)"


@PROFILE
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"json/plain", b"binary/null", b"binary/plain", b""]),
            st.binary(max_size=200),
        ),
        max_size=3,
    )
)
def test_any_start_arguments_decode_or_are_refused(args: list[tuple[bytes, bytes]]) -> None:
    try:
        parse_or_refuse(purchase_input_from_payloads(args))
    except InvalidPurchaseRequest as err:
        assert err.field == "(input)" or err.rule


@PROFILE
@given(json_values)
def test_any_json_value_parses_or_is_refused(value: Any) -> None:
    try:  # json.dumps writes Infinity for inf: not JSON, and refused as such
        parse_or_refuse(decode_purchase_json(json.dumps(value).encode()))
    except InvalidPurchaseRequest as err:
        assert err.field == "(input)"


@PROFILE
@given(st.integers(min_value=9, max_value=20000))
def test_deep_nesting_is_refused_without_recursion(depth: int) -> None:
    try:
        decode_purchase_json(b"[" * depth + b"]" * depth)
    except InvalidPurchaseRequest as err:
        assert "nest" in err.rule or "at most" in err.rule
    else:
        raise AssertionError("accepted")


@PROFILE
@given(near_valid)
def test_every_accepted_request_is_accepted_downstream(raw: dict[str, Any]) -> None:
    request = parse_or_refuse(raw)
    if request is None:
        return
    # Hetzner: server name is an RFC 1123 host name (<= 63 so it is also a valid label),
    # labels follow the label rules.
    name = server_name_for(request)
    assert is_valid_hostname(name) and len(name) <= 63
    assert validate_labels({"purchase": request.purchase_id, "tenant": request.tenant_id}) == []
    # DNS: the names we publish or set as PTR.
    host = mail_hostname_for(request.domain)
    assert len(host) <= MAX_DNS_NAME and all(1 <= len(x) <= 63 for x in host.split("."))
    # MailU: domain column, API domain check, admin address and local part.
    assert len(request.domain) <= MAX_DOMAIN and MAILU_DOMAIN.match(request.domain)
    assert len(admin_username_for(request.domain)) <= MAX_EMAIL
    assert MAILU_LOCALPART_RULE.fullmatch(ADMIN_LOCALPART) and len(ADMIN_LOCALPART) <= MAX_LOCALPART
    # The workflow id and Vault path segment.
    assert "/" not in request.tenant_id and request.tenant_id.strip("-") == request.tenant_id


urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["https", "https", "http", "ftp", "HTTP"]),
    st.one_of(
        st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
        st.lists(label, min_size=1, max_size=3).map(".".join),
        st.builds(lambda a, b: f"{a}.{b}", label, top_level),
        st.builds(lambda a, b: f"{a}.{b}", label, top_level),
        st.text(max_size=20),
        st.integers(min_value=0, max_value=2**32).map(str),
    ),
    st.one_of(st.just(""), st.integers(min_value=-1, max_value=70000).map(lambda p: f":{p}")),
    st.one_of(st.text(max_size=20), st.from_regex(r"\A[a-z0-9/?=&%._-]{0,20}\Z")).map(
        lambda t: "/" + t
    ),
)


@PROFILE
@given(urls)
def test_an_accepted_notify_url_is_a_valid_url_that_names_no_internal_address(url: str) -> None:
    try:
        target = parse_notify_url(url)
    except InvalidPurchaseRequest:
        return
    parsed = httpx.URL(url)  # the client the worker uses must read it the same way
    assert parsed.scheme == target.scheme
    assert (parsed.port or {"https": 443, "http": 80}[target.scheme]) == target.port
    assert parsed.host == target.host
    if target.address is not None:
        assert address_problem(target.address) is None
