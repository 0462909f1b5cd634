"""Our metrics on the worker's Prometheus endpoint, scraped after real runs.

worker.run_worker (the production entry point's body) runs in-process with a
metrics address, on its own task queue, against the real stack: one purchase
completes, one rotation runs through the tenant's schedule, its plan is upgraded,
it is deprovisioned and its activation then ends `tenant_gone`, one purchase fails
at reverse DNS (a provider error) and is compensated. The scrape must show each.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from dataclasses import asdict, replace

import httpx
from temporalio.client import Client, WorkflowFailureError

from activities.rotation_schedule import rotate_now
from devstack.stack import StackInfo
from runtime.worker_health import HealthServer
from starter import activate, check_world, start_deprovision, start_purchase
from tests.e2e.conftest import CloudControl, claim_released, new_request
from tests.e2e.test_compensation import fail_reverse_dns, server_of
from tests.integration.test_observability import referenced_metric_names
from worker import Settings, run_worker
from workflows.activation_contracts import ActivationResult
from workflows.deprovision_contracts import DeprovisionRequest
from workflows.metrics import ACTIVATIONS, PLAN_CHANGE_DOWNTIME
from workflows.plan_change_contracts import (
    PLAN_CHANGE_WORKFLOW_TYPE,
    PlanChangeRequest,
    PlanChangeResult,
    plan_change_workflow_id,
)
from workflows.rotation_contracts import RotationResult
from workflows.world_check_contracts import KINDS, WORLD_CHECKED, WORLD_DISAGREEMENTS

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(port: int) -> object:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for _ in range(300):
            try:
                response = await http.get("/readyz")
            except httpx.ConnectError:
                response = None
            if response is not None and response.status_code == 200:
                assert (await http.get("/livez")).json() == {"alive": True}
                assert (await http.get("/nope")).status_code == 404
                return response.json()
            await asyncio.sleep(0.2)
    raise AssertionError("the worker never reported polling on /readyz")


async def test_health_says_not_ready_while_draining_or_not_polling(client: Client) -> None:
    draining = asyncio.Event()
    server = HealthServer(
        client, f"nobody-polls-{uuid.uuid4().hex[:6]}", "no-such-worker", draining
    )
    port = free_port()
    await server.start(f"127.0.0.1:{port}")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            idle = await http.get("/readyz")
            assert idle.status_code == 503
            assert idle.json()["reason"].startswith("not among the pollers")
            draining.set()
            drained = await http.get("/readyz")
            assert (drained.status_code, drained.json()) == (
                503,
                {"polling": False, "reason": "draining"},
            )
    finally:
        await server.stop()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format: (name, labels, value) per sample line."""
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            found.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return found


def total(scraped: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in scraped
        if sample_name == name and labels.items() <= sample_labels.items()
    )


