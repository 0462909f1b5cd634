"""The webhook's outbound guard against a real loopback listener that must hear nothing.

The resolver is the only stand-in: it plays a DNS server that answers with internal
addresses, or answers differently on each lookup (rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notify import IpAddress, NotifyActivities, NotifyPolicy
from devstack.processes import free_port
from workflows.contracts import Notification, NotifyUrlCheck


class Listener:
    """A real HTTP/1.1 server on 127.0.0.1 that records every connection."""

    def __init__(self, response: bytes) -> None:
        self.port = free_port()
        self.connections = 0
        self.requests: list[bytes] = []
        self._response = response

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(self._response)
        await writer.drain()
        # Keep the connection open: a client that reads the body would wait here.
        await asyncio.sleep(3600)


@pytest.fixture
async def listener(request: pytest.FixtureRequest) -> AsyncIterator[Listener]:
    response = getattr(request, "param", b"HTTP/1.1 204 No Content\r\n\r\n")
    spy = Listener(response)
    server = await asyncio.start_server(spy.handle, "127.0.0.1", spy.port)
    async with server:
        yield spy
        server.close()


def resolver(*answers: list[str]):  # type: ignore[no-untyped-def]
    """A DNS stand-in giving one answer per lookup, in order (the last one repeats)."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[IpAddress]:
        calls.append(host)
        answer = answers[min(len(calls), len(answers)) - 1]
        return [ipaddress.ip_address(a) for a in answer]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def notification(url: str) -> Notification:
    return Notification("acme", url, "purchase-p-1", {"event": "mail_server_ready"})


async def notify(activities: NotifyActivities, url: str) -> None:
    await ActivityEnvironment().run(activities.notify_customer, notification(url))


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.1"],
        ["::1"],
        ["93.184.216.34", "127.0.0.1"],  # one bad address in the set is enough
        ["::ffff:127.0.0.1"],
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["100.100.100.200"],
        ["fd12::1"],
        ["0.0.0.0"],  # noqa: S104 - an answer to refuse, not a bind
    ],
)
async def test_a_name_resolving_inside_is_refused_and_the_listener_hears_nothing(
    listener: Listener, answer: list[str]
) -> None:
    policy = NotifyPolicy(http_hosts=frozenset({"hooks.customer.example"}))
    activities = NotifyActivities(policy, resolve=resolver(answer))
    with pytest.raises(ApplicationError) as err:
        await notify(activities, f"http://hooks.customer.example:{listener.port}/ready")
    assert err.value.type == "NotifyRefused" and err.value.non_retryable
    assert "resolves to" in err.value.message
    assert listener.connections == 0


async def test_the_connection_goes_to_the_checked_address_even_if_dns_rebinds() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    # First lookup public, every later one loopback: a rebinding DNS server.
    lookup = resolver(["93.184.216.34"], ["127.0.0.1"])
    activities = NotifyActivities(resolve=lookup, transport=httpx.MockTransport(answer))
    await notify(activities, "https://hooks.customer.example/ready")
    [request] = seen
    assert request.url.host == "93.184.216.34"  # the address that was checked
    assert request.headers["host"] == "hooks.customer.example"
    assert request.extensions["sni_hostname"] == "hooks.customer.example"
    assert lookup.calls == ["hooks.customer.example"]  # resolved once, then pinned


async def test_http_needs_the_operator_and_the_allowlist_is_enforced() -> None:
    activities = NotifyActivities(
        NotifyPolicy(allowed_hosts=frozenset({"ok.example.com"})),
        resolve=resolver(["93.184.216.34"]),
    )
    env = ActivityEnvironment()
    for url, rule in [
        ("http://ok.example.com/", "must use https"),
        ("https://other.example.com/", "allowlist"),
        ("https://127.0.0.1/", "loopback"),
    ]:
        with pytest.raises(ApplicationError) as err:
            await env.run(activities.check_notify_url, NotifyUrlCheck("acme", url))
        assert err.value.type == "NotifyUrlRefused" and rule in err.value.message
    await env.run(activities.check_notify_url, NotifyUrlCheck("acme", "https://ok.example.com/"))


