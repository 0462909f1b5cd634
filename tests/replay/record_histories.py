"""Record the histories that tests/replay replays: `python -m tests.replay.record_histories`.

Run it when a change to the workflow is *meant* to be incompatible (and then version
the workflow with workflow.patched instead of breaking running purchases), or to
add a path. Each scenario runs on the time-skipping server with the scripted world
from the workflow tests, so the histories hold no real secrets or addresses.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devstack.stack import tool
from tests.workflow.test_provision_workflow import Harness, ScriptedWorld, purchase
from tests.workflow.test_rotation_workflow import TARGET, RotationWorld
from workflows.contracts import workflow_id_for
from workflows.rotation import RotateSmtpCredentials

HISTORIES = Path(__file__).parent / "histories"
ROTATION_HISTORIES = HISTORIES / "rotation"


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
        # Recorded after the rotation schedule step was added (workflow.patched).
        "scheduled_rotation": ScriptedWorld(),
    }


def rotation_scenarios() -> dict[str, RotationWorld]:
    failing = ApplicationError("key changed", type="HostKeyMismatch", non_retryable=True)
    return {
        "rotated": RotationWorld(rotate_errors=[ApplicationError("ssh down", type="OSError")]),
        "failed": RotationWorld(rotate_errors=[failing]),
        "server_gone": RotationWorld(server_exists=False),
    }


async def record() -> None:
    HISTORIES.mkdir(exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        await record_rotations(env)
        for name, world in scenarios().items():
            if (HISTORIES / f"{name}.json").exists():
                continue  # never re-record: older histories are what running runs look like
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


async def record_rotations(env: WorkflowEnvironment) -> None:
    ROTATION_HISTORIES.mkdir(parents=True, exist_ok=True)
    for name, world in rotation_scenarios().items():
        path = ROTATION_HISTORIES / f"{name}.json"
        if path.exists():
            continue
        task_queue = f"replay-rotation-{name}"
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[RotateSmtpCredentials],
            activities=world.activities(),
        ):
            handle = await env.client.start_workflow(
                "RotateSmtpCredentials", TARGET, id=f"rotate-replay-{name}", task_queue=task_queue
            )
            try:
                await handle.result()
            except Exception as err:  # the failed scenario fails by design
                print(f"rotation {name}: ended with {type(err).__name__}")
        history = await handle.fetch_history()
        path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    asyncio.run(record())