async def test_scrape_shows_purchases_steps_rotations_compensations_and_provider_errors(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    port, health_port = free_port(), free_port()
    task_queue = f"metrics-{uuid.uuid4().hex[:6]}"
    settings = replace(
        Settings.from_env(info.worker_env),
        task_queue=task_queue,
        metrics_bind=f"127.0.0.1:{port}",
        health_bind=f"127.0.0.1:{health_port}",
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    try:
        # The health endpoint says "polling" only once Temporal lists this worker.
        ready = await wait_ready(health_port)
        assert ready == {
            "polling": True,
            "reason": f"polling {task_queue}",
            "task_queue": task_queue,
        }
        ok = new_request(info)
        handle, _ = await start_purchase(client, ok, task_queue)
        await handle.result()
        run_id = await rotate_now(client, ok.tenant_id)
        rotated = await client.get_workflow_handle(run_id, result_type=RotationResult).result()
        assert rotated.outcome == "rotated"
        # An upgrade (starter -> business): its downtime is a histogram on this worker.
        upgrade = PlanChangeRequest(ok.tenant_id, "metrics-up", "business", "e2e-metrics")
        changed: PlanChangeResult = await client.execute_workflow(
            PLAN_CHANGE_WORKFLOW_TYPE,
            asdict(upgrade),
            id=plan_change_workflow_id(upgrade.tenant_id, upgrade.request_id),
            task_queue=task_queue,
            result_type=PlanChangeResult,
        )
        assert changed.downtime_seconds > 0
        # The customer cancels: the tenant is removed (on this worker: its claim runs here).
        cancelled = await start_deprovision(
            client, DeprovisionRequest(ok.tenant_id, "e2e-metrics"), task_queue
        )
        assert (await cancelled.result()).outcome == "deprovisioned"
        # The back end says "DNS published" for the removed tenant: the activation's check
        # finds the tenant gone and ends with that outcome (counted by outcome).
        activation = await activate(client, ok.tenant_id, task_queue, dns_published=True)
        gone = await client.get_workflow_handle(
            activation.id, result_type=ActivationResult
        ).result()
        assert gone.outcome == "tenant_gone"

        failing = new_request(info)
        handle, _ = await start_purchase(client, failing, task_queue)
        server = await server_of(cloud, failing.purchase_id)
        fail_reverse_dns(cloud, server["id"], 400, "invalid_input", times=1)
        try:
            await handle.result()
            raise AssertionError("the purchase was meant to fail at reverse DNS")
        except WorkflowFailureError:
            pass
        # Its compensation asked the tenant's claim (on this worker's queue) to release.
        await claim_released(client, failing.tenant_id, handle.id)
        # check-world on this worker sets its gauges.
        await check_world(client, task_queue, uuid.uuid4().hex[:8])
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        response.raise_for_status()
    finally:
        stop.set()
        await worker
    scraped = samples(response.text)

    purchase = {"workflow": "ProvisionMailTenant"}
    assert total(scraped, "mailprov_workflow_started", **purchase) == 2
    assert total(scraped, "mailprov_workflow_completed", **purchase) == 1
    failure = {"error_type": "Provider.invalid_input"}
    assert total(scraped, "mailprov_workflow_failed", **purchase, **failure) == 1
    assert total(scraped, "mailprov_compensations", **failure) == 1
    assert total(scraped, "mailprov_provider_errors", code="invalid_input") == 1
    assert total(scraped, "mailprov_rotations", outcome="rotated") == 1
    assert total(scraped, "mailprov_workflow_completed", workflow="RotateSmtpCredentials") == 1
    assert total(scraped, "mailprov_deprovisions", outcome="deprovisioned") == 1
    assert total(scraped, "mailprov_workflow_completed", workflow="DeprovisionMailTenant") == 1
    assert total(scraped, f"{PLAN_CHANGE_DOWNTIME}_count") == 1
    assert total(scraped, ACTIVATIONS, outcome="tenant_gone") == 1
    # Duration per step: one histogram series per activity and outcome.
    for step in ("create_server", "set_up_mailu", "rotate_admin_credentials", "delete_server"):
        count = total(
            scraped, "mailprov_activity_duration_seconds_count", activity=step, outcome="completed"
        )
        assert count >= 1, step
    buckets = {
        labels["le"]
        for name, labels, _ in scraped
        if name == "mailprov_activity_duration_seconds_bucket"
    }
    assert {"0.1", "1200", "+Inf"} <= buckets
    # Credential age: when each tenant's password was last set (one series per activity
    # that set it, provisioning and rotation; alerts take the max per tenant).
    set_at = {
        s[1]["activity_type"]: s[2]
        for s in scraped
        if s[0] == "mailprov_credentials_last_rotated_timestamp_seconds"
        and s[1].get("tenant") == ok.tenant_id
    }
    assert set(set_at) == {"store_credentials", "rotate_admin_credentials"}
    assert set_at["rotate_admin_credentials"] >= set_at["store_credentials"] > 1.7e9
    # check-world: one disagreement series per kind (zeros included) and its time.
    kinds = {labels["kind"] for name, labels, _ in scraped if name == WORLD_DISAGREEMENTS}
    assert kinds == set(KINDS)
    assert total(scraped, WORLD_CHECKED) > 1.7e9
    # Every metric the alerts and the dashboard query is really exported (Vault errors,
    # refused audit appends and front restarts only once one happened: none did here,
    # the activation ended tenant_gone; tests/e2e/test_activation.py restarts front).
    scraped_names = {name.removesuffix("_bucket") for name, _, _ in scraped}
    not_happened = {
        "mailprov_vault_errors",
        "mailprov_audit_chain_broken",
        "mailprov_activation_front_restarts",
    }
    assert referenced_metric_names() - not_happened <= scraped_names
    # The SDK's own metrics are still there beside ours.
    assert total(scraped, "temporal_workflow_completed") >= 2
