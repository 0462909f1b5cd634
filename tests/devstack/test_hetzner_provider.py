"""The product's Hetzner provider (VpsActivities over HetznerClient) against the stand-in.

What a first real purchase meets (issue 19): an SSH key resource registered and named
in the create (else Hetzner sets an expired root password), removed with the server;
a type not sold in the plan's first location moves on to the next; start-up refuses
retired types and read-only tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.hetzner import HetznerClient
from activities.plans import DEFAULT_CATALOG, CatalogError
from activities.ssh import SshIdentity
from activities.vps_provider import ProviderError, VpsActivities, ssh_key_name
from devstack.cloud import LocalCloud
from devstack.processes import free_port
from devstack.stack import shared_tls
from workflows.contracts import Plan, ServerSpec

TOKEN = "provider-token"
READ_ONLY = "provider-read-only-token"


@dataclass
class World:
    cloud: LocalCloud
    api: httpx.AsyncClient
    client: HetznerClient
    vps: VpsActivities
    identity: SshIdentity


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    cloud = LocalCloud(
        tmp_path / "cloud",
        TOKEN,
        free_port(),
        free_port(),
        boot_seconds=0.2,
        readonly_token=READ_ONLY,
    )
    base = await cloud.start()
    api = httpx.AsyncClient(
        base_url=base + "/",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=20,
        verify=shared_tls(),
    )
    client = HetznerClient(TOKEN, base)
    identity = SshIdentity.generate()
    try:
        yield World(cloud, api, client, VpsActivities(client, identity), identity)
    finally:
        await client.aclose()
        await api.aclose()
        await cloud.stop()


def spec(name: str, plan: Plan) -> ServerSpec:
    labels = {"managed-by": "mail-provisioning", "purchase": f"p-{name}", "tenant": "t1"}
    return ServerSpec("t1", name, plan, labels)


async def keys_named(world: World, name: str) -> list[dict[str, object]]:
    found = (await world.api.get("ssh_keys", params={"name": name})).json()
    return list(found["ssh_keys"])


@pytest.mark.asyncio
async def test_create_registers_the_purchase_key_and_delete_removes_it(world: World) -> None:
    env = ActivityEnvironment()
    request = spec("mail-a", DEFAULT_CATALOG["starter"])
    handle = await env.run(world.vps.create_server, request)
    [key] = await keys_named(world, ssh_key_name("mail-a"))
    assert key["public_key"] == world.identity.provider_key_for("mail-a")
    assert key["labels"] == request.labels
    dev = (await world.api.get(f"../_devstack/servers/{handle.server_id}")).json()["server"]
    # Named in the create, so Hetzner sets no (expired) root password.
    assert dev["root_password_expired"] is False
    assert dev["metadata_public_keys"] == [key["public_key"]]
    # A retry after a lost answer adopts both the server and the key.
    again = await env.run(world.vps.create_server, request)
    assert again.server_id == handle.server_id and again.adopted
    assert len(await keys_named(world, ssh_key_name("mail-a"))) == 1
    assert await env.run(world.vps.delete_server, handle) is True
    assert await keys_named(world, ssh_key_name("mail-a")) == []
    assert await env.run(world.vps.delete_server, handle) is False  # idempotent


@pytest.mark.asyncio
async def test_a_key_of_that_name_that_is_not_ours_is_refused(world: World) -> None:
    stranger = SshIdentity.generate().provider_key_for("mail-b")
    body = {"name": ssh_key_name("mail-b"), "public_key": stranger, "labels": {}}
    assert (await world.api.post("ssh_keys", json=body)).status_code == 201
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(
            world.vps.create_server, spec("mail-b", DEFAULT_CATALOG["starter"])
        )
    assert err.value.type == "SshKeyNameTaken" and err.value.non_retryable
    assert (await world.api.get("servers", params={"name": "mail-b"})).json()["servers"] == []


@pytest.mark.asyncio
async def test_create_moves_on_where_the_type_is_not_sold_or_sold_out(world: World) -> None:
    # cx23 is EU-only: "ash" answers "unsupported location for server type"; fsn1 is
    # sold out (resource_unavailable); nbg1 takes it.
    world.cloud.out_of_stock["cx23"] = {"fsn1"}
    plan = Plan("cx23", "debian-12", ["ash", "fsn1", "nbg1"])
    handle = await ActivityEnvironment().run(world.vps.create_server, spec("mail-c", plan))
    server = (await world.api.get(f"servers/{handle.server_id}")).json()["server"]
    assert server["location"]["name"] == "nbg1"


@pytest.mark.asyncio
async def test_a_create_that_gives_up_leaves_no_key_behind(world: World) -> None:
    plan = Plan("cx22", "debian-12", ["fsn1"])  # retired: every location refuses it
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(world.vps.create_server, spec("mail-d", plan))
    assert err.value.type == "NoCapacity" and not err.value.non_retryable
    # Retried later (capacity returns), so the key stays for that retry to adopt.
    assert len(await keys_named(world, ssh_key_name("mail-d"))) == 1
    # A create refused for good (invalid_input: not a host name) releases the key:
    # the workflow has no server to compensate, so nothing else would.
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(
            world.vps.create_server, spec("mail_e", DEFAULT_CATALOG["starter"])
        )
    assert err.value.type == "Provider.invalid_input" and err.value.non_retryable
    assert await keys_named(world, ssh_key_name("mail_e")) == []


@pytest.mark.asyncio
async def test_start_up_checks_refuse_retired_types_and_read_only_tokens(world: World) -> None:
    assert await world.client.check_catalog(DEFAULT_CATALOG) == []
    with pytest.raises(CatalogError, match="'cx22' is deprecated in 'fsn1' and unavailable"):
        await world.client.check_catalog({"old": Plan("cx22", "debian-12", ["fsn1"])})
    await world.client.check_write_access()
    assert (await world.api.get("ssh_keys")).json()["ssh_keys"] == []  # the probe made none
    read_only = HetznerClient(READ_ONLY, str(world.api.base_url).rstrip("/"))
    try:
        assert await read_only.check_catalog(DEFAULT_CATALOG) == []  # GETs pass
        with pytest.raises(ProviderError) as err:
            await read_only.check_write_access()
        assert err.value.code == "token_readonly"
    finally:
        await read_only.aclose()
