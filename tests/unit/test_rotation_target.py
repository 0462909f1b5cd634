"""Where a rotation goes is decided from our records alone, and only when they agree."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from activities.rotation_target import (
    RecordsDisagree,
    TenantGone,
    TenantRecords,
    rotation_target,
    tenant_server_selector,
)
from activities.ssh import SshIdentity, host_key_files
from activities.vps_provider import Server
from workflows.contracts import server_name_of
from workflows.rotation_contracts import (
    InvalidRotationRequest,
    RotationRequest,
    rotation_request_from_payloads,
)

IDENTITY = SshIdentity.generate()
TENANT = "acme"
PURCHASE = "p-1"
SERVER = Server(
    id=11,
    name=server_name_of(PURCHASE, TENANT),
    status="running",
    ipv4="203.0.113.7",
    dns_ptr="mail.acme.example",
    labels={"managed-by": "mail-provisioning", "purchase": PURCHASE, "tenant": TENANT},
)
RECORD = {
    "username": "admin@acme.example",
    "password": "v1:envelope",
    "webmail_url": "https://mail.acme.example",
    "created_at": "2026-01-01T00:00:00Z",
    "last_rotated": "2026-01-01T00:00:00Z",
    "rotation_policy": "180_days",
}


def records(**overrides: Any) -> TenantRecords:
    base = TenantRecords(TENANT, [SERVER], dict(RECORD), 3)
    return replace(base, **overrides)


def test_the_target_is_the_labelled_server_with_the_derived_host_key() -> None:
    target = rotation_target(records(), IDENTITY)
    _, expected_key = host_key_files(IDENTITY.host_key_for(SERVER.name, 2))
    assert (target.tenant_id, target.domain, target.server_name, target.address) == (
        TENANT,
        "acme.example",
        SERVER.name,
        "203.0.113.7",
    )
    assert target.host_public_key == expected_key
    # Generation 1 went to the provider in user_data; it must never be trusted again.
    _, provider_seen = host_key_files(IDENTITY.host_key_for(SERVER.name, 1))
    assert target.host_public_key != provider_seen


def test_an_ipv6_only_server_is_reached_on_its_own_address_with_its_ptr() -> None:
    server = replace(
        SERVER, ipv4=None, dns_ptr=None, ipv6="2001:db8::1", ipv6_dns_ptr="mail.acme.example"
    )
    assert rotation_target(records(servers=[server]), IDENTITY).address == "2001:db8::1"


def test_a_lost_vault_record_takes_the_domain_from_reverse_dns() -> None:
    target = rotation_target(records(record=None, record_version=0), IDENTITY)
    assert target.domain == "acme.example"


@pytest.mark.parametrize(
    ("overrides", "error_type"),
    [
        ({"servers": []}, "ServerGone"),
        ({"record": None, "record_version": 4}, "CredentialsWithdrawn"),
    ],
)
def test_a_gone_tenant_is_named_as_gone(overrides: dict[str, Any], error_type: str) -> None:
    with pytest.raises(TenantGone) as gone:
        rotation_target(records(**overrides), IDENTITY)
    assert gone.value.error_type == error_type


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"servers": [SERVER, replace(SERVER, id=12)]}, "server"),
        ({"servers": [replace(SERVER, name="mail-other-0123456789")]}, "server_name"),
        (
            {"servers": [replace(SERVER, labels={**SERVER.labels, "purchase": "p-2"})]},
            "server_name",
        ),
        ({"servers": [replace(SERVER, ipv4=None, ipv6=None)]}, "address"),
        ({"record": {**RECORD, "username": "admin@other.example"}}, "webmail_url"),
        (
            {
                "record": {
                    **RECORD,
                    "username": "admin@other.example",
                    "webmail_url": "https://mail.other.example",
                }
            },
            "domain",
        ),
        ({"record": {**RECORD, "username": "root@acme.example"}}, "username"),
        ({"record": {**RECORD, "username": "admin@"}}, "username"),
        ({"record": {**RECORD, "webmail_url": "https://evil.example"}}, "webmail_url"),
        ({"servers": [replace(SERVER, dns_ptr="mail.other.example")]}, "domain"),
        ({"servers": [replace(SERVER, dns_ptr="static.7.113.0.203.clients.example")]}, "domain"),
        (
            {
                "servers": [replace(SERVER, dns_ptr="static.example")],
                "record": None,
                "record_version": 0,
            },
            "dns_ptr",
        ),
        (
            {
                "servers": [replace(SERVER, dns_ptr="mail.Bad_Domain")],
                "record": None,
                "record_version": 0,
            },
            "dns_ptr",
        ),
    ],
)
def test_records_that_disagree_refuse_the_rotation_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(RecordsDisagree) as refused:
        rotation_target(records(**overrides), IDENTITY)
    assert refused.value.field == field
    assert f"field '{field}'" in str(refused.value)


def test_the_selector_names_only_our_servers_of_the_tenant() -> None:
    assert tenant_server_selector("acme") == "managed-by=mail-provisioning,tenant=acme"


def test_the_request_holds_the_tenant_id_only() -> None:
    data = b'{"tenant_id": "acme"}'
    assert rotation_request_from_payloads([(b"json/plain", data)]) == RotationRequest("acme")
    with pytest.raises(InvalidRotationRequest) as refused:
        rotation_request_from_payloads([(b"json/plain", b'{"tenant_id": "acme", "x": 1}')])
    assert refused.value.field == "x"
