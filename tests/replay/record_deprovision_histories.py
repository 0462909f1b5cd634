"""Record the DeprovisionMailTenant histories that tests/replay replays:
`python -m tests.replay.record_deprovision_histories`.

Each scenario runs on the time-skipping server with the scripted world of the
deprovisioning workflow tests (tests/workflow/test_deprovision_workflow.py), so the
histories hold no real secrets or addresses. Existing files are never re-recorded: they
stand for the runs that may be in flight when a new version is deployed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devstack.stack import tool
from tests.workflow.test_deprovision_workflow import REQUEST, TENANT, TenantWorld
from workflows.deprovision_contracts import (
    DEPROVISION_WORKFLOW_TYPE,
    TenantServer,
    deprovision_workflow_id,
)
from workflows.dispatch import ProvisionMailTenant

DEPROVISION_HISTORIES = Path(__file__).parent / "histories" / "deprovision"


def deprovision_scenarios() -> dict[str, TenantWorld]:
    lost = ApplicationError("worker lost after the provider answered", type="OSError")
    return {
        "deprovisioned": TenantWorld(crash_after={"delete_tenant_servers": [lost]}),
        "second_pass": TenantWorld(appear_on_release=[TenantServer(42, "mail-acme-p1", "p1")]),
        "nothing_found": TenantWorld(servers=[], vault_version=0, schedule=False, claim=None),
        "refused": TenantWorld(purchase_running=True),
    }


async def record_deprovisions() -> None:
    DEPROVISION_HISTORIES.mkdir(parents=True, exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        for name, world in deprovision_scenarios().items():
            path = DEPROVISION_HISTORIES / f"{name}.json"
            if path.exists():
                continue
            task_queue = f"replay-deprovision-{name}"
            async with Worker(
                env.client,
                task_queue=task_queue,
                workflows=[ProvisionMailTenant],
                activities=world.activities(),
            ):
                handle = await env.client.start_workflow(
                    DEPROVISION_WORKFLOW_TYPE,
                    REQUEST,
                    id=deprovision_workflow_id(TENANT),
                    task_queue=task_queue,
                )
                try:
                    await handle.result()
                except Exception as err:  # the refused scenario fails by design
                    print(f"deprovision {name}: ended with {type(err).__name__}")
            history = await handle.fetch_history()
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
            print(f"wrote {path}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record_deprovisions())
