"""Activities that buy, watch and delete the customer's VPS.

The provider is Hetzner Cloud (activities/hetzner.py). Every error is translated
here into what Temporal should do with it: retry (with the provider's own
RateLimit-Reset as the next delay), or stop for good (bad input, no permission,
no quota), so the workflow's retry policies stay simple.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.hetzner import HetznerClient, HetznerError
from activities.ssh import SshIdentity
from workflows.contracts import ServerAddress, ServerHandle, ServerSpec

# Labels the workflow sets on every server; adoption trusts only a server carrying ours.
PURCHASE_LABEL = "purchase"


class VpsActivities:
    def __init__(self, client: HetznerClient, identity: SshIdentity) -> None:
        self._client = client
        self._identity = identity

    @activity.defn(name="create_server")
    async def create_server(self, spec: ServerSpec) -> ServerHandle:
        """Create the server, or adopt the one an earlier attempt already created."""
        user_data, host_public_key = self._identity.cloud_init_for(spec.name)
        try:
            server, _ = await self._client.create_server(
                name=spec.name,
                server_type=spec.server_type,
                image=spec.image,
                location=spec.location,
                labels=spec.labels,
                user_data=user_data,
            )
            activity.logger.info("server created", extra={"server_id": server.id})
            return ServerHandle(server.id, server.name, host_public_key)
        except HetznerError as err:
            if err.code != "uniqueness_error":
                raise provider_failure(err) from None
        # The name is deterministic per purchase, so "already used" almost always
        # means our own earlier attempt succeeded and its answer was lost.
        for server in await self._lookup(spec.name):
            if server.labels.get(PURCHASE_LABEL) == spec.labels[PURCHASE_LABEL]:
                activity.logger.info("adopted existing server", extra={"server_id": server.id})
                return ServerHandle(server.id, server.name, host_public_key, adopted=True)
        raise ApplicationError(
            f"server name {spec.name!r} is taken by a server of another purchase",
            type="ServerNameTaken",
            non_retryable=True,
        )

    @activity.defn(name="wait_for_server")
    async def wait_for_server(self, server_id: int) -> ServerAddress:
        """One look at the server; raises ServerNotReady until it is running.

        This is Temporal's "infrequent polling" pattern: the retry policy is the
        poll loop, so no worker slot is held while a server boots for minutes.
        """
        try:
            server = await self._client.get_server(server_id)
        except HetznerError as err:
            raise provider_failure(err) from None
        if server is None:
            raise ApplicationError(
                f"server {server_id} no longer exists at the provider",
                type="ServerGone",
                non_retryable=True,
            )
        if server.status != "running" or not server.ipv4:
            raise ApplicationError(
                f"server {server_id} is {server.status!r}, not running yet",
                type="ServerNotReady",
            )
        return ServerAddress(server.id, server.ipv4)

    @activity.defn(name="delete_server")
    async def delete_server(self, server_id: int) -> bool:
        """Compensation: delete the server. True if deleted, False if already gone."""
        try:
            action = await self._client.delete_server(server_id)
        except HetznerError as err:
            raise provider_failure(err) from None
        activity.logger.info("server deleted", extra={"server_id": server_id})
        return action is not None

    async def _lookup(self, name: str) -> list:  # type: ignore[type-arg]
        try:
            return await self._client.find_servers(name=name)
        except HetznerError as err:
            raise provider_failure(err) from None


def provider_failure(err: HetznerError) -> ApplicationError:
    """Map a provider error onto Temporal's retry semantics."""
    delay = timedelta(seconds=err.retry_after) if err.retry_after else None
    return ApplicationError(
        str(err),
        type=f"Hetzner.{err.code}",
        non_retryable=not err.retryable,
        next_retry_delay=delay,
    )
