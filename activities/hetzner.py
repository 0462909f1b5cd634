"""The Hetzner Cloud API v1 (https://docs.hetzner.cloud/) as a `VpsProvider`.

Only what provisioning needs: servers (create, get, find by name, delete), actions,
reverse DNS for IPv4 and IPv6, firewalls (find by label, create, get, delete), SSH
keys (create, find, delete), the start-up checks (the plan catalog against server
types with their per-location availability and deprecation, and a probe that the
token may write). Errors keep Hetzner's machine-readable `code` and say whether
another attempt can help (per Hetzner's error table); this module never sleeps or
retries, because Temporal's retry policy does that durably (activities/vps_provider.py
picks the delay).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from activities.plans import CatalogError
from activities.vps_provider import (
    Action,
    Firewall,
    FirewallRule,
    Image,
    ProviderError,
    Server,
    ServerTypeInfo,
    SshKey,
)
from workflows.contracts import Plan

DEFAULT_API_URL = "https://api.hetzner.cloud/v1"
# List endpoints page at 25 by default and at most 50 (docs.hetzner.cloud, Pagination):
# ask for 50 and follow meta.pagination.next_page.
PER_PAGE = 50
# Codes meaning "not here, not now" for a create: try the plan's next location
# (hetznercloud/hcloud-go hcloud/error.go: resource_unavailable "Resource currently
# unavailable", placement_error "An error during the placement occurred").
CAPACITY_CODES = frozenset({"resource_unavailable", "placement_error"})
# Since 2025-09-24 server types are offered per location (docs.hetzner.cloud changelog
# "per-location server types"); creating one where it is not (or no longer) offered
# answers invalid_input "unsupported location for server type" (issue 19, item 5).
UNSUPPORTED_LOCATION = "unsupported location for server type"

# Hetzner error codes another attempt can fix (https://docs.hetzner.cloud/#errors).
# Final: invalid_input, json_error, unauthorized, forbidden, resource_limit_exceeded,
# not_found, uniqueness_error (adopted by the caller), protected, ...
RETRYABLE_CODES = frozenset(
    {
        "rate_limit_exceeded",
        "conflict",
        "locked",
        "server_error",
        "unavailable",
        "maintenance",
        "timeout",
        "robot_unavailable",
    }
)


def _server(data: dict[str, Any]) -> Server:
    public_net = data.get("public_net") or {}
    ipv4 = public_net.get("ipv4") or {}
    ipv6 = public_net.get("ipv6") or {}
    # Hetzner routes a /64 to the server ("ip": "2001:db8:1:2::/64"); its own address
    # is ::1 of that network (what Hetzner's images configure), and IPv6 reverse DNS
    # is a list of {ip, dns_ptr} entries inside the /64 (docs.hetzner.cloud, Servers).
    ipv6_address = None
    ipv6_ptrs: dict[str, str] = {}
    if ipv6.get("ip"):
        network = ipaddress.IPv6Network(str(ipv6["ip"]), strict=False)
        ipv6_address = str(network.network_address + 1)
        ipv6_ptrs = {
            str(ipaddress.IPv6Address(entry["ip"])): str(entry["dns_ptr"])
            for entry in ipv6.get("dns_ptr") or []
        }
    return Server(
        id=int(data["id"]),
        name=str(data["name"]),
        status=str(data["status"]),
        ipv4=ipv4.get("ip"),
        dns_ptr=ipv4.get("dns_ptr"),
        labels=dict(data.get("labels") or {}),
        created=str(data.get("created") or ""),
        ipv6=ipv6_address,
        ipv6_dns_ptr=ipv6_ptrs.get(ipv6_address) if ipv6_address else None,
        firewall_ids=[int(fw["id"]) for fw in public_net.get("firewalls") or []],
        server_type=str((data.get("server_type") or {}).get("name") or ""),
        location=str((data.get("location") or {}).get("name") or ""),
        disk_gb=int(data.get("primary_disk_size") or 0),
        image=(data.get("image") or {}).get("name"),
    )


def _server_type_info(data: dict[str, Any], now: datetime) -> ServerTypeInfo:
    """Per-location availability as hcloud-python 2.27's ServerTypeLocation reads it:
    a location entry past its deprecation's unavailable_after cannot be used any more."""
    locations: dict[str, tuple[bool, bool]] = {}
    for entry in data.get("locations") or []:
        ends = _deprecation_ends(entry.get("deprecation"))
        locations[str(entry["name"])] = (
            ends is None or ends > now,
            entry.get("available") is not False,
        )
    deprecated = bool(data.get("deprecation")) or any(
        entry.get("deprecation") for entry in data.get("locations") or []
    )
    return ServerTypeInfo(
        name=str(data["name"]),
        disk_gb=int(data["disk"]),
        storage_type=str(data.get("storage_type") or "local"),
        locations=locations,
        deprecated=deprecated,
    )


