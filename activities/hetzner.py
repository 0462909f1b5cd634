"""A small typed client for the Hetzner Cloud API v1 (https://docs.hetzner.cloud/).

Only what provisioning needs: servers (create, get, list by name or label, delete),
actions, reverse DNS. Errors keep Hetzner's machine-readable `code` so callers can
decide what is worth retrying; this module itself never sleeps or retries, because
Temporal's retry policy (with `next_retry_delay` from RateLimit-Reset) does it
durably.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_API_URL = "https://api.hetzner.cloud/v1"

# Hetzner error codes that another attempt can fix (https://docs.hetzner.cloud/#errors).
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


class HetznerError(Exception):
    """An error answer of the API, or no answer at all."""

    def __init__(
        self, code: str, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"hetzner {code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES or (self.status is not None and self.status >= 500)


@dataclass(frozen=True)
class Server:
    id: int
    name: str
    status: str
    ipv4: str | None
    dns_ptr: str | None
    labels: dict[str, str]

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Server:
        ipv4 = (data.get("public_net") or {}).get("ipv4") or {}
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            status=str(data["status"]),
            ipv4=ipv4.get("ip"),
            dns_ptr=ipv4.get("dns_ptr"),
            labels=dict(data.get("labels") or {}),
        )


@dataclass(frozen=True)
class Action:
    id: int
    command: str
    status: str  # "running" | "success" | "error"
    progress: int
    error_code: str | None
    error_message: str | None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Action:
        error = data.get("error") or {}
        return cls(
            id=int(data["id"]),
            command=str(data["command"]),
            status=str(data["status"]),
            progress=int(data.get("progress") or 0),
            error_code=error.get("code"),
            error_message=error.get("message"),
        )


class HetznerClient:
    """Resource-oriented wrapper over one httpx.AsyncClient."""

    def __init__(self, token: str, base_url: str = DEFAULT_API_URL, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "mail-provisioning"},
            timeout=timeout,
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
        return Server.from_api(data["server"]), Action.from_api(data["action"])

    async def get_server(self, server_id: int) -> Server | None:
        try:
            data = await self._request("GET", f"servers/{server_id}")
        except HetznerError as err:
            if err.code == "not_found":
                return None
            raise
        return Server.from_api(data["server"])

    async def find_servers(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[Server]:
        params = {k: v for k, v in (("name", name), ("label_selector", label_selector)) if v}
        servers: list[Server] = []
        page: int | None = 1
        while page:
            data = await self._request("GET", "servers", params={**params, "page": page})
            servers += [Server.from_api(s) for s in data["servers"]]
            page = ((data.get("meta") or {}).get("pagination") or {}).get("next_page")
        return servers

    async def delete_server(self, server_id: int) -> Action | None:
        """Delete; None when it is already gone (so compensation can be retried)."""
        try:
            data = await self._request("DELETE", f"servers/{server_id}")
        except HetznerError as err:
            if err.code == "not_found":
                return None
            raise
        return Action.from_api(data["action"])

    async def get_action(self, action_id: int) -> Action:
        data = await self._request("GET", f"actions/{action_id}")
        return Action.from_api(data["action"])

    async def change_dns_ptr(self, server_id: int, ip: str, dns_ptr: str | None) -> Action:
        data = await self._request(
            "POST",
            f"servers/{server_id}/actions/change_dns_ptr",
            json={"ip": ip, "dns_ptr": dns_ptr},
        )
        return Action.from_api(data["action"])

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise HetznerError("timeout", f"{method} /{path}: {type(err).__name__}") from None
        except httpx.TransportError as err:
            raise HetznerError("unavailable", f"{method} /{path}: {err}") from None
        if response.is_success:
            return response.json() if response.content else {}
        raise _error_from(response)


def _error_from(response: httpx.Response) -> HetznerError:
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
    return HetznerError(code, message, response.status_code, retry_after)
