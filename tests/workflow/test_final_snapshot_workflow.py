"""The final snapshot of a plan that promises backups, on the time-skipping server.

DeprovisionMailTenant's other steps are the scripted ones of test_deprovision_workflow;
taking the snapshot (DeprovisionActivities.take_final_snapshot) and expiring it
(ExpireFinalSnapshot with FinalSnapshotActivities) are the real code, against an
in-memory provider that answers as Hetzner's create_image does: the image `creating`
until its action succeeds, found by label selector, 404 once deleted. The real stand-in
and provider client run end to end in tests/e2e/test_deprovision.py.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import pytest
from temporalio import activity
from temporalio.api.testservice.v1 import LockTimeSkippingRequest, UnlockTimeSkippingRequest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import final_snapshot
from activities.deprovision import DeprovisionActivities
from activities.final_snapshot import FinalSnapshotActivities, FinalSnapshotPolicy
from activities.vps_provider import Action, Image, Server
from devstack.hetzner import parse_label_selector, selector_matches
from tests.conftest import time_skipping_server
from tests.workflow.sandbox import restricted_sandbox
from tests.workflow.test_deprovision_workflow import REQUEST, SERVER, TENANT, TenantWorld
from workflows.contracts import Plan
from workflows.deprovision_contracts import (
    DEPROVISION_WORKFLOW_TYPE,
    DeprovisionResult,
    deprovision_workflow_id,
)
from workflows.dispatch import ProvisionMailTenant
from workflows.final_snapshot_contracts import (
    EXPIRY_WORKFLOW_TYPE,
    NOT_A_FINAL_SNAPSHOT,
    FinalSnapshot,
    FinalSnapshotRequest,
    expiry_workflow_id,
)
from workflows.final_snapshot_expiry import ExpireFinalSnapshot

RETENTION = 7 * 86400
BACKED_UP = replace(SERVER, final_snapshot_retention_seconds=RETENTION)


class WorkerDied(Exception):
    """What an attempt sees when its worker is killed: not a provider answer."""


class SnapshotCloud:
    """The provider calls the snapshot code makes, with Hetzner's behaviour."""

    def __init__(self, polls_until_available: int = 2) -> None:
        self.servers = {SERVER.server_id: Server(SERVER.server_id, SERVER.name, "running",
                                                 "192.0.2.4", None, {})}  # fmt: skip
        self.images: dict[int, Image] = {}
        self.actions: dict[int, str] = {}  # action id -> image id's status source
        self.polls: dict[int, int] = {}
        self.polls_until_available = polls_until_available
        self.created: list[int] = []
        self.deleted: list[int] = []
        self.die_on_poll: set[int] = set()  # poll numbers (1-based) an attempt dies at
        # Fresh ids per test: the session's server keeps every earlier test's timers.
        self._ids = itertools.count(uuid.uuid4().int % 10**9 + 10**6)
        self._poll_count = 0
        self.power: list[str] = []  # shutdown / poweroff requests, in order
        self.ignores_acpi = False
        self.status_at_create: list[str] = []

    async def get_server(self, server_id: int) -> Server | None:
        return self.servers.get(server_id)

    async def shutdown_server(self, server_id: int) -> Action:
        self.power.append("shutdown")
        if not self.ignores_acpi:
            self.servers[server_id] = replace(self.servers[server_id], status="off")
        return Action(1, "shutdown_server", "success")

    async def poweroff_server(self, server_id: int) -> Action:
        self.power.append("poweroff")
        self.servers[server_id] = replace(self.servers[server_id], status="off")
        return Action(2, "stop_server", "success")

    async def create_snapshot(
        self, server_id: int, *, description: str, labels: dict[str, str]
    ) -> tuple[Image, Action]:
        self.status_at_create.append(self.servers[server_id].status)
        image = Image(next(self._ids), "creating", description, dict(labels),
                      created_from_server=server_id, disk_size_gb=40)  # fmt: skip
        self.images[image.id] = image
        self.polls[image.id] = 0
        self.created.append(image.id)
        action = Action(image.id + 10, "create_image", "running")
        return image, action

    async def find_snapshots(self, *, label_selector: str) -> list[Image]:
        wanted = parse_label_selector(label_selector)
        return [i for i in self.images.values() if selector_matches(wanted, i.labels)]

    async def get_action(self, action_id: int) -> Action:
        image = self.images.get(action_id - 10)
        done = image is None or image.status == "available"
        return Action(action_id, "create_image", "success" if done else "running")

    async def get_image(self, image_id: int) -> Image | None:
        self._poll_count += 1
        if self._poll_count in self.die_on_poll:
            raise WorkerDied(f"worker killed while waiting for image {image_id}")
        image = self.images.get(image_id)
        if image is None or image.status == "available":
            return image
        self.polls[image_id] += 1
        if self.polls[image_id] >= self.polls_until_available:
            image = replace(image, status="available", image_size_gb=1.25)
            self.images[image_id] = image
        return image

    async def delete_image(self, image_id: int) -> bool:
        if self.images.pop(image_id, None) is None:
            return False
        self.deleted.append(image_id)
        return True


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """Each test its own test server, not the session's (tests/conftest.py): once a test
    has skipped the clock past the timer of a run another test terminated, the test
    server stops skipping time for good (seen here: the next expiry waited in real time,
    as test_plan_change_workflow saw with its lock)."""
    async with time_skipping_server() as env:
        yield env


