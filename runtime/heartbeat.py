"""Every activity heartbeats while it runs, so a dead worker is noticed in seconds.

Without heartbeats Temporal learns that a worker died only when the attempt's
start-to-close timeout expires (minutes for an SSH step). With this interceptor a
running activity heartbeats from a side task, from half its heartbeat timeout on, every
few seconds (the SDK sends at most one per 80% of that timeout), and the workflow
gives each step a short heartbeat timeout (workflows/provision.py): a killed attempt
is retried as soon as that timeout passes.

Activities that report progress (e.g. configure_mailu's health polls) keep doing so;
the side task re-sends their latest details, never blank ones, so a retry still
sees where the last attempt got to. A hung call is still bounded by the attempt's
start-to-close timeout: heartbeats prove the process lives, not that it progresses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

# Often enough for a 15 s heartbeat timeout (the SDK sends at most one heartbeat per
# 80% of that timeout anyway), rare enough to cost nothing.
HEARTBEAT_INTERVAL_SECONDS = 2.0


class HeartbeatInterceptor(Interceptor):
    """Heartbeats every `interval` seconds while any activity runs."""

    def __init__(self, interval: float = HEARTBEAT_INTERVAL_SECONDS) -> None:
        self._interval = interval

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Heartbeating(next, self._interval)


class _Heartbeating(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, interval: float) -> None:
        super().__init__(next)
        self._interval = interval
        self._outbound: _LastDetails | None = None

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        self._outbound = _LastDetails(outbound)
        super().init(self._outbound)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        outbound = self._outbound
        if outbound is None or input.executor is not None:
            # Only async activities (all of ours) run on the event loop we beat from.
            return await self.next.execute_activity(input)
        # Start from the previous attempt's details, so a retry that has not reported
        # yet does not wipe them.
        outbound.details = tuple(activity.info().heartbeat_details)
        beat = asyncio.create_task(self._beat(outbound))
        try:
            return await self.next.execute_activity(input)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _beat(self, outbound: _LastDetails) -> None:
        await asyncio.sleep(first_beat_delay(activity.info().heartbeat_timeout, self._interval))
        while True:
            outbound.resend()
            await asyncio.sleep(self._interval)


def first_beat_delay(heartbeat_timeout: timedelta | None, interval: float) -> float:
    """Seconds from an attempt's start to its first heartbeat.

    Each heartbeat the SDK sends is a billable action on Temporal Cloud; it sends the
    first at once and later ones at most every 80% of the heartbeat timeout. Beating
    first at half the timeout keeps every gap below the timeout (0.5, then 0.8 of it),
    and an attempt shorter than that sends none: most steps (15 s timeout) and a boot
    wait under 30 s (60 s timeout).
    """
    if heartbeat_timeout is None:
        return interval
    return heartbeat_timeout.total_seconds() / 2


class _LastDetails(ActivityOutboundInterceptor):
    """Remembers the activity's own latest heartbeat details, to re-send them."""

    details: Sequence[Any] = ()

    def heartbeat(self, *details: Any) -> None:
        self.details = details
        super().heartbeat(*details)

    def resend(self) -> None:
        super().heartbeat(*self.details)
