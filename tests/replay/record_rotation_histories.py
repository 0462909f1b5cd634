"""Record the RotateSmtpCredentials histories that tests/replay replays:
`python -m tests.replay.record_rotation_histories`.

Each scenario runs on the time-skipping server with the scripted world of the rotation
workflow tests (tests/workflow/test_rotation_workflow.py), so the histories hold no
real secrets or addresses. Existing files are never re-recorded: they stand for the
runs that may be in flight when a new version is deployed. (Before the first release,
the histories of the old argument, a client-supplied MailuTarget, were deleted and
recorded again when the workflow came to take the tenant id only: issue 17.)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devstack.stack import tool
from tests.workflow.test_rotation_workflow import REQUEST, RotationWorld
from workflows.dispatch import ProvisionMailTenant
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE

ROTATION_HISTORIES = Path(__file__).parent / "histories" / "rotation"


def rotation_scenarios() -> dict[str, RotationWorld]:
    failing = ApplicationError("key changed", type="HostKeyMismatch", non_retryable=True)
    return {
        "rotated": RotationWorld(rotate_errors=[ApplicationError("ssh down", type="OSError")]),
        "failed": RotationWorld(rotate_errors=[failing]),
        "server_gone": RotationWorld(
            rotate_errors=[ApplicationError("no server", type="ServerGone", non_retryable=True)]
        ),
    }


async def record_rotations() -> None:
    ROTATION_HISTORIES.mkdir(parents=True, exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        for name, world in rotation_scenarios().items():
            path = ROTATION_HISTORIES / f"{name}.json"
            if path.exists():
                continue
            task_queue = f"replay-rotation-{name}"
            async with Worker(
                env.client,
                task_queue=task_queue,
                workflows=[ProvisionMailTenant],
                activities=world.activities(),
            ):
                handle = await env.client.start_workflow(
                    ROTATION_WORKFLOW_TYPE,
                    REQUEST,
                    id=f"rotate-replay-{name}",
                    task_queue=task_queue,
                )
                try:
                    await handle.result()
                except Exception as err:  # the failed scenario fails by design
                    print(f"rotation {name}: ended with {type(err).__name__}")
            history = await handle.fetch_history()
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
            print(f"wrote {path}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record_rotations())