def _firewall(data: dict[str, Any]) -> Firewall:
    return Firewall(
        id=int(data["id"]),
        name=str(data["name"]),
        labels=dict(data.get("labels") or {}),
        applied_to_servers=[
            int(entry["server"]["id"])
            for entry in data.get("applied_to") or []
            if entry.get("type") == "server"
        ],
    )


def _ssh_key(data: dict[str, Any]) -> SshKey:
    return SshKey(
        id=int(data["id"]),
        name=str(data["name"]),
        public_key=str(data["public_key"]),
        labels=dict(data.get("labels") or {}),
    )


def _image(data: dict[str, Any]) -> Image:
    size = data.get("image_size")
    return Image(
        id=int(data["id"]),
        status=str(data["status"]),
        description=str(data.get("description") or ""),
        labels=dict(data.get("labels") or {}),
        created=str(data.get("created") or ""),
        created_from_server=int(data["created_from"]["id"]) if data.get("created_from") else None,
        image_size_gb=float(size) if size is not None else None,
        disk_size_gb=int(data.get("disk_size") or 0),
    )


def _action(data: dict[str, Any]) -> Action:
    error = data.get("error") or {}
    message = f"{error.get('code')}: {error.get('message')}" if error else None
    return Action(
        id=int(data["id"]), command=str(data["command"]), status=str(data["status"]), error=message
    )


