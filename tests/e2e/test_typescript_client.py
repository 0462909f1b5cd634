"""A Node back end on the real stack: clients/typescript with the real @temporalio/client.

The package is installed from the committed package-lock.json (`npm ci`, once; the
stamp in node_modules/ keeps later sessions from reinstalling) and compiled by its
`prepare` script. Each test runs its CLI (lib/cli.js) as a back end would, against
the session's Temporal dev server and worker, with the stack's payload key ring.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio import workflow
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.converter import DataConverter

from activities.credentials import read_admin_credentials
from activities.vault import Vault
from devstack.stack import ROOT, StackInfo
from runtime.codec import ENCODING, KeyRing, data_converter
from starter import start_deprovision, start_purchase
from tests.e2e.activation_world import (
    activation_world,
    secret_texts,
    server_state_dir,
    status_until,
)
from tests.e2e.conftest import CloudControl, held_in_notify, in_process_worker, new_request
from tests.e2e.test_operations_guide import held_in_reverse_dns
from tests.e2e.test_run_outcomes import reconcile_now
from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    DNS_PUBLISHED_SIGNAL,
    ActivationResult,
    ActivationStatus,
    activation_workflow_id,
)
from workflows.contracts import ProvisionResult, workflow_id_for
from workflows.deprovision_contracts import DeprovisionRequest
from workflows.dispatch import ProvisionMailTenant

PACKAGE = ROOT / "clients" / "typescript"
NODE_TIMEOUT = 300
QUERY_ATTEMPTS = 60


@pytest.fixture(scope="session")
def ts_client_cli() -> Path:
    """`npm ci` when package-lock.json changed since the last install, a build when the
    package's sources changed since the last build (lib/ is not committed).

    One session at a time (a lock file): two xdist workers use the package (this module
    and test_tls_purchase), and two `npm ci` in one directory would delete each other's
    node_modules; the second then finds the build current instead of building it again.
    """
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node >= 20 and npm are needed for clients/typescript"
    with (PACKAGE / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = PACKAGE / "node_modules" / ".mailprov-lock-sha256"
        built = PACKAGE / "node_modules" / ".mailprov-build-sha256"  # not in lib/: packed
        lock_hash = _digest([PACKAGE / "package-lock.json"])
        sources_hash = _digest(_build_inputs())
        if not installed.exists() or installed.read_text() != lock_hash:
            subprocess.run(  # `prepare` builds too
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=PACKAGE,
                check=True,
                timeout=NODE_TIMEOUT,
            )
            installed.write_text(lock_hash)
        elif (
            not (PACKAGE / "lib" / "cli.js").exists()
            or not built.exists()
            or built.read_text() != sources_hash
        ):
            subprocess.run([npm, "run", "build"], cwd=PACKAGE, check=True, timeout=NODE_TIMEOUT)
        built.write_text(sources_hash)
    return PACKAGE / "lib" / "cli.js"


def _build_inputs() -> list[Path]:
    """What `npm run build` reads: the sources, the schema, the generator, the configs."""
    found = [p for d in ("src", "schema", "scripts") for p in (PACKAGE / d).rglob("*")]
    names = ("package.json", "package-lock.json", "tsconfig.json")
    return sorted([*(p for p in found if p.is_file()), *(PACKAGE / n for n in names)])


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def node(
    cli: Path,
    info: StackInfo,
    *args: str,
    stdin: Any = None,
    keys_file: Path | None = None,
    task_queue: str | None = None,
    printed: list[str] | None = None,
) -> tuple[int, Any]:
    """One CLI run; `printed` collects everything it wrote (stdout and stderr)."""
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": info.temporal_address,
        "MAILPROV_CODEC_KEYS_FILE": str(keys_file or info.codec_keys_file),
    }
    if task_queue is not None:
        env["MAILPROV_TASK_QUEUE"] = task_queue
    completed = subprocess.run(
        ["node", str(cli), *args],
        input=json.dumps(stdin) if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    if printed is not None:
        printed += [completed.stdout, completed.stderr]
    if not completed.stdout:  # the CLI reports failures to call the server on stderr
        assert completed.returncode != 0
        return completed.returncode, {"stderr": completed.stderr}
    return completed.returncode, json.loads(completed.stdout)


async def test_node_back_end_starts_joins_queries_and_reads_the_result(
    ts_client_cli: Path,
    info: StackInfo,
    client: Client,
    cloud: CloudControl,
    purchase: dict[str, Any],
) -> None:
    code, started = await asyncio.to_thread(node, ts_client_cli, info, "start", stdin=purchase)
    assert code == 0
    assert started["workflowId"] == workflow_id_for(purchase["purchase_id"])
    # A repeated start while it runs joins the running one (USE_EXISTING).
    _, joined = await asyncio.to_thread(node, ts_client_cli, info, "start", stdin=purchase)
    assert joined == started

    # A query is answered once the worker has run the first workflow task: allow for that.
    for _ in range(QUERY_ATTEMPTS):
        code, status = await asyncio.to_thread(
            node, ts_client_cli, info, "status", purchase["purchase_id"]
        )
        if code == 0:
            break
        await asyncio.sleep(0.5)
    assert code == 0, status
    assert status["state"] in {"running", "completed"}
    assert status["steps"][0]["name"] == "validate_input"

    code, result = await asyncio.to_thread(
        node, ts_client_cli, info, "result", purchase["purchase_id"]
    )
    assert code == 0, result
    # The Python client reads the very same result from the run the Node client started.
    handle = client.get_workflow_handle(started["workflowId"], result_type=ProvisionResult)
    assert result == json.loads(json.dumps(asdict(await handle.result())))
    assert result["webmail_url"] == f"https://mail.{purchase['domain']}"
    assert (await handle.describe()).run_id == started["runId"]

    # Finished: a new start is refused by the server (REJECT_DUPLICATE) and reports that run.
    _, again = await asyncio.to_thread(node, ts_client_cli, info, "start", stdin=purchase)
    assert again == started
    assert len(cloud.servers_of(purchase["purchase_id"])) == 1

    # What the server stored from the Node client is ciphertext in the samples' format.
    stored = json.loads(info.workflow_history(started["workflowId"], decoded=False))
    start_event = stored["events"][0]["workflowExecutionStartedEventAttributes"]
    [payload] = start_event["input"]["payloads"]
    assert set(payload["metadata"]) == {"encoding", "encryption-key-id"}
    assert purchase["tenant_id"].encode() not in json.dumps(stored).encode()


def activation_names_in_typescript(cli: Path) -> dict[str, str]:
    """The names the package's activation methods send (exported by lib/index.js)."""
    script = (
        f"const c = require({json.dumps(str(cli.parent / 'index.js'))});"
        "process.stdout.write(JSON.stringify({type: c.ACTIVATION_WORKFLOW_TYPE,"
        " query: c.STATUS_QUERY, signal: c.DNS_PUBLISHED_SIGNAL,"
        " id: c.activationWorkflowIdFor('acme')}));"
    )
    done = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, check=True, timeout=NODE_TIMEOUT
    )
    names: dict[str, str] = json.loads(done.stdout)
    return names


