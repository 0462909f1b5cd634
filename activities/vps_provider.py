"""Activities that buy, watch, name and delete the customer's VPS.

The provider is behind the `VpsProvider` protocol: Hetzner Cloud today
(activities/hetzner.py); another provider is one more module implementing these
calls, mapping its errors onto `ProviderError`, and registering itself in
activities/provider_registry.py (chosen by MAILPROV_PROVIDER). Here every provider
error becomes what Temporal should do with it: retry after a capped exponential
backoff with jitter that never reaches past the step's remaining budget, or stop
for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.cloud_init import DockerInstallError, docker_cloud_config
from activities.ssh import SshIdentity
from workflows.contracts import (
    Plan,
    ReverseDnsRequest,
    ServerAddress,
    ServerHandle,
    ServerSpec,
    ServerUpRequest,
)
from workflows.reconcile_contracts import ManagedServer

MANAGED_BY = {"managed-by": "mail-provisioning"}
# Ports MailU's front publishes in our docker-compose.yml (activities/mailu.py
# PUBLISHED_PORTS): MailU 2024.06's default PORTS (socrate clean_env: SMTP, HTTP(S),
# submissions, IMAPS, POP3S, ManageSieve); 587, 143 and 110 are closed by default.
MAILU_PUBLISHED_PORTS = ("25", "80", "443", "465", "993", "995", "4190")
ANYWHERE = ("0.0.0.0/0", "::/0")

# Adoption trusts only a server that carries this purchase's label.
PURCHASE_LABEL = "purchase"
# Every server this product buys carries it; clean-up never looks at any other server.
MANAGED_BY_SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
# hcloud-python's retry interval (hcloud/_client.py, v2.27.0): base 1 s doubling per
# retry, truncated at 60 s, full jitter between base and the truncated interval; it
# ignores RateLimit-Reset, which is when the bucket is FULL again (up to an hour away).
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
# A retry is scheduled at least this long before the step's schedule-to-close ends, so
# the retried attempt still has time to run.
BUDGET_MARGIN_SECONDS = 5.0
ACTION_POLL_SECONDS = 1.0
# wait_for_server looks at 2 s, 5 s, 9.5 s, ... then every 15 s: a booted server is
# noticed within 15 s, and a booting server costs at most 8 GETs (2 per look) a minute.
POLL_FIRST_SECONDS = 2.0
POLL_GROWTH = 1.5
POLL_MAX_SECONDS = 15.0
T = TypeVar("T")


class ProviderError(Exception):
    """A provider answer other than success, in provider-neutral terms."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        name_taken: bool = False,
        not_found: bool = False,
        try_next_location: bool = False,
        in_use: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code  # the provider's own code, kept for messages and audit
        self.message = message
        self.retryable = retryable
        self.status = status
        self.name_taken = name_taken  # create met an existing resource of that name
        self.not_found = not_found
        # A create the same request may pass elsewhere: no capacity, or the server type
        # is not (or no longer) offered in this location.
        self.try_next_location = try_next_location
        # A delete refused because another resource still uses this one.
        self.in_use = in_use


@dataclass(frozen=True)
class Server:
    id: int
    name: str
    status: str  # "initializing" | "starting" | "running" | "off" | "deleting" | ...
    ipv4: str | None
    dns_ptr: str | None
    labels: dict[str, str]
    created: str = ""  # ISO-8601, as the provider reports it
    ipv6: str | None = None  # the server's own address (::1 of its /64)
    ipv6_dns_ptr: str | None = None
    firewall_ids: list[int] = field(default_factory=list)
    # What a plan change reads (Hetzner: server_type.name, location.name,
    # primary_disk_size in GB, image.name; docs.hetzner.cloud, Servers).
    server_type: str = ""
    location: str = ""
    disk_gb: int = 0
    image: str | None = None


@dataclass(frozen=True)
class ServerTypeInfo:
    """One server type as the provider sells it (Hetzner: GET /server_types?name=)."""

    name: str
    disk_gb: int
    storage_type: str  # "local" | "network": change_type keeps it (see plan_change.py)
    # location -> (offered there and not past its deprecation, in stock now)
    locations: dict[str, tuple[bool, bool]]
    deprecated: bool


@dataclass(frozen=True)
class SshKey:
    """A login key registered at the provider and named in a server create."""

    id: int
    name: str
    public_key: str  # one OpenSSH line: "<type> <base64> [comment]"
    labels: dict[str, str]


