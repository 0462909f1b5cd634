"""Record the ActivateMailDomain histories that tests/replay replays:
`python -m tests.replay.record_activation_histories`.

Each scenario runs on the time-skipping server with the scripted DNS world of the
activation workflow tests (tests/workflow/test_activation_workflow.py), so the histories
hold no real addresses. Existing files are never re-recorded: they stand for the runs
that may be waiting (up to 30 days) when a new version is deployed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devstack.stack import tool
from tests.workflow.test_activation_workflow import TENANT, DnsWorld
from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    DNS_PUBLISHED_SIGNAL,
    activation_workflow_id,
)
from workflows.dispatch import ProvisionMailTenant

ACTIVATION_HISTORIES = Path(__file__).parent / "histories" / "activation"
WORKFLOW_ID = activation_workflow_id(TENANT)


def activation_scenarios() -> dict[str, tuple[DnsWorld, bool]]:
    """name -> (the scripted DNS answers, whether the back end signals at the start)."""
    gone = ApplicationError("no server", type="ServerGone", non_retryable=True)
    return {
        "signalled_then_verified": (DnsWorld([False, False, True]), True),
        "gave_up": (DnsWorld(), False),
        "tenant_gone": (DnsWorld([False, gone]), False),
    }


async def record_activations() -> None:
    ACTIVATION_HISTORIES.mkdir(parents=True, exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        for name, (world, signal) in activation_scenarios().items():
            path = ACTIVATION_HISTORIES / f"{name}.json"
            if path.exists():
                continue
            task_queue = f"replay-activation-{name}"
            async with Worker(
                env.client,
                task_queue=task_queue,
                workflows=[ProvisionMailTenant],
                activities=world.activities(),
            ):
                handle = await env.client.start_workflow(
                    ACTIVATION_WORKFLOW_TYPE,
                    {"tenant_id": TENANT},
                    id=WORKFLOW_ID,
                    task_queue=task_queue,
                    start_signal=DNS_PUBLISHED_SIGNAL if signal else None,
                )
                print(f"activation {name}: {(await handle.result())['outcome']}")
            history = await handle.fetch_history()
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
            print(f"wrote {path}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record_activations())
