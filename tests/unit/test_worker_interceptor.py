"""The worker's one interceptor does, around each activity attempt, what the three
interceptors it replaced did (docs/PERFORMANCE.md, change 10): the log context on every
line, heartbeats (tests/unit/test_heartbeat_delay.py, tests/e2e/test_heartbeats.py),
and the activity metrics with their names and labels, its instruments made once per
activity type."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

import pytest
import structlog
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
)

from runtime.interceptor import WorkerInterceptor
from runtime.metrics import LAST_ROTATED, STEP_DURATION, VAULT_ERRORS
from worker import worker_interceptors
from workflows.contracts import MailuTarget, StoredCredentials
from workflows.metrics import WorkflowMetrics

Record = tuple[str, str, dict[str, Any], Any]  # (kind, metric name, labels, value)


class _Meter:
    """A metric meter that writes down what is recorded, with every label."""

    def __init__(
        self, records: list[Record], created: list[str], labels: Mapping[str, Any] | None = None
    ) -> None:
        self.records = records
        self.created = created
        self.labels = dict(labels or {})
        self.name = ""

    def with_additional_attributes(self, labels: Mapping[str, Any]) -> _Meter:
        meter = _Meter(self.records, self.created, {**self.labels, **labels})
        meter.name = self.name
        return meter

    def _instrument(self, name: str) -> _Meter:
        self.created.append(name)
        meter = _Meter(self.records, self.created, self.labels)
        meter.name = name
        return meter

    def create_histogram_float(self, name: str, *_: Any) -> _Meter:
        return self._instrument(name)

    def create_counter(self, name: str, *_: Any) -> _Meter:
        return self._instrument(name)

    def create_gauge(self, name: str, *_: Any) -> _Meter:
        return self._instrument(name)

    def record(self, value: Any) -> None:
        self.records.append(("record", self.name, self.labels, value))

    def add(self, value: Any) -> None:
        self.records.append(("add", self.name, self.labels, value))

    def set(self, value: Any) -> None:
        self.records.append(("set", self.name, self.labels, value))


class _Answer(ActivityInboundInterceptor):
    """The activity itself: answers `result`, or raises it."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        pass

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


class _Outbound(ActivityOutboundInterceptor):
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def heartbeat(self, *details: Any) -> None:
        self.sent.append(details)


TARGET = MailuTarget("acme", "acme.example", "mail-acme", "127.0.1.5", "ssh-ed25519 AAAA")


def _environment(activity_type: str, meter: _Meter) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        activity_type=activity_type,
        workflow_id="purchase-p1",
        workflow_run_id="run-1",
        attempt=3,
        heartbeat_timeout=timedelta(seconds=15),
    )
    env.metric_meter = cast(MetricMeter, meter)
    return env


async def _attempt(interceptor: WorkerInterceptor, result: Any, arg: Any) -> Any:
    chain = interceptor.intercept_activity(_Answer(result))
    chain.init(_Outbound())
    return await chain.execute_activity(ExecuteActivityInput(_Answer, [arg], None, {}))


def test_the_worker_installs_one_interceptor_for_activities_and_workflow_metrics() -> None:
    (interceptor,) = worker_interceptors()
    assert isinstance(interceptor, WorkerInterceptor)
    assert interceptor.workflow_interceptor_class(cast(Any, None)) is WorkflowMetrics


async def test_every_log_line_of_an_attempt_carries_its_ids_and_tenant() -> None:
    meter = _Meter([], [])
    interceptor = WorkerInterceptor()

    async def attempt() -> dict[str, Any]:
        await _attempt(interceptor, "done", TARGET)
        return structlog.contextvars.get_contextvars()

    bound = await _environment("set_up_mailu", meter).run(attempt)
    assert bound == {
        "workflow_id": "purchase-p1",
        "run_id": "run-1",
        "activity": "set_up_mailu",
        "attempt": 3,
        "tenant_id": "acme",
    }


async def test_attempt_durations_errors_and_credential_age_keep_their_names_and_labels() -> None:
    records: list[Record] = []
    created: list[str] = []
    meter = _Meter(records, created)
    interceptor = WorkerInterceptor()
    stored = StoredCredentials("smtp/data/acme/admin", 2, "2026-12-07T09:00:00+00:00")

    async def three_attempts() -> None:
        assert await _attempt(interceptor, stored, TARGET) is stored
        with pytest.raises(ApplicationError):
            await _attempt(interceptor, ApplicationError("sealed", type="VaultError"), TARGET)
        with pytest.raises(RuntimeError):
            await _attempt(interceptor, RuntimeError("bug"), TARGET)

    await _environment("store_credentials", meter).run(three_attempts)
    base = {
        "namespace": "default",
        "task_queue": "test",
        "activity_type": "store_credentials",
        "activity": "store_credentials",
    }
    kinds = [(kind, name, labels) for kind, name, labels, _ in records]
    assert kinds == [
        ("record", STEP_DURATION, {**base, "outcome": "completed"}),
        ("set", LAST_ROTATED, {**base, "tenant": "acme"}),
        ("add", VAULT_ERRORS, {**base, "error_type": "VaultError", "retryable": "true"}),
        ("record", STEP_DURATION, {**base, "outcome": "failed"}),
        ("record", STEP_DURATION, {**base, "outcome": "failed"}),
    ]
    # The duration histogram is made once for the activity type, not per attempt.
    assert created.count(STEP_DURATION) == 1


async def test_a_quick_attempt_sends_no_heartbeat_and_a_long_one_re_sends_its_details() -> None:
    import asyncio

    interceptor = WorkerInterceptor(heartbeat_interval=0.02)
    outbound = _Outbound()

    class _Reports(_Answer):
        def init(self, outbound: ActivityOutboundInterceptor) -> None:
            self.outbound = outbound

        async def execute_activity(self, input: ExecuteActivityInput) -> Any:
            self.outbound.heartbeat("progress")
            await asyncio.sleep(0.2)
            return "done"

    async def attempts() -> None:
        quick = interceptor.intercept_activity(_Answer("done"))
        quick.init(outbound)
        await quick.execute_activity(ExecuteActivityInput(_Answer, [TARGET], None, {}))
        await asyncio.sleep(0.15)
        assert outbound.sent == []  # the first beat was cancelled with the attempt
        slow = interceptor.intercept_activity(_Reports("done"))
        slow.init(outbound)
        await slow.execute_activity(ExecuteActivityInput(_Answer, [TARGET], None, {}))

    env = _environment("set_up_mailu", _Meter([], []))
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.1))
    await env.run(attempts)
    # The activity's own report, then the side beats from half the timeout on, each
    # re-sending the latest details.
    assert outbound.sent[0] == ("progress",)
    assert len(outbound.sent) >= 3
    assert set(outbound.sent) == {("progress",)}
