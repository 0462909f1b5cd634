"""starter.settle_status: the status query's answer corrected by the server's word.

The query is answered by replaying the history, so a run the server terminated or timed
out answers with its last state, `running` at the step it was in (issue 21).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError

from runtime.codec import KeyRing, data_converter
from starter import _duration, _waiting_for, settle_status
from workflows.contracts import ProvisionStatus, StepProgress


def last_state(state: str = "running", current: str | None = "notify") -> ProvisionStatus:
    return ProvisionStatus(
        purchase_id="p-1",
        tenant_id="acme",
        state=state,
        current_step=current,
        steps=[
            StepProgress("validate_input", "done", "t0", "t0"),
            StepProgress("notify", "running", "t1"),
        ],
    )


@pytest.mark.parametrize(
    ("server", "state"),
    [
        (WorkflowExecutionStatus.TERMINATED, "terminated"),
        (WorkflowExecutionStatus.TIMED_OUT, "timed_out"),
    ],
)
def test_a_run_the_server_stopped_is_not_running(
    server: WorkflowExecutionStatus, state: str
) -> None:
    settled = settle_status(last_state(), server)
    assert (settled.state, settled.current_step, settled.stopped_at) == (state, None, "notify")
    assert [s.state for s in settled.steps] == ["done", "interrupted"]


def test_a_running_run_and_the_codes_own_ends_are_left_as_the_query_says() -> None:
    running = last_state()
    assert settle_status(running, WorkflowExecutionStatus.RUNNING) == running
    cancelled = last_state("cancelled", None)
    cancelled.stopped_at = "notify"
    assert settle_status(cancelled, WorkflowExecutionStatus.CANCELED) == cancelled
    failed = last_state("failed", None)
    assert settle_status(failed, WorkflowExecutionStatus.FAILED) == failed


def test_a_closed_run_whose_query_still_says_compensating_takes_the_servers_state() -> None:
    # A run terminated during its compensation: the server's word wins.
    compensating = last_state("compensating", "delete_server")
    compensating.stopped_at = "configure_mailu"
    settled = settle_status(compensating, WorkflowExecutionStatus.TERMINATED)
    assert (settled.state, settled.stopped_at) == ("terminated", "configure_mailu")


def test_step_durations_read_as_seconds_then_minutes() -> None:
    assert _duration(timedelta(seconds=12.34)) == "12.3 s"
    assert _duration(timedelta(seconds=125)) == "2 min 05 s"


async def test_what_a_running_step_waits_for_comes_from_its_heartbeat_and_last_failure() -> None:
    converter = data_converter(KeyRing.generate("k1"))
    pending = PendingActivityInfo(attempt=3)
    pending.heartbeat_details.payloads.extend(await converter.encode(["cloud-init: running"]))
    await converter.encode_failure(ApplicationError("ssh refused"), pending.last_failure)
    assert await _waiting_for(pending, converter) == (
        "waiting: cloud-init: running; attempt 3, last: ssh refused"
    )
    assert await _waiting_for(PendingActivityInfo(attempt=1), converter) == ""
