"""What the sandbox executes again for every purchase with the worker's own runner.

The sandbox re-executes, for each run, every module it is not told to pass through
(worker.workflow_runner). Of ours, a purchase's run should execute no module again:
the workflow class's module (workflows.dispatch, since change 10) and the purchase story
(workflows.provision) are passed through (worker.PASSED_THROUGH_STORIES,
docs/PERFORMANCE.md). The same purchase under the SDK's default sandbox shows that the
recorder sees a run's imports at all. The other workflow tests run both under the SDK's
default sandbox, so its runtime restrictions still check every line of them there.
"""

from __future__ import annotations

import importlib.machinery
import uuid
from types import ModuleType

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.workflow.test_provision_workflow import ScriptedWorld, purchase
from worker import WORKFLOWS, workflow_runner
from workflows.contracts import ProvisionResult, workflow_id_for

OURS = ("workflows", "activities", "runtime")
# Executed per run by design: nothing of ours (before change 10: the workflow class's
# module, and its package on the way).
PER_RUN: set[str] = set()


async def test_a_purchase_executes_no_module_of_ours_again(
    time_skipping_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    executed = await _executed_by_one_purchase(
        time_skipping_env, monkeypatch, SandboxedWorkflowRunner()
    )
    assert "workflows.dispatch" in executed, "the recorder saw no run's import at all"
    executed = await _executed_by_one_purchase(time_skipping_env, monkeypatch, workflow_runner())
    ours = {name for name in executed if name.split(".")[0] in OURS}
    assert ours <= PER_RUN, f"executed again for one purchase: {sorted(ours - PER_RUN)}"


async def _executed_by_one_purchase(
    time_skipping_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    runner: WorkflowRunner,
) -> list[str]:
    """The modules executed while one purchase runs on a worker with `runner`."""
    executed: list[str] = []
    # Every module executed from a file, inside the sandbox or not, passes through here.
    loader = importlib.machinery.SourceFileLoader
    original = loader.exec_module

    def recording(self: importlib.machinery.SourceFileLoader, module: ModuleType) -> None:
        executed.append(module.__name__)
        original(self, module)

    monkeypatch.setattr(loader, "exec_module", recording)
    world = ScriptedWorld()
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    raw = purchase()
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=world.activities(),
        workflow_runner=runner,
    ):
        executed.clear()  # the worker's validation at start runs once per worker
        result = await time_skipping_env.client.execute_workflow(
            "ProvisionMailTenant",
            raw,
            id=workflow_id_for(raw["purchase_id"]),
            task_queue=task_queue,
            result_type=ProvisionResult,
        )
    assert result.purchase_id == raw["purchase_id"]
    monkeypatch.setattr(loader, "exec_module", original)
    return executed
