"""A 429 during the boot wait costs seconds, not the step (time-skipping server).

Hetzner's RateLimit-Reset is when the bucket is full again, up to an hour ahead. Waiting
for it made one 429 outlast bring_up_server's 15-minute schedule-to-close, so the step
failed and the server was deleted (issue 19, item 6). Here the real activity, with the
real Hetzner client over recorded answers, meets one such 429 under the real policy.
"""

from __future__ import annotations

import time
import uuid

import httpx
from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.hetzner import HetznerClient
from activities.ssh import SshIdentity
from activities.vps_provider import VpsActivities
from workflows.contracts import ServerAddress, ServerHandle, ServerUpRequest
from workflows.policies import WAIT_FOR_SERVER


@workflow.defn(sandboxed=False)
class BootWait:
    """Only the step under test, with the provisioning workflow's options for it."""

    @workflow.run
    async def run(self, request: ServerUpRequest) -> ServerAddress:
        address: ServerAddress = await workflow.execute_activity(
            "bring_up_server", request, result_type=ServerAddress, **WAIT_FOR_SERVER
        )
        return address


SERVER = {
    "id": 9,
    "name": "mail-x",
    "status": "running",
    "labels": {},
    "public_net": {
        "ipv4": {"ip": "203.0.113.5", "dns_ptr": "mail.a.example"},
        "ipv6": None,
        "firewalls": [],
    },
}


def provider_limited_once() -> tuple[HetznerClient, list[int]]:
    answers: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if not answers:
            answers.append(429)
            reset = str(int(time.time()) + 3600)  # the bucket is full in an hour
            error = {"code": "rate_limit_exceeded", "message": "limit reached", "details": {}}
            headers = {"RateLimit-Limit": "3600", "RateLimit-Remaining": "0"}
            return httpx.Response(
                429, json={"error": error}, headers={**headers, "RateLimit-Reset": reset}
            )
        answers.append(200)
        return httpx.Response(200, json={"server": SERVER})

    transport = httpx.MockTransport(handler)
    return HetznerClient("tok", "https://api.example/v1", transport=transport), answers


async def test_one_429_in_the_boot_wait_is_retried_within_seconds(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    provider, answers = provider_limited_once()
    vps = VpsActivities(provider, SshIdentity.generate())
    task_queue = f"backoff-{uuid.uuid4()}"
    request = ServerUpRequest(ServerHandle("t", 9, "mail-x", "key"), "mail.a.example")
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=[BootWait],
        activities=[vps.bring_up_server],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        # Waiting for RateLimit-Reset (3600 s) would outlast the 15-minute
        # schedule-to-close and fail the step; the backoff retries it at once.
        address = await time_skipping_env.client.execute_workflow(
            BootWait.run, request, id=f"boot-{uuid.uuid4()}", task_queue=task_queue
        )
    assert address == ServerAddress(9, "203.0.113.5", None)
    assert answers == [429, 200, 200]  # the look that was limited, then look and PTR check
