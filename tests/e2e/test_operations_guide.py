"""docs/OPERATIONS.md, run command by command against the local stack.

The commands are read from the guide's `sh` blocks (so the guide cannot drift from
what is tested) and run with bash in a shell set up exactly as `make up` prints it
(devstack.demo.operator_environment): the real `temporal` CLI through the codec
server, starter.py, jq and curl. Each test checks the outcome the guide writes beside
the commands, and that it ran every command of its sections.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from activities.audit import SqliteAuditStore
from activities.vault import Vault
from codec_server import CodecServer
from devstack.demo import operator_environment, operator_examples
from devstack.stack import ROOT, StackInfo
from runtime.codec import ENCODING, EncryptionCodec, KeyRing
from starter import run_reconciler, start_purchase
from tests.e2e.conftest import CloudControl, customer_webhook, new_request
from tests.helpers import payload_encodings
from workflows.claim_contracts import tenant_claim_id
from workflows.contracts import ProvisionStatus, PurchaseRequest
from workflows.reconcile_contracts import ReconcileRequest
from workflows.world_check_contracts import WORLD_CHECK_SCHEDULE_ID

GUIDE = ROOT / "docs" / "OPERATIONS.md"
COMMAND_TIMEOUT = 300
WAIT_SECONDS = 180
# 503s before the PTR call succeeds: bring_up_server retries every 3 s (WAIT_FOR_SERVER),
# so about a minute's window for the test.
PTR_REFUSALS = 20


def guide_blocks() -> dict[str, list[list[str]]]:
    """`## heading` -> its `sh` blocks, each a list of command lines."""
    sections: dict[str, list[list[str]]] = {}
    heading = ""
    block: list[str] | None = None
    for line in GUIDE.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.strip() == "```sh":
            block = []
        elif line.strip() == "```" and block is not None:
            sections.setdefault(heading, []).append(block)
            block = None
        elif block is not None and line.strip() and not line.lstrip().startswith("#"):
            block.append(line.strip())
    return sections


def guide(section: str, index: int = 0) -> list[str]:
    return guide_blocks()[section][index]


@dataclass
class OperatorShell:
    """bash with the lines `make up` prints, in a scratch directory (history.json lands here)."""

    info: StackInfo
    cwd: Path
    variables: dict[str, str] = field(default_factory=dict)
    ran: set[str] = field(default_factory=set)

    def run(self, *lines: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        """Run guide lines in one bash; `overrides` are exported after the make-up lines."""
        exports = [f"export {name}={shlex.quote(value)}" for name, value in overrides.items()]
        script = "\n".join(["set -eo pipefail", *operator_environment(self.info), *exports, *lines])
        completed = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env={**os.environ, **self.variables},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        self.ran.update(lines)
        return completed

    def ok(self, *lines: str, **overrides: str) -> str:
        completed = self.run(*lines, **overrides)
        assert completed.returncode == 0, f"{lines}\n{completed.stdout}\n{completed.stderr}"
        return completed.stdout + completed.stderr

    def ran_all(self, section: str) -> bool:
        return all(set(block) <= self.ran for block in guide_blocks()[section])


@pytest.fixture
def shell(info: StackInfo, tmp_path: Path) -> OperatorShell:
    # `python starter.py` as in the guide; the project itself is installed in the venv.
    (tmp_path / "starter.py").symlink_to(ROOT / "starter.py")
    return OperatorShell(info, tmp_path)


class Webhook:
    """The customer's webhook: refuses connections until `fix()` starts it."""

    def __init__(self, info: StackInfo) -> None:
        self.port, self.url = customer_webhook(info)
        self.received: list[dict[str, Any]] = []
        self._server: HTTPServer | None = None

    def fix(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"key": self.headers.get("Idempotency-Key"), "body": body})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def webhook(info: StackInfo) -> Iterator[Webhook]:
    hook = Webhook(info)
    yield hook
    hook.close()


async def until(check: Any, what: str) -> Any:
    for _ in range(WAIT_SECONDS * 5):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def pending_attempt(handle: WorkflowHandle[Any, Any], activity: str) -> int:
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == activity:
            return int(pending.attempt)
    return 0


