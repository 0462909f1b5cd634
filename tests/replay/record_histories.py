"""Record the histories tests/replay replays: `.venv/bin/python -m tests.replay.record_histories`.

`python -m tests.replay.record_histories [NAME ...]`: NAME is a purchase scenario below or
a scripted workflow's directory (rotation, deprovision, plan_change, activation); none
means all of them.

Purchases (ProvisionMailTenant): each scenario is a real run on the local stack (Temporal
dev server, worker process, OpenBao, local cloud and VPS), exported as an operator would export it:
`temporal workflow show -o json`, i.e. *encrypted* by the payload codec, exactly what
the server stores. The stack's key ring is the committed test-only ring
(tests/replay/histories/TEST-ONLY-codec-keys.json), so CI can decrypt them.

Scenarios: happy (plain success), retried (the provider answers 429 twice, a MailU
command fails once), compensated (the server fails to boot: compensation runs),
cancelled (cancelled while MailU is being configured: compensation, ends cancelled).

Re-run it after a change to workflows/ that is *meant* to change the command sequence,
then commit the new files; from the first release on, such a change is versioned
instead (docs/VERSIONING.md). It takes about a minute and needs nothing but
`make install`.

The other workflows: scripted runs on the time-skipping server, from the table in
tests/replay/scripted.py (a new scenario is one row there); only missing files are
recorded, existing ones stand for runs in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devstack.stack import Stack, StackInfo, tool
from runtime.codec import KeyRing, data_converter
from runtime.exit import exit_without_teardown
from starter import start_purchase
from tests.e2e.conftest import CloudControl, new_request
from tests.replay.scripted import SCRIPTED, ScriptedWorkflow
from workflows.contracts import ProvisionStatus, PurchaseRequest
from workflows.dispatch import ProvisionMailTenant
from workflows.final_snapshot_expiry import ExpireFinalSnapshot
from workflows.plan_change_lock import PlanChangeLock

HISTORIES = Path(__file__).parent / "histories"
TEST_KEYS = HISTORIES / "TEST-ONLY-codec-keys.json"
TEST_KEY_ID = "replay-TEST-ONLY-not-a-production-key"
STEP_WAIT_SECONDS = 300
PURCHASE_SCENARIOS = ("happy", "retried", "compensated", "cancelled")


def test_keyring() -> KeyRing:
    """The committed test-only ring; made once, on the first recording."""
    if not TEST_KEYS.exists():
        KeyRing.generate(TEST_KEY_ID).write(TEST_KEYS)
    return KeyRing.from_file(TEST_KEYS)


class Recorder:
    def __init__(self, info: StackInfo, client: Client) -> None:
        self.info = info
        self.client = client
        self.cloud = CloudControl(info)

    def request(self, scenario: str) -> PurchaseRequest:
        name = f"replay-{scenario}-{uuid.uuid4().hex[:6]}"
        return new_request(
            self.info,
            purchase_id=name,
            tenant_id=name,
            domain=f"{name}.example",
            requested_by="record-histories",
        )

    async def run(
        self,
        scenario: str,
        during: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]] | None = None,
    ) -> Path:
        handle, _ = await start_purchase(self.client, self.request(scenario), "mail-provisioning")
        if during is not None:
            await during(handle)
        try:
            await handle.result()
            outcome = "completed"
        except Exception as err:  # failed and cancelled scenarios end this way on purpose
            outcome = type(err).__name__
        path = HISTORIES / f"{scenario}.json"
        exported = json.loads(self.info.workflow_history(handle.id, decoded=False))
        path.write_text(json.dumps(exported, indent=1) + "\n")
        print(f"{scenario}: {outcome}, {len(exported['events'])} events -> {path}", flush=True)
        return path

    async def wait_for_step(self, handle: WorkflowHandle[Any, Any], step: str) -> None:
        for _ in range(STEP_WAIT_SECONDS * 4):
            try:
                status: ProvisionStatus = await handle.query("status", result_type=ProvisionStatus)
                if status.current_step == step:
                    return
            except Exception:  # noqa: S110 - not picked up by the worker yet
                pass
            await asyncio.sleep(0.25)
        raise TimeoutError(f"{handle.id} never reached {step}")

    async def record_all(self, only: set[str] | None) -> None:
        async def fail_one_mailu_command(handle: WorkflowHandle[Any, Any]) -> None:
            await self.wait_for_step(handle, "rotate_host_key")
            [server] = self.cloud.servers_of(handle.id.removeprefix("purchase-"))
            self.cloud.inject_command_fault(server["id"], "up -d")

        async def cancel_during_mailu(handle: WorkflowHandle[Any, Any]) -> None:
            await self.wait_for_step(handle, "configure_mailu")
            await handle.cancel()

        scenarios: dict[str, Callable[[], Awaitable[Path]]] = {
            "happy": lambda: self.run("happy"),
            "retried": lambda: self._retried(fail_one_mailu_command),
            "compensated": lambda: self._compensated(),
            "cancelled": lambda: self.run("cancelled", cancel_during_mailu),
        }
        for name, record in scenarios.items():
            if only is None or name in only:
                await record()

    async def _retried(self, during: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]]) -> Path:
        self.cloud.inject(
            method="POST",
            path="/v1/servers",
            status=429,
            code="rate_limit_exceeded",
            message="injected by record_histories",
            times=2,
        )
        return await self.run("retried", during)

    async def _compensated(self) -> Path:
        self.cloud.devstack.post("boot-failures", json={"times": 1}).raise_for_status()
        return await self.run("compensated")


async def record_scripted(workflows: list[ScriptedWorkflow]) -> None:
    """Each missing history of `workflows`, run against its scripted world."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        for scripted in workflows:
            scripted.path.mkdir(parents=True, exist_ok=True)
            for name, scenario in scripted.scenarios().items():
                path = scripted.path / f"{name}.json"
                if path.exists():
                    continue
                task_queue = f"replay-{scripted.directory}-{name}"
                async with Worker(
                    env.client,
                    task_queue=task_queue,
                    # PlanChangeLock: the child every plan change starts.
                    workflows=[ProvisionMailTenant, PlanChangeLock, ExpireFinalSnapshot],
                    activities=scenario.world.activities(),
                ):
                    handle = await env.client.start_workflow(
                        scripted.workflow_type,
                        scripted.argument,
                        id=scripted.workflow_id(name),
                        task_queue=task_queue,
                        start_signal=scenario.start_signal,
                    )
                    try:
                        outcome = f"completed {await handle.result()}"
                    except Exception as err:  # refusals and failures are scenarios too
                        outcome = f"ended with {type(err).__name__}"
                history = await handle.fetch_history()
                path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
                print(f"{scripted.directory} {name}: {outcome} -> {path}", flush=True)
    finally:
        await env.shutdown()


