"""Issue 11 on the real stack: plans from a catalog file, IPv4/IPv6, firewall, DNS records.

The plans file gives an IPv4-only, an IPv6-only and a dual-stack plan; each is bought
from the local cloud by an in-process worker reading that file. The dual-stack default
plan ("starter") runs on the stack's own worker so its `status` query and notification
can be read too.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dns.zone
import hvac
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from temporalio.client import Client

from activities.vps_provider import FirewallPolicy
from devstack import ipv6
from devstack.stack import StackInfo
from starter import start_purchase
from tests.e2e.conftest import CloudControl, new_request, run_in_process_worker
from tests.helpers import unavailable
from worker import ConfigError, Settings, build_activities
from workflows.claim_contracts import tenant_claim_id
from workflows.contracts import ProvisionResult, PurchaseRequest

PLANS = {
    "plans": {
        "v4only": {
            "server_type": "cx23",
            "image": "debian-12",
            "locations": ["fsn1", "nbg1"],
            "network": {"ipv4": True, "ipv6": False},
        },
        "v6only": {
            "server_type": "cx23",
            "image": "debian-12",
            "location": "hel1",
            "network": {"ipv4": False, "ipv6": True},
        },
        "dual": {"server_type": "cpx21", "image": "debian-12", "location": "nbg1"},
    }
}
DKIM_RECORD = re.compile(r"v=DKIM1; k=rsa; p=(?P<key>[A-Za-z0-9+/]+=*)")


def plans_env(tmp_path: Path, plans: dict[str, Any], **extra: str) -> dict[str, str]:
    """Worker settings on top of the stack's: this plans file, plus `extra`."""
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    return {"MAILPROV_PLANS_FILE": str(path), **extra}


async def run_with(
    info: StackInfo, client: Client, env: dict[str, str], request: PurchaseRequest
) -> tuple[str, BaseException | None]:
    return await run_in_process_worker(
        info, client, f"plans-{request.purchase_id}", None, request, extra_env=env
    )


async def provision_with(
    info: StackInfo, client: Client, env: dict[str, str], request: PurchaseRequest
) -> ProvisionResult:
    """One purchase on an in-process worker configured by `env`; returns its result."""
    workflow_id, failure = await run_with(info, client, env, request)
    assert failure is None, failure
    handle = client.get_workflow_handle(workflow_id, result_type=ProvisionResult)
    result: ProvisionResult = await handle.result()
    return result


async def remove_tenant_records_by_hand(info: StackInfo, client: Client, tenant_id: str) -> None:
    """An operator's repair after a server was deleted outside the product."""
    root = hvac.Client(
        url=info.vault_addr, token=(info.state_dir / "vault" / "root.token").read_text().strip()
    )
    root.secrets.kv.v2.delete_metadata_and_all_versions(f"{tenant_id}/admin", mount_point="smtp")
    await client.get_schedule_handle(f"rotate-{tenant_id}").delete()
    await client.get_workflow_handle(tenant_claim_id(tenant_id)).terminate(
        "test: the tenant's server was deleted outside the product"
    )


def server_json(cloud: CloudControl, server_id: int) -> dict[str, Any]:
    response = cloud.api.get(f"servers/{server_id}")
    response.raise_for_status()
    server: dict[str, Any] = response.json()["server"]
    return server


def firewalls(cloud: CloudControl, selector: str) -> list[dict[str, Any]]:
    response = cloud.api.get("firewalls", params={"label_selector": selector})
    response.raise_for_status()
    return list(response.json()["firewalls"])


def assert_dkim_is_a_real_rsa_key(result: ProvisionResult, domain: str) -> None:
    [dkim] = [r for r in result.dns_records if r.name == f"dkim._domainkey.{domain}."]
    assert dkim.type == "TXT" and dkim.ttl == 600
    match = DKIM_RECORD.fullmatch(dkim.value)
    assert match, dkim.value
    public = load_der_public_key(base64.b64decode(match["key"]))
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    # A zone file takes the line: dnspython reads strings of <= 250 bytes back as the key.
    zone = dns.zone.from_text(dkim.zone_line + "\n", origin=domain + ".", check_origin=False)
    [(_, _, rdata)] = list(zone.iterate_rdatas())
    assert b"".join(rdata.strings).decode() == dkim.value  # type: ignore[attr-defined]