@pytest.fixture(autouse=True)
def _quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    # The activity's own waits are real time (the server skips only workflow timers).
    monkeypatch.setattr(final_snapshot, "POLL_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(final_snapshot, "POLL_MAX_SECONDS", 0.01)
    monkeypatch.setattr(final_snapshot, "SHUTDOWN_POLL_SECONDS", 0.01)
    monkeypatch.setattr(final_snapshot, "SHUTDOWN_GRACE_SECONDS", 0.05)


class World(TenantWorld):
    def __init__(self, cloud: SnapshotCloud, **kwargs: Any) -> None:
        super().__init__(servers=[BACKED_UP], **kwargs)
        self.cloud = cloud

    def activities(self) -> list[Any]:
        provider = cast(Any, self.cloud)
        deprovision = DeprovisionActivities(
            cast(Any, None), provider, cast(Any, None), cast(Any, None)
        )

        @activity.defn(name="take_final_snapshot")
        async def take_final_snapshot(request: FinalSnapshotRequest) -> FinalSnapshot | None:
            self.calls.append("take_final_snapshot")
            return await deprovision.take_final_snapshot(request)

        expire = FinalSnapshotActivities(provider).expire_final_snapshot
        return [*super().activities(), take_final_snapshot, expire]


@asynccontextmanager
async def serving(env: WorkflowEnvironment, world: World) -> AsyncIterator[str]:
    """A worker with the deprovisioning and the expiry timer; yields its task queue."""
    task_queue = f"snap-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant, ExpireFinalSnapshot],
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
    ):
        try:
            yield task_queue
        finally:
            # A timer left sleeping on this queue would fire on a later test's skipped
            # clock with no worker to run it, and hold that test's time still.
            for image_id in world.cloud.created:
                with contextlib.suppress(RPCError):
                    await env.client.get_workflow_handle(expiry_workflow_id(image_id)).terminate(
                        "test done"
                    )


async def deprovision(env: WorkflowEnvironment, task_queue: str) -> DeprovisionResult:
    """The run's result, with the server's clock held meanwhile: awaiting it would
    otherwise let the time-skipping server fire the expiry timer already."""
    handle = await env.client.start_workflow(
        DEPROVISION_WORKFLOW_TYPE,
        REQUEST,
        id=deprovision_workflow_id(TENANT),
        task_queue=task_queue,
        result_type=DeprovisionResult,
    )
    with env.auto_time_skipping_disabled():
        result: DeprovisionResult = await handle.result()
    return result


async def expired(env: WorkflowEnvironment, image_id: int) -> Any:
    """The expiry timer's result, the server skipping time while it is awaited (as it
    does for a handle the test started itself)."""
    timer = env.client.get_workflow_handle(expiry_workflow_id(image_id))
    run = (await timer.describe()).run_id
    await env.client.test_service.unlock_time_skipping(UnlockTimeSkippingRequest())
    try:
        return await env.client.get_workflow_handle(timer.id, run_id=run).result()
    finally:
        await env.client.test_service.lock_time_skipping(LockTimeSkippingRequest())


