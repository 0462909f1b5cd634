"""Activities that buy, watch, name and delete the customer's VPS.

The provider is behind the `VpsProvider` protocol: Hetzner Cloud today
(activities/hetzner.py); another provider is one more module implementing these
six calls and mapping its errors onto `ProviderError`. Here every provider error
becomes what Temporal should do with it: retry (after the provider's own
rate-limit reset, or a capped exponential backoff with jitter), or stop for good.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.cloud_init import DockerInstallError, docker_cloud_config
from activities.ssh import SshIdentity
from workflows.contracts import ReverseDnsRequest, ServerAddress, ServerHandle, ServerSpec
from workflows.reconcile_contracts import ManagedServer

# Adoption trusts only a server that carries this purchase's label.
PURCHASE_LABEL = "purchase"
# Every server this product buys carries it; clean-up never looks at any other server.
MANAGED_BY_SELECTOR = "managed-by=mail-provisioning"
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 60.0
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
        retry_after: float | None = None,
        name_taken: bool = False,
        not_found: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code  # the provider's own code, kept for messages and audit
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.name_taken = name_taken  # create met an existing server of that name
        self.not_found = not_found


@dataclass(frozen=True)
class Server:
    id: int
    name: str
    status: str  # "initializing" | "starting" | "running" | "off" | "deleting" | ...
    ipv4: str | None
    dns_ptr: str | None
    labels: dict[str, str]
    created: str = ""  # ISO-8601, as the provider reports it


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
    ) -> tuple[Server, Action]: ...

    async def get_server(self, server_id: int) -> Server | None: ...

    async def find_servers(
        self, *, name: str | None = None, label_selector: str | None = None
    ) -> list[Server]: ...

    async def delete_server(self, server_id: int) -> Action | None: ...

    async def get_action(self, action_id: int) -> Action: ...

    async def change_dns_ptr(self, server_id: int, ip: str, dns_ptr: str) -> Action: ...


class VpsActivities:
    def __init__(self, provider: VpsProvider, identity: SshIdentity) -> None:
        self._provider = provider
        self._identity = identity

    @activity.defn(name="create_server")
    async def create_server(self, spec: ServerSpec) -> ServerHandle:
        """Create the server, or adopt the one an earlier attempt already created."""
        try:
            docker = docker_cloud_config(spec.image, spec.docker_install)
        except DockerInstallError as err:
            raise ApplicationError(str(err), type="InvalidPlan", non_retryable=True) from None
        user_data, host_public_key = self._identity.cloud_init_for(spec.name, docker)
        try:
            server, action = await self._provider.create_server(
                name=spec.name,
                server_type=spec.server_type,
                image=spec.image,
                location=spec.location,
                labels=spec.labels,
                user_data=user_data,
            )
            activity.logger.info("server created", extra={"server_id": server.id})
            return ServerHandle(spec.tenant_id, server.id, server.name, host_public_key, action.id)
        except ProviderError as err:
            if not err.name_taken:
                raise provider_failure(err) from None
        # The name is deterministic per purchase, so "already used" almost always
        # means our own earlier attempt succeeded and its answer was lost.
        for server in await self._call(self._provider.find_servers(name=spec.name)):
            if server.labels.get(PURCHASE_LABEL) == spec.labels[PURCHASE_LABEL]:
                activity.logger.info("adopted existing server", extra={"server_id": server.id})
                return ServerHandle(
                    spec.tenant_id, server.id, server.name, host_public_key, adopted=True
                )
        raise ApplicationError(
            f"server name {spec.name!r} is taken by a server of another purchase",
            type="ServerNameTaken",
            non_retryable=True,
        )

    @activity.defn(name="wait_for_server")
    async def wait_for_server(self, server: ServerHandle) -> ServerAddress:
        """Poll the provider inside one attempt until the server runs.

        The attempt sleeps between looks and heartbeats (activities/heartbeat.py), so a
        boot of minutes costs one activity plus a few throttled heartbeats, not one
        retry per look (each is a billable action on Temporal Cloud; docs/PERFORMANCE.md).
        The wait is a sleeping coroutine: it holds an activity slot but no thread,
        which is why the worker sizes its slots for async waits (worker.py). The look
        interval grows to POLL_MAX_SECONDS to stay far below the provider's rate limit.
        Provider errors still fail the attempt and are retried by the retry policy.
        """
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
        if current.status != "running" or not current.ipv4:
            # Expected while booting: one quiet line, no exception, no traceback.
            activity.logger.info(
                "server not ready yet",
                extra={"server_id": server.server_id, "server_status": current.status},
            )
            return None
        return ServerAddress(current.id, current.ipv4)

    @activity.defn(name="set_reverse_dns")
    async def set_reverse_dns(self, request: ReverseDnsRequest) -> None:
        """Point the IPv4 PTR record at the mail hostname; a no-op when it already does."""
        current = await self._call(self._provider.get_server(request.server_id))
        if current is not None and current.dns_ptr == request.dns_ptr:
            return
        action = await self._call(
            self._provider.change_dns_ptr(request.server_id, request.ipv4, request.dns_ptr)
        )
        if action.status == "error":
            raise ApplicationError(
                f"reverse DNS for {request.ipv4} failed: {action.error}", type="ReverseDnsFailed"
            )

    @activity.defn(name="delete_server")
    async def delete_server(self, server: ServerHandle) -> bool:
        """Compensation: delete the server and wait until the provider says it is gone.

        True if this call deleted it, False if it was already gone (a retry).
        """
        action = await self._call(self._provider.delete_server(server.server_id))
        if action is None:
            return False
        while action.status == "running":
            activity.heartbeat(f"deleting server {server.server_id}")
            await asyncio.sleep(ACTION_POLL_SECONDS)
            action = await self._call(self._provider.get_action(action.id))
        if action.status == "error":
            raise ApplicationError(
                f"deleting server {server.server_id} failed: {action.error}", type="DeleteFailed"
            )
        activity.logger.info("server deleted", extra={"server_id": server.server_id})
        return True

    @activity.defn(name="delete_purchase_servers")
    async def delete_purchase_servers(self, purchase_id: str) -> list[int]:
        """Clean-up when the server handle is unknown (cancel during create_server):
        delete every server labelled as ours and as this purchase's. Returns their ids."""
        selector = f"{MANAGED_BY_SELECTOR},{PURCHASE_LABEL}={purchase_id}"
        deleted = []
        for server in await self._call(self._provider.find_servers(label_selector=selector)):
            await self.delete_server(ServerHandle("", server.id, server.name, ""))
            deleted.append(server.id)
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
            )
            for server in servers
        ]

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ProviderError as err:
            raise provider_failure(err) from None


def provider_failure(err: ProviderError) -> ApplicationError:
    """Map a provider error onto Temporal's retry semantics.

    Retryable errors carry their own next delay: the provider's RateLimit-Reset
    when it gave one, else capped exponential backoff with full jitter, so many
    workflows hitting one rate limit do not retry in lockstep.
    """
    delay = None
    if err.retryable:
        if err.retry_after:
            delay = err.retry_after
        else:
            attempt = activity.info().attempt if activity.in_activity() else 1
            ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
            delay = random.uniform(BACKOFF_BASE_SECONDS / 2, ceiling)  # noqa: S311 - jitter
    return ApplicationError(
        str(err),
        type=f"Provider.{err.code}",
        non_retryable=not err.retryable,
        next_retry_delay=timedelta(seconds=delay) if delay else None,
    )
