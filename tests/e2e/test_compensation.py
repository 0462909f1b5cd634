"""A failure retries cannot fix, at each step after the server exists, on the real stack.

Each case must leave no server at the cloud, no Vault record, and exactly one
`provisioning_failed` audit row naming the step; the workflow fails with the reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.audit import SqliteAuditStore
from activities.ssh import SshIdentity
from activities.vault import Vault
from devstack.stack import StackInfo
from starter import start_purchase
from tests.e2e.conftest import (
    CloudControl,
    new_request,
    run_in_process_worker,
    write_only_token,
)
from workflows.claim_contracts import TenantClaimState, tenant_claim_id
from workflows.contracts import PurchaseRequest, server_name_for


async def server_of(
    cloud: CloudControl, purchase_id: str, status: str | None = None
) -> dict[str, Any]:
    for _ in range(400):
        servers = cloud.servers_of(purchase_id)
        if servers and (status is None or servers[0]["status"] == status):
            return servers[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {status or ''} server for {purchase_id}")


async def impersonate_the_server(info: StackInfo, request: PurchaseRequest, ipv4: str) -> None:
    """Play a man in the middle: the address now answers with a host key nobody pinned."""
    identity = SshIdentity.from_file(Path(info.worker_env["MAILPROV_SSH_KEY_FILE"]))
    _, pinned = identity.cloud_init_for(server_name_for(request))
    intruder = asyncssh.generate_private_key("ssh-ed25519")
    async with asyncssh.connect(
        ipv4,
        port=info.ssh_port,
        username="root",
        client_keys=[identity.asyncssh_key()],
        known_hosts=([asyncssh.import_public_key(pinned)], [], []),
        agent_path=None,
        config=None,
    ) as conn:
        async with (
            conn.start_sftp_client() as sftp,
            sftp.open(
                "/etc/ssh/ssh_host_ed25519_key", "w", asyncssh.SFTPAttrs(permissions=0o600)
            ) as handle,
        ):
            await handle.write(intruder.export_private_key().decode())
        result = await conn.run("systemctl reload ssh", check=False)
        assert result.exit_status == 0, result.stderr


def fail_reverse_dns(
    cloud: CloudControl, server_id: int, status: int, code: str, times: int
) -> None:
    cloud.inject(
        method="POST",
        path=f"/v1/servers/{server_id}/actions/change_dns_ptr",
        status=status,
        code=code,
        message=f"injected {code}",
        times=times,
    )


def without_docker(
    cloud: CloudControl, request: PurchaseRequest, match: str
) -> Callable[[], Awaitable[None]]:
    """Once the server exists, its commands containing `match` fail as if docker were missing."""

    async def inject() -> None:
        server = await server_of(cloud, request.purchase_id)
        cloud.inject_command_fault(
            server["id"], match, exit_status=127, stderr="bash: line 1: docker: command not found"
        )

    return inject


def failure_rows(info: StackInfo, workflow_id: str) -> list[Any]:
    return [
        r
        for r in SqliteAuditStore(info.audit_db).rows()
        if r.event_key.startswith(workflow_id + "/")
    ]


async def provision_expecting_failure(
    client: Client, request: PurchaseRequest, meanwhile: Callable[[], Awaitable[None]]
) -> tuple[str, ApplicationError]:
    handle, _ = await start_purchase(client, request, "mail-provisioning")
    await meanwhile()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return handle.id, cause


def assert_cleaned_up(
    info: StackInfo,
    cloud: CloudControl,
    reader_vault: Vault,
    request: PurchaseRequest,
    workflow_id: str,
    step: str,
) -> None:
    assert cloud.servers_of(request.purchase_id) == []
    assert reader_vault.read_credentials(request.tenant_id) is None
    [row] = failure_rows(info, workflow_id)
    assert row.event == "provisioning_failed"
    assert row.details["step"] == step
    assert row.details["server_kept"] == "false"


async def test_boot_failure(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault
) -> None:
    request = new_request(info)
    cloud.devstack.post("boot-failures", json={"times": 1}).raise_for_status()

    async def nothing() -> None:
        return None

    workflow_id, cause = await provision_expecting_failure(client, request, nothing)
    assert cause.type == "ProvisioningFailed"
    assert "failed to boot" in cause.message
    assert_cleaned_up(info, cloud, reader_vault, request, workflow_id, "wait_for_server")


async def test_reverse_dns_refused(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault
) -> None:
    request = new_request(info)

    async def refuse_ptr() -> None:
        server = await server_of(cloud, request.purchase_id)
        fail_reverse_dns(cloud, server["id"], 400, "invalid_input", times=1)

    workflow_id, cause = await provision_expecting_failure(client, request, refuse_ptr)
    assert "invalid_input" in cause.message
    # The reverse DNS is the second part of bring_up_server: the step is wait_for_server.
    assert_cleaned_up(info, cloud, reader_vault, request, workflow_id, "wait_for_server")


async def test_host_key_mismatch_stops_the_run_and_is_audited(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault
) -> None:
    request = new_request(info)

    async def intercept() -> None:
        server = await server_of(cloud, request.purchase_id)
        # Hold the run before its first SSH login while the intruder takes over.
        fail_reverse_dns(cloud, server["id"], 503, "unavailable", times=3)
        running = await server_of(cloud, request.purchase_id, status="running")
        await impersonate_the_server(info, request, running["public_net"]["ipv4"]["ip"])

    workflow_id, cause = await provision_expecting_failure(client, request, intercept)
    assert "host key other than the one pinned" in cause.message
    assert_cleaned_up(info, cloud, reader_vault, request, workflow_id, "rotate_host_key")
    [row] = failure_rows(info, workflow_id)
    assert row.details["error_type"] == "HostKeyMismatch"


@pytest.mark.parametrize(
    ("match", "step"),
    [
        ("up -d", "configure_mailu"),
        ("config-import -u -", "create_admin_credentials"),
    ],
)
async def test_mailu_cannot_run(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault, match: str, step: str
) -> None:
    request = new_request(info)

    workflow_id, cause = await provision_expecting_failure(
        client, request, without_docker(cloud, request, match)
    )
    assert "docker: command not found" in cause.message
    assert_cleaned_up(info, cloud, reader_vault, request, workflow_id, step)


async def test_vault_refusing_the_write(
    client: Client, info: StackInfo, cloud: CloudControl, reader_vault: Vault, tmp_path: Path
) -> None:
    request = new_request(info)
    task_queue = f"compensation-{uuid.uuid4().hex[:6]}"
    workflow_id, failure = await run_in_process_worker(
        info, client, task_queue, write_only_token(info, tmp_path), request
    )
    assert isinstance(failure, WorkflowFailureError)
    assert "permission denied" in str(failure.cause)
    assert_cleaned_up(info, cloud, reader_vault, request, workflow_id, "store_credentials")


async def test_a_worker_keeping_failed_servers_leaves_it_for_debugging(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    """The operator's worker setting (never a purchase's input, issue 17)."""
    request = new_request(info)
    claim = client.get_workflow_handle(tenant_claim_id(request.tenant_id))

    async def debugging_done() -> None:
        """While the worker still serves the claim (it runs on the worker's task queue)."""
        [kept] = cloud.servers_of(request.purchase_id)
        # The kept server keeps its tenant's claim: the owner check refused
        # compensation's release while the server stood.
        assert (await claim.query("claim", result_type=TenantClaimState)).state == "held"
        cloud.api.delete(f"servers/{kept['id']}").raise_for_status()
        for _ in range(600):
            if not cloud.servers_of(request.purchase_id):
                break
            await asyncio.sleep(0.2)
        # The operator done debugging asks the claim to release: granted now.
        await claim.signal("release", "debugging done; server deleted by hand")
        assert (await claim.result()).startswith("released: debugging done")

    workflow_id, failure = await run_in_process_worker(
        info,
        client,
        f"keep-{uuid.uuid4().hex[:6]}",
        None,
        request,
        while_running=without_docker(cloud, request, "up -d"),
        extra_env={"MAILPROV_KEEP_FAILED_SERVERS": "true"},
        after=debugging_done,
    )
    assert isinstance(failure, WorkflowFailureError)
    [row] = failure_rows(info, workflow_id)
    assert row.details["server_kept"] == "true"
    assert cloud.servers_of(request.purchase_id) == []
