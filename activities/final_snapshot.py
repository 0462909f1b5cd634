"""The final snapshot a deprovisioning keeps for plans that promise backups.

A plan of the worker's catalog with `backups = true` promises that a cancelled tenant's
server disk is kept for a while: before DeprovisionMailTenant deletes the server it
takes a snapshot (Hetzner create_image, labelled `managed-by`, `purpose=final-snapshot`,
`tenant`, `purchase`, `server`, `delete-after`), waits until the snapshot is available,
and starts ExpireFinalSnapshot, the durable timer that deletes it once `delete-after`
has passed (workflows/final_snapshot_expiry.py). The retention is the plan's
`final_snapshot_retention_days`, else the worker's MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS.

The snapshot holds the server's disk, so MailU's data (mailboxes, its database with the
admin account's password *hash*); it never held the Vault record or the per-tenant
Transit key, which the deprovisioning destroys (crypto-shredding, docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.rotation_target import TENANT_LABEL
from activities.server_power import stop_cleanly
from activities.vps_provider import (
    MANAGED_BY,
    MANAGED_BY_SELECTOR,
    POLL_FIRST_SECONDS,
    POLL_GROWTH,
    POLL_MAX_SECONDS,
    PURCHASE_LABEL,
    Image,
    ProviderError,
    VpsProvider,
    provider_failure,
)
from workflows.contracts import Plan
from workflows.final_snapshot_contracts import (
    DELETE_AFTER_LABEL,
    FINAL_SNAPSHOT_PURPOSE,
    FINAL_SNAPSHOT_SELECTOR,
    NOT_A_FINAL_SNAPSHOT,
    PURPOSE_LABEL,
    SERVER_LABEL,
    ExpiryOutcome,
    ExpiryRequest,
    FinalSnapshot,
    FinalSnapshotRequest,
)
from workflows.plan_change_contracts import PLAN_LABEL

T = TypeVar("T")
# Kept when neither the plan nor the worker says otherwise.
DEFAULT_RETENTION_SECONDS = 30 * 86400
# The server is shut down before its disk is copied (activities/server_power.py): an
# ACPI shutdown, a poweroff if it is not off after this long (as a plan change does).
SHUTDOWN_GRACE_SECONDS = 120.0
SHUTDOWN_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class FinalSnapshotPolicy:
    """Which plans promise a final snapshot, and for how long it is kept (seconds)."""

    retention_seconds: Mapping[str, int] = field(default_factory=dict)
    # plan -> server type: the plan of a server that carries no `plan` label.
    server_types: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_catalog(
        cls,
        plans: Mapping[str, Plan],
        promises: Mapping[str, int | None],
        default_seconds: int = DEFAULT_RETENTION_SECONDS,
    ) -> FinalSnapshotPolicy:
        return cls(
            {
                name: days * 86400 if days is not None else default_seconds
                for name, days in promises.items()
            },
            {name: plan.server_type for name, plan in plans.items()},
        )

    def retention_for(self, labels: Mapping[str, str], server_type: str) -> int:
        """Seconds to keep a final snapshot of this server; 0: its plan promises none.

        A server names its plan in its `plan` label (set at purchase and by each plan
        change); one without the label is matched by server type, and when several
        plans share that type the longest promise counts (a promise kept, not broken).
        """
        plan = labels.get(PLAN_LABEL)
        if plan:
            return self.retention_seconds.get(plan, 0)
        return max(
            (
                self.retention_seconds.get(name, 0)
                for name, kind in self.server_types.items()
                if kind == server_type
            ),
            default=0,
        )


def final_snapshot_selector(tenant_id: str, server_id: int | None = None) -> str:
    selector = f"{MANAGED_BY_SELECTOR},{FINAL_SNAPSHOT_SELECTOR},{TENANT_LABEL}={tenant_id}"
    return selector if server_id is None else f"{selector},{SERVER_LABEL}={server_id}"


def delete_after_of(image: Image) -> int | None:
    raw = image.labels.get(DELETE_AFTER_LABEL, "")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    return int(raw) if raw.isascii() and raw.isdigit() else None


def is_final_snapshot(image: Image) -> bool:
    return (
        all(image.labels.get(k) == v for k, v in MANAGED_BY.items())
        and image.labels.get(PURPOSE_LABEL) == FINAL_SNAPSHOT_PURPOSE
        and delete_after_of(image) is not None
    )


class FinalSnapshots:
    """Take (idempotently) and expire final snapshots at the provider."""

    def __init__(self, provider: VpsProvider) -> None:
        self._provider = provider

    async def take(self, request: FinalSnapshotRequest) -> FinalSnapshot | None:
        """The server's final snapshot, available; None when the server is gone already.

        Looks for this server's snapshot by label first, so a retried attempt (a lost
        answer, a worker that died mid-wait) never makes a second one; if there is none,
        shuts the server down (ACPI, poweroff after the grace) and creates it; then waits until
        it is available, heartbeating the image and action ids, which a resumed attempt
        reads back to watch the same action. While the image is created the provider
        locks the server (a concurrent action answers `locked`, retried by the policy).
        """
        selector = final_snapshot_selector(request.tenant_id, request.server_id)
        found = await self._call(self._provider.find_snapshots(label_selector=selector))
        action_id = _resumed_action_id()
        if found:
            image = min(found, key=lambda i: i.id)
            activity.logger.info("final snapshot found", extra={"image_id": image.id})
        else:
            # Hetzner recommends a stopped server for a consistent image; the server is
            # deleted right after, so stopping it costs the customer nothing more.
            stopped = await stop_cleanly(
                self._provider,
                request.server_id,
                SHUTDOWN_GRACE_SECONDS,
                SHUTDOWN_POLL_SECONDS,
            )
            if stopped is None:
                return None  # gone already: nothing to keep
            try:
                image, action = await self._provider.create_snapshot(
                    request.server_id,
                    description=_description(request),
                    labels=_labels(request),
                )
            except ProviderError as err:
                if err.not_found:
                    return None  # deleted between the look and the create
                raise provider_failure(err) from None
            action_id = action.id
            activity.logger.info("final snapshot started", extra={"image_id": image.id})
        image = await self._until_available(image, action_id)
        delete_after = delete_after_of(image)
        assert delete_after is not None  # our own label, found by it
        return FinalSnapshot(image.id, request.server_id, delete_after, image.image_size_gb)

    async def _until_available(self, image: Image, action_id: int | None) -> Image:
        interval = POLL_FIRST_SECONDS
        while image.status != "available":
            activity.heartbeat({"image_id": image.id, "action_id": action_id})
            if action_id is not None:
                action = await self._call(self._provider.get_action(action_id))
                if action.status == "error":
                    # Whatever the provider kept of it is removed, so the retry that
                    # follows creates it afresh instead of finding a broken one.
                    await self._call(self._provider.delete_image(image.id))
                    raise ApplicationError(
                        f"creating final snapshot {image.id} failed: {action.error}",
                        type="SnapshotFailed",
                    )
            await asyncio.sleep(interval)
            interval = min(POLL_MAX_SECONDS, interval * POLL_GROWTH)
            current = await self._call(self._provider.get_image(image.id))
            if current is None:
                raise ApplicationError(
                    f"final snapshot {image.id} vanished while it was created",
                    type="SnapshotVanished",
                )
            image = current
        return image

    async def expire(self, request: ExpiryRequest) -> ExpiryOutcome:
        """Delete the snapshot once its delete-after label is not later than `now`.

        Reads the label each time, so an operator's relabelling extends or shortens the
        retention; refuses (NotAFinalSnapshot, final) an image without our labels, so a
        timer started for another image deletes nothing. 404 counts as done.
        """
        image = await self._call(self._provider.get_image(request.image_id))
        if image is None:
            return ExpiryOutcome("gone")
        delete_after = delete_after_of(image)
        if not is_final_snapshot(image) or delete_after is None:
            raise ApplicationError(
                f"image {request.image_id} is not a final snapshot of ours "
                f"(labels managed-by, {PURPOSE_LABEL}={FINAL_SNAPSHOT_PURPOSE}, "
                f"{DELETE_AFTER_LABEL}): left alone",
                type=NOT_A_FINAL_SNAPSHOT,
                non_retryable=True,
            )
        tenant = image.labels.get(TENANT_LABEL, "")
        if delete_after > request.now:
            return ExpiryOutcome("not_yet", delete_after, tenant)
        deleted = await self._call(self._provider.delete_image(request.image_id))
        activity.logger.info(
            "final snapshot deleted" if deleted else "final snapshot already gone",
            extra={"image_id": request.image_id},
        )
        return ExpiryOutcome("deleted" if deleted else "gone", delete_after, tenant)

    @staticmethod
    async def _call(call: Awaitable[T]) -> T:
        try:
            return await call
        except ProviderError as err:
            raise provider_failure(err) from None


def _labels(request: FinalSnapshotRequest) -> dict[str, str]:
    return {
        **MANAGED_BY,
        PURPOSE_LABEL: FINAL_SNAPSHOT_PURPOSE,
        TENANT_LABEL: request.tenant_id,
        PURCHASE_LABEL: request.purchase_id,
        SERVER_LABEL: str(request.server_id),
        DELETE_AFTER_LABEL: str(request.taken_at + request.retention_seconds),
    }


def _description(request: FinalSnapshotRequest) -> str:
    ends = datetime.fromtimestamp(request.taken_at + request.retention_seconds, UTC)
    return (
        f"final snapshot of {request.server_name} (tenant {request.tenant_id}), "
        f"deleted after {ends.isoformat(timespec='seconds')}"
    )


def _resumed_action_id() -> int | None:
    """The action an earlier attempt of this step watched (its last heartbeat)."""
    details: Any = activity.info().heartbeat_details if activity.in_activity() else ()
    if details and isinstance(details[0], dict):
        action_id = details[0].get("action_id")
        return action_id if isinstance(action_id, int) else None
    return None


class FinalSnapshotActivities:
    """ExpireFinalSnapshot's activity (taking one is DeprovisionActivities')."""

    def __init__(self, provider: VpsProvider) -> None:
        self._snapshots = FinalSnapshots(provider)

    @activity.defn(name="expire_final_snapshot")
    async def expire_final_snapshot(self, request: ExpiryRequest) -> ExpiryOutcome:
        return await self._snapshots.expire(request)
