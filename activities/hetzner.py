"""The Hetzner Cloud API v1 (https://docs.hetzner.cloud/) as a `VpsProvider`.

Only what provisioning needs: servers (create, get, find by name, delete), actions,
reverse DNS. Errors keep Hetzner's machine-readable `code` and say whether another
attempt can help (per Hetzner's error table); this module never sleeps or
retries, because Temporal's retry policy does that durably.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from activities.vps_provider import Action, ProviderError, Server

DEFAULT_API_URL = "https://api.hetzner.cloud/v1"

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
    ipv4 = (data.get("public_net") or {}).get("ipv4") or {}
    return Server(
        id=int(data["id"]),
        name=str(data["name"]),
        status=str(data["status"]),
        ipv4=ipv4.get("ip"),
        dns_ptr=ipv4.get("dns_ptr"),
        labels=dict(data.get("labels") or {}),
        created=str(data.get("created") or ""),
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
    ) -> tuple[Server, Action]:
        body = {
            "name": name,
            "server_type": server_type,
            "image": image,
            "location": location,
            "labels": labels,
            "user_data": user_data,
            "start_after_create": True,
        }
        data = await self._request("POST", "servers", json=body)
        return _server(data["server"]), _action(data["action"])

    async def get_server(self, server_id: int) -> Server | None:
        try:
            data = await self._request("GET", f"servers/{server_id}")
        except ProviderError as err:
            if err.not_found:
                return None
            raise
        return _server(data["server"])

    async def find_servers(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[Server]:
        """GET /servers filtered by exact name and/or label selector, every page."""
        query = {"name": name, "label_selector": label_selector}
        params: dict[str, str | int] = {k: v for k, v in query.items() if v is not None}
        servers: list[Server] = []
        page: int | None = 1
        while page:
            data = await self._request("GET", "servers", params={**params, "page": page})
            servers += [_server(s) for s in data["servers"]]
            page = ((data.get("meta") or {}).get("pagination") or {}).get("next_page")
        return servers

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
    retry_after = None
    if code == "rate_limit_exceeded":
        reset = response.headers.get("RateLimit-Reset")
        if reset and reset.isdigit():
            retry_after = max(1.0, int(reset) - time.time())
    retryable = code in RETRYABLE_CODES or response.status_code >= 500
    return ProviderError(
        code,
        message,
        retryable=retryable,
        status=response.status_code,
        retry_after=retry_after,
        name_taken=code == "uniqueness_error",
        not_found=code == "not_found",
    )
