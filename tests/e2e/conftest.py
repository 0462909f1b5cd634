"""The real local stack for end-to-end tests: one per session, torn down at the end.

Temporal dev server, OpenBao (bootstrapped by the project's own code), the local
cloud with its SSH/SMTP VPSes, and a worker process, exactly as `make demo` runs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.vault import Vault, VaultSettings
from devstack.mail_login import certificate_after_dns
from devstack.stack import WEBHOOK_HOST, Stack, StackInfo
from runtime.codec import KeyRing, data_converter
from starter import query_status, start_purchase
from worker import WORKFLOWS, Settings, build_activities, worker_interceptors, workflow_runner
from workflows.claim_contracts import HOLDER_MEMO, tenant_claim_id
from workflows.contracts import ProvisionStatus, PurchaseRequest

# held_in_notify: how often it asks; provisioning up to notify takes minutes when loaded.
NOTIFY_POLLS = 1200
# check-world looks once more this long after finding a new disagreement (see below).
SETTLE = timedelta(seconds=20)


class CloudControl:
    """The local cloud's Hetzner API (with the worker's token) and its test hooks."""

    def __init__(self, info: StackInfo) -> None:
        self.api = httpx.Client(
            base_url=info.cloud_url + "/",
            headers={
                "Authorization": "Bearer " + (info.state_dir / "cloud.token").read_text().strip()
            },
            timeout=10,
        )
        self.devstack = httpx.Client(
            base_url=info.cloud_url.removesuffix("/v1") + "/_devstack/", timeout=10
        )

    def servers(self, **params: str) -> list[dict[str, Any]]:
        """Every page (the API pages its lists: 25 a page unless asked otherwise)."""
        servers: list[dict[str, Any]] = []
        page: int | None = 1
        while page is not None:
            response = self.api.get("servers", params={**params, "page": page, "per_page": 50})
            response.raise_for_status()
            body = response.json()
            servers += body["servers"]
            page = body.get("meta", {}).get("pagination", {}).get("next_page")
        return servers

    def servers_of(self, purchase_id: str) -> list[dict[str, Any]]:
        return self.servers(label_selector=f"purchase={purchase_id}")

    def inject(self, **rule: Any) -> None:
        self.devstack.post("faults", json=rule).raise_for_status()

    def inject_command_fault(
        self,
        server_id: int,
        match: str,
        times: int = 1,
        exit_status: int = 1,
        stderr: str = "Error: injected by the test",
        stdout: str = "",
    ) -> None:
        """The next `times` commands on that VPS containing `match` answer like this."""
        self.devstack.post(
            f"servers/{server_id}/command-faults",
            json={
                "match": match,
                "times": times,
                "exit_status": exit_status,
                "stderr": stderr,
                "stdout": stdout,
            },
        ).raise_for_status()

    def clear_faults(self) -> None:
        self.devstack.delete("faults").raise_for_status()

    def notifications(self) -> list[dict[str, Any]]:
        response = self.devstack.get("notifications")
        response.raise_for_status()
        body = response.json()
        return list(body["notifications"] if isinstance(body, dict) else body)

    def commands(self, server_id: int) -> list[dict[str, Any]]:
        response = self.devstack.get(f"servers/{server_id}/commands")
        response.raise_for_status()
        body = response.json()
        return list(body["commands"] if isinstance(body, dict) else body)

    def tls_cert(self, server_id: int) -> str:
        """The certificate MailU's front serves once the customer's DNS points at it."""
        response = self.devstack.get(f"servers/{server_id}")
        response.raise_for_status()
        return certificate_after_dns(Path(response.json()["server"]["state_dir"]))


@pytest.fixture(scope="session")
def stack_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mailprov-e2e-") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
async def stack(stack_dir: Path) -> AsyncIterator[Stack]:
    # bcrypt's fewest rounds in the MailU stand-ins: the tests log in hundreds of times.
    async with Stack(stack_dir, mailu_hash_rounds=4) as running:
        await running.start()
        yield running


@pytest.fixture(scope="session")
def info(stack: Stack) -> StackInfo:
    return stack.info


@pytest.fixture(scope="session")
async def client(info: StackInfo) -> Client:
    keyring = KeyRing.from_file(info.codec_keys_file)
    return await Client.connect(info.temporal_address, data_converter=data_converter(keyring))


@pytest.fixture(scope="session")
def cloud(info: StackInfo) -> Iterator[CloudControl]:
    control = CloudControl(info)
    yield control
    control.api.close()
    control.devstack.close()


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "cloud" in request.fixturenames:
        request.getfixturevalue("cloud").clear_faults()


@pytest.fixture(scope="session")
def reader_vault(info: StackInfo) -> Vault:
    return Vault(
        VaultSettings(url=info.vault_addr, token=info.reader_token_file.read_text().strip())
    )


@pytest.fixture(scope="session")
def worker_vault(info: StackInfo) -> Vault:
    token = (info.state_dir / "vault" / "worker.token").read_text().strip()
    return Vault(VaultSettings(url=info.vault_addr, token=token))


@pytest.fixture
def purchase(info: StackInfo) -> dict[str, Any]:
    """A fresh purchase (own tenant, so Vault paths never collide between tests)."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "purchase_id": f"e2e-{suffix}",
        "tenant_id": f"tenant-{suffix}",
        "domain": f"t{suffix}.example",
        "plan": "starter",
        "requested_by": "e2e-tests",
        "notify_url": info.notify_url,
    }


