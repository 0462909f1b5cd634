"""A second provider plugs in through the registry, with no change to workflows or
VpsActivities (issue 18): chosen by MAILPROV_PROVIDER, its own settings, its own
start-up checks."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import pytest
from temporalio.testing import ActivityEnvironment

from activities.plans import DEFAULT_CATALOG, CatalogError
from activities.provider_registry import ProviderEntry, provider_entry, register_provider
from activities.ssh import SshIdentity
from activities.vps_provider import (
    Action,
    Firewall,
    FirewallRule,
    Image,
    ProviderError,
    Server,
    ServerTypeInfo,
    SshKey,
    VpsActivities,
    VpsProvider,
)
from worker import ConfigError, Settings, _check_provider
from workflows.contracts import Plan, ServerSpec

COMPLETE = {
    "MAILPROV_SSH_KEY_FILE": "/etc/mailprov/id_ed25519",
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": "v",
    "MAILPROV_CODEC_KEYS_FILE": "/etc/mailprov/codec-keys.json",
}


class MemoryProvider:
    """An in-memory provider: everything VpsActivities needs, nothing Hetzner-specific."""

    def __init__(self, region: str, read_only: bool = False) -> None:
        self.region = region
        self.read_only = read_only
        self.servers: dict[int, Server] = {}
        self.keys: dict[int, SshKey] = {}
        self.firewalls: dict[int, Firewall] = {}
        self.images: dict[int, Image] = {}
        self.created_with_keys: dict[int, list[int]] = {}
        self._ids = itertools.count(1)

    async def create_server(
        self,
        *,
        name: str,
        server_type: str,
        image: str,
        location: str,
        labels: dict[str, str],
        user_data: str,
        enable_ipv4: bool = True,
        enable_ipv6: bool = True,
        firewall_ids: Sequence[int] = (),
        ssh_key_ids: Sequence[int] = (),
    ) -> tuple[Server, Action]:
        server = Server(next(self._ids), name, "running", "192.0.2.7", None, dict(labels))
        self.servers[server.id] = server
        self.created_with_keys[server.id] = list(ssh_key_ids)
        return server, Action(next(self._ids), "create_server", "success")

    async def get_server(self, server_id: int) -> Server | None:
        return self.servers.get(server_id)

    async def find_servers(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[Server]:
        return [s for s in self.servers.values() if name in (None, s.name)]

    async def delete_server(self, server_id: int) -> Action | None:
        if self.servers.pop(server_id, None) is None:
            return None
        return Action(next(self._ids), "delete_server", "success")

    async def get_action(self, action_id: int) -> Action:
        return Action(action_id, "any", "success")

    async def change_dns_ptr(self, server_id: int, ip: str, dns_ptr: str) -> Action:
        return Action(next(self._ids), "change_dns_ptr", "success")

    async def _set(self, server_id: int, command: str, **changes: object) -> Action:
        self.servers[server_id] = replace(self.servers[server_id], **changes)  # type: ignore[arg-type]
        return Action(next(self._ids), command, "success")

    async def shutdown_server(self, server_id: int) -> Action:
        return await self._set(server_id, "shutdown_server", status="off")

    async def poweroff_server(self, server_id: int) -> Action:
        return await self._set(server_id, "stop_server", status="off")

    async def poweron_server(self, server_id: int) -> Action:
        return await self._set(server_id, "start_server", status="running")

    async def change_server_type(
        self, server_id: int, server_type: str, upgrade_disk: bool
    ) -> Action:
        return await self._set(server_id, "change_server_type", server_type=server_type)

    async def get_server_type(self, name: str) -> ServerTypeInfo | None:
        return ServerTypeInfo(name, 40, "local", {self.region: (True, True)}, deprecated=False)

    async def set_server_labels(self, server_id: int, labels: dict[str, str]) -> Server:
        await self._set(server_id, "update", labels=dict(labels))
        return self.servers[server_id]

    async def find_firewalls(self, *, label_selector: str) -> list[Firewall]:
        return list(self.firewalls.values())

    async def create_firewall(
        self, *, name: str, labels: dict[str, str], rules: Sequence[FirewallRule]
    ) -> Firewall:
        firewall = Firewall(next(self._ids), name, labels, [])
        self.firewalls[firewall.id] = firewall
        return firewall

    async def get_firewall(self, firewall_id: int) -> Firewall | None:
        return self.firewalls.get(firewall_id)

    async def delete_firewall(self, firewall_id: int) -> bool:
        return self.firewalls.pop(firewall_id, None) is not None

    async def create_ssh_key(self, *, name: str, public_key: str, labels: dict[str, str]) -> SshKey:
        key = SshKey(next(self._ids), name, public_key, labels)
        self.keys[key.id] = key
        return key

    async def find_ssh_keys(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[SshKey]:
        return [k for k in self.keys.values() if name in (None, k.name)]

    async def delete_ssh_key(self, ssh_key_id: int) -> bool:
        return self.keys.pop(ssh_key_id, None) is not None

    async def create_snapshot(
        self, server_id: int, *, description: str, labels: dict[str, str]
    ) -> tuple[Image, Action]:
        image = Image(next(self._ids), "available", description, dict(labels))
        self.images[image.id] = image
        return image, Action(next(self._ids), "create_image", "success")

    async def find_snapshots(self, *, label_selector: str) -> list[Image]:
        return list(self.images.values())

    async def get_image(self, image_id: int) -> Image | None:
        return self.images.get(image_id)

    async def delete_image(self, image_id: int) -> bool:
        return self.images.pop(image_id, None) is not None

    async def check_catalog(self, catalog: Mapping[str, Plan]) -> list[str]:
        for name, plan in catalog.items():
            if plan.locations != [self.region]:
                raise CatalogError(f"plan {name!r}: this provider sells only in {self.region}")
        return []

    async def check_write_access(self) -> None:
        if self.read_only:
            raise ProviderError("read_only", "this key may only read", retryable=False)

    async def aclose(self) -> None:
        pass


def memory_settings(env: Mapping[str, str], read_secret: Callable[[str], str]) -> dict[str, str]:
    return {"region": env.get("MEMORY_REGION", "here"), "key": read_secret("MEMORY_KEY")}


@pytest.fixture(autouse=True)
def memory_provider() -> None:
    register_provider(
        "memory", ProviderEntry(memory_settings, lambda s: MemoryProvider(s["region"]))
    )


def test_the_provider_is_chosen_by_configuration_and_reads_its_own_settings() -> None:
    settings = Settings.from_env(
        {**COMPLETE, "MAILPROV_PROVIDER": "memory", "MEMORY_KEY": "s3cr3t", "MEMORY_REGION": "r1"}
    )
    assert settings.provider == "memory"
    assert settings.provider_settings == {"region": "r1", "key": "s3cr3t"}
    assert "s3cr3t" not in repr(settings)  # the provider's secret stays out of logs
    with pytest.raises(ConfigError, match="MEMORY_KEY or MEMORY_KEY_FILE is required"):
        Settings.from_env({**COMPLETE, "MAILPROV_PROVIDER": "memory"})
    with pytest.raises(ConfigError, match="MAILPROV_PROVIDER='nimbus': must be one of"):
        Settings.from_env({**COMPLETE, "MAILPROV_PROVIDER": "nimbus"})
    # The default stays Hetzner, which needs its token.
    with pytest.raises(ConfigError, match="HCLOUD_TOKEN or HCLOUD_TOKEN_FILE is required"):
        Settings.from_env(COMPLETE)


async def test_the_product_activities_run_unchanged_on_a_second_provider() -> None:
    provider = provider_entry("memory").build({"region": "r1", "key": "k"})
    assert isinstance(provider, MemoryProvider)
    typed: VpsProvider = provider  # the protocol is all VpsActivities needs
    vps = VpsActivities(typed, SshIdentity.generate())
    plan = replace(DEFAULT_CATALOG["starter"], locations=["r1"])
    labels = {"managed-by": "mail-provisioning", "purchase": "p1", "tenant": "t1"}
    env = ActivityEnvironment()
    handle = await env.run(vps.create_server, ServerSpec("t1", "mail-m", plan, labels))
    [key] = provider.keys.values()
    assert provider.created_with_keys[handle.server_id] == [key.id]
    assert await env.run(vps.delete_server, handle) is True
    assert provider.keys == {}


async def test_start_up_refuses_what_the_provider_says_cannot_work() -> None:
    plans = {"starter": Plan("small", "img", ["r1"])}
    await _check_provider(plans, MemoryProvider("r1"))
    with pytest.raises(ConfigError, match="plan catalog: plan 'starter': this provider sells"):
        await _check_provider(plans, MemoryProvider("r2"))
    with pytest.raises(ConfigError, match="must be allowed to create and delete servers"):
        await _check_provider(plans, MemoryProvider("r1", read_only=True))
