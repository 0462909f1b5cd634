"""wait_for_server polls inside one attempt: a booting server is a quiet log line."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import vps_provider
from activities.vps_provider import Action, Server, VpsActivities
from workflows.contracts import ServerAddress, ServerHandle


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
