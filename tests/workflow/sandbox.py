"""The sandbox the workflow tests run their workers in."""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from worker import PASSED_THROUGH, PASSED_THROUGH_LIBRARIES


def restricted_sandbox() -> SandboxedWorkflowRunner:
    """The SDK's sandbox with its default restrictions, passing through only the pure
    modules that production passes through too (worker.PASSED_THROUGH: the contracts,
    policies and failures; idna). The workflow class and every story, the purchase's
    included, are executed inside it for every run and held to its runtime restrictions,
    which production does not do for them (worker.PASSED_THROUGH_STORIES).

    With nothing passed through, every Worker(...) re-executed each contract module to
    validate the workflows, and every run did again: generating the code of their
    dataclasses was ~70% of a workflow test's time (py-spy, test_provision_workflow).
    """
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            *PASSED_THROUGH, *PASSED_THROUGH_LIBRARIES
        )
    )
