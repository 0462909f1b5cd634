"""wait_for_server polls inside one attempt: a booting server is a quiet log line."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import vps_provider
from activities.vps_provider import Action, Server, VpsActivities
from workflows.contracts import ServerAddress, ServerHandle, ServerUpRequest


class BootsAfterLooks:
    """A provider whose server runs from the `looks`-th GET /servers/{id} on."""

    def __init__(self, looks: int, action_status: str = "running") -> None:
        self.looks_left = looks
        self.action_status = action_status
        self.gets = 0

    async def get_action(self, action_id: int) -> Action:
        return Action(action_id, "create_server", self.action_status, "boot failed")

    async def get_server(self, server_id: int) -> Server | None:
        self.gets += 1
        self.looks_left -= 1
        running = self.looks_left <= 0
        return Server(
            server_id,
            "srv",
            "running" if running else "initializing",
            "192.0.2.7" if running else None,
            None,
            {},
        )


HANDLE = ServerHandle("acme", 7, "srv", "ssh-ed25519 AAAA", create_action_id=3)


@pytest.fixture(autouse=True)
def instant_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vps_provider, "POLL_FIRST_SECONDS", 0.0)


async def test_booting_server_is_polled_in_one_attempt_with_quiet_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = BootsAfterLooks(looks=4)
    activities = VpsActivities(cast(Any, provider), cast(Any, None))
    with caplog.at_level(logging.DEBUG, logger="temporalio.activity"):
        address = await ActivityEnvironment().run(activities.wait_for_server, HANDLE)
    assert address == ServerAddress(7, "192.0.2.7")
    assert provider.gets == 4
    not_ready = [r for r in caplog.records if r.getMessage().startswith("server not ready yet")]
    assert len(not_ready) == 3
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in not_ready)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_failed_boot_ends_the_wait_for_good() -> None:
    provider = BootsAfterLooks(looks=100, action_status="error")
    activities = VpsActivities(cast(Any, provider), cast(Any, None))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.wait_for_server, HANDLE)
    assert raised.value.type == "ServerBootFailed" and raised.value.non_retryable
    assert provider.gets == 0


class BootsThenTakesPtr(BootsAfterLooks):
    """As above, dual-stack, and records every PTR change (Hetzner change_dns_ptr)."""

    def __init__(self, looks: int) -> None:
        super().__init__(looks)
        self.ptr: dict[str, str] = {}
        self.changes = 0

    async def get_server(self, server_id: int) -> Server | None:
        server = await super().get_server(server_id)
        assert server is not None
        if server.status != "running":
            return server
        return Server(
            server_id,
            "srv",
            "running",
            "192.0.2.7",
            self.ptr.get("192.0.2.7"),
            {},
            ipv6="2001:db8::1",
            ipv6_dns_ptr=self.ptr.get("2001:db8::1"),
        )

    async def change_dns_ptr(self, server_id: int, ip: str, dns_ptr: str) -> Action:
        self.ptr[ip] = dns_ptr
        self.changes += 1
        return Action(9, "change_dns_ptr", "success")


async def test_bring_up_waits_then_points_both_addresses_at_the_mail_host() -> None:
    provider = BootsThenTakesPtr(looks=3)
    activities = VpsActivities(cast(Any, provider), cast(Any, None))
    request = ServerUpRequest(HANDLE, "mail.acme.example")
    address = await ActivityEnvironment().run(activities.bring_up_server, request)
    assert address == ServerAddress(7, "192.0.2.7", "2001:db8::1")
    assert provider.ptr == {"192.0.2.7": "mail.acme.example", "2001:db8::1": "mail.acme.example"}
    assert provider.changes == 2
    # A retry (the first attempt's answer lost) finds everything done and changes nothing.
    again = await ActivityEnvironment().run(activities.bring_up_server, request)
    assert again == address and provider.changes == 2


async def test_bring_up_of_a_failed_boot_sets_no_reverse_dns() -> None:
    provider = BootsThenTakesPtr(looks=100)
    provider.action_status = "error"
    activities = VpsActivities(cast(Any, provider), cast(Any, None))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            activities.bring_up_server, ServerUpRequest(HANDLE, "mail.acme.example")
        )
    assert raised.value.type == "ServerBootFailed"
    assert provider.ptr == {}
