"""Stopping asyncio tasks for sure.

Why not `task.cancel(); await task`: on Python 3.11, `asyncio.wait_for` swallows a
cancellation that arrives just as the future it waits for completes (CPython
bpo-42130 / gh-86296; 3.12 rewrote wait_for on `asyncio.timeout`). A task cancelled
while dnspython's wait_for receives a UDP answer goes on running, and `await task`
never returns: a `make test` run hung 20 minutes in MailU front's stop(), its
letsencrypt poll still resolving. Cancelling again until the task has ended covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

# How long one cancellation may take before it is assumed swallowed and sent again.
RECANCEL_SECONDS = 0.5


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], recancel: float = RECANCEL_SECONDS
) -> None:
    """Cancel `tasks` and return once every one has ended, whatever it raised."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel)
    for task in every:
        # Retrieved, so asyncio does not log "exception was never retrieved".
        if not task.cancelled():
            with contextlib.suppress(BaseException):
                task.exception()
