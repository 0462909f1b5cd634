"""The worker's one interceptor: what it does around every activity and workflow run.

Around each activity attempt, in this order: the log context (runtime/logs.py), the
heartbeats (runtime/heartbeat.py), the duration and error metrics (runtime/metrics.py);
for each workflow run, the workflow metrics (workflows/metrics.py).

One link in the SDK's activity chain rather than one per concern: the SDK builds the
chain afresh for every attempt (an object, an `init` and an `execute_activity` frame
per link), and the three concerns read the same `activity.info()`. In a warm loop the
three links cost ~19 us of CPU per attempt over an empty chain, this one ~14 us
(docs/PERFORMANCE.md, change 10); what each concern does is unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from runtime.heartbeat import HEARTBEAT_INTERVAL_SECONDS, Beats, LastDetails
from runtime.logs import bind_activity_context, tenant_of
from runtime.metrics import ActivityMeters
from workflows.metrics import WorkflowMetrics


class WorkerInterceptor(Interceptor):
    """Log context, heartbeats every `heartbeat_interval` seconds and metrics for every
    activity; metrics for every workflow run. One per worker (it keeps the worker's
    metric instruments)."""

    def __init__(self, heartbeat_interval: float = HEARTBEAT_INTERVAL_SECONDS) -> None:
        self._interval = heartbeat_interval
        self._meters = ActivityMeters()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Attempt(next, self._interval, self._meters)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return WorkflowMetrics


class _Attempt(ActivityInboundInterceptor):
    def __init__(
        self, next: ActivityInboundInterceptor, interval: float, meters: ActivityMeters
    ) -> None:
        super().__init__(next)
        self._interval = interval
        self._meters = meters
        self._outbound: LastDetails | None = None

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        self._outbound = LastDetails(outbound)
        super().init(self._outbound)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        tenant = tenant_of(input.args)
        bind_activity_context(info, tenant)
        meters = self._meters.of(info)
        outbound = self._outbound
        # Only async activities (all of ours) run on the event loop the beats run from.
        beats = (
            Beats.start_for(outbound, info, self._interval)
            if outbound is not None and input.executor is None
            else None
        )
        started = time.monotonic()
        try:
            result = await self.next.execute_activity(input)
        except BaseException as err:
            meters.record_failure(time.monotonic() - started, err)
            raise
        finally:
            if beats is not None:
                beats.stop()
        meters.record_success(time.monotonic() - started, result, tenant)
        return result
