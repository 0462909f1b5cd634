"""The stand-in's shutdown / poweroff / poweron / change_type / update, through the
product's own Hetzner client and plan-change activities.

What is checked is Hetzner's documented behaviour (devstack/plan_change.py cites it):
change_type needs a stopped server, keeps or grows the disk, never shrinks it, and
refuses a type not sold in the server's location or deprecated; a shutdown the OS
ignores is followed by a poweroff.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.hetzner import HetznerClient
from activities.plan_change import PlanChangeActivities, PlanChangeSettings
from activities.plan_change_guard import TenantRuns
from activities.plans import DEFAULT_CATALOG
from activities.ssh import ServerAccess, SshIdentity
from activities.vault import Vault
from activities.vps_provider import ProviderError
from devstack.cloud import LocalCloud
from devstack.processes import free_port
from devstack.stack import shared_tls
from workflows.contracts import server_name_of
from workflows.plan_change_contracts import (
    PlanChangeRequest,
    PlanLabelRequest,
    ServerPowerRequest,
    ServerTypeChange,
)

TOKEN = "plan-change-token"
LABELS = {"managed-by": "mail-provisioning", "purchase": "p1", "tenant": "t1"}


class ScriptedRuns(TenantRuns):
    """Temporal's answer about the tenant's other runs, as the test sets it: workflow id
    -> status (none: Temporal knows no such run)."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, WorkflowExecutionStatus] = {}

    async def _status(self, workflow_id: str) -> WorkflowExecutionStatus | None:
        return self.statuses.get(workflow_id)


@dataclass
class World:
    cloud: LocalCloud
    api: httpx.AsyncClient
    client: HetznerClient
    activities: PlanChangeActivities
    runs: ScriptedRuns


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    cloud = LocalCloud(tmp_path / "cloud", TOKEN, free_port(), free_port(), boot_seconds=0.2)
    base = await cloud.start()
    api = httpx.AsyncClient(
        base_url=base + "/",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=20,
        verify=shared_tls(),
    )
    client = HetznerClient(TOKEN, base)
    # The activities under test here never read Vault (check_plan_change does).
    runs = ScriptedRuns()
    activities = PlanChangeActivities(
        client,
        cast(Vault, None),
        ServerAccess(SshIdentity.generate()),
        DEFAULT_CATALOG,
        # Long enough for a VPS process to exit on a loaded CI machine (1 s was not: a
        # fresh-clone make test at load 24 powered the polite server off); only the
        # one server that ignores ACPI waits it out.
        PlanChangeSettings(shutdown_grace_seconds=8.0, poll_seconds=0.05),
        runs=runs,
    )
    try:
        yield World(cloud, api, client, activities, runs)
    finally:
        await client.aclose()
        await api.aclose()
        await cloud.stop()


async def create(world: World, server_type: str, *, start: bool, location: str = "fsn1") -> int:
    """A server created by the API directly: off (no process) unless `start`."""
    response = await world.api.post(
        "servers",
        json={
            "name": f"s-{server_type}-{free_port()}",
            "server_type": server_type,
            "image": "debian-12",
            "location": location,
            "labels": LABELS,
            "start_after_create": start,
        },
    )
    assert response.status_code == 201, response.text
    return int(response.json()["server"]["id"])


async def server_json(world: World, server_id: int) -> dict[str, Any]:
    body: dict[str, Any] = (await world.api.get(f"servers/{server_id}")).json()["server"]
    return body


async def change(world: World, server_id: int, server_type: str, upgrade_disk: bool) -> str:
    """change_type through the client; the finished action's status. The server then
    starts again by itself ("starts it again"); it is powered off for the next change."""
    action = await world.client.change_server_type(server_id, server_type, upgrade_disk)
    while action.status == "running":
        await asyncio.sleep(0.05)
        action = await world.client.get_action(action.id)
    if action.status == "success":
        await wait_running(world, server_id)
        await world.client.poweroff_server(server_id)
        while (await server_json(world, server_id))["status"] != "off":
            await asyncio.sleep(0.05)
    return action.status


