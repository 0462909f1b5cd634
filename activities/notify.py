"""Tell the customer's back end that the mail server is ready (an HTTP webhook).

Sent with an Idempotency-Key (the workflow id), so a retried POST is recognised
by the receiver and the customer hears "ready" once.

The URL comes from the purchase, that is from outside, and the POST carries the
server's address and Vault path: it must never reach the worker's own network
(server-side request forgery). So, on top of the contract's syntax check:

- https only, unless the operator lists the host for plain http;
- if the operator gives an allowlist, only hosts on it;
- the host is resolved here, every address it resolves to is checked (loopback,
  private, link-local, CGNAT, unique-local, multicast, unspecified, reserved, and
  IPv4 embedded in IPv6 are refused), and the connection goes to the checked
  address itself, so DNS cannot answer differently between check and connect
  (rebinding); TLS still verifies the certificate for the host name;
- no redirects are followed, no proxy from the environment is used, and the
  response body is never read.

The same checks, DNS included, run at admission, before anything is bought: a name
that resolves inside refuses the purchase there (`InvalidPurchaseRequest` on
`notify_url`), not hours later at notify time. They run again at send time, since DNS
may answer differently by then. A name that does not resolve at admission is let
through: DNS may be down for a moment, and the send-time check decides.

The operator's own receivers (the local stack's sink, an internal relay) are named
in the configuration by their exact URL with the address to use: allowed by
configuration, not by a hole, and only that URL: another path on the same host and
port (e.g. the local cloud's fault injection under /_devstack/) is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.contracts import Notification, NotifyUrlCheck
from workflows.input_rules import InvalidPurchaseRequest
from workflows.url_policy import NotifyTarget, address_problem, parse_notify_url

# Statuses another attempt may fix; every other 4xx means the request itself is wrong.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IpAddress]]]


# structlog itself, not the worker's log set-up (tests/unit/test_import_rules.py).
log = structlog.get_logger("notify")


class NotifyRefused(Exception):
    """The URL breaks the outbound policy; the message says which rule."""


async def resolve_host(host: str, port: int) -> list[IpAddress]:
    """Every address the system resolver gives for host (A and AAAA)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    # sockaddr[0] may carry an IPv6 zone ("fe80::1%eth0"); the zone is dropped, the
    # address still checked (and link-local refused).
    return list(
        dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    )


@dataclass(frozen=True)
class OperatorSink:
    """One receiver of the operator's: the only URL it takes, and where it listens."""

    target: NotifyTarget
    path: str  # path and query, exactly as configured
    address: IpAddress


def _path_and_query(url: str) -> str:
    """What follows the authority in an http(s) URL the contract already accepted."""
    rest = url.partition("://")[2]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    return rest[cut:]


@dataclass(frozen=True)
class NotifyPolicy:
    """The operator's outbound rules (worker settings MAILPROV_NOTIFY_*)."""

    # Empty: any public host. Otherwise only these host names.
    allowed_hosts: frozenset[str] = frozenset()
    # Hosts that may be reached over plain http (still only at public addresses).
    http_hosts: frozenset[str] = frozenset()
    # The operator's own receivers, by "scheme://host:port". These may be internal and
    # may use http; nothing else can: no other port of that host, no other path.
    operator_sinks: Mapping[str, OperatorSink] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, allowed: str, http: str, sinks: str) -> NotifyPolicy:
        """Comma-separated host names; sinks as `URL=address`. ValueError if malformed."""
        parsed: dict[str, OperatorSink] = {}
        for entry in (item.strip() for item in sinks.split(",") if item.strip()):
            sink = _operator_sink(entry)
            key = _endpoint(sink.target)
            if key in parsed:
                raise ValueError(f"sink {entry!r}: {key} is named twice (one URL per receiver)")
            parsed[key] = sink
        return cls(frozenset(_items(allowed)), frozenset(_items(http)), parsed)

    def admit(self, url: str) -> tuple[NotifyTarget, IpAddress | None]:
        """The rules that need no DNS; returns the target and its fixed address if it has one."""
        try:
            target = parse_notify_url(url)
        except InvalidPurchaseRequest as err:
            raise NotifyRefused(err.rule) from None
        sink = self.operator_sinks.get(_endpoint(target))
        if sink is not None:
            if _path_and_query(url) != sink.path:
                raise NotifyRefused(
                    f"{_endpoint(target)} is an operator sink that takes only the path "
                    f"{sink.path!r} (MAILPROV_NOTIFY_OPERATOR_SINKS), not "
                    f"{_path_and_query(url)!r}"
                )
            return target, sink.address
        if self.allowed_hosts and target.host not in self.allowed_hosts:
            raise NotifyRefused(f"host {target.host!r} is not on the operator's allowlist")
        if target.scheme != "https" and target.host not in self.http_hosts:
            raise NotifyRefused(
                "must use https (plain http is allowed only for hosts the operator lists)"
            )
        return target, target.address

    async def destination(
        self, url: str, resolve: Resolver = resolve_host
    ) -> tuple[NotifyTarget, IpAddress]:
        """The checked address to connect to for url; NotifyRefused if policy forbids it."""
        target, fixed = self.admit(url)
        if fixed is not None:
            return target, fixed
        try:
            addresses = await resolve(target.host, target.port)
        except OSError as err:
            raise NotifyUnresolvable(f"cannot resolve {target.host!r}: {err}") from None
        if not addresses:
            raise NotifyUnresolvable(f"{target.host!r} has no address")
        # Every address, not just the first: a resolver may rotate or a client may fall
        # back to the next one, and any of them being internal makes the name unsafe.
        for address in addresses:
            if (problem := address_problem(address)) is not None:
                raise NotifyRefused(f"host {target.host!r} resolves to {problem}")
        return target, addresses[0]


