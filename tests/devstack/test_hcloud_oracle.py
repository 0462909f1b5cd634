"""The cloud stand-in's answers read by Hetzner's official client, hcloud-python.

Two checks per resource: the official client (hcloud 2.27.0, its HTTP layer and domain
models) works against the stand-in, and the stand-in's JSON has exactly the fields the
official models name (`__api_properties__`), so a field the stand-in invents or omits
shows up here. The few known differences are listed with their reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import httpx
import pytest
import pytest_asyncio
from hcloud import APIException, Client
from hcloud.actions.domain import Action
from hcloud.firewalls.domain import Firewall
from hcloud.images import Image
from hcloud.locations.domain import Location
from hcloud.server_types import ServerType
from hcloud.server_types.domain import ServerTypeLocation
from hcloud.servers.domain import CreateServerResponse, Server
from hcloud.ssh_keys.domain import SSHKey

from devstack.cloud import LocalCloud
from devstack.processes import free_port

TOKEN = "oracle-token"
T = TypeVar("T")

# Sent by the stand-in, not named by hcloud 2.27's models, and why that is right.
KNOWN_EXTRA: dict[type, set[str]] = {
    # Deprecated on servers, still answered (Hetzner changelog 2026-04-01 datacenter
    # deprecations; hcloud-python 2.18.0 moved clients to `location`).
    # `load_balancers` is in Hetzner's OpenAPI server schema (generated clients carry
    # `load_balancers,omitempty`); hcloud-python does not read it.
    Server: {"datacenter", "load_balancers"},
    # The entry names its location by id and name; hcloud builds `location` from them
    # (hcloud/server_types/client.py BoundServerType).
    ServerTypeLocation: {"id", "name"},
}
# Named by the models, not sent by the stand-in, and why that is right.
KNOWN_MISSING: dict[type, set[str]] = {
    ServerType: {"prices", "included_traffic"},  # not modelled: the product reads neither
    ServerTypeLocation: {"location"},  # see KNOWN_EXTRA
}


def fields_match(model: type, document: dict[str, Any]) -> None:
    names = set(model.__api_properties__)  # type: ignore[attr-defined]
    invented = set(document) - names - KNOWN_EXTRA.get(model, set())
    omitted = names - set(document) - KNOWN_MISSING.get(model, set())
    assert not invented, f"{model.__name__}: the stand-in invents {sorted(invented)}"
    assert not omitted, f"{model.__name__}: the stand-in omits {sorted(omitted)}"


@pytest_asyncio.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[tuple[LocalCloud, httpx.AsyncClient, Client]]:
    cloud = LocalCloud(tmp_path / "cloud", TOKEN, free_port(), free_port(), boot_seconds=0.2)
    base = await cloud.start()
    api = httpx.AsyncClient(
        base_url=base + "/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20
    )
    try:
        yield cloud, api, Client(token=TOKEN, api_endpoint=base, poll_interval=0.1)
    finally:
        await api.aclose()
        await cloud.stop()


async def official(call: Callable[[], T]) -> T:
    """hcloud-python is synchronous; the stand-in serves on this loop."""
    return await asyncio.to_thread(call)


@pytest.mark.asyncio
async def test_hcloud_python_reads_every_answer_the_product_relies_on(
    cloud: tuple[LocalCloud, httpx.AsyncClient, Client],
) -> None:
    _, api, hcloud = cloud
    public = (
        asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    )
    key = await official(
        lambda: hcloud.ssh_keys.create(name="k", public_key=public, labels={"purchase": "p"})
    )
    assert key.fingerprint is not None and key.fingerprint.count(":") == 15
    created: CreateServerResponse = await official(
        lambda: hcloud.servers.create(
            "srv",
            server_type=ServerType(name="cx23"),
            image=Image(name="debian-12"),
            ssh_keys=[key],
            labels={"purchase": "p"},
        )
    )
    assert created.root_password is None
    assert created.server.location is not None and created.server.location.name == "fsn1"
    assert created.action.command == "create_server"
    await official(lambda: created.action.wait_until_finished(max_retries=200))
    bare: CreateServerResponse = await official(
        lambda: hcloud.servers.create(
            "bare", server_type=ServerType(name="cx23"), image=Image(name="debian-12")
        )
    )
    assert isinstance(bare.root_password, str)
    old = await official(lambda: hcloud.server_types.get_by_name("cx22"))
    assert old is not None and old.locations is not None
    deprecation = old.locations[0].deprecation
    assert deprecation is not None and deprecation.unavailable_after == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    with pytest.raises(APIException) as err:
        await official(lambda: hcloud.ssh_keys.create(name="k", public_key=public))
    assert err.value.code == "uniqueness_error"
    with pytest.raises(APIException) as err:
        await official(
            lambda: hcloud.servers.create(
                "old", server_type=ServerType(name="cx22"), image=Image(name="debian-12")
            )
        )
    assert err.value.code == "invalid_input"
    assert err.value.message == "unsupported location for server type"
    assert len(await official(lambda: hcloud.ssh_keys.get_all(label_selector="purchase=p"))) == 1
    deleted = await official(lambda: hcloud.servers.delete(created.server))
    await official(lambda: deleted.wait_until_finished(max_retries=200))
    assert await official(lambda: hcloud.ssh_keys.delete(key)) is True
    assert (await api.get("servers", params={"name": "srv"})).json()["servers"] == []


@pytest.mark.asyncio
async def test_the_stand_in_neither_invents_nor_omits_a_field(
    cloud: tuple[LocalCloud, httpx.AsyncClient, Client],
) -> None:
    _, api, _ = cloud
    public = (
        asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    )
    key = (await api.post("ssh_keys", json={"name": "k", "public_key": public})).json()
    fields_match(SSHKey, key["ssh_key"])
    body = {"name": "srv", "server_type": "cx23", "image": "debian-12", "ssh_keys": ["k"]}
    created = (await api.post("servers", json=body)).json()
    fields_match(CreateServerResponse, created)
    fields_match(Server, created["server"])
    fields_match(Action, created["action"])
    fields_match(Location, created["server"]["location"])
    server_type = (await api.get("server_types", params={"name": "cx22"})).json()
    fields_match(ServerType, server_type["server_types"][0])
    for entry in server_type["server_types"][0]["locations"]:
        fields_match(ServerTypeLocation, entry)
    rules = [{"direction": "in", "protocol": "tcp", "port": "25", "source_ips": ["0.0.0.0/0"]}]
    firewall = (await api.post("firewalls", json={"name": "fw", "rules": rules})).json()
    fields_match(Firewall, firewall["firewall"])
    error = (await api.post("ssh_keys", json={"name": "k", "public_key": public})).json()
    # hcloud-python raises APIException(code, message, details) from exactly these keys.
    assert set(error) == {"error"} and set(error["error"]) == {"code", "message", "details"}