def record_key(problem: dict[str, Any]) -> tuple[str, str]:
    return problem["name"], problem["type"]


async def signals_received(client: Client, workflow_id: str) -> list[str]:
    """The names of the signals a run's history holds, in order."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [
        event.workflow_execution_signaled_event_attributes.signal_name
        for event in history.events
        if event.HasField("workflow_execution_signaled_event_attributes")
    ]


async def test_node_back_end_buys_then_follows_the_activation_until_mail_is_active(
    ts_client_cli: Path, info: StackInfo, client: Client, cloud: CloudControl, reader_vault: Vault
) -> None:
    """A purchase from Node, then its ActivateMailDomain run from Node as a back end
    follows it: activationStatus shows the wait for DNS and what is missing, the records
    are published in a real Knot zone (pebble the CA, certbot on the front stand-in,
    tests/e2e/activation_world.py), dnsPublished makes it check at once, activationResult
    returns the active result. Nothing secret is in anything the CLI printed."""
    # The names the TypeScript methods send are the ones the Python workflow answers.
    definition = workflow._Definition.must_from_class(ProvisionMailTenant)
    assert activation_names_in_typescript(ts_client_cli) == {
        "type": ACTIVATION_WORKFLOW_TYPE,
        "query": next(iter(definition.queries)),
        "signal": DNS_PUBLISHED_SIGNAL,
        "id": activation_workflow_id("acme"),
    }
    assert (set(definition.queries), set(definition.signals)) == (
        {"status"},
        {DNS_PUBLISHED_SIGNAL},
    )

    request = new_request(info)
    tenant, domain = request.tenant_id, request.domain
    task_queue = f"ts-activation-{uuid.uuid4().hex[:8]}"
    printed: list[str] = []

    async def ts(*args: str, stdin: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(
            node, ts_client_cli, info, *args, stdin=stdin, task_queue=task_queue, printed=printed
        )

    with activation_world() as world:
        async with in_process_worker(info, client, task_queue, extra_env=world.worker_env(info)):
            code, started = await ts("start", stdin=asdict(request))
            assert code == 0, started
            try:
                code, bought = await ts("result", request.purchase_id)
                assert code == 0, bought
                state_dir = server_state_dir(cloud, request.purchase_id)
                activation_id = activation_workflow_id(tenant)
                # The purchase started the activation; nothing checked yet, the first
                # scheduled check minutes away.
                before = await status_until(client, tenant, lambda s: s.give_up_at is not None)
                assert (before.state, before.checks) == ("waiting_for_dns", 0), before
                with world.customer_zone(domain, []):
                    code, signalled = await ts("dns-published", tenant)
                    assert (code, signalled) == (0, {"signalled": True})
                    assert await signals_received(client, activation_id) == [DNS_PUBLISHED_SIGNAL]
                    await status_until(client, tenant, lambda s: s.checks >= 1)
                    code, waiting = await ts("activation-status", tenant)
                assert code == 0, waiting
                handed_out = [record["zone_line"] for record in bought["dns_records"]]
                with world.customer_zone(domain, handed_out):
                    world.let_front_reach_the_ca(state_dir)
                    await world.certificate_issued(state_dir)
                    code, _ = await ts("dns-published", tenant)
                    assert code == 0
                    code, active = await ts("activation-result", tenant)
                    assert code == 0, active
                    code, after = await ts("activation-status", tenant)
                    assert code == 0, after
                python_result = await client.get_workflow_handle(
                    activation_id, result_type=ActivationResult
                ).result()
                secrets = secret_texts(state_dir)
                secrets.append(read_admin_credentials(reader_vault, tenant).password)
            finally:
                done = await start_deprovision(
                    client, DeprovisionRequest(tenant, "e2e-cleanup"), task_queue
                )
                assert (await done.result()).outcome == "deprovisioned"

    # Waiting for DNS: the status names every record handed out, each absent, and when
    # the run checks again and gives up; the check came from the signal, before the
    # first scheduled one.
    assert set(waiting) == {f.name for f in fields(ActivationStatus)}
    assert (waiting["tenant_id"], waiting["domain"], waiting["state"]) == (
        tenant,
        domain,
        "waiting_for_dns",
    )
    assert waiting["checks"] == 1 and waiting["last_checked_at"] < before.next_check_at
    absent = [
        {
            "name": r["name"],
            "type": r["type"],
            "expected": r["value"],
            "problem": "absent",
            "found": [],
        }
        for r in bought["dns_records"]
    ]
    assert sorted(waiting["missing"], key=record_key) == sorted(absent, key=record_key)
    assert waiting["next_check_at"] is not None and waiting["give_up_at"] == before.give_up_at
    assert (waiting["dns_verified_at"], waiting["tls_checks"], waiting["tls_missing"]) == (
        None,
        0,
        [],
    )
    assert (waiting["certificate_not_after"], waiting["front_restarts"]) == (None, 0)
    assert (waiting["activated_at"], waiting["error"]) == (None, None)

    # Active: the result Node read is the run's result, field for field.
    assert active == json.loads(json.dumps(asdict(python_result)))
    assert (active["tenant_id"], active["outcome"], active["stage"]) == (tenant, "active", "active")
    assert (active["missing"], active["tls_missing"]) == ([], [])
    assert active["checks"] >= 2 and active["tls_checks"] >= 1
    # MailU 2024.06: dovecot needed front restarted for the first certificate.
    assert (active["front_restarted"], active["notified"]) == (True, True)
    assert active["certificate_not_after"] == after["certificate_not_after"] is not None
    assert (after["state"], after["front_restarts"], after["missing"]) == ("active", 1, [])
    assert after["activated_at"] is not None and after["dns_verified_at"] is not None

    # Nothing secret in what Node printed: not the admin password (the purchase proved
    # it, Vault holds it), not the ACME account or certificate keys, not the codec keys.
    keyring = KeyRing.from_file(info.codec_keys_file)
    secrets += [base64.b64encode(key).decode() for key in keyring.keys.values()]
    secrets += [key.hex() for key in keyring.keys.values()]
    output = "".join(printed)
    assert len(secrets) >= 4 and output
    assert [secret for secret in secrets if secret in output] == []


async def node_error(cli: Path, info: StackInfo, request: dict[str, Any]) -> dict[str, Any]:
    """Start a purchase from Node and return the typed error its result reports."""
    await asyncio.to_thread(node, cli, info, "start", stdin=request)
    code, answer = await asyncio.to_thread(node, cli, info, "result", request["purchase_id"])
    assert code == 1, answer
    error: dict[str, Any] = answer["error"]
    return error


async def test_node_back_end_gets_typed_errors(
    ts_client_cli: Path, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    invalid = await node_error(ts_client_cli, info, {**purchase, "domain": "Not_A_Domain"})
    assert invalid["name"] == "InvalidPurchaseRequestError"
    assert (invalid["field"], invalid["rule"]) == ("domain", "must be lowercase")
    assert cloud.servers_of(purchase["purchase_id"]) == []

    # A failure after the server exists: compensated, reported as ProvisioningFailed.
    cloud.devstack.post("boot-failures", json={"times": 1}).raise_for_status()
    failing = {**purchase, "purchase_id": f"{purchase['purchase_id']}-boot"}
    failed = await node_error(ts_client_cli, info, failing)
    assert failed["name"] == "ProvisioningFailedError"
    assert (failed["step"], failed["error_type"]) == ("wait_for_server", "ServerBootFailed")
    assert "failed to boot" in failed["message"]
    assert cloud.servers_of(failing["purchase_id"]) == []


async def test_node_back_end_deprovisions_a_cancelled_tenant(
    ts_client_cli: Path, info: StackInfo, client: Client, cloud: CloudControl
) -> None:
    """`deprovision(tenantId)` from Node: the tenant's server goes, a repeat finds
    nothing, and a bad tenant id is the workflow's typed refusal."""
    request = new_request(info)
    handle, _ = await start_purchase(client, request, "mail-provisioning")
    provisioned: ProvisionResult = await handle.result()
    code, result = await asyncio.to_thread(
        node, ts_client_cli, info, "deprovision", request.tenant_id, "node-billing"
    )
    assert code == 0, result
    assert result["outcome"] == "deprovisioned"
    assert result["servers_deleted"] == [provisioned.server_id]
    assert (result["claim_released"], result["rotation_schedule_removed"]) == (True, True)
    assert cloud.servers(label_selector=f"tenant={request.tenant_id}") == []
    code, again = await asyncio.to_thread(
        node, ts_client_cli, info, "deprovision", request.tenant_id
    )
    assert (code, again["outcome"]) == (0, "nothing_found")
    code, refused = await asyncio.to_thread(
        node, ts_client_cli, info, "deprovision", "Not-A-Tenant"
    )
    assert code == 1
    assert refused["error"]["name"] == "DeprovisionError"
    assert refused["error"]["type"] == "InvalidDeprovisionRequest"
    assert "field 'tenant_id'" in refused["error"]["message"]