async def current_step(handle: WorkflowHandle[Any, Any]) -> str | None:
    try:
        status: ProvisionStatus = await handle.query("status", result_type=ProvisionStatus)
    except Exception:
        return None
    return status.current_step


def audit_rows(info: StackInfo, workflow_id: str, event: str) -> int:
    rows = SqliteAuditStore(info.audit_db).rows()
    return sum(1 for r in rows if r.event_key.startswith(workflow_id + "/") and r.event == event)


def test_every_section_of_the_guide_with_commands_is_tested() -> None:
    tested = {
        "Find a run",
        "Read decoded payloads",
        "Retry a failed activity",
        "Cancel a run",
        "Terminate a run",
        "Reset: what it re-does and when it is safe",
        "Export a history and replay it",
        "Rotate the payload key ring",
        "check-world",
    }
    assert set(guide_blocks()) == tested


def test_no_guide_command_puts_the_codec_token_in_a_command_line() -> None:
    """Only environment assignments and builtins (printf) may expand $TEMPORAL_CODEC_AUTH."""
    lines = [c for blocks in guide_blocks().values() for block in blocks for c in block]
    for line in lines:
        if re.search(r"\$\{?TEMPORAL_CODEC_AUTH", line):
            assert line.startswith("printf "), line
        assert "codec-auth" not in line, line


def test_the_lines_make_up_prints_decode_every_payload(shell: OperatorShell) -> None:
    # The codec token reaches the CLI through its environment, never a command line.
    token = shell.info.codec_token_file.read_text().strip()
    assert not any(token in line for line in operator_environment(shell.info))
    start, credentials, listing, detailed, as_json = operator_examples(shell.info)
    assert '"notified": true' in shell.ok(start)
    assert '"username": "admin@acme.example"' in shell.ok(credentials)
    assert "purchase-p-1" in shell.ok(listing)
    shown = shell.ok(detailed)
    # Input, activity arguments and results, and the result: all readable.
    for text in ("acme.example", "mail-acme-", "smtp/acme/admin", "mpenc:v2:"):
        assert text in shown
    exported = json.loads(shell.ok(as_json))
    assert ENCODING not in payload_encodings(exported)
    assert b"json/plain" in payload_encodings(exported)


