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
from hcloud.images import CreateImageResponse, Image
from hcloud.locations.domain import Location
from hcloud.server_types import ServerType
from hcloud.server_types.domain import ServerTypeLocation
from hcloud.servers.domain import CreateServerResponse, Server
from hcloud.ssh_keys.domain import SSHKey

from devstack.cloud import LocalCloud
from devstack.processes import free_port
from devstack.stack import shared_tls

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
        base_url=base + "/",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=20,
        verify=shared_tls(),
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


@pytest.mark.asyncio
async def test_hcloud_python_reads_the_final_snapshot_answers(
    cloud: tuple[LocalCloud, httpx.AsyncClient, Client],
) -> None:
    """create_image as Hetzner answers it: the image `creating` (no size yet) while the
    server is locked, every other action on the server refused with `locked`, then
    `available` with its size; found by type and label selector, labels replaced by an
    update, a DELETE that is 404 once the image is gone."""
    stand_in, api, hcloud = cloud
    stand_in.image_seconds = 1.0
    body = {"name": "snap-src", "server_type": "cx23", "image": "debian-12"}
    created = (await api.post("servers", json=body)).json()
    server_id = created["server"]["id"]
    await official(
        lambda: hcloud.actions.get_by_id(created["action"]["id"]).wait_until_finished(
            max_retries=200
        )
    )
    server = await official(lambda: hcloud.servers.get_by_id(server_id))
    labels = {"managed-by": "mail-provisioning", "purpose": "final-snapshot", "tenant": "t1"}
    made = await official(
        lambda: server.create_image(description="final t1", type="snapshot", labels=labels)
    )
    assert made.image.status == "creating" and made.image.image_size is None
    assert made.action.command == "create_image"
    locked = await official(lambda: hcloud.servers.get_by_id(server_id))
    assert locked.locked is True
    for call in (lambda: locked.power_off(), lambda: hcloud.servers.delete(locked)):
        with pytest.raises(APIException) as err:
            await official(call)
        assert err.value.code == "locked"
    assert (await api.delete(f"images/{made.image.id}")).json()["error"]["code"] == "locked"
    await official(lambda: made.action.wait_until_finished(max_retries=200))
    image_id = made.image.id
    assert image_id is not None
    image = await official(lambda: hcloud.images.get_by_id(image_id))
    assert (image.type, image.status, image.name) == ("snapshot", "available", None)
    assert image.image_size is not None and image.disk_size == 40
    assert image.created_from is not None and image.created_from.id == server_id
    assert image.labels == labels and image.description == "final t1"
    assert (await official(lambda: hcloud.servers.get_by_id(server_id))).locked is False
    found = await official(
        lambda: hcloud.images.get_all(
            type=["snapshot"], label_selector="purpose=final-snapshot,tenant=t1"
        )
    )
    assert [i.id for i in found] == [image.id]
    assert await official(lambda: hcloud.images.get_all(label_selector="tenant=t2")) == []
    systems = await official(lambda: hcloud.images.get_all(type=["system"]))
    assert image.id not in {i.id for i in systems} and systems
    # The snapshot outlives its server.
    deleted = await official(lambda: hcloud.servers.delete(server))
    await official(lambda: deleted.wait_until_finished(max_retries=200))
    assert (await official(lambda: hcloud.images.get_by_id(image_id))).status == "available"
    relabelled = await official(lambda: image.update(labels={**labels, "delete-after": "1"}))
    assert relabelled.labels is not None and relabelled.labels["delete-after"] == "1"
    assert await official(lambda: image.delete()) is True
    with pytest.raises(APIException) as gone:
        await official(lambda: image.delete())
    assert gone.value.code == "not_found"


@pytest.mark.asyncio
async def test_the_image_answers_neither_invent_nor_omit_a_field(
    cloud: tuple[LocalCloud, httpx.AsyncClient, Client],
) -> None:
    _, api, _ = cloud
    body = {"name": "srv", "server_type": "cx23", "image": "debian-12"}
    created = (await api.post("servers", json=body)).json()
    fields_match(Image, created["server"]["image"])
    [system] = (await api.get("images", params={"name": "debian-12"})).json()["images"]
    fields_match(Image, system)
    made = (
        await api.post(
            f"servers/{created['server']['id']}/actions/create_image",
            json={"type": "snapshot", "labels": {"purpose": "final-snapshot"}},
        )
    ).json()
    fields_match(CreateImageResponse, made)
    fields_match(Image, made["image"])
    fields_match(Action, made["action"])