async def wait_running(world: World, server_id: int) -> None:
    while (await server_json(world, server_id))["status"] != "running":
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_change_type_keeps_or_grows_the_disk_and_never_shrinks_it(world: World) -> None:
    server_id = await create(world, "cx23", start=False)
    assert await change(world, server_id, "cx33", upgrade_disk=False) == "success"
    after = await server_json(world, server_id)
    assert (after["server_type"]["name"], after["primary_disk_size"]) == ("cx33", 40)
    # Kept disk: back down is allowed.
    assert await change(world, server_id, "cx23", upgrade_disk=False) == "success"
    assert await change(world, server_id, "cx33", upgrade_disk=True) == "success"
    after = await server_json(world, server_id)
    assert (after["server_type"]["name"], after["primary_disk_size"]) == ("cx33", 80)
    # Upgraded disk: the smaller type is refused, the server untouched.
    with pytest.raises(ProviderError) as refused:
        await world.client.change_server_type(server_id, "cx23", False)
    assert refused.value.code == "invalid_server_type"
    assert (await server_json(world, server_id))["server_type"]["name"] == "cx33"


@pytest.mark.asyncio
async def test_change_type_refuses_a_running_server_and_unsold_or_deprecated_types(
    world: World,
) -> None:
    off_in_ash = await create(world, "cpx21", start=False, location="ash")
    with pytest.raises(ProviderError) as unsold:
        await world.client.change_server_type(off_in_ash, "cx33", True)
    assert unsold.value.code == "invalid_server_type"
    off = await create(world, "cx23", start=False)
    with pytest.raises(ProviderError) as deprecated:
        await world.client.change_server_type(off, "cx32", True)
    assert deprecated.value.code == "invalid_server_type"
    with pytest.raises(ProviderError) as bad_body:
        await world.client.change_server_type(off, "cx99", True)
    assert bad_body.value.code == "invalid_input"
    running = await create(world, "cx23", start=True)
    await wait_running(world, running)
    with pytest.raises(ProviderError) as not_stopped:
        await world.client.change_server_type(running, "cx33", True)
    assert not_stopped.value.code == "server_not_stopped"


@pytest.mark.asyncio
async def test_stop_is_a_clean_shutdown_and_a_poweroff_when_acpi_is_ignored(
    world: World,
) -> None:
    env = ActivityEnvironment()
    polite = await create(world, "cx23", start=True)
    stubborn = await create(world, "cx23", start=True)
    world.cloud.acpi_ignored.add(stubborn)
    for server_id in (polite, stubborn):
        await wait_running(world, server_id)
    stopped = await env.run(world.activities.stop_server, ServerPowerRequest("t1", polite))
    assert stopped.how == "shutdown"
    stopped = await env.run(world.activities.stop_server, ServerPowerRequest("t1", stubborn))
    assert stopped.how == "poweroff"
    again = await env.run(world.activities.stop_server, ServerPowerRequest("t1", stubborn))
    assert again.how == "already_off"
    for server_id in (polite, stubborn):
        assert (await server_json(world, server_id))["status"] == "off"


@pytest.mark.asyncio
async def test_change_and_restore_are_idempotent_and_restore_powers_on(world: World) -> None:
    env = ActivityEnvironment()
    server_id = await create(world, "cx23", start=False)
    up = ServerTypeChange("t1", server_id, "cx33", upgrade_disk=False)
    assert await env.run(world.activities.change_server_type, up) == 40
    # A retry after a lost answer finds the change done and changes nothing.
    assert await env.run(world.activities.change_server_type, up) == 40
    back = ServerTypeChange("t1", server_id, "cx23", upgrade_disk=False)
    assert await env.run(world.activities.restore_server_type, back) == "restored"
    after = await server_json(world, server_id)
    assert (after["server_type"]["name"], after["status"]) == ("cx23", "running")
    assert await env.run(world.activities.restore_server_type, back) == "unchanged"


@pytest.mark.asyncio
async def test_restore_keeps_the_new_type_when_the_disk_grew(world: World) -> None:
    env = ActivityEnvironment()
    server_id = await create(world, "cx23", start=False)
    grown = ServerTypeChange("t1", server_id, "cx33", upgrade_disk=True)
    assert await env.run(world.activities.change_server_type, grown) == 80
    back = ServerTypeChange("t1", server_id, "cx23", upgrade_disk=False)
    assert await env.run(world.activities.restore_server_type, back) == "kept_new_type"
    after = await server_json(world, server_id)
    assert (after["server_type"]["name"], after["status"]) == ("cx33", "running")


