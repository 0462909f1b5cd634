"""A purchase's progress (the `status` query) and the one way its steps are run.

Each step is one activity: `run` marks it running, done or failed in the status, and
after it returns checks whether the run was cancelled meanwhile. A step that waits for
its attempt on cancel (workflows/policies.py, WAIT_CANCELLATION_COMPLETED) returns its
result when that attempt completed anyway; the SDK then hands the result to the
workflow and the cancel is absorbed, so without this check the purchase would go on as
if never cancelled. The caller's `keep` takes the result first (the compensation
needs it), then `run` raises CancelledError.

No I/O and no module state: the worker passes this module through the sandbox.
"""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from workflows.contracts import StepProgress
from workflows.failures import cancel_requested, reason


class StepStatus(Protocol):
    """What any workflow's status answer has (ProvisionStatus, PlanChangeStatus)."""

    state: str
    current_step: str | None
    steps: list[StepProgress]
    error: str | None


S = TypeVar("S", bound=StepStatus)


class StepTracker(Generic[S]):
    """The status query's answer, kept up to date as steps run."""

    def __init__(self, status: S) -> None:
        self.status = status
        # Set while undoing: compensation runs after a cancel and must not stop for it.
        self.compensating = False
        # The last workflow time stamped, and its text (_now).
        self._stamp_ns = -1
        self._stamp = ""

    async def run(
        self,
        name: str,
        activity: Callable[..., Any],
        arg: Any,
        options: dict[str, Any],
        keep: Callable[[Any], None] | None = None,
    ) -> Any:
        """One activity as the step `name`; `keep(result)` is called before a late cancel
        is raised, so an effect that completed after the cancel is still undone."""
        started = self.begin(name)
        try:
            result = await workflow.execute_activity_method(activity, arg, **options)
        except ActivityError as err:
            self.end(started, "failed", error=reason(err))
            raise
        except asyncio.CancelledError:
            self.end(started, "failed", error="cancelled")
            raise
        if keep is not None:
            keep(result)
        if cancel_requested() and not self.compensating:
            self.end(started, "failed", error="cancelled")
            raise CancelledError("workflow cancelled")
        self.end(started, "done")
        return result

    def begin(self, name: str) -> StepProgress:
        step = StepProgress(name, "running", self._now())
        self.status.steps.append(step)
        self.status.current_step = name
        return step

    def end(self, step: StepProgress, state: str, error: str | None = None) -> None:
        step.state = state
        step.finished_at = self._now()
        if error:
            self.status.error = error
            if self.status.state == "running":
                self.status.state = "failed"

    def skip(self, name: str) -> None:
        now = self._now()
        self.status.steps.append(StepProgress(name, "skipped", now, now))

    def compensate(self, error: str) -> None:
        self.compensating = True
        self.status.state = "compensating"
        self.status.error = error

    def finish(self, state: str) -> None:
        """The run's outcome: completed, failed or cancelled."""
        self.status.state = state
        self.status.current_step = None

    def _now(self) -> str:
        """`workflow.now()` to the second, as ISO 8601: formatted once per workflow time,
        which stands still within a workflow task, and a step usually ends and the next
        begins in the same one (the same computation as `workflow.now()`)."""
        now_ns = workflow.time_ns()
        if now_ns != self._stamp_ns:
            self._stamp_ns = now_ns
            self._stamp = datetime.fromtimestamp(now_ns / 1e9, UTC).isoformat(timespec="seconds")
        return self._stamp
