"""Stopping a server cleanly, for the steps that need its disk at rest.

A plan change (change_type needs the server off) and a final snapshot (Hetzner: "To
make sure disk content is consistent, we recommend to shut down the Server prior to
creating an Image", API reference, Create Image from a Server) both stop it the same
way: an ACPI shutdown, so the OS stops Docker and MailU's containers flush their
files, and a poweroff only if the OS has not powered off after the grace (Hetzner's
shutdown action succeeds once the signal is sent, not when the server is off; an OS
may ignore it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import activity

from activities.vps_provider import Action, ProviderError, VpsProvider, provider_failure

T = TypeVar("T")


async def stop_cleanly(
    provider: VpsProvider, server_id: int, grace_seconds: float, poll_seconds: float
) -> str | None:
    """ "already_off", "shutdown" or "poweroff" once the server is off; None when it no
    longer exists. Idempotent: a retry finds it off (or stopping) and waits."""
    server = await _call(provider.get_server(server_id))
    if server is None:
        return None
    if server.status == "off":
        return "already_off"
    await _finish(provider, await _call(provider.shutdown_server(server_id)), poll_seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_seconds
    while loop.time() < deadline:
        current = await _call(provider.get_server(server_id))
        if current is None:
            return None
        if current.status == "off":
            return "shutdown"
        activity.heartbeat("waiting for the server to shut down")
        await asyncio.sleep(poll_seconds)
    activity.logger.warning(
        "server did not shut down within the grace; powering it off",
        extra={"server_id": server_id},
    )
    await _finish(provider, await _call(provider.poweroff_server(server_id)), poll_seconds)
    while (current := await _call(provider.get_server(server_id))) is not None:
        if current.status == "off":
            return "poweroff"
        activity.heartbeat("waiting for server status off")
        await asyncio.sleep(poll_seconds)
    return None


async def _finish(provider: VpsProvider, action: Action, poll_seconds: float) -> Action:
    while action.status == "running":
        activity.heartbeat(f"waiting for {action.command}")
        await asyncio.sleep(poll_seconds)
        action = await _call(provider.get_action(action.id))
    return action


async def _call(call: Awaitable[T]) -> T:
    try:
        return await call
    except ProviderError as err:
        raise provider_failure(err) from None