def assert_dkim_private_key_never_left_the_server(
    info: StackInfo, cloud: CloudControl, workflow_id: str, result: ProvisionResult
) -> None:
    """The private key is on the VPS (MailU's store); nowhere else it must not be."""
    server = cloud.devstack.get(f"servers/{result.server_id}").json()["server"]
    store = json.loads((Path(server["state_dir"]) / "mailu.json").read_text())
    [pem] = [d["dkim_key"] for d in store["domain"].values() if d.get("dkim_key")]
    body_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert len(body_lines) > 10
    forms = [line.encode() for line in body_lines] + ["".join(body_lines).encode()]
    blobs = {
        "history (stored)": info.workflow_history(workflow_id, decoded=False),
        "history (codec-decoded)": info.workflow_history(workflow_id, decoded=True),
        "result": json.dumps(asdict(result)).encode(),
        "notifications": json.dumps(cloud.notifications()).encode(),
        "VPS command log": json.dumps(cloud.commands(result.server_id)).encode(),
        **{f"worker log {p.name}": p.read_bytes() for p in info.worker_logs()},
    }
    assert "PRIVATE KEY" not in json.dumps(asdict(result))
    for where, blob in blobs.items():
        assert not any(form in blob for form in forms), f"DKIM private key found in {where}"


def records_by_type(result: ProvisionResult) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for record in result.dns_records:
        found.setdefault(record.type, []).append(record.value)
    return found


# ------------------------------------------------------------------ catalog


async def test_worker_refuses_a_catalog_the_provider_lacks(
    info: StackInfo, cloud: CloudControl, tmp_path: Path
) -> None:
    # The provider retired an image this catalog still names.
    cloud.devstack.post("retired", json={"kind": "images", "name": "debian-13"})
    for field_name, plan, bad in (
        ("server_type", {"server_type": "cx99", "image": "debian-12", "location": "fsn1"}, "cx99"),
        ("image", {"server_type": "cx23", "image": "debian-13", "location": "fsn1"}, "debian-13"),
        (
            "locations",
            {"server_type": "cx23", "image": "debian-12", "locations": ["fsn1", "mars1"]},
            "mars1",
        ),
    ):
        env = plans_env(tmp_path, {"plans": {"gold": plan}})
        with pytest.raises(ConfigError) as refused:
            async with build_activities(Settings.from_env({**info.worker_env, **env})):
                pass
        message = str(refused.value)
        assert "plan 'gold'" in message and field_name in message and bad in message
    cloud.devstack.delete("retired").raise_for_status()


def test_malformed_catalog_file_is_named_at_settings_time(info: StackInfo, tmp_path: Path) -> None:
    env = plans_env(tmp_path, {"plans": {"gold": {"server_type": "cx23", "image": "debian-12"}}})
    with pytest.raises(ConfigError, match=r"plans\.gold\.locations"):
        Settings.from_env({**info.worker_env, **env})


# ------------------------------------------------------------------ networks


async def test_ipv4_only_plan_falls_back_across_locations(
    info: StackInfo, client: Client, cloud: CloudControl, tmp_path: Path
) -> None:
    # fsn1 out of capacity once: Hetzner's resource_unavailable (422).
    cloud.inject(
        method="POST",
        path="/v1/servers",
        status=422,
        code="resource_unavailable",
        message="server type cx23 is unavailable in fsn1",
        times=1,
    )
    request = new_request(info, plan="v4only")
    result = await provision_with(info, client, plans_env(tmp_path, PLANS), request)

    assert result.ipv4 is not None and result.ipv6 is None
    server = server_json(cloud, result.server_id)
    assert server["datacenter"]["location"]["name"] == "nbg1"
    assert server["public_net"]["ipv6"] is None
    assert server["public_net"]["ipv4"]["dns_ptr"] == f"mail.{request.domain}"
    kinds = records_by_type(result)
    assert kinds["A"] == [result.ipv4] and "AAAA" not in kinds
    assert_dkim_is_a_real_rsa_key(result, request.domain)


async def test_ipv6_only_plan_is_configured_over_ipv6(
    info: StackInfo, client: Client, cloud: CloudControl, tmp_path: Path
) -> None:
    if not await ipv6.can_assign():
        unavailable("this machine cannot add IPv6 addresses to lo (needs CAP_NET_ADMIN)")
    request = new_request(info, plan="v6only")
    result = await provision_with(info, client, plans_env(tmp_path, PLANS), request)

    # No IPv4 exists, so SSH (MailU setup, host-key rotation, the login proof) went
    # over the IPv6 address.
    assert result.ipv4 is None and result.ipv6 is not None
    server = server_json(cloud, result.server_id)
    assert server["public_net"]["ipv4"] is None
    assert server["public_net"]["ipv6"]["dns_ptr"] == [
        {"ip": result.ipv6, "dns_ptr": f"mail.{request.domain}"}
    ]
    kinds = records_by_type(result)
    assert kinds["AAAA"] == [result.ipv6] and "A" not in kinds
    assert_dkim_is_a_real_rsa_key(result, request.domain)


