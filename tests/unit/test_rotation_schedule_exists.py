"""activities.rotation_schedule.rotation_schedule_exists: the one "is the tenant's
rotation schedule there?" that deprovisioning and its tests ask."""

from __future__ import annotations

from typing import Any, cast

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.rotation_schedule import rotation_schedule_exists


class Schedules:
    """A client whose schedule handles answer `describe` with `answer`."""

    def __init__(self, answer: Exception | None) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def get_schedule_handle(self, schedule_id: str) -> Any:
        self.asked.append(schedule_id)
        return self

    async def describe(self) -> object:
        if self.answer is not None:
            raise self.answer
        return object()


async def test_there_not_found_and_other_errors() -> None:
    there = Schedules(None)
    assert await rotation_schedule_exists(cast(Client, there), "acme")
    assert there.asked == ["rotate-acme"]
    gone = Schedules(RPCError("not found", RPCStatusCode.NOT_FOUND, b""))
    assert not await rotation_schedule_exists(cast(Client, gone), "acme")
    # Any other answer is not "no schedule": deprovisioning must not skip its removal.
    down = Schedules(RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b""))
    with pytest.raises(RPCError):
        await rotation_schedule_exists(cast(Client, down), "acme")
