"""starter.py tells the truth about runs that ended without a result (issue 21).

A run the server terminated is not `running` at its last step; a cancelled purchase
prints the documented `purchase cancelled at <step>; compensated`, both from `start
--wait` (which was watching when the cancel came) and from `result` afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from dataclasses import asdict
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus

from devstack.stack import StackInfo
from starter import run_reconciler
from tests.e2e.conftest import CloudControl, held_in_notify
from tests.e2e.test_operations_guide import held_in_reverse_dns
from workflows.contracts import PurchaseRequest
from workflows.reconcile_contracts import ReconcileRequest

COMMAND_TIMEOUT = 300


async def reconcile_now(client: Client) -> None:
    """What a terminated run left (server, Vault record, claim) removed, as documented."""
    await run_reconciler(
        client, "mail-provisioning", ReconcileRequest(grace_seconds=0), uuid.uuid4().hex[:8]
    )


def starter(info: StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        info.starter_command(*args),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def status_of(info: StackInfo, request: PurchaseRequest) -> dict[str, Any]:
    done = starter(info, "status", request.purchase_id)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


async def test_a_terminated_run_is_reported_terminated_at_its_step(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    request, handle = await held_in_notify(client, info)
    await handle.terminate(reason="test: an operator terminates the run")

    status = await asyncio.to_thread(status_of, info, request)
    # The query alone answers `running` at notify: the history ends there.
    assert (status["state"], status["current_step"], status["stopped_at"]) == (
        "terminated",
        None,
        "notify",
    )
    assert status["steps"][-1]["name"] == "notify"
    assert status["steps"][-1]["state"] == "interrupted"
    assert all(step["state"] != "running" for step in status["steps"])

    ended = await asyncio.to_thread(starter, info, "result", request.purchase_id)
    assert ended.returncode == 1
    assert (
        f"FAILED {handle.id}: purchase terminated at notify "
        "(test: an operator terminates the run); no compensation ran"
    ) in ended.stderr
    # Nothing was undone, as the message says: the server is still there, until the
    # reconciler the message names removes it (and the module leaves the world agreeing).
    assert len(cloud.servers_of(request.purchase_id)) == 1
    await reconcile_now(client)
    assert cloud.servers_of(request.purchase_id) == []


async def test_a_cancelled_purchase_names_its_step_and_compensation(
    client: Client, info: StackInfo, cloud: CloudControl, tmp_path: Any
) -> None:
    request, handle = await held_in_notify(client, info)
    # `start --wait` joins the running purchase and watches it when the cancel comes.
    purchase_file = tmp_path / "purchase.json"
    purchase_file.write_text(json.dumps(asdict(request)))
    watching = subprocess.Popen(
        info.starter_command("start", "--file", str(purchase_file), "--wait"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await handle.cancel()
        _, watched = await asyncio.to_thread(watching.communicate, timeout=COMMAND_TIMEOUT)
    finally:
        watching.kill()
    expected = f"FAILED {handle.id}: purchase cancelled at notify; compensated"
    assert watching.returncode == 1
    assert expected in watched

    ended = await asyncio.to_thread(starter, info, "result", request.purchase_id)
    assert ended.returncode == 1
    assert expected in ended.stderr
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    status = await asyncio.to_thread(status_of, info, request)
    assert (status["state"], status["stopped_at"]) == ("cancelled", "notify")
    assert cloud.servers_of(request.purchase_id) == []


async def test_start_wait_shows_each_steps_duration_and_what_a_long_step_waits_for(
    client: Client, info: StackInfo, cloud: CloudControl, tmp_path: Any
) -> None:
    # Held in bring_up_server: the provider refuses reverse DNS a while, attempts retry.
    request, handle = await held_in_reverse_dns(client, cloud, info)
    purchase_file = tmp_path / "purchase.json"
    purchase_file.write_text(json.dumps(asdict(request)))
    watching = await asyncio.create_subprocess_exec(
        *info.starter_command(
            "start", "--file", str(purchase_file), "--wait", "--progress-every", "1"
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert watching.stderr is not None
    lines: list[str] = []
    waiting = re.compile(r"\[4/\d+\] wait_for_server +(waiting: .*; )?attempt \d+, last: .+")
    try:
        while not any(waiting.search(line) for line in lines):
            line = (await watching.stderr.readline()).decode()
            assert line, "start --wait ended without saying what wait_for_server waits for"
            lines.append(line)
        await handle.cancel()
        _, rest = await watching.communicate()
        lines += rest.decode().splitlines(keepends=True)
    finally:
        if watching.returncode is None:
            watching.kill()
    output = "".join(lines)
    # Steps that ended show how long they took (scheduled to ended, from the history).
    assert re.search(r"\] admit_purchase +done \(\d+\.\d s\)", output), output
    assert re.search(r"\] create_server +done \(\d+\.\d s\)", output), output
    assert f"FAILED {handle.id}: purchase cancelled at wait_for_server; compensated" in output
    assert watching.returncode == 1