async def test_node_back_end_changes_a_plan_and_gets_the_refusal_typed(
    ts_client_cli: Path, info: StackInfo, client: Client, cloud: CloudControl
) -> None:
    """`changePlan(...)` from Node: starter -> business with the downtime measured, then
    the way back refused before anything is touched (the disk was upgraded)."""
    request = new_request(info)
    handle, _ = await start_purchase(client, request, "mail-provisioning")
    provisioned: ProvisionResult = await handle.result()
    tenant = request.tenant_id
    code, result = await asyncio.to_thread(
        node, ts_client_cli, info, "change-plan", tenant, "business", "node-1", "node-billing"
    )
    assert code == 0, result
    assert (result["server_id"], result["server_type"], result["disk_gb"]) == (
        provisioned.server_id,
        "cx33",
        80,
    )
    assert result["downtime_seconds"] > 0
    code, refused = await asyncio.to_thread(
        node, ts_client_cli, info, "change-plan", tenant, "starter", "node-2"
    )
    assert code == 1
    assert refused["error"]["name"] == "PlanChangeError"
    assert refused["error"]["type"] == "PlanChangeImpossible"
    [server] = cloud.servers(label_selector=f"tenant={tenant}")
    assert (server["status"], server["server_type"]["name"]) == ("running", "cx33")


