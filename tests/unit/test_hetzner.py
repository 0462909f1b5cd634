"""The Hetzner client against recorded API answers: every error code maps to a decision.

The bodies are Hetzner's documented error format (https://docs.hetzner.cloud/#errors);
the live-protocol behaviour is covered against the local cloud in tests/devstack and
tests/e2e.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.activity import Info
from temporalio.testing import ActivityEnvironment

from activities.hetzner import HetznerClient
from activities.plans import CatalogError
from activities.vps_provider import ProviderError, provider_failure, retry_delay
from workflows.contracts import Plan

# code -> (HTTP status, retryable)
HETZNER_ERRORS = {
    "invalid_input": (400, False),
    "json_error": (400, False),
    "unauthorized": (401, False),
    "forbidden": (403, False),
    "resource_limit_exceeded": (403, False),
    "not_found": (404, False),
    "uniqueness_error": (409, False),
    "resource_in_use": (422, False),
    "token_readonly": (403, False),
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
    assert err.value.in_use is (code == "resource_in_use")
    failure = provider_failure(err.value)
    assert failure.non_retryable is (not retryable)
    assert failure.type == f"Provider.{code}"


async def test_a_rate_limit_backs_off_instead_of_waiting_for_the_reset() -> None:
    # Hetzner's RateLimit-Reset is when the bucket is FULL again (one request per second
    # refill): after a 429 it lies up to an hour ahead. Waiting for it made one 429 end
    # a 15-minute boot wait (issue 19, item 6); hcloud-python ignores it and backs off.
    reset = int(time.time()) + 3600
    client = client_answering(
        429,
        {"error": {"code": "rate_limit_exceeded", "message": "limit", "details": {}}},
        {"RateLimit-Limit": "3600", "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)},
    )
    with pytest.raises(ProviderError) as err:
        await client.get_action(1)
    assert err.value.retryable
    for _ in range(20):
        delay = provider_failure(err.value).next_retry_delay
        assert delay is not None and timedelta(seconds=1) <= delay <= timedelta(seconds=2)


def test_backoff_doubles_to_the_60_second_cap_like_hcloud_python() -> None:
    ceilings = {attempt: max(retry_delay(attempt, None) for _ in range(200)) for attempt in (2, 4)}
    assert 1.0 <= ceilings[2] <= 4.0 and 4.0 < ceilings[4] <= 16.0
    assert all(1.0 <= retry_delay(30, None) <= 60.0 for _ in range(200))


def budgeted_info(elapsed: timedelta, schedule_to_close: timedelta, attempt: int) -> Info:
    now = datetime.now(UTC)
    return dataclasses.replace(
        ActivityEnvironment().info,
        attempt=attempt,
        scheduled_time=now - elapsed,
        current_attempt_scheduled_time=now,
        started_time=now,
        schedule_to_close_timeout=schedule_to_close,
        start_to_close_timeout=schedule_to_close,
    )


def test_a_retry_is_never_scheduled_past_the_step_budget() -> None:
    # The boot wait has 15 minutes in all; 40 s are left and the backoff could say 60 s.
    env = ActivityEnvironment()
    env.info = budgeted_info(timedelta(minutes=14, seconds=20), timedelta(minutes=15), 10)
    limited = ProviderError("rate_limit_exceeded", "limit", retryable=True)
    delays = [env.run(provider_failure, limited).next_retry_delay for _ in range(50)]
    assert all(d is not None and d <= timedelta(seconds=35) for d in delays)
    # With the budget spent the retry is immediate rather than after the deadline.
    env.info = budgeted_info(timedelta(minutes=14, seconds=58), timedelta(minutes=15), 10)
    assert env.run(provider_failure, limited).next_retry_delay == timedelta(0)


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
    image_gone = {"error": {"code": "not_found", "message": "image not found", "details": {}}}
    assert await client_answering(404, image_gone).get_image(5) is None
    assert await client_answering(404, image_gone).delete_image(5) is False


async def test_network_timeout_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = HetznerClient("tok", "https://api.example/v1", transport=httpx.MockTransport(handler))
    with pytest.raises(ProviderError) as err:
        await client.get_action(1)
    assert err.value.code == "timeout" and err.value.retryable


def deprecation(unavailable_after: str) -> dict[str, str]:
    return {"announced": "2025-10-16T00:00:00+00:00", "unavailable_after": unavailable_after}


def server_type(name: str, locations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A server type as GET /v1/server_types answers since the per-location change."""
    return {
        "id": 1,
        "name": name,
        "deprecation": None,
        "locations": [
            {"id": n, "name": loc, "deprecation": None, "available": True, **extra}
            for n, (loc, extra) in enumerate(locations.items(), 1)
        ],
    }


