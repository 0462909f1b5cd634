"""A worker killed mid-step is noticed within a heartbeat timeout, not at the step's
start-to-close: every step that may run longer than a minute has a heartbeat timeout
(the worker heartbeats every running activity, runtime/heartbeat.py)."""

from __future__ import annotations

from datetime import timedelta

import workflows.policies as policies

LONG_STEP = timedelta(minutes=1)


def test_every_step_longer_than_a_minute_has_a_heartbeat_timeout() -> None:
    options = {
        name: value
        for name, value in vars(policies).items()
        if name.isupper() and isinstance(value, dict) and "start_to_close_timeout" in value
    }
    assert len(options) > 10  # the policies were found
    unwatched = sorted(
        name
        for name, value in options.items()
        if value["start_to_close_timeout"] > LONG_STEP and value.get("heartbeat_timeout") is None
    )
    assert unwatched == []
    # ... and the heartbeat timeout is shorter than the attempt it watches.
    assert all(
        value["heartbeat_timeout"] < value["start_to_close_timeout"]
        for value in options.values()
        if value.get("heartbeat_timeout") is not None
    )
