"""Record the ChangeMailPlan histories that tests/replay replays:
`python -m tests.replay.record_plan_change_histories`.

Each scenario runs on the time-skipping server with the scripted world of the plan
change workflow tests (tests/workflow/test_plan_change_workflow.py), so the histories
hold no real secrets or addresses. Existing files are never re-recorded: they stand for
the runs that may be in flight when a new version is deployed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devstack.stack import tool
from tests.workflow.test_plan_change_workflow import REQUEST, World
from workflows.dispatch import ProvisionMailTenant
from workflows.plan_change_contracts import PLAN_CHANGE_WORKFLOW_TYPE, plan_change_workflow_id

PLAN_CHANGE_HISTORIES = Path(__file__).parent / "histories" / "plan_change"
WORKFLOW_ID = plan_change_workflow_id(REQUEST.tenant_id, REQUEST.request_id)


def plan_change_scenarios() -> dict[str, World]:
    return {
        "changed": World(),
        "refused": World(
            check_error=ApplicationError(
                "plan change refused: field 'plan' a disk cannot shrink",
                {"field": "plan", "rule": "a disk cannot shrink"},
                type="PlanChangeImpossible",
                non_retryable=True,
            )
        ),
        "restored": World(
            start_errors=[
                ApplicationError(
                    "admin never healthy", type="RemoteCommandNotFound", non_retryable=True
                )
            ]
        ),
    }


async def record_plan_changes() -> None:
    PLAN_CHANGE_HISTORIES.mkdir(parents=True, exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        for name, world in plan_change_scenarios().items():
            path = PLAN_CHANGE_HISTORIES / f"{name}.json"
            if path.exists():
                continue
            task_queue = f"replay-plan-change-{name}"
            async with Worker(
                env.client,
                task_queue=task_queue,
                workflows=[ProvisionMailTenant],
                activities=world.activities(),
            ):
                handle = await env.client.start_workflow(
                    PLAN_CHANGE_WORKFLOW_TYPE, REQUEST, id=WORKFLOW_ID, task_queue=task_queue
                )
                try:
                    await handle.result()
                except Exception as err:  # refused and restored fail by design
                    print(f"plan change {name}: ended with {type(err).__name__}")
            history = await handle.fetch_history()
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
            print(f"wrote {path}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record_plan_changes())