async def test_dual_stack_default_plan_reports_records_everywhere(
    info: StackInfo, client: Client, cloud: CloudControl
) -> None:
    request = new_request(info)  # "starter" of the shipped catalog: IPv4 and IPv6
    handle, _ = await start_purchase(client, request, "mail-provisioning")
    result = await handle.result()

    assert result.ipv4 is not None and result.ipv6 is not None
    server = server_json(cloud, result.server_id)
    mail_host = f"mail.{request.domain}"
    assert server["public_net"]["ipv4"]["dns_ptr"] == mail_host
    assert server["public_net"]["ipv6"]["dns_ptr"] == [{"ip": result.ipv6, "dns_ptr": mail_host}]
    kinds = records_by_type(result)
    assert kinds["A"] == [result.ipv4] and kinds["AAAA"] == [result.ipv6]
    assert kinds["MX"] == [f"10 {mail_host}."]
    assert kinds["TXT"][0] == f"v=spf1 mx a:{mail_host} ~all"
    assert any(v.startswith("v=DMARC1; p=reject;") for v in kinds["TXT"])
    assert_dkim_is_a_real_rsa_key(result, request.domain)

    status = await handle.query("status")
    assert [r["type"] for r in status["dns_records"]] == [r.type for r in result.dns_records]
    [note] = [
        n for n in cloud.notifications() if n["body"].get("purchase_id") == request.purchase_id
    ]
    assert note["body"]["ipv6"] == result.ipv6
    assert [r["value"] for r in note["body"]["dns_records"]] == [
        r.value for r in result.dns_records
    ]

    assert_dkim_private_key_never_left_the_server(info, cloud, handle.id, result)

    # The server sits behind the mail firewall: MailU's ports open, SSH as configured.
    [firewall_ref] = server["public_net"]["firewalls"]
    firewall = cloud.api.get(f"firewalls/{firewall_ref['id']}").json()["firewall"]
    assert {"type": "server", "server": {"id": result.server_id}} in firewall["applied_to"]
    ports = {rule["port"] for rule in firewall["rules"]}
    mail_ports = {"25", "80", "443", "465", "995", "993", "4190"}  # MailU's default PORTS
    assert ports == {str(info.ssh_port), *mail_ports}
    assert all(rule["direction"] == "in" for rule in firewall["rules"])


# ------------------------------------------------------------------ firewall life cycle


async def test_firewall_is_shared_then_removed_by_compensation_when_unused(
    info: StackInfo, client: Client, cloud: CloudControl, tmp_path: Path
) -> None:
    # A policy of its own (SSH only from one network), so no other test's server uses it.
    env = plans_env(tmp_path, PLANS, MAILPROV_SSH_SOURCE_NETWORKS="198.51.100.0/24,2001:db8::/32")
    policy = FirewallPolicy(("198.51.100.0/24", "2001:db8::/32"), info.ssh_port)
    selector = policy.label_selector()

    kept = await provision_with(info, client, env, new_request(info, plan="v4only"))
    [firewall] = firewalls(cloud, selector)
    [ssh_rule] = [r for r in firewall["rules"] if r["port"] == str(info.ssh_port)]
    assert ssh_rule["source_ips"] == ["198.51.100.0/24", "2001:db8::/32"]

    # A second purchase on the same policy fails after its server exists: compensation
    # deletes the server but keeps the firewall, which the first server still uses.
    cloud.devstack.post("boot-failures", json={"times": 1}).raise_for_status()
    _, failure = await run_with(info, client, env, new_request(info, plan="v4only"))
    assert failure is not None
    assert [f["id"] for f in firewalls(cloud, selector)] == [firewall["id"]]
    refused = cloud.api.delete(f"firewalls/{firewall['id']}")
    assert refused.json()["error"]["code"] == "resource_in_use"

    # Once its last server is gone, a compensation deletes it. The server goes outside the
    # product (as a provider console would), so the rest of its tenant is removed as
    # check-world's fixes say; its claim runs on the in-process worker's queue, which has
    # no worker any more, so it is terminated rather than asked to release.
    cloud.api.delete(f"servers/{kept.server_id}").raise_for_status()
    await remove_tenant_records_by_hand(info, client, kept.tenant_id)
    cloud.devstack.post("boot-failures", json={"times": 1}).raise_for_status()
    _, failure = await run_with(info, client, env, new_request(info, plan="v4only"))
    assert failure is not None
    assert firewalls(cloud, selector) == []