async def test_node_back_end_gets_the_holder_the_cancel_and_the_terminate(
    ts_client_cli: Path, info: StackInfo, client: Client, cloud: CloudControl
) -> None:
    # Held in bring_up_server: the claim is taken, no Vault record yet, so the claim's
    # holder (not the tenant's record) is what refuses a second purchase.
    holding, holder = await held_in_reverse_dns(client, cloud, info)
    # Another purchase for the same tenant: refused at once, the holder named.
    second = {**asdict(holding), "purchase_id": f"{holding.purchase_id}-again"}
    refused = await node_error(ts_client_cli, info, second)
    assert refused["name"] == "TenantAlreadyProvisionedError"
    assert (refused["tenant_id"], refused["holder"]) == (holding.tenant_id, holder.id)
    assert refused["claim_workflow_id"] == f"tenant-{holding.tenant_id}"

    # The holder is cancelled there: compensated, and the error says where.
    await holder.cancel()
    code, answer = await asyncio.to_thread(node, ts_client_cli, info, "result", holding.purchase_id)
    assert code == 1, answer
    assert answer["error"] == {
        "name": "PurchaseCancelledError",
        "message": "purchase cancelled at wait_for_server; compensated",
        "state": "cancelled",
        "step": "wait_for_server",
        "compensated": True,
    }
    assert cloud.servers_of(holding.purchase_id) == []

    # A terminated run: status says so (the query alone says `running`), result too.
    stopped, handle = await held_in_notify(client, info)
    await handle.terminate(reason="test: terminated")
    code, status = await asyncio.to_thread(node, ts_client_cli, info, "status", stopped.purchase_id)
    assert code == 0, status
    assert (status["state"], status["current_step"], status["stopped_at"]) == (
        "terminated",
        None,
        "notify",
    )
    assert status["steps"][-1] == {**status["steps"][-1], "name": "notify", "state": "interrupted"}
    code, answer = await asyncio.to_thread(node, ts_client_cli, info, "result", stopped.purchase_id)
    assert code == 1, answer
    ended = answer["error"]
    assert (ended["name"], ended["state"], ended["step"], ended["compensated"]) == (
        "PurchaseEndedError",
        "terminated",
        "notify",
        False,
    )
    assert ended["message"].startswith("purchase terminated at notify (test: terminated)")
    assert len(cloud.servers_of(stopped.purchase_id)) == 1  # nothing undone, as it says
    await reconcile_now(client)
    assert cloud.servers_of(stopped.purchase_id) == []