async def test_guide_on_a_purchase_whose_webhook_is_down(
    shell: OperatorShell,
    client: Client,
    cloud: CloudControl,
    reader_vault: Vault,
    webhook: Webhook,
) -> None:
    request = new_request(shell.info, notify_url=webhook.url)
    handle, _ = await start_purchase(client, request, "mail-provisioning")
    purchase_id, workflow_id = request.purchase_id, handle.id
    shell.variables.update(P=purchase_id, W=workflow_id)
    await until(lambda: pending_attempt(handle, "notify_customer"), "notify to be retrying")

    # Find a run: it is running (the webhook is down), found by type/status and by id.
    running, by_id, describe, query, status = guide("Find a run")
    assert workflow_id in shell.ok(running)
    assert workflow_id in shell.ok(by_id)
    described = shell.ok(describe)
    assert "notify_customer" in described and "ConnectError" in described
    assert '"current_step":"notify"' in shell.ok(query).replace(" ", "")
    assert json.loads(shell.ok(status))["current_step"] == "notify"
    assert shell.ran_all("Find a run")

    # Read decoded payloads.
    detailed, as_json, result, starter_result = guide("Read decoded payloads")
    assert request.domain in shell.ok(detailed)
    assert ENCODING not in payload_encodings(json.loads(shell.ok(as_json)))
    # Retry a failed activity: see why notify fails, fix the webhook, retry now.
    find, reset_activity, wait_result = guide("Retry a failed activity")
    line = shell.ok(find).strip().splitlines()[0]
    assert re.fullmatch(r"\d+ notify_customer attempt \d+: notify .*ConnectError.*", line), line
    webhook.fix()
    shell.ok(reset_activity, ACTIVITY_ID=line.split()[0])
    assert json.loads(shell.ok(wait_result))["notified"] is True
    # At least once, always under the purchase's key: the scheduled retry (5 s, 10 s,
    # 20 s, ... apart) may start just as the webhook is fixed, beside the reset's
    # attempt (seen once at load 8: two deliveries, one key).
    keys = [n["key"] for n in webhook.received]
    assert keys and set(keys) == {workflow_id}, keys
    assert shell.ran_all("Retry a failed activity")

    # Now completed: the result commands answer at once.
    assert request.tenant_id in shell.ok(result)
    assert json.loads(shell.ok(starter_result))["purchase_id"] == purchase_id
    wrong_cli, wrong_curl, right_curl = guide("Read decoded payloads", 1)
    refused = shell.run(wrong_cli)
    assert refused.returncode != 0
    assert "context deadline exceeded" in refused.stderr + refused.stdout
    assert "missing or wrong bearer token" in json.loads(shell.ok(wrong_curl))["error"]
    assert json.loads(shell.ok(right_curl)) == {}
    assert shell.ran_all("Read decoded payloads")

    # Reset to the notify step: only the notification repeats.
    section = "Reset: what it re-does and when it is safe"
    version = reader_vault.read_credentials(request.tenant_id).version  # type: ignore[union-attr]
    stored_rows = audit_rows(shell.info, workflow_id, "smtp_credentials_stored")
    shell.ok(*guide(section, 0))
    assert [n["key"] for n in webhook.received] == [workflow_id] * 2
    assert reader_vault.read_credentials(request.tenant_id).version == version  # type: ignore[union-attr]
    assert audit_rows(shell.info, workflow_id, "smtp_credentials_stored") == stored_rows
    # Reset to the start: refused at admission (issue 17), nothing changes.
    refused = shell.run(*guide(section, 1))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "never provisioned again" in refused.stdout + refused.stderr
    assert len(webhook.received) == 2
    assert reader_vault.read_credentials(request.tenant_id).version == version  # type: ignore[union-attr]
    assert audit_rows(shell.info, workflow_id, "smtp_credentials_stored") == stored_rows
    assert len(cloud.servers_of(purchase_id)) == 1
    assert shell.ran_all(section)

    # Export it as the server stores it, and replay it with the key ring.
    export, replay = guide("Export a history and replay it")
    shell.ok(export)
    exported = json.loads((shell.cwd / "history.json").read_text())
    assert payload_encodings(exported) == {ENCODING}
    assert "replays on the current code" in shell.ok(replay)
    assert shell.ran_all("Export a history and replay it")

    # Rotate (a copy of) the ring: the old runs still decode through a codec server on it.
    ring = shell.cwd / "codec-keys.json"
    ring.write_bytes(shell.info.codec_keys_file.read_bytes())
    old_id = KeyRing.from_file(ring).current_id
    add, switch = (block[0] for block in guide_blocks()["Rotate the payload key ring"])
    added = shell.ok(add, MAILPROV_CODEC_KEYS_FILE=str(ring))
    assert f"key '2027-05' added, '{old_id}' still encrypts" in added
    # The stack's worker has the old ring: the switch is refused and changes nothing.
    refused = shell.run(switch, MAILPROV_CODEC_KEYS_FILE=str(ring))
    assert refused.returncode == 1, refused.stderr
    assert re.search(
        r"not switched: \d+ worker\(s\) polling 'mail-provisioning' lack key '2027-05'",
        refused.stderr,
    )
    assert f"codec-keys={old_id}" in refused.stderr
    assert KeyRing.from_file(ring).current_id == old_id
    # What the switch writes once the workers have the key (they do not, here).
    rotated = KeyRing.from_file(ring).switched("2027-05")
    assert len(rotated.keys) == 2
    server = CodecServer(("127.0.0.1", 0), EncryptionCodec(rotated), "rotated-token", None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        decoded = shell.ok(
            "temporal workflow show -w $W -o json",
            TEMPORAL_CODEC_ENDPOINT=server.url,
            TEMPORAL_CODEC_AUTH="Bearer rotated-token",
        )
    finally:
        server.shutdown()
        server.server_close()
    history = json.loads(decoded)
    assert ENCODING not in payload_encodings(history)
    [first_input] = history["events"][0]["workflowExecutionStartedEventAttributes"]["input"][
        "payloads"
    ]
    assert json.loads(base64.b64decode(first_input["data"]))["domain"] == request.domain
    assert shell.ran_all("Rotate the payload key ring")


async def held_in_reverse_dns(
    client: Client, cloud: CloudControl, info: StackInfo
) -> tuple[PurchaseRequest, WorkflowHandle[Any, Any]]:
    """A run whose server exists, held in the reverse DNS part of bring_up_server: the
    provider answers 503 a while."""
    request = new_request(info)
    handle, _ = await start_purchase(client, request, "mail-provisioning")

    async def server() -> list[dict[str, Any]]:
        return cloud.servers_of(request.purchase_id)

    [created] = await until(server, "the server to exist")
    cloud.inject(
        method="POST",
        path=f"/v1/servers/{created['id']}/actions/change_dns_ptr",
        status=503,
        code="unavailable",
        message="injected: provider busy",
        times=PTR_REFUSALS,
    )

    async def retrying() -> bool:
        return await pending_attempt(handle, "bring_up_server") >= 2

    await until(retrying, "bring_up_server to be retrying")
    return request, handle


async def test_guide_cancel_compensates(
    shell: OperatorShell, client: Client, cloud: CloudControl, reader_vault: Vault
) -> None:
    request, handle = await held_in_reverse_dns(client, cloud, shell.info)
    shell.variables.update(P=request.purchase_id, W=handle.id)
    cancel, result = guide("Cancel a run")
    shell.ok(cancel)
    ended = shell.run(result)
    assert ended.returncode == 1
    # The guide's words: the step comes from the status query, Temporal keeps no message.
    assert f"FAILED {handle.id}: purchase cancelled at wait_for_server; compensated" in (
        ended.stderr
    )
    assert cloud.servers_of(request.purchase_id) == []
    assert reader_vault.read_credentials(request.tenant_id) is None
    assert audit_rows(shell.info, handle.id, "provisioning_failed") == 1
    status = (await handle.describe()).status
    assert status in {WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.CANCELED}
    assert shell.ran_all("Cancel a run")


async def test_guide_terminate_leaves_the_server(
    shell: OperatorShell, client: Client, cloud: CloudControl
) -> None:
    request, handle = await held_in_reverse_dns(client, cloud, shell.info)
    shell.variables.update(P=request.purchase_id, W=handle.id)
    [terminate] = guide("Terminate a run")
    shell.ok(terminate)
    assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    [left_behind] = cloud.servers_of(request.purchase_id)  # as the guide warns
    assert audit_rows(shell.info, handle.id, "provisioning_failed") == 0
    # The reconciler, as the guide says, cleans up after it: server, claim, audit row.
    report = await run_reconciler(
        client, "mail-provisioning", ReconcileRequest(grace_seconds=0), uuid.uuid4().hex[:8]
    )
    assert [o.server_id for o in report.orphans if o.purchase_id == request.purchase_id] == [
        left_behind["id"]
    ]
    assert cloud.servers_of(request.purchase_id) == []
    assert audit_rows(shell.info, handle.id, "provisioning_failed") == 1
    await client.get_workflow_handle(tenant_claim_id(request.tenant_id)).result()
    assert shell.ran_all("Terminate a run")


async def test_guide_check_world(shell: OperatorShell, client: Client) -> None:
    """The check prints its count and exits 1 exactly when something disagrees; the
    schedule line creates the Schedule that runs it."""
    check, schedule = guide("check-world")
    done = shell.run(check)
    assert done.returncode in (0, 1), done.stderr
    found = len(json.loads(done.stdout)["disagreements"])
    assert f"{found} disagreements (" in done.stderr
    assert (done.returncode == 1) == (found > 0)
    assert f"schedule '{WORLD_CHECK_SCHEDULE_ID}'" in shell.ok(schedule)
    await client.get_schedule_handle(WORLD_CHECK_SCHEDULE_ID).delete()
    assert shell.ran_all("check-world")
