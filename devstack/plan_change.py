"""The local cloud's change_type: Hetzner's documented rules, as one page.

Source: Hetzner Cloud API reference, Server Actions, "Change the Type of a Server"
(POST /servers/{id}/actions/change_type, body {server_type, upgrade_disk}):
- "Server must be powered off for this command to succeed" -> `server_not_stopped`
  ("The action requires a stopped server");
- "You can only migrate to Server types with the same storage_type and equal or
  bigger disks. Shrinking disks is not possible as it might destroy data."
- "If the disk gets upgraded, the Server type can not be downgraded any more."
- "This copies the content of its disk, and starts it again": the server boots on its
  new type once the action succeeds (devstack/cloud.py _migrate);
- `invalid_server_type`: "The server type does not fit for the given server or is
  deprecated"; per-location availability since 2025-09-24 (devstack/hetzner.py).
The HTTP status of both codes is not documented; 422 like Hetzner's other
"valid request, wrong state" codes (devstack/hetzner.py ERROR_STATUS).
Checked again (issue 20) against the reference's text as SDK generators reproduce it
(the "Call specific error codes" table: `invalid_server_type`, `server_not_stopped`
"The action requires a stopped server") and hetznercloud/hcloud-python
hcloud/servers/client.py `change_type` ("If false, do not upgrade the disk. This allows
downgrading the server type later."). Which code refuses a disk too small for the
server's is not documented: `invalid_server_type` ("does not fit for the given
server") is this stand-in's reading. `storage_type` crossing is documented but not
modelled: every type of this catalog has local storage.
"""

from __future__ import annotations

from typing import Any

from devstack import hetzner
from devstack.hetzner import ApiError, invalid_input


def change_type_input(body: dict[str, Any]) -> tuple[str, bool]:
    """The body's server_type (a known name) and upgrade_disk (required boolean)."""
    problems: dict[str, list[str]] = {}
    server_type = body.get("server_type")
    if server_type is None:
        problems["server_type"] = ["Missing data for required field."]
    elif server_type not in hetzner.SERVER_TYPES:
        problems["server_type"] = [f"server type {server_type!r} not found"]
    upgrade_disk = body.get("upgrade_disk")
    if not isinstance(upgrade_disk, bool):
        problems["upgrade_disk"] = ["Missing data for required field: a boolean."]
    if problems:
        raise invalid_input(problems)
    assert isinstance(server_type, str) and isinstance(upgrade_disk, bool)
    return server_type, upgrade_disk


def change_type_problem(status: str, location: str, disk_gb: int, new_type: str) -> ApiError | None:
    """Why Hetzner refuses this change_type now, or None."""
    if status != "off":
        return ApiError("server_not_stopped", "The action requires a stopped server")
    spec = hetzner.SERVER_TYPES[new_type]
    deprecation = spec.get("deprecation")
    if location not in spec["locations"] or deprecation is not None:
        return ApiError(
            "invalid_server_type",
            "The server type does not fit for the given server or is deprecated",
        )
    # Every type of the stand-in's catalog has local storage (server_type_json);
    # a catalog with network-storage types would refuse crossing here too.
    if spec["disk"] < disk_gb:
        return ApiError(
            "invalid_server_type",
            f"server type {new_type} has a {spec['disk']} GB disk, the server's is "
            f"{disk_gb} GB: shrinking disks is not possible",
        )
    return None


def disk_after(disk_gb: int, new_type: str, upgrade_disk: bool) -> int:
    """The primary disk after the change: the new type's when upgraded, else unchanged."""
    new_disk = int(hetzner.SERVER_TYPES[new_type]["disk"])
    return max(disk_gb, new_disk) if upgrade_disk else disk_gb