# ------------------------------------------------------------------ in-process workers


async def run_in_process_worker(
    info: StackInfo,
    client: Client,
    task_queue: str,
    vault_token_file: Path | None,
    request: PurchaseRequest,
    while_running: Callable[[], Awaitable[None]] | None = None,
    extra_env: dict[str, str] | None = None,
    after: Callable[[], Awaitable[None]] | None = None,
) -> tuple[str, BaseException | None]:
    """Run one purchase on an in-process worker; returns (workflow id, failure or None).

    The tenant's claim runs on the same task queue: before the worker stops, a failed
    purchase's claim is let end (its owner check is an activity on this worker), and
    `after` runs while the worker still serves the claim.
    """
    async with in_process_worker(info, client, task_queue, vault_token_file, extra_env) as settings:
        handle, _ = await start_purchase(client, request, task_queue)
        if while_running is not None:
            await while_running()
        failure: BaseException | None = None
        try:
            await handle.result()
        except WorkflowFailureError as err:
            failure = err
        if after is not None:
            await after()
        elif failure is not None and not settings.keep_failed_servers:
            await claim_released(client, request.tenant_id, handle.id)
    return handle.id, failure


@asynccontextmanager
async def in_process_worker(
    info: StackInfo,
    client: Client,
    task_queue: str,
    vault_token_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Settings]:
    """A worker of every workflow and activity on `task_queue`, configured as the stack's
    worker plus `extra_env`, serving while the block runs (the test starts the runs)."""
    env = {**info.worker_env, **(extra_env or {})}
    if vault_token_file is not None:
        # A deliberately limited token: its refusals are final at once, not retried.
        env.pop("VAULT_ROLE_ID_FILE")
        env["VAULT_TOKEN_FILE"] = str(vault_token_file)
        env["MAILPROV_VAULT_DENIED_RETRY_SECONDS"] = "0"
    settings = replace(Settings.from_env(env), task_queue=task_queue)
    async with build_activities(settings) as acts:
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=list(WORKFLOWS),
            activities=acts,
            interceptors=worker_interceptors(),
            workflow_runner=workflow_runner(client.data_converter),
        )
        async with worker:
            yield settings


async def claim_released(client: Client, tenant_id: str, holder: str) -> None:
    """Until the tenant's claim held by `holder` has ended (or another purchase holds it)."""
    claim = client.get_workflow_handle(tenant_claim_id(tenant_id))
    for _ in range(600):
        try:
            description = await claim.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return
            raise
        held_by = await description.memo_value(HOLDER_MEMO, default=None)
        if description.status != WorkflowExecutionStatus.RUNNING or held_by != holder:
            return
        await asyncio.sleep(0.2)


def new_request(info: StackInfo, **overrides: Any) -> PurchaseRequest:
    suffix = uuid.uuid4().hex[:8]
    return PurchaseRequest.parse(
        {
            "purchase_id": f"run-{suffix}",
            "tenant_id": f"run-{suffix}",
            "domain": f"run{suffix}.example",
            "plan": "starter",
            "requested_by": "e2e-tests",
            "notify_url": info.notify_url,
            **overrides,
        }
    )


def write_only_token(info: StackInfo, tmp_path: Path) -> Path:
    """A token that can get data keys but not write records: the store step must fail."""
    root = hvac.Client(
        url=info.vault_addr, token=(info.state_dir / "vault" / "root.token").read_text().strip()
    )
    root.sys.create_or_update_policy(
        "leak-scan-no-kv",
        (
            'path "transit/keys/mail-credentials-*" { capabilities = ["update"] }\n'
            'path "transit/datakey/plaintext/mail-credentials-*" { capabilities = ["update"] }\n'
            'path "smtp/data/+/admin" { capabilities = ["read"] }\n'
            # The audit chain as the worker's policy has it: compensation is audited.
            'path "transit/hmac/mail-audit" { capabilities = ["update"] }\n'
            'path "transit/verify/mail-audit" { capabilities = ["update"] }\n'
            'path "audit-chain/data/head/+" { capabilities = ["create", "update", "read"] }\n'
        ),
    )
    token = root.auth.token.create(policies=["leak-scan-no-kv"], no_default_policy=True, ttl="1h")[
        "auth"
    ]["client_token"]
    path = tmp_path / "no-kv.token"
    path.write_text(token)
    return path


_webhooks_handed_out: dict[int, int] = {}


