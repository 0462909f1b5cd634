"""Plan catalog files, the address check of wait_for_server, the awaited PTR action, and
MailU's DNS export."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.dns_records import DnsExportError, address_records, domain_records
from activities.hetzner import HetznerClient
from activities.plans import (
    DEFAULT_CATALOG,
    CatalogError,
    load_backup_promises,
    load_catalog,
    parse_catalog,
)
from activities.ssh import SshIdentity
from activities.vps_provider import VpsActivities
from devstack.mailu_export import domain_dns, generate_dkim_key
from workflows.contracts import Plan, ReverseDnsRequest, ServerHandle, ServerSpec

TOML_CATALOG = """
[plans.small]
server_type = "cx22"
image = "debian-12"
locations = ["fsn1", "nbg1"]
network = { ipv4 = false, ipv6 = true }

[plans.app]
server_type = "cx32"
image = "docker-ce"
location = "hel1"
docker_install = "preinstalled"
"""


def test_toml_and_json_catalogs_load_the_same_plans(tmp_path: Path) -> None:
    toml_path = tmp_path / "plans.toml"
    toml_path.write_text(TOML_CATALOG)
    json_path = tmp_path / "plans.json"
    json_path.write_text(json.dumps(tomllib.loads(TOML_CATALOG)))
    expected = {
        "small": Plan("cx22", "debian-12", ["fsn1", "nbg1"], "docker-apt", ipv4=False, ipv6=True),
        "app": Plan("cx32", "docker-ce", ["hel1"], "preinstalled", ipv4=True, ipv6=True),
    }
    assert load_catalog(toml_path) == expected
    assert load_catalog(json_path) == expected
    assert load_catalog(None) == DEFAULT_CATALOG


@pytest.mark.parametrize(
    ("plan", "where"),
    [
        ({"image": "debian-12", "location": "fsn1"}, "plans.p.server_type"),
        ({"server_type": "cx22", "image": "debian-12"}, "plans.p.locations"),
        (
            {"server_type": "cx22", "image": "debian-12", "location": "a", "locations": ["b"]},
            "plans.p.locations",
        ),
        ({"server_type": "cx22", "image": "debian-12", "locations": []}, "plans.p.locations"),
        (
            {"server_type": "cx22", "image": "debian-12", "locations": ["a", "a"]},
            "plans.p.locations",
        ),
        (
            {"server_type": "cx22", "image": "docker-ce", "location": "a"},
            "plans.p.docker_install",
        ),
        (
            {
                "server_type": "cx22",
                "image": "debian-12",
                "location": "a",
                "network": {"ipv4": False, "ipv6": False},
            },
            "plans.p.network",
        ),
        (
            {"server_type": "cx22", "image": "debian-12", "location": "a", "network": {"v4": 1}},
            "plans.p.network",
        ),
        ({"server_type": "cx22", "image": "debian-12", "location": "a", "x": 1}, "plans.p.x"),
        (
            {"server_type": "cx22", "image": "debian-12", "location": "a", "backups": "yes"},
            "plans.p.backups",
        ),
        (
            {
                "server_type": "cx22",
                "image": "debian-12",
                "location": "a",
                "final_snapshot_retention_days": 30,
            },
            "plans.p.final_snapshot_retention_days",
        ),
        (
            {
                "server_type": "cx22",
                "image": "debian-12",
                "location": "a",
                "backups": True,
                "final_snapshot_retention_days": 0,
            },
            "plans.p.final_snapshot_retention_days",
        ),
    ],
)
def test_each_catalog_mistake_names_plan_and_field(plan: dict[str, Any], where: str) -> None:
    with pytest.raises(CatalogError, match=rf"{where}:"):
        parse_catalog({"plans": {"p": plan}})


def test_catalog_file_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"MAILPROV_PLANS_FILE=.*No such file"):
        load_catalog(tmp_path / "missing.json")
    bad = tmp_path / "plans.toml"
    bad.write_text("[plans\n")
    with pytest.raises(CatalogError, match="not valid toml"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="plan name must match"):
        parse_catalog({"plans": {"Gold Plan": {}}})


def provider_with(server: dict[str, Any]) -> HetznerClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"server": server})

    return HetznerClient("tok", "https://api.example/v1", transport=httpx.MockTransport(handler))


def running_server(ipv4: str | None, ipv6_net: str | None) -> dict[str, Any]:
    return {
        "id": 9,
        "name": "mail-x",
        "status": "running",
        "labels": {},
        "public_net": {
            "ipv4": {"ip": ipv4, "dns_ptr": "x"} if ipv4 else None,
            "ipv6": {"ip": ipv6_net, "dns_ptr": []} if ipv6_net else None,
            "firewalls": [],
        },
    }


async def test_running_server_without_a_required_address_is_final_at_once() -> None:
    # What a third-party emulator did: the plan asked for IPv4, the server has none.
    activities = VpsActivities(
        provider_with(running_server(None, "2001:db8:5::/64")), SshIdentity.generate()
    )
    handle = ServerHandle("t", 9, "mail-x", "key", needs_ipv4=True, needs_ipv6=False)
    with pytest.raises(ApplicationError) as err:
        await activities.wait_for_server(handle)
    assert err.value.type == "ServerAddressMissing" and err.value.non_retryable
    assert "without the public IPv4 address its plan requires" in err.value.message


async def test_ready_server_reports_both_addresses_ipv6_as_its_own_host() -> None:
    activities = VpsActivities(
        provider_with(running_server("203.0.113.5", "2001:db8:5::/64")), SshIdentity.generate()
    )
    handle = ServerHandle("t", 9, "mail-x", "key", needs_ipv4=True, needs_ipv6=True)
    address = await activities.wait_for_server(handle)
    assert (address.ipv4, address.ipv6) == ("203.0.113.5", "2001:db8:5::1")
    assert address.ssh_address == "203.0.113.5"


def test_mailu_export_becomes_records_with_unquoted_txt() -> None:
    env = {"HOSTNAMES": "mail.a.example", "DOMAIN": "a.example", "DMARC_RUA": "admin"}
    export = {
        "domain": [{"name": "a.example", **domain_dns("a.example", generate_dkim_key(), env)}]
    }
    records = domain_records(json.dumps(export), "a.example")
    assert [r.type for r in records] == ["MX", "TXT", "TXT", "TXT"]
    assert records[0].value == "10 mail.a.example."
    assert records[1].value == "v=spf1 mx a:mail.a.example ~all"
    assert records[2].name == "dkim._domainkey.a.example."
    assert records[2].value.startswith("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A")
    assert records[3].value == "v=DMARC1; p=reject; rua=mailto:admin@a.example; adkim=s; aspf=s"
    assert "PRIVATE" not in json.dumps([r.zone_line for r in records])


def test_export_without_dkim_key_is_refused_and_addresses_follow_the_plan() -> None:
    env = {"HOSTNAMES": "mail.a.example", "DOMAIN": "a.example"}
    export = {"domain": [{"name": "a.example", **domain_dns("a.example", None, env)}]}
    with pytest.raises(DnsExportError, match="lacks dns_dkim, dns_dmarc"):
        domain_records(json.dumps(export), "a.example")
    only_v6 = address_records("a.example", None, "2001:db8::1")
    assert [(r.name, r.type, r.value) for r in only_v6] == [
        ("mail.a.example.", "AAAA", "2001:db8::1")
    ]


async def test_reverse_dns_waits_for_its_action_and_reports_a_late_failure() -> None:
    # Hetzner answers change_dns_ptr with a running action; the PTR is set only when
    # GET /v1/actions/{id} says success. Here it ends in error after the request passed.
    looks: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/servers/9":
            return httpx.Response(200, json={"server": running_server("203.0.113.5", None)})
        if path.endswith("/actions/change_dns_ptr"):
            action = {"id": 77, "command": "change_dns_ptr", "status": "running", "error": None}
            return httpx.Response(201, json={"action": action})
        assert path == "/v1/actions/77", path
        looks.append(path)
        error = {"code": "dns_ptr_error", "message": "reverse zone refused the record"}
        action = {"id": 77, "command": "change_dns_ptr", "status": "error", "error": error}
        return httpx.Response(200, json={"action": action})

    provider = HetznerClient(
        "tok", "https://api.example/v1", transport=httpx.MockTransport(handler)
    )
    activities = VpsActivities(provider, SshIdentity.generate())
    request = ReverseDnsRequest("t", 9, "203.0.113.5", "mail.a.example")
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.set_reverse_dns, request)
    assert err.value.type == "ReverseDnsFailed"
    assert "reverse zone refused the record" in err.value.message
    assert looks == ["/v1/actions/77"]


async def test_a_refused_create_stays_the_answer_when_removing_its_key_fails() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        route = (request.method, request.url.path)
        if route == ("GET", "/v1/firewalls"):
            firewall = {"id": 5, "name": "fw", "labels": {}, "applied_to": []}
            return httpx.Response(200, json={"firewalls": [firewall], "meta": {}})
        if route == ("POST", "/v1/ssh_keys"):
            key = {"id": 6, "name": "k", "public_key": "ssh-ed25519 AAAA", "labels": {}}
            return httpx.Response(201, json={"ssh_key": key})
        if route == ("POST", "/v1/servers"):
            error = {"code": "resource_limit_exceeded", "message": "server limit", "details": {}}
            return httpx.Response(403, json={"error": error})
        assert route == ("GET", "/v1/ssh_keys"), route
        error = {"code": "unavailable", "message": "try later", "details": {}}
        return httpx.Response(503, json={"error": error})

    provider = HetznerClient(
        "tok", "https://api.example/v1", transport=httpx.MockTransport(handler)
    )
    activities = VpsActivities(provider, SshIdentity.generate())
    labels = {"managed-by": "mail-provisioning", "purchase": "p1", "tenant": "t"}
    spec = ServerSpec("t", "mail-x", DEFAULT_CATALOG["starter"], labels)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.create_server, spec)
    assert err.value.type == "Provider.resource_limit_exceeded" and err.value.non_retryable


def test_backup_promises_come_from_the_catalog_only(tmp_path: Path) -> None:
    """Which plans promise a final snapshot: `backups = true`, with the plan's own
    retention or (None) the worker's default; the shipped catalog promises enterprise."""
    assert load_backup_promises(None) == {"enterprise": None}
    path = tmp_path / "plans.toml"
    path.write_text(
        "[plans.basic]\nserver_type = 'cx23'\nimage = 'debian-12'\nlocation = 'fsn1'\n"
        "[plans.safe]\nserver_type = 'cx33'\nimage = 'debian-12'\nlocation = 'fsn1'\n"
        "backups = true\n"
        "[plans.vault]\nserver_type = 'cx43'\nimage = 'debian-12'\nlocation = 'fsn1'\n"
        "backups = true\nfinal_snapshot_retention_days = 90\n"
    )
    assert sorted(load_catalog(path)) == ["basic", "safe", "vault"]
    assert load_backup_promises(path) == {"safe": None, "vault": 90}
