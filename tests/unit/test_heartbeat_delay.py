"""The side heartbeats start at half the heartbeat timeout (each heartbeat is billed)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any, cast

import pytest
from temporalio.testing import ActivityEnvironment
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
)

from runtime.heartbeat import HEARTBEAT_INTERVAL_SECONDS, first_beat_delay
from runtime.interceptor import WorkerInterceptor
from workflows.policies import HEARTBEAT, WAIT_FOR_SERVER

# The SDK sends later heartbeats at most every 80% of the timeout.
SDK_THROTTLE = 0.8
WAIT_HEARTBEAT = cast(timedelta, WAIT_FOR_SERVER["heartbeat_timeout"])


def test_the_first_heartbeat_comes_well_before_the_timeout() -> None:
    for timeout in (HEARTBEAT, WAIT_HEARTBEAT):
        first = first_beat_delay(timeout, HEARTBEAT_INTERVAL_SECONDS)
        assert first == timeout.total_seconds() / 2


def test_short_attempts_send_no_heartbeat_and_a_two_minute_boot_two() -> None:
    assert first_beat_delay(HEARTBEAT, HEARTBEAT_INTERVAL_SECONDS) == 7.5
    first = first_beat_delay(WAIT_HEARTBEAT, HEARTBEAT_INTERVAL_SECONDS)
    throttle = SDK_THROTTLE * WAIT_HEARTBEAT.total_seconds()
    # A 120 s boot, seen running up to one 15 s look later.
    sent_within_135_s = [t for t in (first, first + throttle, first + 2 * throttle) if t < 135]
    assert first == 45 and len(sent_within_135_s) == 2
    # Without a heartbeat timeout the interval stands.
    assert first_beat_delay(None, HEARTBEAT_INTERVAL_SECONDS) == HEARTBEAT_INTERVAL_SECONDS


class _Answer(ActivityInboundInterceptor):
    """The next interceptor: the activity answers at once."""

    def __init__(self) -> None:
        pass

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        pass

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        return "done"


class _Outbound(ActivityOutboundInterceptor):
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def heartbeat(self, *details: Any) -> None:
        self.sent.append(details)


async def _quick_attempt(monkeypatch: pytest.MonkeyPatch, outbound: _Outbound) -> Any:
    def no_task(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an attempt started a task for its heartbeats")

    monkeypatch.setattr(asyncio, "create_task", no_task)
    heartbeating = WorkerInterceptor().intercept_activity(_Answer())
    heartbeating.init(outbound)
    return await heartbeating.execute_activity(ExecuteActivityInput(_Answer, [], None, {}))


async def test_a_quick_attempt_costs_no_task_and_sends_no_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Most attempts end before their first beat (7.5 s for a 15 s timeout): they pay
    for a timer set and cancelled, not a task, a cancellation and a loop turn
    (docs/PERFORMANCE.md); and nothing is sent after they end."""
    outbound = _Outbound()
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.05))
    assert await env.run(_quick_attempt, monkeypatch, outbound) == "done"
    await asyncio.sleep(0.1)  # past the first beat's time: it was cancelled with the attempt
    assert outbound.sent == []