def customer_webhook(info: StackInfo, path: str = "/hooks/mail") -> tuple[int, str]:
    """A loopback port for a test's customer webhook and the URL a purchase names it by.

    The worker's outbound policy refuses loopback addresses; the stack allows a pool of
    ports under WEBHOOK_HOST by configuration, as an operator lists an internal
    receiver. Each call hands out the next port of the pool, so webhooks of successive
    tests do not share a port (a terminated run's retries stop with it).
    """
    count = _webhooks_handed_out.get(id(info), 0)
    _webhooks_handed_out[id(info)] = count + 1
    port = info.webhook_ports[count % len(info.webhook_ports)]
    return port, f"http://{WEBHOOK_HOST}:{port}{path}"


# A status query a test polls is asked again this many times when it times out.
QUERY_ATTEMPTS = 5


async def polled_status(handle: WorkflowHandle[Any, Any]) -> ProvisionStatus:
    """The status query as a test polls it: one that times out is asked again.

    The starter's query has a 5 s RPC timeout, right for an operator at a prompt; a
    CI machine running six stacks on two cores has answered later than that (a
    fresh-clone make test failed in test_reconciler's wait for `notify` on it).
    """
    for attempt in range(QUERY_ATTEMPTS):
        try:
            return await query_status(handle)
        except RPCError:
            if attempt == QUERY_ATTEMPTS - 1:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def held_in_notify(
    client: Client, info: StackInfo, **overrides: Any
) -> tuple[PurchaseRequest, WorkflowHandle[Any, Any]]:
    """A purchase whose server is ready and whose customer webhook nobody listens on: it
    stays in notify's retries (holding its tenant's claim) until the test ends it."""
    _, hook_url = customer_webhook(info)
    request = new_request(info, notify_url=hook_url, **overrides)
    handle, _ = await start_purchase(client, request, "mail-provisioning")
    for _ in range(NOTIFY_POLLS):
        status = await polled_status(handle)
        if status.current_step == "notify":
            return request, handle
        assert status.state == "running", status
        await asyncio.sleep(0.5)
    raise AssertionError(f"{handle.id} never reached notify")


# ------------------------------------------------------------------ check-world


def _module_uses_stack(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(item, "module", None) is request.module
        and {"client", "info", "stack"} & set(getattr(item, "fixturenames", ()))
        for item in request.session.items
    )


# (kind, subject) of every disagreement check-world found after this process's last
# e2e module that used the stack (None before the first).
_world_after_last_module: set[tuple[str, str]] | None = None


@pytest.fixture(scope="module", autouse=True)
def _world_agrees_after_each_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """`starter.py check-world` after every module that uses the stack (and before the
    first): a disagreement the module leaves behind that was not there before fails it
    (at teardown), named with its fix.

    A module that breaks the world on purpose repairs it before it ends; the only
    tolerance is a module attribute CHECK_WORLD_TOLERATES (kinds, with the reason in
    a comment beside it), none of which exists today. Synchronous, running the CLI as
    an operator does, so that it can bring the session's stack up from any module.
    """
    if not _module_uses_stack(request):
        yield
        return
    global _world_after_last_module
    info: StackInfo = request.getfixturevalue("info")
    # Nothing but an e2e module touches this process's stack, so the world the previous
    # one left (and was judged on) is the world this one starts from: one CLI run per
    # module instead of two.
    before = _world_after_last_module
    if before is None:
        before = {(d["kind"], d["subject"]) for d in _check_world(info)}
    yield
    tolerated = set(getattr(request.module, "CHECK_WORLD_TOLERATES", ()))
    after = _check_world(info)
    new = _left_behind(after, before, tolerated)
    if new:
        # The world is judged settled: a run the module's last test cancelled may still be
        # closing, and its claim ends about a second after (activities/tenant_claims.py).
        # What the product ends itself is gone at one more look SETTLE later; anything
        # still there then is left behind.
        time.sleep(SETTLE.total_seconds())
        after = _check_world(info)
        new = _left_behind(after, before, tolerated)
    _world_after_last_module = {(d["kind"], d["subject"]) for d in after}
    if new:
        lines = "\n".join(
            f"{d['kind']}: {d['subject']}: {d['detail']} (fix: {d['fix']})" for d in new
        )
        pytest.fail(f"check-world: {len(new)} new disagreement(s) after this module:\n{lines}")


def _left_behind(
    after: list[dict[str, str]], before: set[tuple[str, str]], tolerated: set[str]
) -> list[dict[str, str]]:
    return [
        d for d in after if (d["kind"], d["subject"]) not in before and d["kind"] not in tolerated
    ]


def _check_world(info: StackInfo) -> list[dict[str, str]]:
    """The disagreements `starter.py check-world` prints (exit 1 when there are any)."""
    done = subprocess.run(
        info.starter_command("check-world"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode in (0, 1), done.stderr
    disagreements: list[dict[str, str]] = json.loads(done.stdout)["disagreements"]
    assert (done.returncode == 1) == bool(disagreements), done.stderr
    return disagreements