class NotifyUnresolvable(Exception):
    """DNS gave no usable answer now; it may later (retryable)."""


def _items(raw: str) -> list[str]:
    return [item.strip().lower() for item in raw.split(",") if item.strip()]


def _endpoint(target: NotifyTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.scheme}://{host}:{target.port}"


def _operator_sink(entry: str) -> OperatorSink:
    """`http://relay.example:8080/hooks/mail=10.0.0.5`: the receiver's URL and address."""
    url, separator, address = entry.rpartition("=")
    example = "e.g. http://relay.example:8080/hooks/mail=10.0.0.5"
    if not separator or "://" not in url:
        raise ValueError(f"sink {entry!r} must be URL=address with the receiver's path, {example}")
    try:
        target = parse_notify_url(url)
    except InvalidPurchaseRequest as err:
        raise ValueError(f"sink {entry!r}: the URL {err.rule}") from None
    path = _path_and_query(url)
    if not path.startswith("/"):
        raise ValueError(f"sink {entry!r} must name the receiver's path, {example}")
    try:
        return OperatorSink(target, path, ipaddress.ip_address(address.strip().strip("[]")))
    except ValueError:
        raise ValueError(f"sink {entry!r}: {address!r} is not an IP address") from None


async def check_at_admission(policy: NotifyPolicy, url: str, resolve: Resolver) -> None:
    """Every policy rule, DNS included, before a purchase buys anything; NotifyRefused
    naming the rule. A name that does not resolve now is left to the send-time check
    (which repeats every rule: the name may resolve elsewhere by then)."""
    try:
        await policy.destination(url, resolve)
    except NotifyUnresolvable as err:
        log.warning("notify_url not resolvable at admission", error=str(err))


class NotifyActivities:
    def __init__(
        self,
        policy: NotifyPolicy | None = None,
        timeout: float = 15.0,
        resolve: Resolver = resolve_host,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._policy = policy or NotifyPolicy()
        self._timeout = timeout
        self._resolve = resolve
        self._transport = transport  # tests observe the pinned request here
        # Made once: building it loads the CA bundle, ~50 ms of CPU that a client made
        # per notification paid every time (docs/PERFORMANCE.md). A client per call
        # stays: its pool is keyed by the pinned address, not the name TLS checks.
        self._tls = httpx.create_ssl_context(trust_env=False)

    async def check_notify_url(self, check: NotifyUrlCheck) -> None:
        """Every policy rule, DNS included, before the purchase buys anything.

        The send-time check repeats it (the name may resolve elsewhere by then); a name
        that does not resolve now is left to that check rather than failing the purchase.
        """
        try:
            await check_at_admission(self._policy, check.url, self._resolve)
        except NotifyRefused as err:
            raise ApplicationError(str(err), type="NotifyUrlRefused", non_retryable=True) from None

    @activity.defn(name="notify_customer")
    async def notify_customer(self, notification: Notification) -> None:
        try:
            target, address = await self._policy.destination(notification.url, self._resolve)
        except NotifyRefused as err:
            raise ApplicationError(
                f"notify refused: {err}", type="NotifyRefused", non_retryable=True
            ) from None
        except NotifyUnresolvable as err:
            raise ApplicationError(str(err), type="NotifyUnreachable") from None
        headers = {
            "Idempotency-Key": notification.idempotency_key,
            "User-Agent": "mail-provisioning",
        }
        async with httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=False,  # no HTTP(S)_PROXY detour around the address check
            verify=self._tls,
            transport=self._transport,
        ) as http:
            request = http.build_request(
                "POST", notification.url, json=notification.payload, headers=headers
            )
            # Pin the connection to the checked address; Host and TLS keep the name.
            request.url = request.url.copy_with(host=str(address))
            if target.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": target.host}
            try:
                response = await http.send(request, stream=True)
            except httpx.HTTPError as err:
                raise ApplicationError(
                    f"notify {target.host}: {type(err).__name__}", type="NotifyUnreachable"
                ) from None
            # Only the status matters: the body is never read, whatever its size.
            await response.aclose()
        if response.is_success:
            return
        retryable = response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES
        raise ApplicationError(
            f"notify {target.host}: HTTP {response.status_code}",
            type="NotifyRejected",
            non_retryable=not retryable,
        )