def catalog_client(types: dict[str, dict[str, Any]]) -> tuple[HetznerClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        kind = request.url.path.rsplit("/", 1)[-1]
        name = request.url.params["name"]
        if kind == "server_types":
            found = [types[name]] if name in types else []
        else:
            found = [{"id": 1, "name": name}]
        pagination = {"page": 1, "per_page": 50, "next_page": None, "last_page": 1}
        return httpx.Response(200, json={kind: found, "meta": {"pagination": pagination}})

    client = HetznerClient("tok", "https://api.example/v1", transport=httpx.MockTransport(handler))
    return client, seen


def plan(server_type_name: str, *locations: str) -> dict[str, Plan]:
    return {"p": Plan(server_type_name, "debian-12", list(locations))}


async def test_catalog_check_reads_per_location_availability_and_deprecation() -> None:
    types = {
        "cx23": server_type("cx23", {"fsn1": {}, "nbg1": {}}),
        "cx22": server_type("cx22", {"fsn1": {"deprecation": deprecation("2026-01-01T00:00:00Z")}}),
        "cpx22": server_type(
            "cpx22",
            {
                "fsn1": {"deprecation": deprecation("2999-01-01T00:00:00Z")},
                "ash": {"available": False},
            },
        ),
    }
    client, seen = catalog_client(types)
    assert await client.check_catalog(plan("cx23", "fsn1", "nbg1")) == []
    assert all(r.url.params["per_page"] == "50" for r in seen)
    # Listed, but past unavailable_after: a create would fail, so start-up refuses.
    with pytest.raises(CatalogError, match="'cx22' is deprecated in 'fsn1' and unavailable since"):
        await client.check_catalog(plan("cx22", "fsn1"))
    # Known, but not sold in one of the plan's locations.
    with pytest.raises(CatalogError, match="'cx23' is not offered in location 'hel1'"):
        await client.check_catalog(plan("cx23", "fsn1", "hel1"))
    with pytest.raises(CatalogError, match="server_type 'cx99' does not exist"):
        await client.check_catalog(plan("cx99", "fsn1"))
    # Deprecated later, out of stock now: it works today, so warnings, not a refusal.
    warnings = await client.check_catalog(plan("cpx22", "fsn1", "ash"))
    assert len(warnings) == 2
    assert "deprecated in 'fsn1'; new servers can be created until 2999-01-01" in warnings[0]
    assert "out of stock in 'ash'" in warnings[1]


async def test_write_probe_tells_a_read_only_token_apart() -> None:
    def answering(status: int, code: str) -> HetznerClient:
        def handler(request: httpx.Request) -> httpx.Response:
            assert (request.method, request.url.path, request.content) == (
                "POST",
                "/v1/ssh_keys",
                b"{}",
            )
            body = {"error": {"code": code, "message": code, "details": {}}}
            return httpx.Response(status, json=body)

        return HetznerClient(
            "tok", "https://api.example/v1", transport=httpx.MockTransport(handler)
        )

    await answering(400, "invalid_input").check_write_access()  # read-write: refused body
    with pytest.raises(ProviderError) as err:
        await answering(403, "token_readonly").check_write_access()
    assert err.value.code == "token_readonly" and not err.value.retryable


async def test_unsupported_location_and_no_capacity_move_to_the_next_location() -> None:
    for status, code, message in (
        (400, "invalid_input", "unsupported location for server type"),
        (422, "resource_unavailable", "server type cx23 is unavailable in fsn1"),
        (422, "placement_error", "placement failed"),
    ):
        body = {"error": {"code": code, "message": message, "details": {}}}
        with pytest.raises(ProviderError) as err:
            await client_answering(status, body).get_action(1)
        assert err.value.try_next_location, code
    other = {"error": {"code": "invalid_input", "message": "invalid name", "details": {}}}
    with pytest.raises(ProviderError) as err:
        await client_answering(400, other).get_action(1)
    assert not err.value.try_next_location


async def test_lists_ask_for_50_a_page_and_follow_next_page() -> None:
    pages: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        pages.append((request.url.params["page"], request.url.params["per_page"]))
        keys = [
            {"id": i, "name": f"k{i}", "public_key": "ssh-ed25519 AAAA", "labels": {}}
            for i in range(50 * (page - 1), min(60, 50 * page))
        ]
        meta = {"pagination": {"page": page, "per_page": 50, "next_page": 2 if page == 1 else None}}
        return httpx.Response(200, json={"ssh_keys": keys, "meta": meta})

    client = HetznerClient("tok", "https://api.example/v1", transport=httpx.MockTransport(handler))
    assert len(await client.find_ssh_keys(label_selector="managed-by")) == 60
    assert pages == [("1", "50"), ("2", "50")]
