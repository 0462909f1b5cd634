"""Every activity heartbeats while it runs, so a dead worker is noticed in seconds.

Without heartbeats Temporal learns that a worker died only when the attempt's
start-to-close timeout expires (minutes for an SSH step). Through the worker's
interceptor (runtime/interceptor.py) a running activity heartbeats from event-loop
timers, from half its heartbeat timeout on, every few seconds (the SDK sends at most
one per 80% of that timeout), and the workflow gives each step a short heartbeat
timeout (workflows/policies.py): a killed attempt is retried as soon as that timeout
passes.

Activities that report progress (e.g. configure_mailu's health polls) keep doing so;
the side beats re-send their latest details, never blank ones, so a retry still
sees where the last attempt got to. A hung call is still bounded by the attempt's
start-to-close timeout: heartbeats prove the process lives, not that it progresses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityOutboundInterceptor

# Often enough for a 15 s heartbeat timeout (the SDK sends at most one heartbeat per
# 80% of that timeout anyway), rare enough to cost nothing.
HEARTBEAT_INTERVAL_SECONDS = 2.0


class Beats:
    """The side beats of one attempt, as event-loop timers rather than a task.

    Most attempts end long before their first beat is due; a timer costs one heap entry
    to set and cancel, where a task cost a coroutine, a cancellation and an extra turn
    of the event loop for every activity (docs/PERFORMANCE.md). A timer runs its
    callback in a copy of the context it was set in: the attempt's, so the SDK's
    heartbeat finds its activity.
    """

    def __init__(self, outbound: LastDetails, interval: float) -> None:
        self._outbound = outbound
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def start_for(cls, outbound: LastDetails, info: activity.Info, interval: float) -> Beats:
        """The beats of the attempt `info` describes, started."""
        # Start from the previous attempt's details, so a retry that has not reported
        # yet does not wipe them.
        outbound.details = tuple(info.heartbeat_details)
        beats = cls(outbound, interval)
        beats.start(first_beat_delay(info.heartbeat_timeout, interval))
        return beats

    def start(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._beat)

    def _beat(self) -> None:
        self._outbound.resend()
        self._timer = self._loop.call_later(self._interval, self._beat)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


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


class LastDetails(ActivityOutboundInterceptor):
    """Remembers the activity's own latest heartbeat details, to re-send them."""

    details: Sequence[Any] = ()

    def heartbeat(self, *details: Any) -> None:
        self.details = details
        super().heartbeat(*details)

    def resend(self) -> None:
        super().heartbeat(*self.details)
