"""The heartbeat side task starts at half the heartbeat timeout (each heartbeat is billed)."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from runtime.heartbeat import HEARTBEAT_INTERVAL_SECONDS, first_beat_delay
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
