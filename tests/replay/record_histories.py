"""Record the histories that tests/replay replays: `python -m tests.replay.record_histories`.

Run it when a change to the workflow is *meant* to be incompatible (and then version
the workflow with workflow.patched instead of breaking running purchases), or to
add a path. Each scenario runs on the time-skipping server with the scripted world
from the workflow tests, so the histories hold no real secrets or addresses.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from devstack.stack import tool
from tests.workflow.test_provision_workflow import Harness, ScriptedWorld, purchase
from workflows.contracts import workflow_id_for

HISTORIES = Path(__file__).parent / "histories"


def scenarios() -> dict[str, ScriptedWorld]:
    retried = ScriptedWorld(
        failures={
            "create_server": [ApplicationError("429", type="Hetzner.rate_limit_exceeded")],
            "wait_for_server": [ApplicationError("booting", type="ServerNotReady")] * 3,
        }
    )
    compensated = ScriptedWorld(
        failures={
            "record_audit_event": [
                ApplicationError("audit store gone", type="OperationalError", non_retryable=True)
            ],
        }
    )
    return {
        "happy_path": ScriptedWorld(),
        "retried_steps": retried,
        "compensated": compensated,
        # Recorded after issue 11: resolve_plan and dns_records in the history.
        "plans_and_dns": ScriptedWorld(),
    }


async def record(names: list[str]) -> None:
    HISTORIES.mkdir(exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        for name, world in scenarios().items():
            if names and name not in names:
                continue
            harness = Harness(env, world)
            raw = purchase(purchase_id=f"replay-{name.replace('_', '-')}")
            async with harness.worker():
                handle = await env.client.start_workflow(
                    "ProvisionMailTenant",
                    raw,
                    id=workflow_id_for(raw["purchase_id"]),
                    task_queue=harness.task_queue,
                )
                try:
                    await handle.result()
                except Exception as err:  # the compensated scenario fails by design
                    print(f"{name}: ended with {type(err).__name__}")
            history = await handle.fetch_history()
            path = HISTORIES / f"{name}.json"
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
            print(f"wrote {path}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    # Scenario names to (re-)record, all by default.
    asyncio.run(record(sys.argv[1:]))