def same_public_key(a: str, b: str) -> bool:
    """Same key material (type and blob); the comment does not count."""
    return a.split()[:2] == b.split()[:2]


@dataclass(frozen=True)
class FirewallRule:
    """One inbound TCP rule (a Hetzner firewall denies every inbound port not listed)."""

    port: str
    source_ips: tuple[str, ...]
    description: str
    protocol: str = "tcp"


@dataclass(frozen=True)
class Firewall:
    id: int
    name: str
    labels: dict[str, str]
    applied_to_servers: list[int]


@dataclass(frozen=True)
class FirewallPolicy:
    """The firewall every mail server gets: MailU's ports from anywhere, SSH from
    the operator's networks only (MAILPROV_SSH_SOURCE_NETWORKS)."""

    ssh_source_networks: tuple[str, ...] = ANYWHERE
    ssh_port: int = 22

    def rules(self) -> list[FirewallRule]:
        mail = [FirewallRule(port, ANYWHERE, f"MailU {port}") for port in MAILU_PUBLISHED_PORTS]
        ssh = FirewallRule(str(self.ssh_port), self.ssh_source_networks, "SSH (provisioning)")
        return [ssh, *mail]

    def fingerprint(self) -> str:
        """Names the rule set: a changed policy gets a new firewall, not an edited one."""
        canon = json.dumps([vars(rule) for rule in self.rules()], sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def labels(self) -> dict[str, str]:
        return {**MANAGED_BY, "role": "mail-firewall", "rules": self.fingerprint()}

    def name(self) -> str:
        return f"mail-provisioning-{self.fingerprint()}"

    def label_selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels().items()))


@dataclass(frozen=True)
class Image:
    """A snapshot of a server's disk (Hetzner: an image of type `snapshot`).

    `status` is "creating" until its create action succeeds, then "available";
    `image_size` (GB, what a snapshot is billed by) is unknown until then.
    """

    id: int
    status: str
    description: str
    labels: dict[str, str]
    created: str = ""
    created_from_server: int | None = None
    image_size_gb: float | None = None
    disk_size_gb: int = 0


@dataclass(frozen=True)
class Action:
    id: int
    command: str
    status: str  # "running" | "success" | "error"
    error: str | None = None


