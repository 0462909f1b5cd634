"""The worker's health endpoint: does this worker poll its task queue right now?

Kubernetes (deploy/kubernetes/) and Compose probe it:
  GET /livez   200 while the process serves HTTP (the event loop is alive)
  GET /readyz  200 when Temporal lists this worker's identity among the task queue's
               workflow pollers within the last POLL_FRESHNESS; 503 otherwise, e.g.
               before the worker has polled, while it drains after SIGTERM, or when
               Temporal is unreachable. The body says which, as JSON.

"Polls" is what Temporal itself reports (DescribeTaskQueue), not a flag the worker
sets: a worker whose poll loop died answers 503 even though its process lives.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

# Temporal refreshes a poller's last_access_time on each long poll (up to ~60 s apart).
POLL_FRESHNESS = timedelta(seconds=90)


async def polling_state(client: Client, task_queue: str, identity: str) -> tuple[bool, str]:
    """(polling, reason) for the worker `identity` on the task queue's workflow pollers.

    The identity is the Worker's, not the client's: the worker names its codec key ids
    in it (runtime/codec.py worker_identity), so the two differ and matching the client's
    would never find this worker.
    """
    try:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=5),
        )
    except RPCError as err:
        return False, f"temporal unreachable: {err.status.name}"
    now = datetime.now(UTC)
    for poller in response.pollers:
        if poller.identity == identity:
            age = now - poller.last_access_time.ToDatetime(tzinfo=UTC)
            if age <= POLL_FRESHNESS:
                return True, f"polling {task_queue}"
            return False, f"last poll {int(age.total_seconds())} s ago"
    return False, f"not among the pollers of {task_queue}"


class HealthServer:
    """A minimal HTTP/1.1 server on the worker's event loop (no thread, no framework)."""

    def __init__(
        self, client: Client, task_queue: str, identity: str, draining: asyncio.Event
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._identity = identity
        self._draining = draining
        self._server: asyncio.Server | None = None

    async def start(self, bind: str) -> None:
        """Listen on `host:port` (in a container, `0.0.0.0:8081` so the kubelet reaches it)."""
        host, _, port = bind.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"MAILPROV_HEALTH_BIND must be host:port, got {bind!r}")
        self._server = await asyncio.start_server(self._handle, host, int(port))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await asyncio.wait_for(reader.readline(), 5)).decode("latin-1")
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.split()
            path = parts[1] if len(parts) >= 2 else ""
            status, body = await self._answer(parts[0] if parts else "", path)
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[str, dict[str, object]]:
        if method != "GET":
            return "405 Method Not Allowed", {"error": "GET only"}
        if path == "/livez":
            return "200 OK", {"alive": True}
        if path != "/readyz":
            return "404 Not Found", {"error": "try /livez or /readyz"}
        if self._draining.is_set():
            return "503 Service Unavailable", {"polling": False, "reason": "draining"}
        polling, reason = await polling_state(self._client, self._task_queue, self._identity)
        status = "200 OK" if polling else "503 Service Unavailable"
        return status, {"polling": polling, "reason": reason, "task_queue": self._task_queue}


async def serve_health(
    bind: str | None, client: Client, task_queue: str, identity: str, draining: asyncio.Event
) -> HealthServer | None:
    """Start the endpoint if MAILPROV_HEALTH_BIND is set; `draining` is the stop signal.

    `identity` is the one the Worker polls with (Worker(identity=...)).
    """
    if not bind:
        return None
    server = HealthServer(client, task_queue, identity, draining)
    await server.start(bind)
    return server
