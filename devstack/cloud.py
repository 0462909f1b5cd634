"""Local cloud: the subset of the Hetzner Cloud API v1 the provider client uses.

Creating a server here starts a real process (:mod:`devstack.vps`) on the server's own
loopback address, so the product's SSH, SFTP and SMTP code runs against real servers
and only the cloud's bookkeeping is simulated. Status codes, error bodies, rate-limit
headers, label selectors and pagination follow https://docs.hetzner.cloud/; anything
Hetzner does not have lives under ``/_devstack/`` (fault injection, a notification
sink, introspection for tests) and needs no token.

Run standalone for the demo::

    python -m devstack.cloud --state-dir D --token-file F --port P

which prints one JSON line (``base_url``, ``ssh_port``, ``smtp_port``, ``subnet``) once
it serves, and removes every server process it started on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from devstack import hetzner, ipv6, plan_change
from devstack.faults import FaultBook, FaultRule, FaultSpecError, VpsFaults
from devstack.firewalls import FirewallBook
from devstack.hetzner import ApiError, invalid_input, iso
from devstack.images import ImageBook, Snapshot, stored_size_gb
from devstack.mailu import MailuStore
from devstack.processes import die_with_parent, free_port
from devstack.ssh_keys import SshKeyBook
from devstack.tasks import cancel_and_wait

log = logging.getLogger("devstack.cloud")

VPS_READY_TIMEOUT = 30.0
VPS_STOP_TIMEOUT = 5.0
QUICK_ACTION_SECONDS = 0.2  # how long dns-ptr changes and deletes stay "running"
# How long a create_image keeps the server locked and the image `creating` (Hetzner:
# minutes, growing with the disk's data; devstack/images.py).
IMAGE_SECONDS = 1.0
_FIRST_SERVER_ID = 42_000_001
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- process helpers ---------------------------------------------------------------------


def _bindable(ip: str, port: int) -> bool:
    """True unless something already listens on ip:port (TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def pick_subnet(ports: tuple[int, ...]) -> ipaddress.IPv4Network:
    """A random 127.X.Y.0/24 whose first address is free on our ports.

    Random, so the demo's cloud and a test run's cloud on one machine do not hand out
    the same addresses.
    """
    rng = random.SystemRandom()
    for _ in range(100):
        net = ipaddress.IPv4Network(f"127.{rng.randint(2, 250)}.{rng.randint(2, 250)}.0/24")
        first = str(net.network_address + 2)
        if all(_bindable(first, p) for p in ports):
            return net
    raise RuntimeError("no free loopback /24 found for the local cloud")


def _root_password() -> str:
    """A generated root password, as Hetzner returns it when no ssh_keys were given."""
    return secrets.token_urlsafe(15)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    net = ipaddress.IPv4Network(text if "/" in text else f"{text}/24", strict=False)
    if net.prefixlen != 24 or not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        raise ValueError(f"subnet {text!r} must be a /24 inside 127.0.0.0/8")
    return net


# --- model -------------------------------------------------------------------------------


@dataclass
class Action:
    """A Hetzner action: progress is derived from time so polling sees it move."""

    id: int
    command: str
    resources: list[int]
    expected_seconds: float
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    status: str = "running"
    finished: float | None = None
    error: dict[str, str] | None = None

    def succeed(self) -> None:
        if self.status == "running":
            self.status, self.finished = "success", time.time()

    def fail(self, code: str, message: str) -> None:
        if self.status == "running":
            self.status, self.finished = "error", time.time()
            self.error = {"code": code, "message": message}

    def to_json(self) -> dict[str, Any]:
        if self.status == "running":
            elapsed = time.monotonic() - self.started_mono
            progress = (
                min(99, int(100 * elapsed / self.expected_seconds))
                if self.expected_seconds > 0
                else 0
            )
        else:
            progress = 100
        return {
            "id": self.id,
            "command": self.command,
            "status": self.status,
            "progress": progress,
            "started": iso(self.started),
            "finished": iso(self.finished) if self.finished is not None else None,
            "resources": [{"id": rid, "type": "server"} for rid in self.resources],
            "error": self.error,
        }


@dataclass
class Server:
    id: int
    name: str
    server_type: str
    image: str
    location: str
    labels: dict[str, str]
    user_data: str | None
    ip: str | None  # None: created with public_net.enable_ipv4 = false
    dns_ptr: str
    state_dir: Path
    created: float = field(default_factory=time.time)
    status: str = "initializing"
    process: asyncio.subprocess.Process | None = None
    boot_task: asyncio.Task[None] | None = None
    # The /64 routed to the server (None: enable_ipv6 = false) and its PTR records,
    # a list of {ip, dns_ptr} in Hetzner's answer (docs.hetzner.cloud, Servers).
    ipv6_net: ipaddress.IPv6Network | None = None
    ipv6_ptrs: dict[str, str] = field(default_factory=dict)
    ipv6_on_lo: bool = False  # its ::1 was added to lo, so it is really reachable
    firewalls: list[int] = field(default_factory=list)
    # Public keys of the ssh_keys named at create; none means Hetzner set a root
    # password, created expired (see _create_server).
    metadata_public_keys: list[str] = field(default_factory=list)
    # primary_disk_size: the type's disk at create; change_type with upgrade_disk
    # grows it to the new type's, and it never shrinks (devstack/plan_change.py).
    disk_gb: int = 0
    # The running action that locks the server (create_image), None when unlocked: its
    # `locked` field is true and other actions answer `locked` (devstack/images.py).
    locked_by: int | None = None

    @property
    def ipv6(self) -> str | None:
        return ipv6.host_address(self.ipv6_net) if self.ipv6_net is not None else None

    def to_json(self) -> dict[str, Any]:
        ipv4_json = None
        if self.ip is not None:
            ipv4_json = {
                "id": self.id + 1_000_000,
                "ip": self.ip,
                "blocked": False,
                "dns_ptr": self.dns_ptr,
            }
        ipv6_json = None
        if self.ipv6_net is not None:
            ipv6_json = {
                "id": self.id + 2_000_000,
                "ip": str(self.ipv6_net),
                "blocked": False,
                "dns_ptr": [{"ip": ip, "dns_ptr": ptr} for ip, ptr in self.ipv6_ptrs.items()],
            }
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "created": iso(self.created),
            "public_net": {
                "ipv4": ipv4_json,
                "ipv6": ipv6_json,
                "floating_ips": [],
                "firewalls": [{"id": fid, "status": "applied"} for fid in self.firewalls],
            },
            "private_net": [],
            "server_type": hetzner.server_type_json(self.server_type),
            # `location` is where clients read it now; `datacenter` is deprecated but
            # still sent (hcloud-python 2.18.0 notes, Hetzner changelog 2026-04-01).
            "location": hetzner.location_json(self.location),
            "datacenter": hetzner.datacenter_json(self.location),
            "image": hetzner.image_json(self.image),
            "iso": None,
            "rescue_enabled": False,
            "locked": self.locked_by is not None,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": dict(self.labels),
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": self.disk_gb or hetzner.SERVER_TYPES[self.server_type]["disk"],
            "placement_group": None,
        }


