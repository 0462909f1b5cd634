"""Small helpers shared by the test packages."""

from __future__ import annotations

from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError


def activity_failure_reason(error: WorkflowFailureError) -> str:
    """The message of the activity error that failed the workflow."""
    cause = error.cause
    assert isinstance(cause, ActivityError), f"expected an activity failure, got {cause!r}"
    return str(cause.cause)