async def test_a_backup_plan_keeps_one_snapshot_taken_before_the_server_is_deleted(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    cloud = SnapshotCloud()
    world = World(cloud)
    async with serving(time_skipping_env, world) as queue:
        result = await deprovision(time_skipping_env, queue)
        [image_id] = cloud.created
        # Its expiry timer is a child of the deprovisioning that outlives it (ABANDON).
        timer = time_skipping_env.client.get_workflow_handle(expiry_workflow_id(image_id))
        description = await timer.describe()
    assert description.workflow_type == EXPIRY_WORKFLOW_TYPE
    assert description.parent_id == deprovision_workflow_id(TENANT)
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert result.final_snapshots == [image_id]
    assert result.servers_deleted == [SERVER.server_id]
    # Before the server went, and only then: the snapshot needs the server.
    assert world.calls.index("take_final_snapshot") < world.calls.index("delete_tenant_servers")
    image = cloud.images[image_id]
    delete_after = int(image.labels["delete-after"])
    assert image.labels == {
        "managed-by": "mail-provisioning",
        "purpose": "final-snapshot",
        "tenant": TENANT,
        "purchase": SERVER.purchase_id,
        "server": str(SERVER.server_id),
        "delete-after": str(delete_after),
    }
    [row] = world.audit
    assert row.details["final_snapshots"] == f"{image_id}:{delete_after}"


@pytest.mark.parametrize("ignores_acpi", [False, True], ids=["shutdown", "poweroff"])
async def test_the_disk_is_copied_from_a_stopped_server(
    time_skipping_env: WorkflowEnvironment, ignores_acpi: bool
) -> None:
    """Hetzner recommends a stopped server for a consistent image: an ACPI shutdown,
    a poweroff only when the OS ignored it for the grace."""
    cloud = SnapshotCloud()
    cloud.ignores_acpi = ignores_acpi
    async with serving(time_skipping_env, World(cloud)) as queue:
        await deprovision(time_skipping_env, queue)
    assert cloud.status_at_create == ["off"]
    assert cloud.power == (["shutdown", "poweroff"] if ignores_acpi else ["shutdown"])


async def test_an_attempt_killed_mid_wait_is_resumed_without_a_second_snapshot(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    cloud = SnapshotCloud(polls_until_available=3)
    cloud.die_on_poll = {1}  # the first look at the `creating` image: the worker dies
    world = World(cloud)
    async with serving(time_skipping_env, world) as queue:
        result = await deprovision(time_skipping_env, queue)
    assert world.calls.count("take_final_snapshot") == 2
    assert len(cloud.created) == 1  # the retry found its own image by label
    assert result.final_snapshots == cloud.created
    assert cloud.images[cloud.created[0]].status == "available"


async def test_a_plan_without_backups_takes_no_snapshot(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    cloud = SnapshotCloud()
    world = World(cloud)
    world.servers = [SERVER]  # retention 0: its plan promises none
    async with serving(time_skipping_env, world) as queue:
        result = await deprovision(time_skipping_env, queue)
    assert "take_final_snapshot" not in world.calls
    assert cloud.created == [] and result.final_snapshots == []
    assert world.audit[0].details["final_snapshots"] == ""


async def test_the_expiry_timer_deletes_it_after_the_retention_and_audits(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    cloud = SnapshotCloud()
    world = World(cloud)
    async with serving(time_skipping_env, world) as queue:
        [image_id] = (await deprovision(time_skipping_env, queue)).final_snapshots
        outcome = await expired(time_skipping_env, image_id)
    assert outcome["state"] == "deleted"
    assert cloud.deleted == [image_id] and image_id not in cloud.images
    row = world.audit[-1]
    assert (row.event, row.tenant_id) == ("final_snapshot_deleted", TENANT)
    assert row.details["image_id"] == str(image_id)
    assert row.details["outcome"] == "deleted"
    # It slept on one Temporal timer (not in an activity), and woke no earlier than
    # the snapshot's delete-after.
    [fired] = await timers_fired(time_skipping_env, image_id)
    assert fired >= outcome["delete_after"]


async def test_a_snapshot_deleted_by_hand_first_counts_as_done(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    cloud = SnapshotCloud()
    world = World(cloud)
    async with serving(time_skipping_env, world) as queue:
        [image_id] = (await deprovision(time_skipping_env, queue)).final_snapshots
        cloud.images.pop(image_id)  # an operator deleted it early: DELETE now answers 404
        outcome = await expired(time_skipping_env, image_id)
    assert outcome["state"] == "gone"
    assert world.audit[-1].details["outcome"] == "gone"


async def test_a_relabelled_delete_after_extends_the_retention(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    cloud = SnapshotCloud()
    world = World(cloud)
    extra = 30 * 86400
    async with serving(time_skipping_env, world) as queue:
        [image_id] = (await deprovision(time_skipping_env, queue)).final_snapshots
        image = cloud.images[image_id]
        later = int(image.labels["delete-after"]) + extra
        cloud.images[image_id] = replace(image, labels={**image.labels, "delete-after": str(later)})
        outcome = await expired(time_skipping_env, image_id)
    assert outcome["state"] == "deleted" and outcome["delete_after"] == later
    # It woke at the old time, read the new label and slept on until it.
    first, second = await timers_fired(time_skipping_env, image_id)
    assert first < later <= second


async def test_a_timer_started_for_an_image_that_is_not_ours_deletes_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    cloud = SnapshotCloud()
    stranger = Image(5, "available", "someone's golden image", {"role": "golden"})
    cloud.images[5] = stranger
    async with serving(time_skipping_env, World(cloud)) as queue:
        handle = await time_skipping_env.client.start_workflow(
            EXPIRY_WORKFLOW_TYPE, id=expiry_workflow_id(5), task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == (NOT_A_FINAL_SNAPSHOT, True)
    assert cloud.images[5] == stranger and cloud.deleted == []


async def timers_fired(env: WorkflowEnvironment, image_id: int) -> list[int]:
    """When each of the timer run's Temporal timers fired (UNIX seconds)."""
    history = await env.client.get_workflow_handle(expiry_workflow_id(image_id)).fetch_history()
    return [
        int(e.event_time.ToSeconds())
        for e in history.events
        if e.HasField("timer_fired_event_attributes")
    ]


def test_the_retention_comes_from_the_plan_the_server_is_labelled_with() -> None:
    plans = {
        "starter": Plan("cx23", "debian-12", ["fsn1"]),
        "enterprise": Plan("cx43", "debian-12", ["hel1"]),
        "archive": Plan("cx43", "debian-12", ["hel1"]),
    }
    policy = FinalSnapshotPolicy.from_catalog(plans, {"enterprise": None, "archive": 90}, 600)
    assert policy.retention_for({"plan": "enterprise"}, "cx43") == 600
    assert policy.retention_for({"plan": "archive"}, "cx43") == 90 * 86400
    assert policy.retention_for({"plan": "starter"}, "cx43") == 0
    # A server bought before the plan label: by type, the longest promise of that type.
    assert policy.retention_for({}, "cx43") == 90 * 86400
    assert policy.retention_for({}, "cx23") == 0


HOSTILE_EXPIRY_IDS = [
    "final-snapshot-expiry-\u00b2",  # isdigit() but not int()
    "final-snapshot-expiry-\u0661\u0662",  # Arabic-Indic digits
    "final-snapshot-expiry-",
    "final-snapshot-expiry-007",
    "final-snapshot-expiry--5",
    "final-snapshot-expiry-" + "9" * 19,
    "final-snapshot-expiry-5 ",
    "expire-5",
]


@pytest.mark.parametrize("workflow_id", HOSTILE_EXPIRY_IDS)
async def test_a_timer_started_under_any_other_id_ends_at_once_touching_nothing(
    time_skipping_env: WorkflowEnvironment, workflow_id: str
) -> None:
    """A door: whatever the start carries, a run whose id names no image ends refused,
    with no activity scheduled and no failed workflow task left retrying."""
    cloud = SnapshotCloud()
    async with serving(time_skipping_env, World(cloud)) as queue:
        handle = await time_skipping_env.client.start_workflow(
            EXPIRY_WORKFLOW_TYPE, {"image_id": 5}, id=workflow_id, task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        events = (await handle.fetch_history()).events
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("InvalidExpiryRequest", True)
    assert not any(e.HasField("activity_task_scheduled_event_attributes") for e in events)
    assert not any(e.HasField("workflow_task_failed_event_attributes") for e in events)
    assert cloud.deleted == []
