"""How the workflows read and report failures: one public module for all of them.

A step's failure reaches workflow code as an ActivityError wrapping the activity's own
error; these helpers read the innermost error's message and type (for status, audit
rows and the run's own failure), tell whether the run was asked to cancel, and build
the errors a purchase ends with. No I/O, no state: the worker passes it through the
sandbox (worker.PASSED_THROUGH).
"""

import asyncio

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
)

# Errors a run ends with at once, before anything is bought: bad input, or a tenant that
# already has a server (the claim is another purchase's).
REFUSALS = ("InvalidPurchaseRequest", "TenantAlreadyProvisioned")


def innermost(err: BaseException) -> BaseException:
    """The error under every ActivityError wrapper."""
    while isinstance(err, ActivityError) and err.cause is not None:
        err = err.cause
    return err


# The reason of every failure that is a cancel (status, audit rows).
CANCELLED = "workflow cancelled"


def reason(err: BaseException) -> str:
    """The innermost message: for an ActivityError, the activity's own error."""
    inner = innermost(err)
    if isinstance(inner, asyncio.CancelledError | CancelledError):
        return CANCELLED
    if isinstance(inner, FailureError):
        return inner.message or type(inner).__name__
    return str(inner) or type(inner).__name__


def error_type(err: BaseException) -> str:
    """The innermost ApplicationError's type, else the error's class name."""
    inner = innermost(err)
    if isinstance(inner, ApplicationError) and inner.type:
        return inner.type
    return type(inner).__name__


def cancel_requested() -> bool:
    """Someone asked to cancel this run (the request stays, even once a step absorbed it)."""
    return workflow.cancellation_reason() is not None


def stop_cause(err: BaseException) -> dict[str, str]:
    """Why a run stopped, for its failure audit row: `error_type` and `reason`.

    A requested cancel is the cause even when the step it met then ended with its own
    error: Temporal retries no activity whose cancel was requested, so an attempt that
    fails after the cancel reaches the workflow as that failure. The step's own error is
    kept beside the cancel as `step_error`.
    """
    own = {"error_type": error_type(err), "reason": reason(err)}
    if not cancel_requested():
        return own
    cause = {"error_type": "CancelledError", "reason": CANCELLED}
    if own != cause:
        cause["step_error"] = f"{own['error_type']}: {own['reason']}"
    return cause


def raise_if_refused(err: ActivityError) -> None:
    """Bad input or a tenant that has a server: the run ends at once, nothing bought."""
    cause = innermost(err)
    if isinstance(cause, ApplicationError) and cause.type in REFUSALS:
        raise ApplicationError(
            cause.message, *cause.details, type=cause.type, non_retryable=True
        ) from None


def provisioning_failed(step: str, err: BaseException) -> ApplicationError:
    """What a run ends with after compensating a failure at `step`."""
    return ApplicationError(
        f"provisioning failed at {step}: {reason(err)}",
        {"step": step, "error_type": error_type(err)},
        type="ProvisioningFailed",
        non_retryable=True,
    )


def cancelled_message(step: str) -> str:
    """The words of a cancelled purchase; clients rebuild them (Temporal keeps no message
    for a CANCELLED run) from the status query's `stopped_at`."""
    return f"purchase cancelled at {step}; compensated"


def cancelled_at(step: str) -> CancelledError:
    """What a run ends with after compensating a cancel at `step` (the run is CANCELLED)."""
    return CancelledError(cancelled_message(step))