class BootFailed(Exception):
    """The server's process did not come up; the message is shown in the action."""


class RateLimiter:
    """Hetzner's bucket: 3600 requests, one more every second, per project (this cloud).

    docs.hetzner.cloud, "Rate Limiting": "The default limit is 3600 requests per hour
    and per Project. The number of remaining requests increases gradually. For example,
    when your limit is 3600 requests per hour, the number of remaining requests will
    increase by 1 every second." Every token of the project draws on the one bucket.
    """

    def __init__(self, limit: int = hetzner.RATE_LIMIT) -> None:
        self.limit = limit
        self._remaining = float(limit)
        self._last = time.monotonic()
        # Bookkeeping for tests (GET /_devstack/rate-limit), not part of Hetzner's API:
        # requests the bucket let through, and requests it refused with 429.
        self.served = 0
        self.refused = 0
        self.served_by_route: dict[str, int] = {}

    def _refill(self) -> None:
        now = time.monotonic()
        self._remaining = min(float(self.limit), self._remaining + (now - self._last))
        self._last = now

    def consume(self, route: str = "") -> bool:
        """Take one request from the bucket; `route` ("GET /v1/servers/{id}") counts it."""
        self._refill()
        if self._remaining < 1:
            self.refused += 1
            return False
        self._remaining -= 1
        self.served += 1
        self.served_by_route[route] = self.served_by_route.get(route, 0) + 1
        return True

    def usage(self) -> dict[str, Any]:
        """What the bucket has let through (in all and per route) and refused so far,
        and what is left now."""
        self._refill()
        return {
            "limit": self.limit,
            "remaining": int(self._remaining),
            "served": self.served,
            "refused": self.refused,
            "served_by_route": dict(sorted(self.served_by_route.items())),
        }

    def headers(self) -> dict[str, str]:
        self._refill()
        remaining = int(self._remaining)
        # Hetzner Cloud API reference, "Rate Limiting" (docs.hetzner.cloud/#rate-limiting):
        # RateLimit-Reset is the UNIX timestamp at which the remaining requests are back
        # at the limit. Rounded up, so it is never in the past at the moment it is sent.
        reset = math.ceil(time.time() + (self.limit - self._remaining))
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset),
        }


# --- the cloud ----------------------------------------------------------------------------


