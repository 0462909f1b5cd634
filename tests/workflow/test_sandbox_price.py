"""What the sandbox executes again for every purchase with the worker's own runner.

The sandbox re-executes, for each run, every module it is not told to pass through
(worker.workflow_runner). Of ours, a purchase's run should execute only the workflow
class's own module and its package again; the purchase story (workflows.provision) is
passed through (worker.PASSED_THROUGH_STORIES, docs/PERFORMANCE.md). The other workflow
tests run the story under the SDK's default sandbox, so its runtime restrictions still
check every line of it there.
"""

from __future__ import annotations

import importlib.machinery
import uuid
from types import ModuleType

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflow.test_provision_workflow import ScriptedWorld, purchase
from worker import WORKFLOWS, workflow_runner
from workflows.contracts import ProvisionResult, workflow_id_for

OURS = ("workflows", "activities", "runtime")
# Executed per run by design: the workflow class's module, and its package on the way.
PER_RUN = {"workflows", "workflows.dispatch"}


async def test_a_purchase_executes_no_module_of_ours_but_the_workflow_module_again(
    time_skipping_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
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
        workflow_runner=workflow_runner(),
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
    ours = {name for name in executed if name.split(".")[0] in OURS}
    assert "workflows.dispatch" in ours, "the recorder saw no run's import at all"
    assert ours <= PER_RUN, f"executed again for one purchase: {sorted(ours - PER_RUN)}"