@pytest.mark.asyncio
async def test_label_server_plan_replaces_the_labels_keeping_ours(world: World) -> None:
    env = ActivityEnvironment()
    server_id = await create(world, "cx23", start=False)
    await env.run(world.activities.label_server_plan, PlanLabelRequest("t1", server_id, "pro"))
    assert (await server_json(world, server_id))["labels"] == {**LABELS, "plan": "pro"}
    bad = await world.api.put(f"servers/{server_id}", json={"labels": {"-bad": "x"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_input"


@pytest.mark.asyncio
async def test_a_failed_change_type_action_is_a_final_error(world: World) -> None:
    server_id = await create(world, "cx23", start=True)
    await wait_running(world, server_id)
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as err:
        await env.run(
            world.activities.change_server_type,
            ServerTypeChange("t1", server_id, "cx33", upgrade_disk=False),
        )
    assert err.value.type == "Provider.server_not_stopped"
    assert err.value.non_retryable


class RecordOnly:
    """Vault as check_plan_change reads it: the tenant's latest record and version."""

    def __init__(self, record: dict[str, str]) -> None:
        self.record = record

    def latest(self, tenant_id: str) -> tuple[dict[str, str] | None, int]:
        return dict(self.record), 3


@pytest.mark.asyncio
async def test_check_reads_the_server_from_our_records_and_refuses_before_touching(
    world: World,
) -> None:
    """Through the client's parsing of the stand-in's server (type, location, disk,
    image), the decision and the refusals; the server stays running and untouched."""
    name = server_name_of("p1", "t1")
    response = await world.api.post(
        "servers",
        json={
            "name": name,
            "server_type": "cx23",
            "image": "debian-12",
            "location": "fsn1",
            "labels": LABELS,
        },
    )
    server = response.json()["server"]
    await wait_running(world, server["id"])
    await world.client.change_dns_ptr(
        server["id"], server["public_net"]["ipv4"]["ip"], "mail.t1.example"
    )
    record = {"username": "admin@t1.example", "webmail_url": "https://mail.t1.example"}
    activities = PlanChangeActivities(
        world.client,
        cast(Vault, RecordOnly(record)),
        ServerAccess(SshIdentity.generate()),
        DEFAULT_CATALOG,
        runs=world.runs,
    )
    env = ActivityEnvironment()
    check = await env.run(
        activities.check_plan_change, PlanChangeRequest("t1", "r1", "business", "ops")
    )
    assert (check.server_id, check.from_server_type, check.to_server_type) == (
        server["id"],
        "cx23",
        "cx33",
    )
    assert (check.upgrade_disk, check.disk_gb_before, check.disk_gb_after) == (True, 40, 80)
    assert (check.location, check.target.domain, check.target.server_name) == (
        "fsn1",
        "t1.example",
        name,
    )
    for plan, error_type in (("starter", "PlanUnchanged"), ("gold", "InvalidPlanChangeRequest")):
        with pytest.raises(ApplicationError) as refused:
            await env.run(activities.check_plan_change, PlanChangeRequest("t1", "r1", plan, "o"))
        assert (refused.value.type, refused.value.non_retryable) == (error_type, True)
        assert refused.value.details[0]["field"] == "plan"
    after = await server_json(world, server["id"])
    assert (after["status"], after["server_type"]["name"]) == ("running", "cx23")


@pytest.mark.asyncio
async def test_a_change_that_met_another_runs_type_neither_changes_nor_undoes_it(
    world: World,
) -> None:
    """Two plan changes of one tenant racing: the one that finds a third type refuses
    (PlanChangeRaced) and its compensation leaves the other run's type in place."""
    env = ActivityEnvironment()
    server_id = await create(world, "cx23", start=False)
    assert await change(world, server_id, "cpx22", upgrade_disk=False) == "success"
    mine = ServerTypeChange("t1", server_id, "cx33", False, from_server_type="cx23")
    with pytest.raises(ApplicationError) as raced:
        await env.run(world.activities.change_server_type, mine)
    assert (raced.value.type, raced.value.non_retryable) == ("PlanChangeRaced", True)
    back = ServerTypeChange("t1", server_id, "cx23", False, from_server_type="cx33")
    assert await env.run(world.activities.restore_server_type, back) == "kept_other_change"
    after = await server_json(world, server_id)
    assert (after["server_type"]["name"], after["status"]) == ("cpx22", "running")


@pytest.mark.asyncio
async def test_restore_waits_for_a_change_type_still_migrating_and_undoes_it(
    world: World,
) -> None:
    """A change_type step cancelled (or timed out) while Hetzner's action runs: the
    action cannot be cancelled, so the restore waits for the migration to end, then
    changes the type back and powers the server on."""
    env = ActivityEnvironment()
    world.cloud.change_type_seconds = 1.0
    server_id = await create(world, "cx23", start=False)
    await world.client.change_server_type(server_id, "cx33", False)
    assert (await server_json(world, server_id))["status"] == "migrating"
    back = ServerTypeChange("t1", server_id, "cx23", False, from_server_type="cx33")
    assert await env.run(world.activities.restore_server_type, back) == "restored"
    after = await server_json(world, server_id)
    assert (after["server_type"]["name"], after["status"]) == ("cx23", "running")


@pytest.mark.asyncio
async def test_a_held_migration_stays_migrating_until_released(world: World) -> None:
    """/_devstack/servers/{id}/migration-hold (for tests that act during a migration):
    the change_type action keeps running and the server `migrating` however often it is
    asked, until released; then the change completes as any other."""
    world.cloud.change_type_seconds = 0.0
    server_id = await create(world, "cx23", start=False)
    hold = (
        str(world.api.base_url).removesuffix("v1/")
        + f"_devstack/servers/{server_id}/migration-hold"
    )
    assert (await world.api.post(hold)).status_code == 201
    action = await world.client.change_server_type(server_id, "cx33", True)
    # Each look is a round trip through the cloud's event loop: a migration not held
    # (zero seconds here) would have ended at the first.
    for _ in range(20):
        assert (await world.client.get_action(action.id)).status == "running"
        assert (await server_json(world, server_id))["status"] == "migrating"
    assert (await world.api.delete(hold)).status_code == 200
    while (action := await world.client.get_action(action.id)).status == "running":
        await asyncio.sleep(0.05)
    assert action.status == "success"
    after = await server_json(world, server_id)
    assert (after["server_type"]["name"], after["primary_disk_size"]) == ("cx33", 80)
    await wait_running(world, server_id)


@pytest.mark.asyncio
async def test_a_tenant_being_deprovisioned_is_neither_touched_nor_restored(
    world: World,
) -> None:
    """While DeprovisionMailTenant of the tenant runs, every step that would touch the
    server refuses (TenantDeprovisioned) and the restore changes and starts nothing."""
    env = ActivityEnvironment()
    server_id = await create(world, "cx23", start=True)
    await wait_running(world, server_id)
    world.runs.statuses["deprovision-t1"] = WorkflowExecutionStatus.RUNNING
    with pytest.raises(ApplicationError) as refused:
        await env.run(world.activities.stop_server, ServerPowerRequest("t1", server_id))
    assert (refused.value.type, refused.value.non_retryable) == ("TenantDeprovisioned", True)
    assert refused.value.details[0] == {"deprovisioned_by": "deprovision-t1"}
    await world.client.poweroff_server(server_id)
    while (await server_json(world, server_id))["status"] != "off":
        await asyncio.sleep(0.05)
    back = ServerTypeChange("t1", server_id, "cx23", False, from_server_type="cx33")
    assert await env.run(world.activities.restore_server_type, back) == "tenant_deprovisioned"
    assert (await server_json(world, server_id))["status"] == "off"


@pytest.mark.asyncio
async def test_a_server_deleted_under_the_restore_is_an_outcome_not_a_failure(
    world: World,
) -> None:
    """The deprovisioning deleted the server: the restore reports it (no ServerGone
    failure that would skip the failure's audit row), and says who deleted it."""
    env = ActivityEnvironment()
    server_id = await create(world, "cx23", start=False)
    response = await world.api.delete(f"servers/{server_id}")
    assert response.status_code == 200, response.text
    while (await world.api.get(f"servers/{server_id}")).status_code != 404:
        await asyncio.sleep(0.05)
    back = ServerTypeChange("t1", server_id, "cx23", False, from_server_type="cx33")
    assert await env.run(world.activities.restore_server_type, back) == "server_gone"
    world.runs.statuses["deprovision-t1"] = WorkflowExecutionStatus.COMPLETED
    assert await env.run(world.activities.restore_server_type, back) == "tenant_deprovisioned"