async def test_node_watch_shows_each_steps_duration_and_what_a_long_step_waits_for(
    ts_client_cli: Path, info: StackInfo, client: Client, cloud: CloudControl
) -> None:
    """`mailprov-client watch` as `starter.py start --wait`: ended steps with their duration
    (from the history), a long step's attempt and last failure (from a describe, decoded
    with the codec), then the result or the typed error on stdout."""
    # Held in bring_up_server: the provider refuses reverse DNS a while, attempts retry.
    request, handle = await held_in_reverse_dns(client, cloud, info)
    watching = await asyncio.create_subprocess_exec(
        "node",
        str(ts_client_cli),
        "watch",
        request.purchase_id,
        "--progress-every",
        "1",
        env={
            **os.environ,
            "TEMPORAL_ADDRESS": info.temporal_address,
            "MAILPROV_CODEC_KEYS_FILE": str(info.codec_keys_file),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert watching.stderr is not None
    lines: list[str] = []
    waiting = re.compile(r"^  bring_up_server +(waiting: .*; )?attempt \d+, last: .+")
    try:
        while not any(waiting.search(line) for line in lines):
            line = (await asyncio.wait_for(watching.stderr.readline(), NODE_TIMEOUT)).decode()
            assert line, "watch ended without saying what bring_up_server waits for:\n" + "".join(
                lines
            )
            lines.append(line)
        await handle.cancel()
        out, rest = await asyncio.wait_for(watching.communicate(), NODE_TIMEOUT)
        lines += rest.decode().splitlines(keepends=True)
    finally:
        if watching.returncode is None:
            watching.kill()
    output = "".join(lines)
    # Steps that ended show how long they took (scheduled to ended, from the history).
    assert re.search(r"^  admit_purchase +done \(\d+\.\d s\)$", output, re.M), output
    assert re.search(r"^  create_server +done \(\d+\.\d s\)$", output, re.M), output
    assert watching.returncode == 1
    error = json.loads(out)["error"]
    assert (error["name"], error["step"]) == ("PurchaseCancelledError", "wait_for_server")


def test_the_package_packs_its_built_code_and_types_and_takes_any_plan_name(
    ts_client_cli: Path, tmp_path: Path
) -> None:
    """Publishable: not private, built on pack, JavaScript and declarations shipped; and
    an operator's own plan name type-checks (the worker checks plans at run time)."""
    npm = shutil.which("npm")
    assert npm
    assert "private" not in json.loads((PACKAGE / "package.json").read_text())
    packed = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        check=True,
        timeout=NODE_TIMEOUT,
    )
    files = {entry["path"] for entry in json.loads(packed.stdout)[0]["files"]}
    assert {"package.json", "lib/index.js", "lib/index.d.ts", "lib/cli.js"} <= files
    assert not any(name.startswith(("src/", "node_modules/")) for name in files)
    source = tmp_path / "operator_plan.ts"
    source.write_text(
        f"import {{ PurchaseRequest }} from {json.dumps(str(PACKAGE / 'lib' / 'index'))};\n"
        "const request: PurchaseRequest = { purchase_id: 'p-1', tenant_id: 'acme',\n"
        "  domain: 'acme.example', plan: 'operator-gold', requested_by: 'shop' };\n"
        "console.log(request.plan);\n"
    )
    compiled = subprocess.run(
        # As a consumer's tsconfig does (ours too; `tsc --init` writes it): the library
        # declarations are not re-checked, 15 s of CPU here, only their use.
        [
            str(PACKAGE / "node_modules" / ".bin" / "tsc"),
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=NODE_TIMEOUT,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


def test_the_build_refuses_generated_contract_types_that_differ_from_the_schema(
    ts_client_cli: Path, tmp_path: Path
) -> None:
    """The package's types are generated from schema/contracts.json (the Python contracts'
    export, tests/unit/test_contract_schema.py): the committed src/generated/contracts.ts is
    exactly the generator's output, and the check the build runs first fails once they
    differ (here: a field renamed in a copy of the schema), naming the command to run."""
    generator = ["node", "scripts/generate-contracts.mjs", "--check"]
    fresh = subprocess.run(
        generator, cwd=PACKAGE, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False
    )
    assert fresh.returncode == 0, fresh.stderr
    copy = tmp_path / "package"
    for part in ("scripts", "schema", "src/generated"):
        shutil.copytree(PACKAGE / part, copy / part)
    schema = copy / "schema" / "contracts.json"
    schema.write_text(schema.read_text().replace('"zone_line"', '"zone_lines"'))
    stale = subprocess.run(
        generator, cwd=copy, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False
    )
    assert stale.returncode == 1
    assert "npm run generate" in stale.stderr
    subprocess.run(["node", "scripts/generate-contracts.mjs"], cwd=copy, check=True)
    assert "zone_lines: string;" in (copy / "src" / "generated" / "contracts.ts").read_text()


async def test_payloads_round_trip_between_the_python_and_typescript_codecs(
    ts_client_cli: Path, info: StackInfo, tmp_path: Path
) -> None:
    """Both directions, across a key rotation: each side reads the other's old and new keys."""
    old_ring = KeyRing.generate("ring-1")
    new_ring = old_ring.rotated("ring-2")
    old_file, new_file = tmp_path / "old.json", tmp_path / "new.json"
    old_ring.write(old_file)
    new_ring.write(new_file)
    text = "grüße"
    value = {"purchase": f"p-{uuid.uuid4().hex[:6]}", "text": text, "n": [1, 2.5, None]}

    # Python -> TypeScript: payloads under the old key, read by a Node process with the new ring.
    python_side = data_converter(old_ring)
    encoded = await python_side.encode([value])
    assert encoded[0].metadata["encoding"] == ENCODING
    as_json = json.loads(json_format.MessageToJson(Payloads(payloads=encoded)))
    code, decoded = await asyncio.to_thread(
        node, ts_client_cli, info, "decode", stdin=as_json, keys_file=new_file
    )
    assert code == 0
    assert decoded == {"values": [value]}

    # A payload of the first release (key id bound as associated data) still opens in Node.
    nonce = secrets.token_bytes(12)
    [plain] = await DataConverter.default.encode([value])
    sealed = AESGCM(old_ring.keys["ring-1"]).encrypt(nonce, plain.SerializeToString(), b"ring-1")
    legacy = {
        "payloads": [
            {
                "metadata": {
                    "encoding": base64.b64encode(ENCODING).decode(),
                    "encryption-key-id": base64.b64encode(b"ring-1").decode(),
                },
                "data": base64.b64encode(nonce + sealed).decode(),
            }
        ]
    }
    code, decoded = await asyncio.to_thread(
        node, ts_client_cli, info, "decode", stdin=legacy, keys_file=new_file
    )
    assert (code, decoded) == (0, {"values": [value]})

    # TypeScript -> Python: the Node codec encrypts under the current key, Python decodes.
    code, from_node = await asyncio.to_thread(
        node, ts_client_cli, info, "encode", stdin=value, keys_file=new_file
    )
    assert code == 0
    payloads = list(json_format.ParseDict(from_node, Payloads()).payloads)
    assert payloads[0].metadata["encryption-key-id"] == b"ring-2"
    assert text.encode() not in payloads[0].data
    assert await data_converter(new_ring).decode(payloads) == [value]
    # The old ring does not have ring-2: the key id, not a guess, decides.
    with pytest.raises(Exception, match="unknown key id 'ring-2'"):
        await data_converter(old_ring).decode(payloads)
