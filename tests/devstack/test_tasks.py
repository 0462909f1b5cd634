"""devstack.tasks.cancel_and_wait: a swallowed cancellation does not hang a stop()."""

from __future__ import annotations

import asyncio

from devstack.tasks import cancel_and_wait


async def _swallows_one_cancel(swallowed: asyncio.Event) -> None:
    """What a task inside Python 3.11's asyncio.wait_for can do (bpo-42130): the
    first cancellation is lost and the task goes on waiting."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        swallowed.set()
    await asyncio.sleep(3600)


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    swallowed = asyncio.Event()
    task = asyncio.create_task(_swallows_one_cancel(swallowed))
    await asyncio.sleep(0)
    # A guard against the old behaviour hanging the suite, not a timing bound.
    await asyncio.wait_for(cancel_and_wait([task], recancel=0.01), 60)
    assert swallowed.is_set() and task.cancelled()


async def test_ended_and_failing_tasks_are_waited_for_without_unretrieved_errors() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failing = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    await cancel_and_wait([done, failing])
    assert done.done() and failing.done() and isinstance(failing.exception(), RuntimeError)