class HetznerClient:
    """Resource-oriented wrapper over one httpx.AsyncClient."""

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "mail-provisioning"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def create_server(
        self,
        *,
        name: str,
        server_type: str,
        image: str,
        location: str,
        labels: dict[str, str],
        user_data: str,
        enable_ipv4: bool = True,
        enable_ipv6: bool = True,
        firewall_ids: Sequence[int] = (),
        ssh_key_ids: Sequence[int] = (),
    ) -> tuple[Server, Action]:
        body = {
            "name": name,
            "server_type": server_type,
            "image": image,
            "location": location,
            "labels": labels,
            "user_data": user_data,
            "start_after_create": True,
            # Sent explicitly: Hetzner's default (both on) is not what every plan wants.
            "public_net": {"enable_ipv4": enable_ipv4, "enable_ipv6": enable_ipv6},
            "firewalls": [{"firewall": fid} for fid in firewall_ids],
            # Without ssh_keys Hetzner sets an expired root password (VpsActivities).
            "ssh_keys": list(ssh_key_ids),
        }
        data = await self._request("POST", "servers", json=body)
        return _server(data["server"]), _action(data["action"])

    async def get_server(self, server_id: int) -> Server | None:
        data = await self._get_or_none(f"servers/{server_id}")
        return _server(data["server"]) if data is not None else None

    async def find_servers(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[Server]:
        """GET /servers filtered by exact name and/or label selector, every page."""
        query = {"name": name, "label_selector": label_selector}
        params = {key: value for key, value in query.items() if value is not None}
        return [_server(s) for s in await self._list("servers", params)]

    async def create_ssh_key(self, *, name: str, public_key: str, labels: dict[str, str]) -> SshKey:
        body = {"name": name, "public_key": public_key, "labels": labels}
        data = await self._request("POST", "ssh_keys", json=body)
        return _ssh_key(data["ssh_key"])

    async def find_ssh_keys(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[SshKey]:
        query = {"name": name, "label_selector": label_selector}
        params = {key: value for key, value in query.items() if value is not None}
        return [_ssh_key(k) for k in await self._list("ssh_keys", params)]

    async def delete_ssh_key(self, ssh_key_id: int) -> bool:
        try:
            await self._request("DELETE", f"ssh_keys/{ssh_key_id}")
        except ProviderError as err:
            if err.not_found:
                return False
            raise
        return True

    async def create_snapshot(
        self, server_id: int, *, description: str, labels: dict[str, str]
    ) -> tuple[Image, Action]:
        """POST /servers/{id}/actions/create_image with type snapshot (API reference,
        Server Actions, Create Image from a Server): the image answers `creating` and the
        server stays locked until the action ends (devstack/images.py)."""
        data = await self._request(
            "POST",
            f"servers/{server_id}/actions/create_image",
            json={"type": "snapshot", "description": description, "labels": labels},
        )
        return _image(data["image"]), _action(data["action"])

    async def find_snapshots(self, *, label_selector: str) -> list[Image]:
        """GET /images?type=snapshot&label_selector=..., every page."""
        params = {"type": "snapshot", "label_selector": label_selector}
        return [_image(i) for i in await self._list("images", params)]

    async def get_image(self, image_id: int) -> Image | None:
        data = await self._get_or_none(f"images/{image_id}")
        return _image(data["image"]) if data is not None else None

    async def delete_image(self, image_id: int) -> bool:
        """DELETE /images/{id}; False when it is already gone (not_found)."""
        try:
            await self._request("DELETE", f"images/{image_id}")
        except ProviderError as err:
            if err.not_found:
                return False
            raise
        return True

    async def check_catalog(self, catalog: Mapping[str, Plan]) -> list[str]:
        """Every plan's image and locations exist, and its server type is sold in them.

        Refuses a plan whose server type is unknown, not offered in one of its
        locations, or past its `unavailable_after`; warns about a deprecation announced
        but not yet in force (the plan works today and stops working on that date).
        Reads `server_type.locations[]` (per-location availability and deprecation,
        since 2025-09-24) and the type-wide `deprecation`, as hcloud-python 2.27's
        ServerType / ServerTypeLocation models do.
        """
        warnings: list[str] = []
        now = datetime.now(UTC)
        for plan_name, plan in sorted(catalog.items()):
            where = f"plan {plan_name!r}"
            for kind, value in [("images", plan.image)] + [
                ("locations", loc) for loc in plan.locations
            ]:
                if not await self._list(kind, {"name": value}):
                    raise CatalogError(
                        f"{where}: {kind[:-1]} {value!r} does not exist at the provider "
                        f"(GET /v1/{kind}?name={value} found nothing)"
                    )
            found = await self._list("server_types", {"name": plan.server_type})
            if not found:
                raise CatalogError(
                    f"{where}: server_type {plan.server_type!r} does not exist at the provider "
                    f"(GET /v1/server_types?name={plan.server_type} found nothing)"
                )
            warnings += _server_type_problems(where, found[0], plan.locations, now)
        return warnings

    async def check_write_access(self) -> None:
        """POST /v1/ssh_keys with an empty body: a harmless write that creates nothing.

        A read-only token is refused before the body is read (403 token_readonly, "the
        token is only allowed to perform GET requests", Hetzner's error table); a
        read-write token gets invalid_input for the missing fields. Every other answer
        (unauthorized, unavailable, ...) is raised as it is.
        """
        try:
            await self._request("POST", "ssh_keys", json={})
        except ProviderError as err:
            if err.code == "invalid_input":
                return
            raise
        raise ProviderError(
            "invalid_response",
            "POST /ssh_keys with an empty body succeeded; expected invalid_input",
            retryable=False,
        )

    async def find_firewalls(self, *, label_selector: str) -> list[Firewall]:
        params = {"label_selector": label_selector}
        return [_firewall(f) for f in await self._list("firewalls", params)]

    async def create_firewall(
        self, *, name: str, labels: dict[str, str], rules: Sequence[FirewallRule]
    ) -> Firewall:
        body = {
            "name": name,
            "labels": labels,
            "rules": [
                {
                    "direction": "in",
                    "protocol": rule.protocol,
                    "port": rule.port,
                    "source_ips": list(rule.source_ips),
                    "description": rule.description,
                }
                for rule in rules
            ],
        }
        data = await self._request("POST", "firewalls", json=body)
        return _firewall(data["firewall"])

    async def get_firewall(self, firewall_id: int) -> Firewall | None:
        data = await self._get_or_none(f"firewalls/{firewall_id}")
        return _firewall(data["firewall"]) if data is not None else None

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """GET one resource; None when the provider says it does not exist."""
        try:
            return await self._request("GET", path)
        except ProviderError as err:
            if err.not_found:
                return None
            raise

    async def delete_firewall(self, firewall_id: int) -> bool:
        """Delete; False when already gone. Raises `resource_in_use` while applied."""
        try:
            await self._request("DELETE", f"firewalls/{firewall_id}")
        except ProviderError as err:
            if err.not_found:
                return False
            raise
        return True

    async def _list(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every page of a list endpoint (the plural key is the path, e.g. "servers")."""
        items: list[dict[str, Any]] = []
        page: int | None = 1
        while page:
            data = await self._request(
                "GET", path, params={**params, "page": str(page), "per_page": str(PER_PAGE)}
            )
            items += data[path]
            page = ((data.get("meta") or {}).get("pagination") or {}).get("next_page")
        return items

    async def delete_server(self, server_id: int) -> Action | None:
        """Delete; None when it is already gone (so compensation can be retried)."""
        try:
            data = await self._request("DELETE", f"servers/{server_id}")
        except ProviderError as err:
            if err.not_found:
                return None
            raise
        return _action(data["action"])

    async def get_action(self, action_id: int) -> Action:
        data = await self._request("GET", f"actions/{action_id}")
        return _action(data["action"])

    async def change_dns_ptr(self, server_id: int, ip: str, dns_ptr: str) -> Action:
        data = await self._request(
            "POST",
            f"servers/{server_id}/actions/change_dns_ptr",
            json={"ip": ip, "dns_ptr": dns_ptr},
        )
        return _action(data["action"])

    async def _server_action(self, server_id: int, action: str, **body: Any) -> Action:
        data = await self._request(
            "POST", f"servers/{server_id}/actions/{action}", json=body or None
        )
        return _action(data["action"])

    async def shutdown_server(self, server_id: int) -> Action:
        """ACPI shutdown: the OS stops its services (Docker stops MailU's containers)
        and powers off; Hetzner's action succeeds once the request is sent, not when the
        server is off (docs.hetzner.cloud, Server Actions: Shutdown a Server)."""
        return await self._server_action(server_id, "shutdown")

    async def poweroff_server(self, server_id: int) -> Action:
        """Cut the power: "may lead to data loss" (Server Actions: Power off a Server)."""
        return await self._server_action(server_id, "poweroff")

    async def poweron_server(self, server_id: int) -> Action:
        return await self._server_action(server_id, "poweron")

    async def change_server_type(
        self, server_id: int, server_type: str, upgrade_disk: bool
    ) -> Action:
        """POST /servers/{id}/actions/change_type (Server Actions: Change the Type of a
        Server): the server must be off (server_not_stopped); `upgrade_disk` false keeps
        the disk, so the type can be downgraded later; an upgraded disk cannot shrink."""
        return await self._server_action(
            server_id, "change_type", server_type=server_type, upgrade_disk=upgrade_disk
        )

    async def get_server_type(self, name: str) -> ServerTypeInfo | None:
        found = await self._list("server_types", {"name": name})
        return _server_type_info(found[0], datetime.now(UTC)) if found else None

    async def set_server_labels(self, server_id: int, labels: dict[str, str]) -> Server:
        """PUT /servers/{id}: labels are replaced as a whole (Servers: Update a Server)."""
        data = await self._request("PUT", f"servers/{server_id}", json={"labels": labels})
        return _server(data["server"])

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise ProviderError(
                "timeout", f"{method} /{path}: {type(err).__name__}", retryable=True
            ) from None
        except httpx.TransportError as err:
            raise ProviderError("unavailable", f"{method} /{path}: {err}", retryable=True) from None
        if response.is_success:
            return response.json() if response.content else {}
        raise _error_from(response)


def _error_from(response: httpx.Response) -> ProviderError:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code = "server_error" if response.status_code >= 500 else "invalid_response"
        message = response.text[:200] or response.reason_phrase
    # RateLimit-Reset is deliberately not read: it is when the bucket is full again
    # (docs.hetzner.cloud, Rate Limiting), not when the next request may pass.
    retryable = code in RETRYABLE_CODES or response.status_code >= 500
    return ProviderError(
        code,
        message,
        retryable=retryable,
        status=response.status_code,
        name_taken=code == "uniqueness_error",
        not_found=code == "not_found",
        try_next_location=code in CAPACITY_CODES
        or (code == "invalid_input" and UNSUPPORTED_LOCATION in message.lower()),
        # Firewall delete while applied (docs.hetzner.cloud, Firewalls).
        in_use=code == "resource_in_use",
    )


def _deprecation_ends(deprecation: dict[str, Any] | None) -> datetime | None:
    if not deprecation:
        return None
    return datetime.fromisoformat(str(deprecation["unavailable_after"]))


def _server_type_problems(
    where: str, server_type: dict[str, Any], locations: Sequence[str], now: datetime
) -> list[str]:
    """Raise CatalogError when the type cannot be bought in a plan location; warnings else."""
    name = server_type["name"]
    warnings: list[str] = []
    offered = {str(entry["name"]): entry for entry in server_type.get("locations") or []}
    for location in locations:
        entry = offered.get(location)
        if entry is None:
            raise CatalogError(
                f"{where}: server_type {name!r} is not offered in location {location!r} "
                f"(offered in: {', '.join(sorted(offered)) or 'none'})"
            )
        for deprecation in (entry.get("deprecation"), server_type.get("deprecation")):
            ends = _deprecation_ends(deprecation)
            if ends is None:
                continue
            if ends <= now:
                raise CatalogError(
                    f"{where}: server_type {name!r} is deprecated in {location!r} and "
                    f"unavailable since {ends.isoformat()}; pick a current type"
                )
            warnings.append(
                f"{where}: server_type {name!r} is deprecated in {location!r}; new servers "
                f"can be created until {ends.isoformat()}"
            )
        if entry.get("available") is False:
            warnings.append(
                f"{where}: server_type {name!r} is currently out of stock in {location!r}; "
                "creates move on to the plan's next location"
            )
    return warnings


def from_settings(settings: Mapping[str, str]) -> HetznerClient:
    """The registry's constructor (activities/provider_registry.py)."""
    return HetznerClient(settings["token"], settings.get("api_url") or DEFAULT_API_URL)
