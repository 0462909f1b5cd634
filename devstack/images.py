"""Hetzner Cloud images for the local cloud: the catalog's system images and snapshots.

Follows the Images section and Server Actions "Create Image from a Server" of
https://docs.hetzner.cloud/ (as hetznercloud/hcloud-python 2.27.0 hcloud/images and
hcloud/servers/client.py `create_image` model them), with the inconvenient defaults a
client meets:

* ``POST /v1/servers/{id}/actions/create_image`` {type, description, labels} -> 201
  {image, action}. ``type`` defaults to ``snapshot`` ("Type of Image to create
  (default: snapshot)", hcloud-python servers/client.py); a ``backup`` needs the
  server's backup option, which no server of this cloud has (invalid_input here).
  The image answers at once with ``status`` ``creating`` and ``image_size`` null; it
  becomes ``available`` (with its size) only when the action succeeds ("Whether the
  image can be used or if it's still being created Choices: available, creating",
  hcloud-python images/domain.py). Creating an image takes minutes on Hetzner
  (hetznercloud/terraform-provider-hcloud#392 raised its snapshot create timeout),
  so the stand-in keeps it `creating` for `LocalCloud.image_seconds`.
* While the action runs the server is locked: its ``locked`` field is true and any
  other action on it is refused with ``locked`` (423, "The item you are trying to
  access is locked (there is already an action running)", Hetzner's error table;
  "cannot perform operation because server is locked (locked)" in
  hetznercloud/terraform-provider-hcloud#286 and #492). That a DELETE of the server
  is refused too while its image is created is this stand-in's reading (unchecked
  against a real account).
* A snapshot is independent of its server: "a snapshot Image which is completely
  independent of the Server it was created from and will survive Server deletion ...
  Snapshot Images are billed on a per GB basis" (API reference, Create Image from a
  Server). ``name`` is null ("only set for system images"), ``created_from`` names the
  server {id, name}, ``bound_to`` is null (backups only), ``image_size`` is the stored
  size in GB ("the value relevant for calculating costs"), ``disk_size`` the server's
  disk in GB.
* ``GET /v1/images`` lists system images and the project's snapshots together, filtered
  by ``type`` (repeatable), ``status`` (repeatable), ``name`` and ``label_selector``
  (hcloud-python images/client.py get_list), paged; ``GET /v1/images/{id}``;
  ``PUT /v1/images/{id}`` {description, labels} (labels replace the whole set, as for
  servers); ``DELETE /v1/images/{id}`` -> 204, ``not_found`` once gone (clients treat
  it as done: terraform-provider-hcloud internal/snapshot/resource.go Delete). Only
  snapshots and backups can be deleted or updated ("Only images of type snapshot and
  backup can be deleted", hcloud-python images/client.py delete). A DELETE of a
  snapshot still `creating` is refused as ``locked`` here (unchecked).

Not Hetzner's: the book remembers every snapshot it ever made, deleted ones too, with
when and how each went (`history`, served as ``GET /_devstack/images``), so a test can
count the snapshots a run really created, not only those still there.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import hetzner
from devstack.hetzner import ApiError, invalid_input, iso

_FIRST_IMAGE_ID = 500_000_001
DESCRIPTION_MAX = 255  # not documented; the stand-in's bound on a free-text field


@dataclass
class Snapshot:
    id: int
    description: str
    labels: dict[str, str]
    server_id: int
    server_name: str
    disk_size: int
    os_flavor: str
    os_version: str | None
    status: str = "creating"
    image_size: float | None = None
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "snapshot",
            "status": self.status,
            "name": None,
            "description": self.description,
            "image_size": self.image_size,
            "disk_size": self.disk_size,
            "created": iso(self.created),
            "created_from": {"id": self.server_id, "name": self.server_name},
            "bound_to": None,
            "os_flavor": self.os_flavor,
            "os_version": self.os_version,
            "rapid_deploy": False,
            "architecture": "x86",
            "protection": {"delete": False},
            "deprecation": None,
            "labels": dict(self.labels),
        }


def stored_size_gb(state_dir: Path) -> float:
    """The snapshot's billable size: the bytes the server's disk really holds (here its
    state directory), in GB, as Hetzner bills the stored image, not the disk size."""
    total = sum(p.stat().st_size for p in state_dir.rglob("*") if p.is_file())
    return round(total / 1e9, 6)


class ImageBook:
    """The project's snapshots; system images come from devstack/hetzner.py's catalog."""

    def __init__(self) -> None:
        self._snapshots: dict[int, Snapshot] = {}
        self._ids = itertools.count(_FIRST_IMAGE_ID)
        # Snapshots no longer there: (snapshot, UNIX time it went, "deleted" | "failed").
        self._gone: dict[int, tuple[Snapshot, float, str]] = {}

    def create_input(self, body: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
        """A create_image body's description and labels; invalid_input names the fields."""
        problems: dict[str, list[str]] = {}
        kind = body.get("type", "snapshot")
        if kind == "backup":
            problems["type"] = ["backups need the server's backup option, which is disabled"]
        elif kind != "snapshot":
            problems["type"] = ["type must be one of snapshot, backup"]
        description = body.get("description")
        if description is not None and (
            not isinstance(description, str) or len(description) > DESCRIPTION_MAX
        ):
            problems["description"] = ["description must be a string"]
        labels = body.get("labels", {})
        if label_problems := hetzner.validate_labels(labels):
            problems["labels"] = label_problems
        if problems:
            raise invalid_input(problems)
        return description, dict(labels)

    def create(
        self,
        description: str | None,
        labels: dict[str, str],
        server_id: int,
        server_name: str,
        disk_size: int,
        system_image: str,
    ) -> Snapshot:
        spec = hetzner.IMAGES.get(system_image, {})
        image_id = next(self._ids)
        snapshot = Snapshot(
            id=image_id,
            # "If you do not set this we auto-generate one for you" (hcloud-python).
            description=description
            if description is not None
            else f"{server_name}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}",
            labels=labels,
            server_id=server_id,
            server_name=server_name,
            disk_size=disk_size,
            os_flavor=str(spec.get("os_flavor", "unknown")),
            os_version=spec.get("os_version"),
        )
        self._snapshots[snapshot.id] = snapshot
        return snapshot

    def get(self, raw_id: str) -> Snapshot:
        snapshot = self._snapshots.get(int(raw_id)) if raw_id.isdigit() else None
        if snapshot is None:
            raise ApiError("not_found", f"image with ID '{raw_id}' not found")
        return snapshot

    def is_system(self, raw_id: str) -> bool:
        return raw_id.isdigit() and any(
            spec["id"] == int(raw_id) for spec in hetzner.IMAGES.values()
        )

    def listing(
        self,
        name: str | None,
        kinds: list[str],
        statuses: list[str],
        selector: str,
        retired: set[str],
    ) -> list[dict[str, Any]]:
        """GET /v1/images: system images (their names), then snapshots, each filter ANDed."""
        try:
            requirements = hetzner.parse_label_selector(selector) if selector else []
        except hetzner.SelectorError as exc:
            raise invalid_input({"label_selector": [str(exc)]}) from None
        entries = [
            hetzner.image_json(n)
            for n in sorted(hetzner.IMAGES, key=lambda n: hetzner.IMAGES[n]["id"])
            if n not in retired
        ]
        entries += [s.to_json() for s in sorted(self._snapshots.values(), key=lambda s: s.id)]
        return [
            entry
            for entry in entries
            if (name is None or entry["name"] == name)
            and (not kinds or entry["type"] in kinds)
            and (not statuses or entry["status"] in statuses)
            and hetzner.selector_matches(requirements, entry["labels"])
        ]

    def update(self, raw_id: str, body: dict[str, Any]) -> Snapshot:
        if self.is_system(raw_id):
            raise ApiError("forbidden", "only images of type snapshot and backup can be updated")
        snapshot = self.get(raw_id)
        if "labels" in body:
            if problems := hetzner.validate_labels(body["labels"]):
                raise invalid_input({"labels": problems})
            snapshot.labels = dict(body["labels"])
        if isinstance(body.get("description"), str):
            snapshot.description = body["description"]
        return snapshot

    def delete(self, raw_id: str) -> None:
        if self.is_system(raw_id):
            raise ApiError("forbidden", "only images of type snapshot and backup can be deleted")
        snapshot = self.get(raw_id)
        if snapshot.status == "creating":
            raise ApiError("locked", "image is locked by a running create_image action")
        self._snapshots.pop(snapshot.id)
        self._gone[snapshot.id] = (snapshot, time.time(), "deleted")

    def finish(self, snapshot: Snapshot, size_gb: float) -> None:
        snapshot.status, snapshot.image_size = "available", size_gb

    def drop(self, snapshot: Snapshot) -> None:
        """A failed create leaves no image (the stand-in's reading; unchecked)."""
        if self._snapshots.pop(snapshot.id, None) is not None:
            self._gone[snapshot.id] = (snapshot, time.time(), "failed")

    def history(self, selector: str) -> list[dict[str, Any]]:
        """Every snapshot ever created whose labels match `selector`, by id: as the API
        shows it (its last state), plus `gone` (null while it exists, else
        {"at": UNIX seconds, "how": "deleted" | "failed"})."""
        try:
            requirements = hetzner.parse_label_selector(selector) if selector else []
        except hetzner.SelectorError as exc:
            raise invalid_input({"label_selector": [str(exc)]}) from None
        entries: list[tuple[Snapshot, dict[str, Any] | None]] = [
            (s, None) for s in self._snapshots.values()
        ]
        entries += [(s, {"at": at, "how": how}) for s, at, how in self._gone.values()]
        return [
            {**snapshot.to_json(), "gone": gone}
            for snapshot, gone in sorted(entries, key=lambda entry: entry[0].id)
            if hetzner.selector_matches(requirements, snapshot.labels)
        ]
