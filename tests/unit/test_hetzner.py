"""The Hetzner client against recorded API answers: every error code maps to a decision.

The bodies are Hetzner's documented error format (https://docs.hetzner.cloud/#errors);
the live-protocol behaviour is covered against the local cloud in tests/devstack and
tests/e2e.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest

from activities.hetzner import HetznerClient
from activities.vps_provider import ProviderError, provider_failure

# code -> (HTTP status, retryable)
HETZNER_ERRORS = {
    "invalid_input": (400, False),
    "json_error": (400, False),
    "unauthorized": (401, False),
    "forbidden": (403, False),
    "resource_limit_exceeded": (403, False),
    "not_found": (404, False),
    "uniqueness_error": (409, False),
    "conflict": (409, True),
    "locked": (423, True),
    "rate_limit_exceeded": (429, True),
    "server_error": (500, True),
    "unavailable": (503, True),
    "maintenance": (503, True),
    "timeout": (504, True),
}


def client_answering(
    status: int, body: object, headers: dict[str, str] | None = None
) -> HetznerClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers or {})

    return HetznerClient("tok", "https://api.example/v1", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("code", sorted(HETZNER_ERRORS))
async def test_every_documented_error_code_is_classified(code: str) -> None:
    status, retryable = HETZNER_ERRORS[code]
    body = {"error": {"code": code, "message": f"recorded {code}", "details": {}}}
    client = client_answering(status, body)
    with pytest.raises(ProviderError) as err:
        await client.delete_server(1) if code != "not_found" else await client.get_action(1)
    assert err.value.code == code
    assert err.value.retryable is retryable
    assert err.value.status == status
    assert err.value.name_taken is (code == "uniqueness_error")
    assert err.value.not_found is (code == "not_found")
    failure = provider_failure(err.value)
    assert failure.non_retryable is (not retryable)
    assert failure.type == f"Provider.{code}"


async def test_rate_limit_waits_until_the_reset_time() -> None:
    reset = int(time.time()) + 30
    client = client_answering(
        429,
        {"error": {"code": "rate_limit_exceeded", "message": "limit", "details": {}}},
        {"RateLimit-Limit": "3600", "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)},
    )
    with pytest.raises(ProviderError) as err:
        await client.get_action(1)
    assert err.value.retry_after is not None and 25 <= err.value.retry_after <= 31
    delay = provider_failure(err.value).next_retry_delay
    assert delay is not None and timedelta(seconds=25) <= delay <= timedelta(seconds=31)


def test_other_retryable_errors_back_off_with_capped_jitter() -> None:
    delays = {
        provider_failure(ProviderError("conflict", "x", retryable=True)).next_retry_delay
        for _ in range(50)
    }
    assert all(d is not None and timedelta(seconds=1) <= d <= timedelta(seconds=60) for d in delays)
    assert len(delays) > 1  # jittered, not lockstep


async def test_an_unparseable_gateway_error_is_retryable() -> None:
    client = client_answering(502, b"<html>bad gateway</html>")
    with pytest.raises(ProviderError) as err:
        await client.get_action(1)
    assert err.value.retryable and err.value.code == "server_error"


async def test_not_found_on_get_and_delete_means_gone() -> None:
    body = {"error": {"code": "not_found", "message": "server not found", "details": {}}}
    assert await client_answering(404, body).get_server(5) is None
    assert await client_answering(404, body).delete_server(5) is None


async def test_network_timeout_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = HetznerClient("tok", "https://api.example/v1", transport=httpx.MockTransport(handler))
    with pytest.raises(ProviderError) as err:
        await client.get_action(1)
    assert err.value.code == "timeout" and err.value.retryable