class LocalCloud:
    """A Hetzner Cloud project on this machine, serving the API over aiohttp."""

    def __init__(
        self,
        state_dir: Path,
        token: str,
        ssh_port: int,
        smtp_port: int,
        subnet: str | None = None,
        boot_seconds: float = 1.0,
        cloud_init_seconds: float = 2.0,
        readonly_token: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        # A second token of the project with Hetzner's "Read" permission only.
        self._readonly_token = readonly_token
        # How long each new server's cloud-init takes after SSH is up (devstack/cloudinit.py).
        self.cloud_init_seconds = cloud_init_seconds
        self._token = token
        self.ssh_port = ssh_port
        self.smtp_port = smtp_port
        self.subnet = parse_subnet(subnet) if subnet else pick_subnet((ssh_port, smtp_port))
        self.boot_seconds = boot_seconds
        self.faults = FaultBook()
        self._rate = RateLimiter()
        self._servers: dict[int, Server] = {}
        self._actions: dict[int, Action] = {}
        self._action_ids = itertools.count(1)
        self._server_ids = itertools.count(self._first_free_id())
        self._ip_cursor = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._notifications: list[dict[str, Any]] = []
        self._notify_keys: set[str] = set()
        self.firewalls = FirewallBook()
        self.ssh_keys = SshKeyBook()
        self.images = ImageBook()
        self.image_seconds = IMAGE_SECONDS
        # server type -> locations where it is out of stock now (tests set it).
        self.out_of_stock: dict[str, set[str]] = {}
        # Servers whose OS ignores an ACPI shutdown (tests set it): only poweroff stops them.
        self.acpi_ignored: set[int] = set()
        # How long a change_type keeps a server "migrating" (Hetzner: 160 s on average).
        self.change_type_seconds = QUICK_ACTION_SECONDS
        # Servers whose change_type migrations a test holds (/_devstack/servers/{id}/
        # migration-hold): "migrating" until released, as a real migration takes minutes
        # ("Upgrading a server takes 160 seconds on average, upgrading the disk should
        # take more time": ansible-collections/hetzner.hcloud plugins/modules/server.py).
        self._migration_holds: dict[int, asyncio.Event] = {}
        # Servers whose create_image actions a test holds (/_devstack/servers/{id}/
        # image-hold): the image `creating` and the server locked until released, as a
        # real snapshot takes minutes (devstack/images.py), so a test can act while a
        # client waits for one.
        self._image_holds: dict[int, asyncio.Event] = {}
        # Catalog entries Hetzner has "retired" in this cloud (kind, name): tests model a
        # provider whose catalog lacks what a plan names.
        self.retired: set[tuple[str, str]] = set()
        self.ipv6_prefix = ipv6.random_ula_prefix()
        self._lo_addresses: set[str] = set()  # server addresses this cloud put on lo
        self._ipv6_index = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.base_url = ""

    def _first_free_id(self) -> int:
        """Never reuse a server directory left by an earlier run in the same state_dir."""
        servers = self.state_dir / "servers"
        used = (
            [int(p.name) for p in servers.glob("*") if p.name.isdigit()] if servers.is_dir() else []
        )
        return max([_FIRST_SERVER_ID - 1, *used]) + 1

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        app = web.Application(middlewares=[self._envelope, self._inject_faults, self._auth])
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.base_url = f"http://{host}:{bound[1]}/v1"
        log.info("local cloud on %s, servers in %s", self.base_url, self.subnet)
        return self.base_url

    async def stop(self) -> None:
        self._stopping = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        servers = list(self._servers.values())
        for server in servers:
            if server.boot_task is not None:
                server.boot_task.cancel()
        await asyncio.gather(*(self._kill(s) for s in servers), return_exceptions=True)
        await cancel_and_wait(list(self._tasks))
        # After every task ended: an address whose add or delete was cut short by a
        # cancel is still in the set, so nothing stays on lo.
        for address in sorted(self._lo_addresses):
            await ipv6.release(address)
        self._lo_addresses.clear()
        self._servers.clear()

    def _spawn_task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- middlewares -------------------------------------------------------------------

    @web.middleware
    async def _envelope(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error in Hetzner's shape and every response with RateLimit headers."""
        try:
            response = await handler(request)
        except ApiError as exc:
            response = self._error_response(exc)
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                response = self._error_response(ApiError("not_found", "not found"))
            else:
                response = self._error_response(
                    ApiError("invalid_input", exc.reason, status=exc.status)
                )
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            response = self._error_response(ApiError("server_error", "internal server error"))
        for name, value in self._rate.headers().items():
            response.headers.setdefault(name, value)
        return response

    @staticmethod
    def _error_response(exc: ApiError) -> web.Response:
        response = web.json_response(exc.body(), status=exc.status)
        response.headers.update(exc.headers)
        return response

    @web.middleware
    async def _inject_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = self.faults.take(request.method, request.path)
        if rule is None:
            return await handler(request)
        if rule.after_effect:
            # The request really happens, only its answer is lost: what a client sees
            # when a proxy times out after the server committed.
            with contextlib.suppress(ApiError, web.HTTPException):
                await handler(request)
        raise self._fault_error(rule)

    @staticmethod
    def _fault_error(rule: FaultRule) -> ApiError:
        headers: dict[str, str] = {}
        if rule.status == 429:
            # An empty bucket, as Hetzner reports it: RateLimit-Reset is when it is FULL
            # again, at one request per second that is RATE_LIMIT seconds away
            # (docs.hetzner.cloud, Rate Limiting), while the next request may pass in 1 s.
            headers = {
                "RateLimit-Limit": str(hetzner.RATE_LIMIT),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(math.ceil(time.time()) + hetzner.RATE_LIMIT),
            }
        headers.update(rule.headers)
        return ApiError(
            rule.code, rule.message, dict(rule.details), status=rule.status, headers=headers
        )

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1"):
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        token = presented.strip().encode()
        readonly = self._readonly_token is not None and hmac.compare_digest(
            token, self._readonly_token.encode()
        )
        if scheme != "Bearer" or not (readonly or hmac.compare_digest(token, self._token.encode())):
            raise ApiError("unauthorized", "unable to authenticate")
        if readonly and request.method != "GET":
            # Hetzner's error table: token_readonly (403), "The token is only allowed to
            # perform GET requests"; checked before the request body is read.
            raise ApiError("token_readonly", "The token is only allowed to perform GET requests")
        route = request.match_info.route.resource
        template = route.canonical if route is not None else request.path
        if not self._rate.consume(f"{request.method} {template}"):
            raise ApiError("rate_limit_exceeded", "limit of 3600 requests per hour reached")
        return await handler(request)

    # --- routes -----------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/servers", self._create_server)
        app.router.add_get("/v1/servers", self._list_servers)
        app.router.add_get("/v1/servers/{id}", self._get_server)
        app.router.add_delete("/v1/servers/{id}", self._delete_server)
        app.router.add_post("/v1/servers/{id}/actions/change_dns_ptr", self._change_dns_ptr)
        app.router.add_post("/v1/servers/{id}/actions/poweron", self._poweron)
        app.router.add_post("/v1/servers/{id}/actions/shutdown", self._shutdown)
        app.router.add_post("/v1/servers/{id}/actions/poweroff", self._poweroff)
        app.router.add_post("/v1/servers/{id}/actions/change_type", self._change_type)
        app.router.add_put("/v1/servers/{id}", self._update_server)
        app.router.add_get("/v1/servers/{id}/actions/{action_id}", self._get_server_action)
        app.router.add_get("/v1/actions/{id}", self._get_action)
        app.router.add_post("/v1/servers/{id}/actions/create_image", self._create_image)
        for kind in hetzner.CATALOG_KINDS:
            if kind != "images":
                app.router.add_get(f"/v1/{kind}", self._list_catalog)
        app.router.add_get("/v1/images", self._list_images)
        app.router.add_get("/v1/images/{id}", self._get_image)
        app.router.add_put("/v1/images/{id}", self._update_image)
        app.router.add_delete("/v1/images/{id}", self._delete_image)
        app.router.add_post("/v1/firewalls", self._create_firewall)
        app.router.add_get("/v1/firewalls", self._list_firewalls)
        app.router.add_get("/v1/firewalls/{id}", self._get_firewall)
        app.router.add_delete("/v1/firewalls/{id}", self._delete_firewall)
        app.router.add_post("/v1/ssh_keys", self._create_ssh_key)
        app.router.add_get("/v1/ssh_keys", self._list_ssh_keys)
        app.router.add_get("/v1/ssh_keys/{id}", self._get_ssh_key)
        app.router.add_delete("/v1/ssh_keys/{id}", self._delete_ssh_key)
        app.router.add_post("/_devstack/faults", self._add_fault)
        app.router.add_get("/_devstack/faults", self._list_faults)
        app.router.add_delete("/_devstack/faults", self._clear_faults)
        app.router.add_post("/_devstack/boot-failures", self._add_boot_failures)
        app.router.add_get("/_devstack/rate-limit", self._rate_limit_usage)
        app.router.add_post("/_devstack/retired", self._retire)
        app.router.add_delete("/_devstack/retired", self._unretire)
        app.router.add_post("/_devstack/notify/{name}", self._notify)
        app.router.add_get("/_devstack/notifications", self._list_notifications)
        app.router.add_get("/_devstack/servers/{id}", self._dev_server)
        app.router.add_get("/_devstack/servers/{id}/commands", self._dev_commands)
        app.router.add_get("/_devstack/servers/{id}/tls-cert", self._dev_tls_cert)
        app.router.add_get("/_devstack/servers/{id}/mailu", self._dev_mailu)
        app.router.add_post("/_devstack/servers/{id}/migration-hold", self._hold_migrations)
        app.router.add_delete("/_devstack/servers/{id}/migration-hold", self._release_migrations)
        app.router.add_post("/_devstack/servers/{id}/image-hold", self._hold_images)
        app.router.add_delete("/_devstack/servers/{id}/image-hold", self._release_images)
        app.router.add_get("/_devstack/images", self._image_history)
        for kind in ("command-faults", "ssh-faults"):
            path = f"/_devstack/servers/{{id}}/{kind}"
            app.router.add_post(path, self._add_vps_fault)
            app.router.add_get(path, self._list_vps_faults)
            app.router.add_delete(path, self._clear_vps_faults)

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError("json_error", "unable to parse request body as JSON") from None
        if not isinstance(body, dict):
            raise ApiError("invalid_input", "request body must be a JSON object")
        return body

    def _server(self, request: web.Request) -> Server:
        raw = request.match_info["id"]
        server = self._servers.get(int(raw)) if raw.isdigit() else None
        if server is None:
            raise ApiError("not_found", f"server with ID '{raw}' not found")
        return server

    def _new_action(self, command: str, server_id: int, expected: float) -> Action:
        action = Action(next(self._action_ids), command, [server_id], expected)
        self._actions[action.id] = action
        return action

    # --- /v1/servers -------------------------------------------------------------------

    async def _create_server(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        problems: dict[str, list[str]] = {}
        name = body.get("name")
        if not isinstance(name, str) or not name:
            problems["name"] = ["Missing data for required field."]
        elif not hetzner.is_valid_hostname(name):
            problems["name"] = ["name must be a valid hostname (RFC 1123)"]
        server_type = body.get("server_type")
        if server_type is None:
            problems["server_type"] = ["Missing data for required field."]
        elif server_type not in hetzner.SERVER_TYPES:
            problems["server_type"] = [f"server type {server_type!r} not found"]
        image = body.get("image")
        if image is None:
            problems["image"] = ["Missing data for required field."]
        elif image not in hetzner.IMAGES:
            problems["image"] = [f"image {image!r} not found"]
        location = body.get("location")
        if location is not None and location not in hetzner.LOCATIONS:
            problems["location"] = [f"location {location!r} not found"]
        labels = body.get("labels", {})
        if label_problems := hetzner.validate_labels(labels):
            problems["labels"] = label_problems
        user_data = body.get("user_data")
        if user_data is not None and not isinstance(user_data, str):
            problems["user_data"] = ["user_data must be a string"]
        elif user_data and len(user_data.encode()) > hetzner.USER_DATA_MAX_BYTES:
            problems["user_data"] = ["user_data must not exceed 32 KiB"]
        start_after_create = body.get("start_after_create", True)
        if not isinstance(start_after_create, bool):
            problems["start_after_create"] = ["Not a valid boolean."]
        enable_ipv4, enable_ipv6 = hetzner.public_net_flags(body.get("public_net"), problems)
        if problems:
            raise invalid_input(problems)
        refused = hetzner.server_type_problem(
            str(server_type),
            str(location or hetzner.DEFAULT_LOCATION),
            frozenset(self.out_of_stock.get(str(server_type), ())),
            time.time(),
        )
        if refused is not None:
            raise refused
        ssh_keys = self.ssh_keys.for_new_server(body.get("ssh_keys"))
        assert isinstance(name, str) and isinstance(user_data, (str, type(None)))
        if any(s.name == name for s in self._servers.values()):
            raise ApiError(
                "uniqueness_error", "server name is already used", {"fields": [{"name": "name"}]}
            )
        firewalls = self.firewalls.for_new_server(body.get("firewalls"))
        ip = self._allocate_ip() if enable_ipv4 else None
        ipv6_net = (
            ipv6.server_network(self.ipv6_prefix, next(self._ipv6_index)) if enable_ipv6 else None
        )
        server_id = next(self._server_ids)
        server = Server(
            id=server_id,
            name=name,
            server_type=str(server_type),
            image=str(image),
            location=str(location or hetzner.DEFAULT_LOCATION),
            labels=dict(labels),
            user_data=user_data,
            ip=ip,
            dns_ptr=hetzner.default_dns_ptr(ip) if ip else "",
            state_dir=self.state_dir / "servers" / str(server_id),
            ipv6_net=ipv6_net,
            firewalls=[fw.id for fw in firewalls],
            metadata_public_keys=[k.public_key for k in ssh_keys],
            disk_gb=int(hetzner.SERVER_TYPES[str(server_type)]["disk"]),
        )
        self._servers[server.id] = server
        self.firewalls.apply(server.id, firewalls)
        create = self._new_action("create_server", server.id, self.boot_seconds)
        next_actions: list[Action] = []
        if start_after_create:
            start = self._new_action("start_server", server.id, self.boot_seconds)
            next_actions.append(start)
            server.boot_task = self._spawn_task(self._boot(server, [create, start]))
        else:
            server.status = "off"
            create.succeed()
        log.info("server %s (%s) created on %s %s", server.id, server.name, ip, ipv6_net)
        return web.json_response(
            {
                "server": server.to_json(),
                "action": create.to_json(),
                "next_actions": [a.to_json() for a in next_actions],
                # API reference, Create a Server: "If you do not specify any ssh_keys we
                # will generate a root password for you and return it in the response".
                # That password is created expired (kubermatic/machine-controller#191,
                # hetznercloud/hcloud-python#121, hetznercloud/cli#1007); the VPS is told
                # so (root_password_expired) and refuses sessions without a TTY.
                "root_password": None if ssh_keys else _root_password(),
            },
            status=201,
        )

    def _allocate_ip(self) -> str:
        """Hand out addresses round-robin so a deleted server's IP is not reused soon."""
        in_use = {s.ip for s in self._servers.values()}
        base = self.subnet.network_address
        for step in range(1, 254):
            host = (self._ip_cursor + step - 2) % 253 + 2  # cycles through .2 .. .254
            ip = str(base + host)
            if ip in in_use:
                continue
            if not (_bindable(ip, self.ssh_port) and _bindable(ip, self.smtp_port)):
                continue
            self._ip_cursor = host
            return ip
        raise ApiError("resource_limit_exceeded", "server limit exceeded")

    async def _list_servers(self, request: web.Request) -> web.Response:
        servers = hetzner.select(
            self._servers.values(),
            request.query.get("name"),
            request.query.get("label_selector", "").strip(),
        )
        statuses = request.query.getall("status", [])
        if statuses:
            servers = [s for s in servers if s.status in statuses]
        page, meta = hetzner.paginate(
            servers, request.query.get("page"), request.query.get("per_page")
        )
        return web.json_response({"servers": [s.to_json() for s in page], "meta": meta})

    async def _get_server(self, request: web.Request) -> web.Response:
        return web.json_response({"server": self._server(request).to_json()})

    async def _delete_server(self, request: web.Request) -> web.Response:
        server = self._server(request)
        if server.status == "deleting":
            raise ApiError("locked", "server is locked by a running delete_server action")
        self._not_locked(server)
        server.status = "deleting"
        action = self._new_action("delete_server", server.id, QUICK_ACTION_SECONDS)
        self._spawn_task(self._finish_delete(server, action))
        return web.json_response({"action": action.to_json()})

    async def _finish_delete(self, server: Server, action: Action) -> None:
        if server.boot_task is not None and not server.boot_task.done():
            server.boot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server.boot_task
        await self._kill(server)
        await asyncio.sleep(QUICK_ACTION_SECONDS)
        self._servers.pop(server.id, None)
        self.firewalls.forget_server(server.id)
        if server.ipv6 in self._lo_addresses:
            await ipv6.release(server.ipv6)
            self._lo_addresses.discard(server.ipv6)
        action.succeed()
        log.info("server %s (%s) deleted", server.id, server.name)

    async def _change_dns_ptr(self, request: web.Request) -> web.Response:
        server = self._server(request)
        body = await self._json_body(request)
        problems: dict[str, list[str]] = {}
        ip = body.get("ip")
        family = hetzner.ip_family(ip)
        if family is None:
            problems["ip"] = ["ip must be a valid IP address"]
        elif (family == 4 and ip != server.ip) or (
            family == 6
            and (server.ipv6_net is None or ipaddress.IPv6Address(str(ip)) not in server.ipv6_net)
        ):
            problems["ip"] = [f"ip {ip} is not assigned to this server"]
        if "dns_ptr" not in body:
            problems["dns_ptr"] = ["Missing data for required field."]
        dns_ptr = body.get("dns_ptr")
        if dns_ptr is not None and (
            not isinstance(dns_ptr, str) or not hetzner.is_valid_hostname(dns_ptr)
        ):
            problems["dns_ptr"] = ["dns_ptr must be a valid hostname"]
        if problems:
            raise invalid_input(problems)
        if server.status == "deleting":
            raise ApiError("locked", "server is locked by a running delete_server action")
        self._not_locked(server)
        assert isinstance(ip, str)
        if family == 6:
            # One PTR per address inside the /64; null removes it (Hetzner's docs).
            address = str(ipaddress.IPv6Address(ip))
            if isinstance(dns_ptr, str):
                server.ipv6_ptrs[address] = dns_ptr
            else:
                server.ipv6_ptrs.pop(address, None)
        else:
            server.dns_ptr = dns_ptr if isinstance(dns_ptr, str) else hetzner.default_dns_ptr(ip)
        action = self._new_action("change_dns_ptr", server.id, QUICK_ACTION_SECONDS)
        asyncio.get_running_loop().call_later(QUICK_ACTION_SECONDS, action.succeed)
        return web.json_response({"action": action.to_json()}, status=201)

    async def _poweron(self, request: web.Request) -> web.Response:
        server = self._server(request)
        if server.status == "deleting":
            raise ApiError("locked", "server is locked by a running delete_server action")
        self._not_locked(server)
        action = self._new_action("start_server", server.id, self.boot_seconds)
        if server.status == "off" and (server.boot_task is None or server.boot_task.done()):
            server.status = "initializing"
            server.boot_task = self._spawn_task(self._boot(server, [action]))
        else:
            action.succeed()
        return web.json_response({"action": action.to_json()}, status=201)

    # --- power and type (devstack/plan_change.py holds the rules) ---------------------

    def _not_busy(self, server: Server) -> None:
        if server.status in ("deleting", "migrating"):
            # Hetzner answers `locked` while another action holds the server.
            raise ApiError("locked", f"server is locked by a running action ({server.status})")
        self._not_locked(server)

    @staticmethod
    def _not_locked(server: Server) -> None:
        """A create_image in progress locks the server (devstack/images.py)."""
        if server.locked_by is not None:
            raise ApiError(
                "locked", "cannot perform operation because server is locked (create_image)"
            )

    async def _shutdown(self, request: web.Request) -> web.Response:
        """Server Actions, Shutdown a Server: sends the ACPI request; the action succeeds
        once it is sent, the OS then powers off by itself (or never, if it ignores ACPI)."""
        server = self._server(request)
        self._not_busy(server)
        action = self._new_action("shutdown_server", server.id, QUICK_ACTION_SECONDS)
        action.succeed()
        if server.status == "running" and server.id not in self.acpi_ignored:
            server.status = "stopping"
            self._spawn_task(self._power_down(server))
        return web.json_response({"action": action.to_json()}, status=201)

    async def _poweroff(self, request: web.Request) -> web.Response:
        """Server Actions, Power off a Server: cuts the power at once (may lose data)."""
        server = self._server(request)
        self._not_busy(server)
        action = self._new_action("stop_server", server.id, QUICK_ACTION_SECONDS)
        if server.status == "off":
            action.succeed()
        else:
            self._spawn_task(self._power_down(server, action))
        return web.json_response({"action": action.to_json()}, status=201)

    async def _power_down(self, server: Server, action: Action | None = None) -> None:
        if server.boot_task is not None and not server.boot_task.done():
            server.boot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server.boot_task
        await self._kill(server)
        if server.status != "deleting":
            server.status = "off"
        if action is not None:
            action.succeed()

    async def _change_type(self, request: web.Request) -> web.Response:
        server = self._server(request)
        body = await self._json_body(request)
        new_type, upgrade_disk = plan_change.change_type_input(body)
        self._not_busy(server)
        refused = plan_change.change_type_problem(
            server.status, server.location, server.disk_gb, new_type
        )
        if refused is not None:
            raise refused
        server.status = "migrating"
        action = self._new_action("change_server_type", server.id, self.change_type_seconds)
        self._spawn_task(self._migrate(server, new_type, upgrade_disk, action))
        return web.json_response({"action": action.to_json()}, status=201)

    async def _migrate(
        self, server: Server, new_type: str, upgrade_disk: bool, action: Action
    ) -> None:
        await asyncio.sleep(self.change_type_seconds)
        hold = self._migration_holds.get(server.id)
        if hold is not None:
            await hold.wait()
        server.disk_gb = plan_change.disk_after(server.disk_gb, new_type, upgrade_disk)
        server.server_type = new_type
        action.succeed()
        # "This copies the content of its disk, and starts it again" (API reference,
        # Change the Type of a Server). Clients that power on afterwards (ansible
        # hetzner.hcloud server.py start_server) do so only when it is not running.
        server.status = "initializing"
        server.boot_task = self._spawn_task(self._boot(server, []))

    async def _update_server(self, request: web.Request) -> web.Response:
        """Servers, Update a Server: `labels` replaces the whole set; `name` renames."""
        server = self._server(request)
        body = await self._json_body(request)
        if "labels" in body:
            if problems := hetzner.validate_labels(body["labels"]):
                raise invalid_input({"labels": problems})
            server.labels = dict(body["labels"])
        return web.json_response({"server": server.to_json()})

    async def _get_action(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        action = self._actions.get(int(raw)) if raw.isdigit() else None
        if action is None:
            raise ApiError("not_found", f"action with ID '{raw}' not found")
        return web.json_response({"action": action.to_json()})

    async def _get_server_action(self, request: web.Request) -> web.Response:
        # Deliberately not _server(): a delete_server action stays readable through
        # the server's URL while the delete completes.
        raw_server = request.match_info["id"]
        raw = request.match_info["action_id"]
        action = self._actions.get(int(raw)) if raw.isdigit() else None
        if action is None or not raw_server.isdigit() or int(raw_server) not in action.resources:
            raise ApiError("not_found", f"action with ID '{raw}' not found")
        return web.json_response({"action": action.to_json()})

    # --- images (devstack/images.py holds the rules) ---------------------------------------

    async def _create_image(self, request: web.Request) -> web.Response:
        server = self._server(request)
        description, labels = self.images.create_input(await self._json_body(request))
        if server.status == "deleting":
            raise ApiError("locked", "server is locked by a running delete_server action")
        self._not_busy(server)
        snapshot = self.images.create(
            description,
            labels,
            server.id,
            server.name,
            server.disk_gb or int(hetzner.SERVER_TYPES[server.server_type]["disk"]),
            server.image,
        )
        action = self._new_action("create_image", server.id, self.image_seconds)
        server.locked_by = action.id
        self._spawn_task(self._finish_image(server, snapshot, action))
        return web.json_response(
            {"image": snapshot.to_json(), "action": action.to_json()}, status=201
        )

    async def _finish_image(self, server: Server, snapshot: Snapshot, action: Action) -> None:
        try:
            await asyncio.sleep(self.image_seconds)
            hold = self._image_holds.get(server.id)
            if hold is not None:
                await hold.wait()
            size = await asyncio.to_thread(stored_size_gb, server.state_dir)
            self.images.finish(snapshot, size)
            action.succeed()
        except Exception as exc:  # the action must end, never hang
            self.images.drop(snapshot)
            action.fail("action_failed", f"creating the image failed: {exc}")
        finally:
            if server.locked_by == action.id:
                server.locked_by = None

    async def _list_images(self, request: web.Request) -> web.Response:
        retired = {name for kind, name in self.retired if kind == "images"}
        entries = self.images.listing(
            request.query.get("name"),
            request.query.getall("type", []),
            request.query.getall("status", []),
            request.query.get("label_selector", "").strip(),
            retired,
        )
        page, meta = hetzner.paginate(
            entries, request.query.get("page"), request.query.get("per_page")
        )
        return web.json_response({"images": page, "meta": meta})

    async def _get_image(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        for name, spec in hetzner.IMAGES.items():
            if raw == str(spec["id"]):
                return web.json_response({"image": hetzner.image_json(name)})
        return web.json_response({"image": self.images.get(raw).to_json()})

    async def _update_image(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        snapshot = self.images.update(request.match_info["id"], body)
        return web.json_response({"image": snapshot.to_json()})

    async def _delete_image(self, request: web.Request) -> web.Response:
        self.images.delete(request.match_info["id"])
        return web.Response(status=204)

    # --- catalog and firewalls ------------------------------------------------------------

    async def _list_catalog(self, request: web.Request) -> web.Response:
        """GET /v1/server_types | images | locations, filtered by ?name= as Hetzner's."""
        kind = request.path.rsplit("/", 1)[-1]
        entries = [
            e
            for e in hetzner.catalog_json(kind, request.query.get("name"))
            if (kind, e["name"]) not in self.retired
        ]
        if kind == "server_types":
            entries = [
                hetzner.server_type_json(e["name"], frozenset(self.out_of_stock.get(e["name"], ())))
                for e in entries
            ]
        page, meta = hetzner.paginate(
            entries, request.query.get("page"), request.query.get("per_page")
        )
        return web.json_response({kind: page, "meta": meta})

    async def _create_firewall(self, request: web.Request) -> web.Response:
        firewall = self.firewalls.create(await self._json_body(request))
        return web.json_response({"firewall": firewall.to_json(), "actions": []}, status=201)

    async def _list_firewalls(self, request: web.Request) -> web.Response:
        firewalls = self.firewalls.listing(
            request.query.get("name"), request.query.get("label_selector", "").strip()
        )
        page, meta = hetzner.paginate(
            firewalls, request.query.get("page"), request.query.get("per_page")
        )
        return web.json_response({"firewalls": [f.to_json() for f in page], "meta": meta})

    async def _get_firewall(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"firewall": self.firewalls.get(request.match_info["id"]).to_json()}
        )

    async def _delete_firewall(self, request: web.Request) -> web.Response:
        self.firewalls.delete(request.match_info["id"])
        return web.Response(status=204)

    async def _create_ssh_key(self, request: web.Request) -> web.Response:
        key = self.ssh_keys.create(await self._json_body(request))
        return web.json_response({"ssh_key": key.to_json()}, status=201)

    async def _list_ssh_keys(self, request: web.Request) -> web.Response:
        keys = self.ssh_keys.listing(
            request.query.get("name"),
            request.query.get("fingerprint"),
            request.query.get("label_selector", "").strip(),
        )
        page, meta = hetzner.paginate(
            keys, request.query.get("page"), request.query.get("per_page")
        )
        return web.json_response({"ssh_keys": [k.to_json() for k in page], "meta": meta})

    async def _get_ssh_key(self, request: web.Request) -> web.Response:
        return web.json_response({"ssh_key": self.ssh_keys.get(request.match_info["id"]).to_json()})

    async def _delete_ssh_key(self, request: web.Request) -> web.Response:
        self.ssh_keys.delete(request.match_info["id"])
        return web.Response(status=204)

    # --- booting and killing servers ----------------------------------------------------

    async def _boot(self, server: Server, actions: list[Action]) -> None:
        t0 = time.monotonic()
        try:
            if self.faults.take_boot_failure():
                await asyncio.sleep(min(self.boot_seconds, QUICK_ACTION_SECONDS))
                raise BootFailed("injected boot failure")
            await self._spawn(server)
            await asyncio.sleep(max(0.0, t0 + self.boot_seconds / 2 - time.monotonic()))
            server.status = "starting"
            await asyncio.sleep(max(0.0, t0 + self.boot_seconds - time.monotonic()))
            server.status = "running"
            for action in actions:
                action.succeed()
            log.info("server %s (%s) running", server.id, server.name)
        except Exception as exc:  # any failure to boot ends the actions, never hangs them
            log.warning("server %s (%s) failed to boot: %s", server.id, server.name, exc)
            await self._kill(server)
            if server.status != "deleting":
                server.status = "off"
            for action in actions:
                action.fail("action_failed", f"server boot failed: {exc}")
        except asyncio.CancelledError:
            for action in actions:
                action.fail("action_failed", "server was deleted while booting")
            raise

    async def _spawn(self, server: Server) -> None:
        server.state_dir.mkdir(parents=True, exist_ok=True)
        addresses = [a for a in (server.ip,) if a]
        if server.ipv6 is not None and not server.ipv6_on_lo:
            # Tracked before the add: a cancel mid-add must still lead to a release.
            self._lo_addresses.add(server.ipv6)
            problem = await ipv6.assign(server.ipv6)
            if problem is None:
                server.ipv6_on_lo = True
            else:
                self._lo_addresses.discard(server.ipv6)
                log.warning(
                    "server %s: IPv6 %s unreachable here: %s", server.id, server.ipv6, problem
                )
        if server.ipv6_on_lo and server.ipv6 is not None:
            addresses.append(server.ipv6)
        if not addresses:
            raise BootFailed(
                "devstack: the server's only address is IPv6 and this machine cannot put it "
                "on lo (needs CAP_NET_ADMIN; see devstack/ipv6.py)"
            )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        config = {
            "ip": addresses[0],
            "addresses": addresses,
            "ssh_port": self.ssh_port,
            "smtp_port": self.smtp_port,
            "state_dir": str(server.state_dir),
            "user_data": server.user_data,
            "server_name": server.name,
            "image": server.image,
            "cloud_init_seconds": self.cloud_init_seconds,
            # Honoured by devstack/vps.py (docs/providers.md, the ssh_keys rows): the keys
            # Hetzner hands cloud-init as metadata, and whether root's password expired.
            "metadata_public_keys": server.metadata_public_keys,
            "root_password_expired": not server.metadata_public_keys,
        }
        with (server.state_dir / "vps.log").open("ab") as vps_log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "devstack.vps",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=vps_log,
                cwd=server.state_dir,
                env=env,
                preexec_fn=die_with_parent,
            )
        server.process = process
        assert process.stdin is not None and process.stdout is not None
        # The config carries the host private key, hence stdin rather than argv/file.
        process.stdin.write(json.dumps(config).encode())
        await process.stdin.drain()
        process.stdin.close()
        try:
            line = await asyncio.wait_for(process.stdout.readline(), VPS_READY_TIMEOUT)
        except TimeoutError:
            raise BootFailed(f"no READY within {VPS_READY_TIMEOUT:.0f}s") from None
        text = line.decode(errors="replace").strip()
        if text != "READY":
            reason = (
                text[len("FAILED ") :]
                if text.startswith("FAILED ")
                else f"server process exited (see {server.state_dir / 'vps.log'})"
            )
            raise BootFailed(reason)
        self._spawn_task(self._watch(server, process))

    async def _watch(self, server: Server, process: asyncio.subprocess.Process) -> None:
        """Drain stdout so the pipe never fills, and notice a crashed server."""
        assert process.stdout is not None
        while await process.stdout.read(4096):
            pass
        await process.wait()
        if server.process is process and server.status != "deleting" and not self._stopping:
            log.warning(
                "server %s (%s) process exited with %s", server.id, server.name, process.returncode
            )
            server.status = "off"

    async def _kill(self, server: Server) -> None:
        process = server.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), VPS_STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    # --- /_devstack ---------------------------------------------------------------------

    async def _add_fault(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        try:
            rule = self.faults.add(body)
        except FaultSpecError as exc:
            raise invalid_input({exc.field_name: [exc.detail]}) from None
        return web.json_response({"fault": rule.to_json()}, status=201)

    async def _list_faults(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "faults": [r.to_json() for r in self.faults.rules()],
                "boot_failures": self.faults.pending_boot_failures,
            }
        )

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        for server_id in list(self._migration_holds):
            self._release_migration(server_id)
        for server_id in list(self._image_holds):
            self._release_image_hold(server_id)
        for server in self._servers.values():
            VpsFaults(server.state_dir).clear()
        return web.json_response({"faults": [], "boot_failures": 0})

    async def _hold_migrations(self, request: web.Request) -> web.Response:
        """From now on the server's change_type migrations (and one running now) stay
        `migrating`, their action running, until DELETE (or DELETE /_devstack/faults, as
        every test ends) releases them."""
        server = self._server(request)
        self._migration_holds.setdefault(server.id, asyncio.Event())
        return web.json_response({"migrations_held": True}, status=201)

    async def _release_migrations(self, request: web.Request) -> web.Response:
        self._release_migration(self._server(request).id)
        return web.json_response({"migrations_held": False})

    def _release_migration(self, server_id: int) -> None:
        hold = self._migration_holds.pop(server_id, None)
        if hold is not None:
            hold.set()

    async def _hold_images(self, request: web.Request) -> web.Response:
        """From now on the server's create_image actions (and one running now) stay
        running, the image `creating` and the server locked, until DELETE (or DELETE
        /_devstack/faults, as every test ends) releases them."""
        server = self._server(request)
        self._image_holds.setdefault(server.id, asyncio.Event())
        return web.json_response({"images_held": True}, status=201)

    async def _release_images(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if raw.isdigit():  # the server may be gone by now; its hold is released anyway
            self._release_image_hold(int(raw))
        return web.json_response({"images_held": False})

    def _release_image_hold(self, server_id: int) -> None:
        hold = self._image_holds.pop(server_id, None)
        if hold is not None:
            hold.set()

    async def _image_history(self, request: web.Request) -> web.Response:
        """Every snapshot this cloud ever created (?label_selector=), deleted ones too,
        each with `gone` (devstack/images.py `ImageBook.history`)."""
        selector = request.query.get("label_selector", "").strip()
        return web.json_response({"images": self.images.history(selector)})

    @staticmethod
    def _vps_fault_kind(request: web.Request) -> str:
        """``command_faults`` or ``ssh_faults``, from the last path segment."""
        return request.path.rsplit("/", 1)[-1].replace("-", "_")

    async def _add_vps_fault(self, request: web.Request) -> web.Response:
        server = self._server(request)
        kind = self._vps_fault_kind(request)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError("json_error", "unable to parse request body as JSON") from None
        faults = VpsFaults(server.state_dir)
        try:
            rule = (
                faults.add_command_fault(body)
                if kind == "command_faults"
                else faults.add_ssh_fault(body)
            )
        except FaultSpecError as exc:
            raise invalid_input({exc.field_name: [exc.detail]}) from None
        return web.json_response({kind.removesuffix("s"): rule.to_json()}, status=201)

    async def _list_vps_faults(self, request: web.Request) -> web.Response:
        server = self._server(request)
        kind = self._vps_fault_kind(request)
        faults = VpsFaults(server.state_dir)
        rules = faults.command_faults() if kind == "command_faults" else faults.ssh_faults()
        return web.json_response({kind: [r.to_json() for r in rules]})

    async def _clear_vps_faults(self, request: web.Request) -> web.Response:
        server = self._server(request)
        kind = self._vps_fault_kind(request)
        VpsFaults(server.state_dir).clear(kind)
        return web.json_response({kind: []})

    async def _retire(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        kind, name = body.get("kind"), body.get("name")
        if kind not in hetzner.CATALOG_KINDS or not isinstance(name, str):
            raise invalid_input({"kind": [f"kind must be one of {hetzner.CATALOG_KINDS}"]})
        self.retired.add((kind, name))
        return web.json_response({"retired": sorted(self.retired)}, status=201)

    async def _unretire(self, request: web.Request) -> web.Response:
        self.retired.clear()
        return web.json_response({"retired": []})

    async def _rate_limit_usage(self, request: web.Request) -> web.Response:
        """The project's bucket: how many API requests it served and refused (429) since
        the cloud started, and what remains; `make faults` sizes its runs by it."""
        return web.json_response(self._rate.usage())

    async def _add_boot_failures(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        times = body.get("times", 1)
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise invalid_input({"times": ["times must be an integer >= 1"]})
        return web.json_response({"boot_failures": self.faults.add_boot_failures(times)})

    async def _notify(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._notify_keys:
            # Stripe-style idempotency: a replayed key is acknowledged, not re-delivered.
            return web.json_response({"received": True, "duplicate": True})
        if key is not None:
            self._notify_keys.add(key)
        self._notifications.append(
            {
                "name": request.match_info["name"],
                "headers": {
                    "Idempotency-Key": key,
                    "Content-Type": request.headers.get("Content-Type"),
                    "User-Agent": request.headers.get("User-Agent"),
                },
                "body": body,
                "received_at": iso(time.time()),
            }
        )
        return web.json_response({"received": True, "duplicate": False})

    async def _list_notifications(self, request: web.Request) -> web.Response:
        return web.json_response({"notifications": list(self._notifications)})

    async def _dev_server(self, request: web.Request) -> web.Response:
        server = self._server(request)
        process = server.process
        return web.json_response(
            {
                "server": {
                    "id": server.id,
                    "name": server.name,
                    "status": server.status,
                    "ip": server.ip,
                    "ipv6": server.ipv6,
                    "ipv6_reachable": server.ipv6_on_lo,
                    "ssh_port": self.ssh_port,
                    "smtp_port": self.smtp_port,
                    "state_dir": str(server.state_dir),
                    "metadata_public_keys": list(server.metadata_public_keys),
                    "root_password_expired": not server.metadata_public_keys,
                    "pid": process.pid
                    if process is not None and process.returncode is None
                    else None,
                }
            }
        )

    async def _dev_commands(self, request: web.Request) -> web.Response:
        server = self._server(request)
        path = server.state_dir / "commands.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return web.json_response({"commands": [json.loads(line) for line in lines if line]})

    async def _dev_tls_cert(self, request: web.Request) -> web.Response:
        server = self._server(request)
        path = server.state_dir / "tls" / "cert.pem"
        if not path.exists():
            raise ApiError("not_found", "server has not booted; no certificate yet")
        return web.Response(
            text=path.read_text(encoding="ascii"), content_type="application/x-pem-file"
        )

    async def _dev_mailu(self, request: web.Request) -> web.Response:
        server = self._server(request)
        return web.json_response(MailuStore(server.state_dir / "mailu.json").summary())


# --- CLI ------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.cloud",
        description="Local stand-in for the Hetzner Cloud API (demo and tests only).",
    )
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument(
        "--token-file",
        required=True,
        type=Path,
        help="file holding the API token (never pass tokens in argv)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ssh-port", type=int, default=None)
    parser.add_argument("--smtp-port", type=int, default=None)
    parser.add_argument("--subnet", default=None, help="a 127.X.Y.0/24; random if omitted")
    parser.add_argument("--boot-seconds", type=float, default=1.0)
    parser.add_argument(
        "--cloud-init-seconds",
        type=float,
        default=2.0,
        help="how long a new server's cloud-init (Docker install) runs after SSH is up",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace, token: str) -> None:
    ssh_port = args.ssh_port or free_port()
    smtp_port = args.smtp_port or free_port()
    while smtp_port == ssh_port:
        smtp_port = free_port()
    cloud = LocalCloud(
        args.state_dir,
        token,
        ssh_port,
        smtp_port,
        subnet=args.subnet,
        boot_seconds=args.boot_seconds,
        cloud_init_seconds=args.cloud_init_seconds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    base_url = await cloud.start(args.host, args.port)
    try:
        print(
            json.dumps(
                {
                    "base_url": base_url,
                    "ssh_port": ssh_port,
                    "smtp_port": smtp_port,
                    "subnet": str(cloud.subnet),
                }
            ),
            flush=True,
        )
        await stop.wait()
    finally:
        await cloud.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    token = args.token_file.read_text(encoding="utf-8").strip()
    if not token:
        print(f"{args.token_file}: empty token file", file=sys.stderr)
        return 2
    asyncio.run(_serve(args, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
