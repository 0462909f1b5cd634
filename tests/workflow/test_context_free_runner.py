"""The worker's runner under the encrypting converter: the same results and failures as
the SDK's sandbox, with no serialization-context question put to the sandbox
(runtime/workflow_runner.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sandbox_runner

from runtime.codec import KeyRing
from tests.workflow.test_encrypted_input import client_with
from tests.workflow.test_provision_workflow import ScriptedWorld, purchase
from worker import WORKFLOWS, workflow_runner
from workflows.contracts import WORKFLOW_TYPE, ProvisionResult, workflow_id_for


async def _outcome(
    client: Client, runner: WorkflowRunner, raw: dict[str, Any], world: ScriptedWorld
) -> ProvisionResult | tuple[str, str, Any]:
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=world.activities(),
        workflow_runner=runner,
    ):
        try:
            result: ProvisionResult = await client.execute_workflow(
                WORKFLOW_TYPE,
                raw,
                id=workflow_id_for(raw["purchase_id"]),
                task_queue=task_queue,
                result_type=ProvisionResult,
            )
        except WorkflowFailureError as failure:
            cause = failure.cause
            assert isinstance(cause, ApplicationError)
            return (cause.type or "", cause.message, cause.details)
        return result


@pytest.mark.parametrize("fails", [False, True], ids=["completed", "failed"])
async def test_same_outcome_as_the_sdk_sandbox_without_asking_it_for_contexts(
    time_skipping_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    asked: list[object] = []
    original = sandbox_runner._Instance.get_serialization_context

    def counting(self: sandbox_runner._Instance, command_info: Any) -> Any:
        asked.append(command_info)
        return original(self, command_info)

    monkeypatch.setattr(sandbox_runner._Instance, "get_serialization_context", counting)
    client = client_with(time_skipping_env, KeyRing.generate("k1"), worker=True)
    outcomes: dict[str, str] = {}
    questions: dict[str, int] = {}
    for name, runner in (
        ("sdk", workflow_runner()),
        ("context-free", workflow_runner(client.data_converter)),
    ):
        asked.clear()
        world = ScriptedWorld()
        if fails:  # a failure converted (encrypted attributes) and compensation's steps
            world.failures["configure_mailu"] = [
                ApplicationError("configure_mailu broke for good", type="X", non_retryable=True)
            ]
        # The same purchase each time (its id may be reused once the run has closed).
        tenant = f"acme-{uuid.uuid4().hex[:12]}"
        raw = purchase(purchase_id="p-same-purchase", tenant_id=tenant)
        outcome = await _outcome(client, runner, raw, world)
        # The tenant differs between the two runs (a completed purchase keeps its claim).
        outcomes[name] = repr(outcome).replace(tenant, "<tenant>")
        questions[name] = len(asked)
    assert questions["sdk"] > 0, "the recorder never saw the sandbox asked"
    assert questions["context-free"] == 0
    assert outcomes["context-free"] == outcomes["sdk"]
    expected = "('ProvisioningFailed'," if fails else "ProvisionResult(purchase_id='p-same-"
    assert outcomes["sdk"].startswith(expected), outcomes["sdk"]