async def record_purchases(only: set[str] | None) -> None:
    keyring = test_keyring()
    with tempfile.TemporaryDirectory(prefix="mailprov-record-") as directory:
        state = Path(directory)
        # The stack uses the key ring it finds in its state dir: the test-only one.
        keyring.write(state / "codec-keys.json")
        async with Stack(state) as stack:
            info = await stack.start(progress=lambda step: print(f"stack: {step}", flush=True))
            client = await Client.connect(
                info.temporal_address, data_converter=data_converter(keyring)
            )
            await Recorder(info, client).record_all(only)


async def record(names: set[str]) -> None:
    purchases = names & set(PURCHASE_SCENARIOS) if names else set(PURCHASE_SCENARIOS)
    scripted = [s for s in SCRIPTED if not names or s.directory in names]
    if scripted:
        await record_scripted(scripted)
    if purchases:
        await record_purchases(purchases)


def main() -> int:
    known = [*PURCHASE_SCENARIOS, *(s.directory for s in SCRIPTED)]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Not `choices=`: Python 3.11's argparse rejects an empty `nargs="*"` list against it.
    parser.add_argument("name", nargs="*", help=f"one of {', '.join(known)}; default: all")
    args = parser.parse_args()
    if unknown := set(args.name) - set(known):
        parser.error(f"unknown: {', '.join(sorted(unknown))} (choose from {', '.join(known)})")
    asyncio.run(record(set(args.name)))
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