class VpsProvider(Protocol):
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
    ) -> tuple[Server, Action]: ...

    async def get_server(self, server_id: int) -> Server | None: ...

    async def find_servers(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[Server]: ...

    async def delete_server(self, server_id: int) -> Action | None: ...

    async def get_action(self, action_id: int) -> Action: ...

    async def shutdown_server(self, server_id: int) -> Action: ...

    async def poweroff_server(self, server_id: int) -> Action: ...

    async def poweron_server(self, server_id: int) -> Action: ...

    async def change_server_type(
        self, server_id: int, server_type: str, upgrade_disk: bool
    ) -> Action: ...

    async def get_server_type(self, name: str) -> ServerTypeInfo | None: ...

    async def set_server_labels(self, server_id: int, labels: dict[str, str]) -> Server: ...

    async def change_dns_ptr(self, server_id: int, ip: str, dns_ptr: str) -> Action: ...

    async def find_firewalls(self, *, label_selector: str) -> list[Firewall]: ...

    async def create_firewall(
        self, *, name: str, labels: dict[str, str], rules: Sequence[FirewallRule]
    ) -> Firewall: ...

    async def get_firewall(self, firewall_id: int) -> Firewall | None: ...

    async def delete_firewall(self, firewall_id: int) -> bool: ...

    async def create_ssh_key(
        self, *, name: str, public_key: str, labels: dict[str, str]
    ) -> SshKey: ...

    async def find_ssh_keys(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[SshKey]: ...

    async def delete_ssh_key(self, ssh_key_id: int) -> bool:
        """Delete; False when already gone."""
        ...

    async def create_snapshot(
        self, server_id: int, *, description: str, labels: dict[str, str]
    ) -> tuple[Image, Action]:
        """An image of the server's disk that outlives the server (Hetzner create_image)."""
        ...

    async def find_snapshots(self, *, label_selector: str) -> list[Image]: ...

    async def get_image(self, image_id: int) -> Image | None: ...

    async def delete_image(self, image_id: int) -> bool:
        """Delete; False when already gone."""
        ...

    async def check_catalog(self, catalog: Mapping[str, Plan]) -> list[str]:
        """Start-up check of every plan against what the provider sells.

        Raises activities.plans.CatalogError naming the plan and field when a plan
        cannot be bought; returns warnings (e.g. a type deprecated but still sold).
        """
        ...

    async def check_write_access(self) -> None:
        """Start-up probe that the credentials may create and delete, not only read.

        Raises ProviderError (e.g. Hetzner's token_readonly) when they may not.
        """
        ...

    async def aclose(self) -> None: ...


class VpsActivities:
    def __init__(
        self,
        provider: VpsProvider,
        identity: SshIdentity,
        firewall: FirewallPolicy | None = None,
    ) -> None:
        self._provider = provider
        self._identity = identity
        self._firewall = firewall or FirewallPolicy()

    @activity.defn(name="create_server")
    async def create_server(self, spec: ServerSpec) -> ServerHandle:
        """Create the server behind the mail firewall, or adopt the one an earlier
        attempt already created. Tries the plan's locations in order while the
        provider has no capacity or does not offer the server type there.

        The purchase's own login key is registered at the provider first and named in
        the create: without any SSH key Hetzner generates a root password that is
        created expired (API reference, Create a Server; kubermatic/machine-controller#191,
        hetznercloud/hcloud-python#121, hetznercloud/cli#1007), and OpenSSH then refuses
        every session without a terminal ("Password change required but no TTY
        available"), which is every session of ours.
        """
        plan = spec.plan
        try:
            docker = docker_cloud_config(plan.image, plan.docker_install)
        except DockerInstallError as err:
            raise ApplicationError(str(err), type="InvalidPlan", non_retryable=True) from None
        user_data, host_public_key = self._identity.cloud_init_for(spec.name, docker)
        firewall = await self._ensure_firewall()
        ssh_key = await self._ensure_ssh_key(spec)
        handle = ServerHandle(
            spec.tenant_id,
            0,
            spec.name,
            host_public_key,
            needs_ipv4=plan.ipv4,
            needs_ipv6=plan.ipv6,
            firewall_id=firewall.id,
        )
        unavailable: list[str] = []
        for location in plan.locations:
            try:
                server, action = await self._provider.create_server(
                    name=spec.name,
                    server_type=plan.server_type,
                    image=plan.image,
                    location=location,
                    labels=spec.labels,
                    user_data=user_data,
                    enable_ipv4=plan.ipv4,
                    enable_ipv6=plan.ipv6,
                    firewall_ids=[firewall.id],
                    ssh_key_ids=[ssh_key.id],
                )
            except ProviderError as err:
                if err.try_next_location:
                    activity.logger.warning(
                        "not available here, trying the next location",
                        extra={"location": location, "code": err.code},
                    )
                    unavailable.append(f"{location} ({err.code})")
                    continue
                if err.not_found:
                    # The shared firewall was deleted by another run's compensation
                    # between our lookup and this create: the next attempt makes it anew.
                    raise ApplicationError(
                        f"create refused: {err}", type="Provider.not_found"
                    ) from None
                if err.name_taken:
                    return await self._adopt(spec, handle)
                if not err.retryable:
                    # No server and no later attempt: the key would be left behind
                    # (the workflow has nothing to undo after a create that gave up).
                    await self._release_ssh_key_quietly(spec.name)
                raise provider_failure(err) from None
            activity.logger.info(
                "server created", extra={"server_id": server.id, "location": location}
            )
            return replace(handle, server_id=server.id, create_action_id=action.id)
        # Every location is out of capacity: Temporal retries later (capacity returns).
        raise ApplicationError(
            f"{plan.server_type} is not available in any plan location: {', '.join(unavailable)}",
            type="NoCapacity",
        )

    async def _adopt(self, spec: ServerSpec, handle: ServerHandle) -> ServerHandle:
        # The name is deterministic per purchase, so "already used" almost always
        # means our own earlier attempt succeeded and its answer was lost.
        for server in await self._call(self._provider.find_servers(name=spec.name)):
            if server.labels.get(PURCHASE_LABEL) == spec.labels[PURCHASE_LABEL]:
                activity.logger.info("adopted existing server", extra={"server_id": server.id})
                firewall_id = server.firewall_ids[0] if server.firewall_ids else None
                return replace(handle, server_id=server.id, adopted=True, firewall_id=firewall_id)
        raise ApplicationError(
            f"server name {spec.name!r} is taken by a server of another purchase",
            type="ServerNameTaken",
            non_retryable=True,
        )

    async def _ensure_ssh_key(self, spec: ServerSpec) -> SshKey:
        """The purchase's login key at the provider: created, or adopted after a lost answer.

        Its name derives from the server name (so from the purchase): a retry meets
        uniqueness_error and adopts the key of that name once its key material and
        purchase label prove it is ours.
        """
        name = ssh_key_name(spec.name)
        public_key = self._identity.provider_key_for(spec.name)
        try:
            return await self._provider.create_ssh_key(
                name=name, public_key=public_key, labels=spec.labels
            )
        except ProviderError as err:
            if not err.name_taken:
                raise provider_failure(err) from None
        for key in await self._call(self._provider.find_ssh_keys(name=name)):
            if same_public_key(key.public_key, public_key) and key.labels.get(
                PURCHASE_LABEL
            ) == spec.labels.get(PURCHASE_LABEL):
                activity.logger.info("adopted existing ssh key", extra={"ssh_key_id": key.id})
                return key
        raise ApplicationError(
            f"ssh key {name!r} (or its key material) is registered already, but not as this "
            "purchase's key",
            type="SshKeyNameTaken",
            non_retryable=True,
        )

    async def _release_ssh_key(self, server_name: str) -> None:
        """Remove the purchase's login key (idempotent: a missing key is fine).

        Keys only matter at create time (Hetzner copies them into the new server), so
        removing one never locks anyone out of a running server.
        """
        name = ssh_key_name(server_name)
        for key in await self._call(self._provider.find_ssh_keys(name=name)):
            ours = key.labels.get("managed-by") == MANAGED_BY["managed-by"]
            if ours and await self._call(self._provider.delete_ssh_key(key.id)):
                activity.logger.info("ssh key deleted", extra={"ssh_key_id": key.id})

    async def _release_ssh_key_quietly(self, server_name: str) -> None:
        """Best effort while another error is being reported: that error stays the answer."""
        try:
            await self._release_ssh_key(server_name)
        except ApplicationError as err:
            activity.logger.warning(
                "could not delete the purchase's ssh key", extra={"error": err.message}
            )

    async def _ensure_firewall(self) -> Firewall:
        """The mail firewall for the current policy: found by its labels, else created.

        Two runs creating it at once meet Hetzner's uniqueness_error on the name;
        the loser finds the winner's firewall by label, so exactly one exists.
        """
        selector = self._firewall.label_selector()
        found = await self._call(self._provider.find_firewalls(label_selector=selector))
        if found:
            return found[0]
        try:
            return await self._provider.create_firewall(
                name=self._firewall.name(),
                labels=self._firewall.labels(),
                rules=self._firewall.rules(),
            )
        except ProviderError as err:
            if not err.name_taken:
                raise provider_failure(err) from None
        found = await self._call(self._provider.find_firewalls(label_selector=selector))
        if not found:
            raise ApplicationError(
                f"firewall name {self._firewall.name()!r} is taken by a firewall without "
                "our labels",
                type="FirewallNameTaken",
                non_retryable=True,
            )
        return found[0]

    async def wait_for_server(self, server: ServerHandle) -> ServerAddress:
        """Poll the provider inside one attempt until the server runs.

        The attempt sleeps between looks and heartbeats (runtime/heartbeat.py), so a
        boot of minutes costs one activity plus a few throttled heartbeats, not one
        retry per look (each is a billable action on Temporal Cloud; docs/PERFORMANCE.md).
        The wait is a sleeping coroutine: it holds an activity slot but no thread,
        which is why the worker sizes its slots for async waits (worker.py). The look
        interval grows to POLL_MAX_SECONDS to stay far below the provider's rate limit.
        Provider errors still fail the attempt and are retried by the retry policy.
        A running server without an address its plan requires will never get it:
        that is final at once, not a 15-minute poll.
        """
        return await self._wait_until_running(server)

    @activity.defn(name="bring_up_server")
    async def bring_up_server(self, request: ServerUpRequest) -> ServerAddress:
        """wait_for_server, then set_reverse_dns on its addresses, as one activity.

        One activity instead of two is one billable action fewer per purchase
        (docs/PERFORMANCE.md); both parts are idempotent, so a retry after the PTR
        change simply finds the server running and the records already set.
        """
        address = await self._wait_until_running(request.server)
        await self._point_reverse_dns(
            ReverseDnsRequest(
                request.tenant_id,
                address.server_id,
                address.ipv4,
                request.dns_ptr,
                ipv6=address.ipv6,
            )
        )
        return address

    async def _wait_until_running(self, server: ServerHandle) -> ServerAddress:
        interval = POLL_FIRST_SECONDS
        while True:
            address = await self._look_at(server)
            if address is not None:
                return address
            await asyncio.sleep(interval)
            interval = min(POLL_MAX_SECONDS, interval * POLL_GROWTH)

    async def _look_at(self, server: ServerHandle) -> ServerAddress | None:
        """One look: the address when running, None while booting; raises when it never will."""
        if server.create_action_id is not None:
            action = await self._call(self._provider.get_action(server.create_action_id))
            if action.status == "error":
                raise ApplicationError(
                    f"server {server.server_id} failed to boot: {action.error}",
                    type="ServerBootFailed",
                    non_retryable=True,
                )
        current = await self._call(self._provider.get_server(server.server_id))
        if current is None:
            raise ApplicationError(
                f"server {server.server_id} no longer exists at the provider",
                type="ServerGone",
                non_retryable=True,
            )
        if current.status != "running":
            # Expected while booting: one quiet line, no exception, no traceback.
            activity.logger.info(
                "server not ready yet",
                extra={"server_id": server.server_id, "server_status": current.status},
            )
            return None
        missing = [
            family
            for family, needed, address in (
                ("IPv4", server.needs_ipv4, current.ipv4),
                ("IPv6", server.needs_ipv6, current.ipv6),
            )
            if needed and not address
        ]
        if missing:
            raise ApplicationError(
                f"server {server.server_id} is running without the public "
                f"{' and '.join(missing)} address its plan requires",
                type="ServerAddressMissing",
                non_retryable=True,
            )
        return ServerAddress(current.id, current.ipv4, current.ipv6)

    async def set_reverse_dns(self, request: ReverseDnsRequest) -> None:
        """Point the PTR record of every address (IPv4 and IPv6) at the mail hostname.

        Hetzner's change_dns_ptr takes either family; an address whose PTR already
        matches is skipped, so a retry changes nothing twice.
        """
        await self._point_reverse_dns(request)

    async def _point_reverse_dns(self, request: ReverseDnsRequest) -> None:
        current = await self._call(self._provider.get_server(request.server_id))
        have = {}
        if current is not None:
            have = {current.ipv4: current.dns_ptr, current.ipv6: current.ipv6_dns_ptr}
        for ip in (request.ipv4, request.ipv6):
            if ip is None or have.get(ip) == request.dns_ptr:
                continue
            action = await self._call(
                self._provider.change_dns_ptr(request.server_id, ip, request.dns_ptr)
            )
            # The change is asynchronous: only the finished action says it took effect
            # (docs.hetzner.cloud, Actions: "running" until "success" or "error").
            action = await self._finish(action, f"changing reverse DNS for {ip}")
            if action.status == "error":
                raise ApplicationError(
                    f"reverse DNS for {ip} failed: {action.error}", type="ReverseDnsFailed"
                )

    @activity.defn(name="delete_server")
    async def delete_server(self, server: ServerHandle) -> bool:
        """Compensation: delete the server and wait until the provider says it is gone.

        True if this call deleted it, False if it was already gone (a retry).
        """
        action = await self._call(self._provider.delete_server(server.server_id))
        if action is None:
            await self._release_firewall(server.firewall_id)
            await self._release_ssh_key(server.name)
            return False
        action = await self._finish(action, f"deleting server {server.server_id}")
        if action.status == "error":
            raise ApplicationError(
                f"deleting server {server.server_id} failed: {action.error}", type="DeleteFailed"
            )
        activity.logger.info("server deleted", extra={"server_id": server.server_id})
        await self._release_firewall(server.firewall_id)
        await self._release_ssh_key(server.name)
        return True

    async def _finish(self, action: Action, doing: str) -> Action:
        """Poll an action until it is no longer running, heartbeating meanwhile."""
        while action.status == "running":
            activity.heartbeat(doing)
            await asyncio.sleep(ACTION_POLL_SECONDS)
            action = await self._call(self._provider.get_action(action.id))
        return action

    @activity.defn(name="delete_purchase_servers")
    async def delete_purchase_servers(self, purchase_id: str) -> list[int]:
        """Clean-up when the server handle is unknown (cancel during create_server):
        delete every server labelled as ours and as this purchase's. Returns their ids."""
        selector = f"{MANAGED_BY_SELECTOR},{PURCHASE_LABEL}={purchase_id}"
        deleted = []
        for server in await self._call(self._provider.find_servers(label_selector=selector)):
            firewall_id = server.firewall_ids[0] if server.firewall_ids else None
            handle = ServerHandle("", server.id, server.name, "", firewall_id=firewall_id)
            await self.delete_server(handle)
            deleted.append(server.id)
        # A cancel can land between the key's registration and the server's create.
        for key in await self._call(self._provider.find_ssh_keys(label_selector=selector)):
            await self._call(self._provider.delete_ssh_key(key.id))
        return deleted

    @activity.defn(name="list_managed_servers")
    async def list_managed_servers(self) -> list[ManagedServer]:
        """Every server labelled as ours (managed-by and purchase labels), for the reconciler."""
        selector = f"{MANAGED_BY_SELECTOR},{PURCHASE_LABEL}"
        servers = await self._call(self._provider.find_servers(label_selector=selector))
        return [
            ManagedServer(
                server_id=server.id,
                name=server.name,
                purchase_id=server.labels[PURCHASE_LABEL],
                tenant_id=server.labels.get("tenant", ""),
                created=server.created,
                firewall_id=server.firewall_ids[0] if server.firewall_ids else None,
            )
            for server in servers
        ]

    async def _release_firewall(self, firewall_id: int | None) -> None:
        """Delete the mail firewall when no server uses it any more; keep it otherwise.

        Hetzner refuses to delete an applied firewall with `resource_in_use`
        (docs.hetzner.cloud, Firewalls: Delete a Firewall): another tenant's server
        still behind it is the normal case, not an error.
        """
        if firewall_id is None:
            return
        firewall = await self._call(self._provider.get_firewall(firewall_id))
        if firewall is None or firewall.applied_to_servers:
            return
        try:
            if await self._provider.delete_firewall(firewall_id):
                activity.logger.info("firewall deleted", extra={"firewall_id": firewall_id})
        except ProviderError as err:
            if not err.in_use:
                raise provider_failure(err) from None

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ProviderError as err:
            raise provider_failure(err) from None


def ssh_key_name(server_name: str) -> str:
    """The provider-side name of a purchase's login key (unique per project)."""
    return f"{server_name}-login"


def retry_delay(attempt: int, remaining_budget: float | None) -> float:
    """hcloud-python's truncated exponential backoff with full jitter, never past the budget.

    A rate-limited step does not wait for RateLimit-Reset: Hetzner refills one request
    per second, so a request a second or two later passes, while the reset (bucket
    full again) can be an hour away, beyond any step's schedule-to-close.
    """
    # After attempt n failed: a delay in [1 s, 2^n s], so even the first retries spread.
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
    delay = random.uniform(BACKOFF_BASE_SECONDS, ceiling)  # noqa: S311 - jitter
    if remaining_budget is not None:
        delay = min(delay, max(0.0, remaining_budget - BUDGET_MARGIN_SECONDS))
    return delay


def remaining_step_budget() -> float | None:
    """Seconds left of this activity's schedule-to-close, None when unbounded."""
    if not activity.in_activity():
        return None
    info = activity.info()
    if info.schedule_to_close_timeout is None:
        return None
    ends = info.scheduled_time + info.schedule_to_close_timeout
    return (ends - datetime.now(UTC)).total_seconds()


def provider_failure(err: ProviderError) -> ApplicationError:
    """Map a provider error onto Temporal's retry semantics.

    Retryable errors carry their own next delay (`retry_delay`): capped exponential
    backoff with full jitter, so many workflows hitting one rate limit do not retry in
    lockstep, and never past the step's remaining budget.
    """
    delay = None
    if err.retryable:
        attempt = activity.info().attempt if activity.in_activity() else 1
        delay = retry_delay(attempt, remaining_step_budget())
    return ApplicationError(
        str(err),
        type=f"Provider.{err.code}",
        non_retryable=not err.retryable,
        next_retry_delay=timedelta(seconds=delay) if delay is not None else None,
    )