@pytest.mark.parametrize(
    "listener",
    [b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"],
    indirect=True,
)
async def test_redirects_are_not_followed(listener: Listener) -> None:
    sink = f"http://sink.ops.example:{listener.port}/x=127.0.0.1"
    policy = NotifyPolicy.from_settings(allowed="", http="", sinks=sink)
    with pytest.raises(ApplicationError) as err:
        await notify(NotifyActivities(policy), f"http://sink.ops.example:{listener.port}/x")
    assert err.value.type == "NotifyRejected" and "HTTP 302" in err.value.message
    assert err.value.non_retryable
    assert listener.connections == 1


@pytest.mark.parametrize(
    "listener",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n" + b"x" * 1024],
    indirect=True,
)
async def test_the_response_body_is_never_read(listener: Listener) -> None:
    # The listener promises a terabyte and then stalls: reading it would time out.
    sink = f"http://sink.ops.example:{listener.port}/=127.0.0.1"
    policy = NotifyPolicy.from_settings(allowed="", http="", sinks=sink)
    await notify(NotifyActivities(policy, timeout=5), f"http://sink.ops.example:{listener.port}/")
    assert b"Idempotency-Key: purchase-p-1" in listener.requests[0]
    assert b"Host: sink.ops.example" in listener.requests[0]


async def test_an_operator_sink_covers_only_its_own_port(listener: Listener) -> None:
    policy = NotifyPolicy.from_settings(
        allowed="", http="", sinks="http://sink.ops.example:1/hooks/mail=127.0.0.1"
    )
    with pytest.raises(ApplicationError) as err:
        await notify(NotifyActivities(policy), f"http://sink.ops.example:{listener.port}/")
    assert err.value.type == "NotifyRefused"
    assert listener.connections == 0


# ------------------------------------------------------------------ operator sinks by URL


@pytest.mark.parametrize(
    "path",
    [
        "/_devstack/faults",  # the local cloud's fault injection, reached through the sink
        "/hooks/mail/../../_devstack/faults",
        "/hooks/mail/",
        "/hooks/mail?fail=1",
        "/HOOKS/mail",
        "",
    ],
)
async def test_an_operator_sink_takes_only_its_configured_path(
    listener: Listener, path: str
) -> None:
    policy = NotifyPolicy.from_settings(
        allowed="", http="", sinks=f"http://sink.ops.example:{listener.port}/hooks/mail=127.0.0.1"
    )
    url = f"http://sink.ops.example:{listener.port}{path}"
    with pytest.raises(ApplicationError) as err:
        await notify(NotifyActivities(policy), url)
    assert err.value.type == "NotifyRefused" and err.value.non_retryable
    assert "operator sink that takes only the path '/hooks/mail'" in err.value.message
    with pytest.raises(ApplicationError) as at_admission:
        await ActivityEnvironment().run(
            NotifyActivities(policy).check_notify_url, NotifyUrlCheck("acme", url)
        )
    assert at_admission.value.type == "NotifyUrlRefused"
    assert listener.connections == 0
    await notify(NotifyActivities(policy, timeout=5), url.removesuffix(path) + "/hooks/mail")
    assert listener.connections == 1


@pytest.mark.parametrize(
    ("sinks", "complaint"),
    [
        ("sink.ops.example:8080=127.0.0.1", "must be URL=address with the receiver's path"),
        ("http://sink.ops.example:8080=127.0.0.1", "must name the receiver's path"),
        ("http://sink.ops.example:8080/x=not-an-ip", "is not an IP address"),
        ("ftp://sink.ops.example/x=127.0.0.1", "the URL must start with https://"),
        (
            "http://a.example:1/x=127.0.0.1,http://a.example:1/y=127.0.0.1",
            "http://a.example:1 is named twice",
        ),
    ],
)
def test_malformed_sink_settings_say_what_is_wrong(sinks: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="sink") as err:
        NotifyPolicy.from_settings(allowed="", http="", sinks=sinks)
    assert complaint in str(err.value)


# ------------------------------------------------------------------ DNS at admission


async def test_admission_resolves_the_name_and_refuses_an_inside_address() -> None:
    # Before: admission ran only the rules without DNS, so the purchase bought a server
    # and failed at notify time, hours later.
    activities = NotifyActivities(resolve=resolver(["127.0.0.1"]))
    check = NotifyUrlCheck("acme", "https://hooks.customer.example/ready")
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.check_notify_url, check)
    assert err.value.type == "NotifyUrlRefused" and err.value.non_retryable
    assert "resolves to a loopback address (127.0.0.1)" in err.value.message


async def test_admission_leaves_a_name_that_does_not_resolve_to_the_send_time_check() -> None:
    async def no_answer(host: str, port: int) -> list[IpAddress]:
        raise OSError("Name or service not known")

    activities = NotifyActivities(resolve=no_answer)
    check = NotifyUrlCheck("acme", "https://hooks.customer.example/ready")
    await ActivityEnvironment().run(activities.check_notify_url, check)
    with pytest.raises(ApplicationError) as at_send:
        await notify(activities, check.url)
    assert at_send.value.type == "NotifyUnreachable" and not at_send.value.non_retryable
