"""The heartbeat interceptor on the stack's real Temporal server.

An activity that never heartbeats itself outlives a short heartbeat timeout only
because the interceptor beats for it; the details it reports itself survive into
the next attempt.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutError, TimeoutType
from temporalio.worker import Interceptor, Worker

from runtime.interceptor import WorkerInterceptor

QUIET_SECONDS = 6.0
HEARTBEAT_TIMEOUT = timedelta(seconds=2)


@activity.defn(name="quiet_step")
async def quiet_step(mode: str) -> list[Any]:
    """`quiet`: never heartbeats itself for a while, then succeeds.
    `report`: reports progress, goes quiet, fails; the retry returns what it sees."""
    if mode == "quiet":
        await asyncio.sleep(QUIET_SECONDS)
        return ["survived"]
    if activity.info().attempt == 1:
        activity.heartbeat("progress-1")
        await asyncio.sleep(QUIET_SECONDS / 3)
        raise RuntimeError("first attempt fails after its quiet spell")
    return list(activity.info().heartbeat_details)


@workflow.defn(name="QuietStep", sandboxed=False)
class QuietStep:
    @workflow.run
    async def run(self, mode: str) -> list[Any]:
        result: list[Any] = await workflow.execute_activity(
            quiet_step,
            mode,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_attempts=1 if mode == "quiet" else 2,
            ),
        )
        return result


async def run_quiet_step(client: Client, mode: str, interceptors: list[Interceptor]) -> list[Any]:
    task_queue = f"heartbeat-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[QuietStep],
        activities=[quiet_step],
        interceptors=interceptors,
    ):
        result: list[Any] = await client.execute_workflow(
            QuietStep.run, mode, id=task_queue, task_queue=task_queue
        )
        return result


async def test_the_interceptor_keeps_a_quiet_activity_alive(client: Client) -> None:
    interceptors: list[Interceptor] = [WorkerInterceptor(heartbeat_interval=0.2)]
    assert await run_quiet_step(client, "quiet", interceptors) == ["survived"]


async def test_without_the_interceptor_a_quiet_activity_times_out(client: Client) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await run_quiet_step(client, "quiet", [])
    cause = failure.value.cause
    assert isinstance(cause, ActivityError)
    assert isinstance(cause.cause, TimeoutError)
    assert cause.cause.type == TimeoutType.HEARTBEAT


async def test_the_interceptor_keeps_the_activity_s_own_details(client: Client) -> None:
    # The side task re-sent heartbeats during the quiet spell; the retry still sees
    # the details the activity reported, not blank ones.
    interceptors: list[Interceptor] = [WorkerInterceptor(heartbeat_interval=0.2)]
    assert await run_quiet_step(client, "report", interceptors) == ["progress-1"]
