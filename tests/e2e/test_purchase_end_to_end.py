"""A purchase on the real stack: Temporal dev server, OpenBao, local cloud, SSH, SMTP."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.audit import SqliteAuditStore
from activities.credentials import read_admin_credentials
from activities.crypto import ENVELOPE_PREFIX
from activities.vault import CREDENTIAL_FIELDS, Vault
from devstack.demo import smtp_login
from devstack.stack import Stack, StackInfo, tool
from starter import start_purchase
from tests.e2e.conftest import CloudControl
from workflows.contracts import STEPS, ProvisionResult, PurchaseRequest, workflow_id_for


async def provision(client: Client, raw: dict[str, Any]) -> ProvisionResult:
    handle, is_new = await start_purchase(client, PurchaseRequest.parse(raw), "mail-provisioning")
    assert is_new
    result: ProvisionResult = await handle.result()
    return result


def audit_rows(info: StackInfo, workflow_id: str) -> list[Any]:
    return [
        r for r in SqliteAuditStore(info.audit_db).rows() if r.event_key.startswith(workflow_id)
    ]


async def test_purchase_is_provisioned_and_stored_credentials_log_in_over_smtp(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
    tmp_path: Path,
) -> None:
    result = await provision(client, purchase)

    assert result.webmail_url == f"https://mail.{purchase['domain']}"
    assert result.vault_path == f"smtp/{purchase['tenant_id']}/admin"
    assert result.vault_version == 1
    assert result.notified
    [server] = cloud.servers_of(purchase["purchase_id"])
    assert server["id"] == result.server_id
    assert server["status"] == "running"
    assert server["public_net"]["ipv4"]["ip"] == result.ipv4
    assert server["labels"]["tenant"] == purchase["tenant_id"]

    record = reader_vault.read_credentials(purchase["tenant_id"])
    assert record is not None
    assert set(record.data) == set(CREDENTIAL_FIELDS)
    assert record.data["username"] == f"admin@{purchase['domain']}"
    assert record.data["password"].startswith(ENVELOPE_PREFIX)
    assert record.data["rotation_policy"] == "180_days"
    assert record.data["created_at"].endswith("Z")

    credentials = read_admin_credentials(reader_vault, purchase["tenant_id"])
    cafile = tmp_path / "vps-cert.pem"
    cafile.write_text(cloud.tls_cert(result.server_id))
    assert result.ipv4 is not None
    login = functools.partial(smtp_login, result.ipv4, info.smtp_port, cafile)
    assert login(credentials.username, credentials.password).startswith("235 ")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        login(credentials.username, credentials.password[::-1])

    workflow_id = workflow_id_for(purchase["purchase_id"])
    [row] = audit_rows(info, workflow_id)
    assert (row.event, row.tenant_id, row.user_id) == (
        "smtp_credentials_stored",
        purchase["tenant_id"],
        "system",
    )
    assert row.details == {"username": credentials.username, "webmail_url": result.webmail_url}
    # The worker MACed the row and anchored the head: the auditor's check passes.
    verify = subprocess.run(
        info.starter_command("audit-verify", "--audit", str(info.audit_db)),
        capture_output=True,
        text=True,
        env={"VAULT_ADDR": info.vault_addr, "VAULT_TOKEN_FILE": str(info.auditor_token_file)},
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "MACs and links verify, anchored at seq" in verify.stderr
    sent = [n for n in cloud.notifications() if n["headers"].get("Idempotency-Key") == workflow_id]
    assert len(sent) == 1
    assert sent[0]["body"]["ipv4"] == result.ipv4


async def test_second_start_while_running_joins_and_after_finish_is_rejected(
    client: Client, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    request = PurchaseRequest.parse(purchase)
    first, first_new = await start_purchase(client, request, "mail-provisioning")
    joined, joined_new = await start_purchase(client, request, "mail-provisioning")
    assert first_new and not joined_new
    assert (await joined.describe()).run_id == (await first.describe()).run_id
    result = await first.result()
    again, again_new = await start_purchase(client, request, "mail-provisioning")
    assert not again_new
    assert await again.result() == result
    assert len(cloud.servers_of(purchase["purchase_id"])) == 1


async def test_a_non_python_client_starts_a_purchase_with_plain_json(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    workflow_id = workflow_id_for(purchase["purchase_id"])
    completed = subprocess.run(
        [
            tool("temporal"),
            "workflow",
            "start",
            "--address",
            info.temporal_address,
            "--type",
            "ProvisionMailTenant",
            "--task-queue",
            "mail-provisioning",
            "--workflow-id",
            workflow_id,
            "--id-reuse-policy",
            "RejectDuplicate",
            "--id-conflict-policy",
            "UseExisting",
            "--input",
            json.dumps(purchase),
            "--codec-endpoint",
            info.codec_url,
            "--codec-auth",
            "Bearer " + info.codec_token_file.read_text().strip(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    handle = client.get_workflow_handle(workflow_id, result_type=ProvisionResult)
    result = await handle.result()
    assert result.tenant_id == purchase["tenant_id"]
    # The CLI sent its input through the codec server: the server holds only ciphertext.
    first_event = (await handle.fetch_history()).events[0]
    [raw_input] = first_event.workflow_execution_started_event_attributes.input.payloads
    assert raw_input.metadata["encoding"] == b"binary/encrypted"
    assert purchase["tenant_id"].encode() not in raw_input.data
    assert [s["id"] for s in cloud.servers_of(purchase["purchase_id"])] == [result.server_id]


async def test_bad_input_from_any_client_fails_fast_and_creates_nothing(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    purchase["tenant_id"] = "Not/A/Tenant"
    handle = await client.start_workflow(
        "ProvisionMailTenant",
        purchase,
        id=workflow_id_for(purchase["purchase_id"]),
        task_queue="mail-provisioning",
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "tenant_id" in str(failure.value.cause)
    assert cloud.servers_of(purchase["purchase_id"]) == []
    assert audit_rows(info, handle.id) == []


async def test_lost_create_response_is_retried_and_adopts_the_created_server(
    client: Client, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    cloud.inject(
        method="POST",
        path="/v1/servers",
        status=503,
        code="unavailable",
        message="lost response",
        times=1,
        after_effect=True,
    )
    result = await provision(client, purchase)
    [server] = cloud.servers_of(purchase["purchase_id"])
    assert server["id"] == result.server_id


async def test_rate_limit_is_waited_out(
    client: Client, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    cloud.inject(
        method="POST",
        path="/v1/servers",
        status=429,
        code="rate_limit_exceeded",
        message="limit",
        times=2,
    )
    result = await provision(client, purchase)
    assert len(cloud.servers_of(purchase["purchase_id"])) == 1
    assert result.vault_version == 1


async def test_provider_refusal_fails_at_once_without_leftovers(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    cloud.inject(
        method="POST",
        path="/v1/servers",
        status=403,
        code="resource_limit_exceeded",
        message="server limit reached",
        times=1,
    )
    handle, _ = await start_purchase(client, PurchaseRequest.parse(purchase), "mail-provisioning")
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ProvisioningFailed"
    assert cause.message == (
        "provisioning failed at create_server: "
        "resource_limit_exceeded: server limit reached (HTTP 403)"
    )
    assert cloud.servers_of(purchase["purchase_id"]) == []
    # The purchase's SSH key was registered before the create; a final refusal removes it.
    selector = f"purchase={purchase['purchase_id']}"
    assert cloud.api.get("ssh_keys", params={"label_selector": selector}).json()["ssh_keys"] == []
    [row] = audit_rows(info, handle.id)
    assert row.event == "provisioning_failed"
    assert row.details["step"] == "create_server"
    assert row.details["error_type"] == "Provider.resource_limit_exceeded"


async def test_worker_killed_mid_run_is_survived_without_duplicates(
    stack: Stack,
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    purchase: dict[str, Any],
) -> None:
    # A second worker takes over after the first is killed (SIGKILL: no drain).
    spare = await stack.start_worker()
    handle, _ = await start_purchase(client, PurchaseRequest.parse(purchase), "mail-provisioning")
    # Killed while the server boots: the workflow's state lives in Temporal, not the worker.
    for _ in range(300):
        status = await handle.query("status")
        if status["current_step"] == "wait_for_server":
            break
        await asyncio.sleep(0.05)
    victims = [p for p in stack.processes("worker") if p is not spare]
    for victim in victims:
        victim.popen.kill()
    result = await handle.result()
    for victim in victims:
        stack.stop_process(victim)
    await stack.start_worker()
    stack.stop_process(spare)
    assert len(cloud.servers_of(purchase["purchase_id"])) == 1
    record = reader_vault.read_credentials(purchase["tenant_id"])
    assert record is not None and record.version == result.vault_version == 1
    assert len(audit_rows(info, handle.id)) == 1


async def test_sigterm_drains_the_running_activity_then_exits_cleanly(
    stack: Stack, client: Client, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    spare = await stack.start_worker()
    [draining] = [p for p in stack.processes("worker") if p is not spare]
    handle, _ = await start_purchase(client, PurchaseRequest.parse(purchase), "mail-provisioning")
    for _ in range(400):
        if (await handle.query("status"))["current_step"] == "configure_mailu":
            break
        await asyncio.sleep(0.05)
    draining.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(draining.popen.wait, 30) == 0
    # The whole log: the drained activity logs on after the "draining" line.
    assert "draining" in draining.log_tail(100_000)
    result = await handle.result()
    assert [s["id"] for s in cloud.servers_of(purchase["purchase_id"])] == [result.server_id]
    stack.stop_process(draining)
    await stack.start_worker()
    stack.stop_process(spare)


def test_starter_cli_shows_progress_and_exits_clearly(
    info: StackInfo, purchase: dict[str, Any]
) -> None:
    def starter(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            info.starter_command(*args), capture_output=True, text=True, timeout=120, check=False
        )

    flags = [
        "--purchase-id",
        purchase["purchase_id"],
        "--tenant-id",
        purchase["tenant_id"],
        "--domain",
        purchase["domain"],
        "--plan",
        "starter",
        "--requested-by",
        "cli",
    ]
    done = starter("start", *flags, "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenant_id"] == purchase["tenant_id"]
    for step in ("validate_input", "create_server", "rotate_host_key", "notify"):
        assert step in done.stderr
    assert f"[{len(STEPS)}/{len(STEPS)}] notify" in done.stderr

    again = starter("start", *flags, "--wait")
    assert again.returncode == 0
    assert "never provisioned twice" in again.stderr
    assert json.loads(again.stdout) == json.loads(done.stdout)

    bad = starter("start", *[f if f != purchase["tenant_id"] else "Bad_Tenant" for f in flags])
    assert bad.returncode == 2
    assert "field 'tenant_id'" in bad.stderr

    missing = starter("status", "no-such-purchase")
    assert missing.returncode == 3
    assert "no purchase 'no-such-purchase'" in missing.stderr

    status = starter("status", purchase["purchase_id"])
    assert json.loads(status.stdout)["state"] == "completed"
