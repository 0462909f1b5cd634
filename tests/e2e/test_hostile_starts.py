"""A hostile corpus against the real stack: every bad start ends at once, nothing is bought.

Each case is sent three ways: as a file to starter.py, as raw JSON (or raw bytes) with
the `temporal` CLI, and as raw payloads from a Python client. For every run: it ends
with the defined error, no server exists, Vault holds no new record, the audit log has
no new row, no tenant claim was taken, the loopback listener the SSRF cases aim at
received nothing, and afterwards the worker still provisions a good purchase.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
)
from temporalio.common import RawValue, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

import starter
from activities.audit import SqliteAuditStore
from devstack import hetzner
from devstack.processes import free_port
from devstack.stack import NOTIFY_SINK_HOST, StackInfo
from runtime.codec import KeyRing, data_converter
from tests.e2e.conftest import CloudControl
from tests.workflow.test_deprovision_workflow import DEPROVISION_CORPUS
from tests.workflow.test_final_snapshot_workflow import HOSTILE_EXPIRY_IDS
from tests.workflow.test_hostile_starts_workflow import ROTATION_CORPUS, RawStart
from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    DNS_PUBLISHED_SIGNAL,
    activation_workflow_id,
)
from workflows.claim_contracts import HOLDER_MEMO, TENANT_CLAIM_TYPE, tenant_claim_id
from workflows.contracts import WORKFLOW_TYPE, workflow_id_for
from workflows.deprovision_contracts import DEPROVISION_WORKFLOW_TYPE, deprovision_workflow_id
from workflows.final_snapshot_contracts import (
    EXPIRY_WORKFLOW_TYPE,
    NOT_A_FINAL_SNAPSHOT,
    expiry_workflow_id,
)
from workflows.input_rules import MAX_INPUT_BYTES
from workflows.input_rules import UNDECODABLE_ENCODING as UNDECODABLE
from workflows.plan_change_contracts import PLAN_CHANGE_WORKFLOW_TYPE, plan_change_workflow_id
from workflows.reconcile_contracts import RECONCILE_WORKFLOW
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE, rotation_schedule_id
from workflows.world_check_contracts import WORLD_CHECK_WORKFLOW

JSON = b"json/plain"
QUEUE = "mail-provisioning"
RUN_TIMEOUT = 120  # generous: a refused start ends in well under a second on a quiet machine


@dataclass(frozen=True)
class Case:
    """One hostile start. `payloads(purchase_id)` gives the (encoding, data) arguments."""

    category: str
    name: str
    payloads: Callable[[str], list[tuple[bytes, bytes]]]
    expect: str  # a fragment of the error message the run must end with
    error_type: str = "InvalidPurchaseRequest"
    # Refused by the contract itself, so starter.py refuses it locally (exit 2); the
    # others need the worker's settings and fail the started run (exit 1).
    local: bool = True

    @property
    def json_text(self) -> bool:
        """One json/plain argument that the CLI can send as --input text."""
        args = self.payloads("x")
        if len(args) != 1 or args[0][0] != JSON:
            return False
        try:
            json.loads(args[0][1])
        except RecursionError:
            return True  # valid JSON, only too deep for Python's parser: the CLI sends it
        except ValueError:
            return False
        return True


def good(pid: str, **overrides: Any) -> dict[str, Any]:
    suffix = uuid.uuid5(uuid.NAMESPACE_URL, pid).hex[:8]
    raw: dict[str, Any] = {
        "purchase_id": pid,
        "tenant_id": f"hostile-{suffix}",
        "domain": f"h{suffix}.example",
        "plan": "starter",
        "requested_by": "hostile-corpus",
    }
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not _DROP}


_DROP = object()


def field_case(category: str, name: str, expect: str, local: bool = True, **overrides: Any) -> Case:
    return Case(
        category,
        name,
        lambda pid: [(JSON, json.dumps(good(pid, **overrides)).encode())],
        expect,
        local=local,
    )


def raw_case(category: str, name: str, data: bytes, expect: str, encoding: bytes = JSON) -> Case:
    return Case(category, name, lambda pid: [(encoding, data)], expect)


def corpus(listener_port: int) -> list[Case]:
    p = listener_port
    cases = [
        # --- wrong JSON type or shape
        raw_case("json type", "string", b'"hello"', "got a string"),
        raw_case("json type", "array", b"[1,2]", "got an array"),
        raw_case("json type", "null", b"null", "got null"),
        raw_case("json type", "number", b"42", "got a number"),
        raw_case("json type", "boolean", b"true", "got a boolean"),
        raw_case("json type", "empty object", b"{}", "'domain' is required"),
        field_case("json type", "purchase id array", "must be a string", purchase_id=[1]),
        field_case("json type", "tenant number", "must be a string", tenant_id=7),
        field_case("json type", "domain object", "must be a string", domain={"a": 1}),
        # Operator configuration, never input (issue 17): refused in any spelling.
        field_case("json type", "keep flag", "not a known field", keep_server_on_failure=True),
        field_case("json type", "unknown field", "not a known field", extra="x"),
        field_case("json type", "missing plan", "is required", plan=_DROP),
        # --- undecodable bytes
        raw_case("undecodable", "not utf-8", b'{"a":"\xff\xfe"}', "UTF-8"),
        raw_case("undecodable", "truncated json", b'{"purchase_id": "p', "not valid JSON"),
        raw_case("undecodable", "trailing garbage", b"{} {}", "not valid JSON"),
        raw_case("undecodable", "NaN", b'{"a": NaN}', "NaN is not JSON"),
        raw_case("undecodable", "duplicate key", b'{"plan":"starter","plan":"x"}', "duplicate"),
        raw_case("undecodable", "binary/plain bytes", b"\x00\x01", "encoding", b"binary/plain"),
        raw_case("undecodable", "protobuf encoding", b"\x08\x01", "encoding", b"json/protobuf"),
        raw_case("undecodable", "no encoding", b"{}", "encoding", b""),
        raw_case("undecodable", "binary/null", b"", "got null", b"binary/null"),
        # --- size and depth
        raw_case(
            "oversize", "huge string", json.dumps({"a": "x" * MAX_INPUT_BYTES}).encode(), "at most"
        ),
        raw_case("oversize", "64 KiB of spaces", b" " * (1 << 16) + b"{}", "at most"),
        raw_case("deep nesting", "5000-deep array", b"[" * 5000 + b"]" * 5000, "nest"),
        raw_case("deep nesting", "2500-deep object", b'{"a":' * 2500 + b"1" + b"}" * 2500, "nest"),
        raw_case("deep nesting", "unclosed 10000", b"[" * 10000, "nest"),
        raw_case("oversize", "60000-deep array", b"[" * 30000 + b"]" * 30000, "at most"),
        raw_case("deep nesting", "9 deep", b"[" * 9 + b"]" * 9, "nest"),
        # --- argument count
        Case("arguments", "no argument", lambda pid: [], "purchase object (got 0)"),
        Case(
            "arguments",
            "two arguments",
            lambda pid: [(JSON, json.dumps(good(pid)).encode())] * 2,
            "purchase object (got 2)",
        ),
        Case("arguments", "three arguments", lambda pid: [(JSON, b"1")] * 3, "(got 3)"),
        # --- field rules derived from downstream limits
        field_case("field rules", "tenant trailing hyphen", "tenant_id", tenant_id="h3a04-"),
        field_case("field rules", "tenant upper case", "tenant_id", tenant_id="Acme"),
        field_case("field rules", "tenant 64 chars", "tenant_id", tenant_id="a" * 64),
        field_case("field rules", "tenant path", "tenant_id", tenant_id="../etc"),
        field_case("field rules", "tenant empty", "tenant_id", tenant_id=""),
        field_case("field rules", "purchase id slash", "purchase_id", purchase_id="a/b"),
        field_case(
            "field rules", "domain 253", "at most", domain=("a" * 62 + ".") * 3 + "a" * 61 + ".co"
        ),
        field_case(
            "field rules", "domain 81", "at most 80", domain="a" * 60 + "." + "b" * 17 + ".com"
        ),
        field_case("field rules", "domain one label", "2 labels", domain="localhost"),
        field_case("field rules", "domain numeric tld", "top-level", domain="acme.123"),
        field_case("field rules", "domain 1-char tld", "top-level", domain="acme.b"),
        field_case("field rules", "domain upper", "lowercase", domain="Acme.example"),
        field_case("field rules", "domain unicode", "IDNA", domain="bücher.example"),
        field_case("field rules", "domain bad punycode", "punycode", domain="xn--zz.example"),
        field_case("field rules", "domain ab--", "positions 3-4", domain="ab--cd.example"),
        field_case("field rules", "domain underscore", "label", domain="a_b.example"),
        field_case("field rules", "domain empty label", "label", domain="a..example"),
        field_case("field rules", "domain trailing dot", "label", domain="acme.example."),
        # The catalog is the worker's configuration: the run refuses it (resolve_plan).
        field_case("field rules", "plan unknown", "catalog", local=False, plan="platinum"),
        field_case("field rules", "requested_by blank", "blank", requested_by="   "),
        field_case("field rules", "requested_by control", "control", requested_by="a\x07b"),
        field_case("field rules", "requested_by long", "1-200", requested_by="x" * 201),
        # --- SSRF: every spelling aims inside; the loopback listener must hear nothing
        *(field_case("ssrf", name, expect, notify_url=url) for name, expect, url in ssrf_urls(p)),
        # Allowed by the contract, refused by the worker's policy before anything is bought.
        field_case(
            "ssrf",
            "http to a public host",
            "must use https",
            local=False,
            notify_url="http://hooks.example.com/ready",
        ),
        field_case(
            "ssrf",
            "sink name, other port",
            "must use https",
            local=False,
            notify_url=f"http://{NOTIFY_SINK_HOST}:{p}/",
        ),
    ]
    return cases


def ssrf_urls(p: int) -> list[tuple[str, str, str]]:
    """(case, expected rule, notify_url): each aims inside, most at the listener's port p."""
    return [
        ("loopback", "loopback", f"http://127.0.0.1:{p}/x"),
        ("loopback https", "loopback", f"https://127.0.0.1:{p}/"),
        ("localhost", "localhost", f"http://localhost:{p}/"),
        ("sub.localhost", "local", f"http://a.localhost:{p}/"),
        ("ipv6 loopback", "loopback", f"http://[::1]:{p}/"),
        ("integer ipv4", "DNS name", f"http://2130706433:{p}/"),
        ("hex ipv4", "DNS name", f"http://0x7f000001:{p}/"),
        ("octal ipv4", "IPv4", f"http://0177.0.0.1:{p}/"),
        ("short ipv4", "top-level", f"http://127.1:{p}/"),
        ("mapped ipv6", "loopback", f"http://[::ffff:127.0.0.1]:{p}/"),
        ("compat ipv6", "loopback", f"http://[::127.0.0.1]:{p}/"),
        ("nat64", "loopback", f"http://[64:ff9b::7f00:1]:{p}/"),
        ("6to4", "loopback", f"http://[2002:7f00:1::]:{p}/"),
        ("double colon port", "host or port", f"http://127.0.0.1::{p}/"),
        ("unspecified", "unspecified", f"http://0.0.0.0:{p}/"),
        ("metadata ip", "link-local", "http://169.254.169.254/latest"),
        ("metadata name", "metadata", "http://metadata.google.internal/"),
        ("metadata.goog", "metadata", "https://metadata.goog/"),
        ("private 10/8", "private", "https://10.0.0.1/"),
        ("private 192.168", "private", "https://192.168.1.1/"),
        ("cgnat", "CGNAT", "https://100.64.0.1/"),
        ("ula", "unique-local", "https://[fd00::1]/"),
        ("link-local v6", "link-local", "https://[fe80::1]/"),
        ("multicast", "multicast", "https://224.0.0.1/"),
        ("reserved", "reserved", "https://240.0.0.1/"),
        ("credentials", "credentials", f"http://u:p@127.0.0.1:{p}/"),
        ("ftp scheme", "https://", f"ftp://127.0.0.1:{p}/"),
        ("file scheme", "https://", "file:///etc/passwd"),
        ("port 0", "port", "https://hooks.example.com:0/"),
        ("port 70000", "port", "https://hooks.example.com:70000/"),
        ("space", "RFC 3986", "https://hooks.example.com/a b"),
        ("fragment", "RFC 3986", "https://hooks.example.com/#x"),
        ("backslash", "RFC 3986", "https://hooks.example.com\\@127.0.0.1/"),
    ]


UNKNOWN_TYPE = "ProvisionMailTenantt"


class Listener:
    """A real TCP listener on loopback that counts every connection it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    spy = Listener()
    server = await asyncio.start_server(spy._accept, "127.0.0.1", spy.port)
    async with server:
        yield spy


@dataclass
class Snapshot:
    servers: int
    vault_records: set[str]
    audit_rows: int


async def snapshot(info: StackInfo, cloud: CloudControl, client: Client) -> Snapshot:
    root = hvac.Client(
        url=info.vault_addr, token=(info.state_dir / "vault" / "root.token").read_text().strip()
    )
    try:
        keys = set(root.secrets.kv.v2.list_secrets(path="", mount_point="smtp")["data"]["keys"])
    except hvac.exceptions.InvalidPath:
        keys = set()
    return Snapshot(
        servers=len(cloud.servers()),
        vault_records=keys,
        audit_rows=len(SqliteAuditStore(info.audit_db).rows()),
    )


async def claim_taken(client: Client, tenant_id: str) -> bool:
    try:
        await client.get_workflow_handle(tenant_claim_id(tenant_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def expect_refused(client: Client, workflow_id: str, case: Case) -> float:
    """Waits for the run's end and checks its error; returns how long it ran (seconds)."""
    handle = client.get_workflow_handle(workflow_id)
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), (case.name, cause)
    assert cause.type == case.error_type, (case.name, cause.type, cause.message)
    assert cause.non_retryable, case.name
    assert case.expect in cause.message, (case.name, cause.message)
    description = await handle.describe()
    assert description.close_time is not None
    return (description.close_time - description.start_time).total_seconds()


async def run_limited(jobs: list[Any], limit: int = 4) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def via_cli(
    info: StackInfo,
    workflow_type: str,
    workflow_id: str,
    args: list[tuple[bytes, bytes]],
    text: bool,
) -> str | None:
    """One start with the `temporal` CLI: raw JSON text as a back end in any language
    would send it, or raw bytes with their encoding; None if the CLI itself refused."""
    command = info.temporal_command("workflow", "start", "--type", workflow_type)
    command += ["--task-queue", "mail-provisioning", "--workflow-id", workflow_id]
    if len(args) == 1 and not text:
        command += ["--input-base64", "--input", base64.b64encode(args[0][1]).decode()]
        command += ["--input-meta", f"encoding={args[0][0].decode()}"]
    else:
        for _, data in args:
            command += ["--input", data.decode()]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0 and b"is not valid JSON" in output:
        return None  # the CLI itself refuses to send bytes that are not JSON
    assert process.returncode == 0, output.decode()
    return workflow_id


def starter_main_in_this_process(command: list[str]) -> tuple[int, str]:
    """`python starter.py ...` run as starter.main in this thread: its exit code and
    stderr. Only for a start it refuses before connecting (it runs asyncio.run)."""
    assert command[1].endswith("starter.py"), command
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = starter.main(command[2:])
        except SystemExit as exit_:  # argparse's own refusals
            code = int(exit_.code or 0)
    return code, stderr.getvalue()


async def test_hostile_corpus_is_refused_on_every_channel_and_nothing_is_created(
    client: Client,
    info: StackInfo,
    cloud: CloudControl,
    listener: Listener,
    tmp_path: Path,
) -> None:
    cases = corpus(listener.port)
    assert len(cases) >= 80
    before = await snapshot(info, cloud, client)
    batch = uuid.uuid4().hex[:6]

    def purchase_id(index: int, channel: str) -> str:
        return f"hostile-{batch}-{channel}-{index}"

    # 1. The temporal CLI: raw JSON text, or raw bytes with their encoding.
    cli_ids = await run_limited(
        [
            via_cli(
                info,
                WORKFLOW_TYPE,
                workflow_id_for(purchase_id(i, "cli")),
                case.payloads(purchase_id(i, "cli")),
                case.json_text,
            )
            for i, case in enumerate(cases)
        ]
    )
    # 2. A Python client sending raw payloads (through the codec, as the SDKs do).
    python_ids = []
    for i, case in enumerate(cases):
        pid = purchase_id(i, "py")
        handle = await client.start_workflow(
            WORKFLOW_TYPE,
            args=[
                RawValue(Payload(metadata={"encoding": e}, data=d)) for e, d in case.payloads(pid)
            ],
            id=workflow_id_for(pid),
            task_queue="mail-provisioning",
        )
        python_ids.append(handle.id)
    refused_by_cli = [case for wid, case in zip(cli_ids, cases, strict=True) if wid is None]
    durations: list[float] = []
    for ids in (cli_ids, python_ids):
        runs = zip(ids, cases, strict=True)
        durations += await run_limited(
            [expect_refused(client, wid, case) for wid, case in runs if wid], 8
        )

    # 3. starter.py with the case as a purchase file: as a program for the cases the
    # server refuses and for the first local refusal of each category; the other local
    # refusals (which end before any connection) through the same main() in this process,
    # which spares ~75 interpreter starts (0.5 s of CPU each) and checks the same code.
    file_cases = [
        (i, c)
        for i, c in enumerate(cases)
        if len(c.payloads("x")) == 1 and c.payloads("x")[0][0] == JSON
    ]
    as_program: set[int] = set()
    for i, case in file_cases:
        if not case.local or case.category not in {cases[j].category for j in as_program}:
            as_program.add(i)

    def command(i: int, case: Case) -> list[str]:
        path = tmp_path / f"{i}.json"
        path.write_bytes(case.payloads(purchase_id(i, "starter"))[0][1])
        return info.starter_command("start", "--file", str(path), "--wait")

    async def via_starter(i: int, case: Case) -> None:
        process = await asyncio.create_subprocess_exec(
            *command(i, case), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
        assert process.returncode == (2 if case.local else 1), (case.name, stderr.decode())
        assert case.expect in stderr.decode(), (case.name, stderr.decode())

    def via_starter_main(local_cases: list[tuple[int, Case]]) -> None:
        for i, case in local_cases:
            code, stderr = starter_main_in_this_process(command(i, case))
            assert code == 2, (case.name, stderr)
            assert case.expect in stderr, (case.name, stderr)

    await run_limited([via_starter(i, c) for i, c in file_cases if i in as_program], 4)
    await asyncio.to_thread(via_starter_main, [ic for ic in file_cases if ic[0] not in as_program])

    after = await snapshot(info, cloud, client)
    # Servers of earlier tests may still be going away; none may have been added.
    assert after.servers <= before.servers
    assert not [
        server
        for server in cloud.servers()
        if str(server["labels"].get("purchase", "")).startswith(f"hostile-{batch}")
    ]
    assert (after.vault_records, after.audit_rows) == (before.vault_records, before.audit_rows)
    for channel in ("cli", "py", "starter"):
        for i in range(len(cases)):
            assert not await claim_taken(client, good(purchase_id(i, channel))["tenant_id"])
    assert listener.connections == 0
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.category] = counts.get(case.category, 0) + 1
    print(
        f"hostile corpus: {len(cases)} cases {counts}; starter got {len(file_cases)} "
        f"({len(as_program)} as a program); "
        f"the CLI refused to send {[c.name for c in refused_by_cli]}; {len(durations)} runs "
        f"lasted {min(durations):.3f}-{max(durations):.3f} s (start to close, server clock)"
    )


async def test_undecodable_ciphertext_and_unknown_type_end_at_once(
    client: Client, info: StackInfo
) -> None:
    # A client whose key ring the worker does not know, and one with a forged key.
    foreign = await Client.connect(
        info.temporal_address, data_converter=data_converter(KeyRing.generate("stranger"))
    )
    forged = await Client.connect(
        info.temporal_address,
        data_converter=data_converter(
            KeyRing.generate(KeyRing.from_file(info.codec_keys_file).current_id)
        ),
    )
    unknown_key = Case("undecodable", "unknown key", lambda pid: [], "unknown key id 'stranger'")
    bad_tag = Case("undecodable", "forged key", lambda pid: [], "does not authenticate")
    for sender, case in ((foreign, unknown_key), (forged, bad_tag)):
        pid = f"hostile-codec-{uuid.uuid4().hex[:8]}"
        handle = await sender.start_workflow(
            WORKFLOW_TYPE, good(pid), id=workflow_id_for(pid), task_queue="mail-provisioning"
        )
        await expect_refused(client, handle.id, case)
    typo = Case(
        "type", "unknown workflow type", lambda pid: [], UNKNOWN_TYPE, "UnknownWorkflowType"
    )
    handle = await client.start_workflow(
        UNKNOWN_TYPE, good("x"), id=f"typo-{uuid.uuid4().hex[:8]}", task_queue="mail-provisioning"
    )
    await expect_refused(client, handle.id, typo)


async def test_one_mail_server_per_tenant_even_when_starts_race(
    info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    keyring = KeyRing.from_file(info.codec_keys_file)
    clients = [
        await Client.connect(info.temporal_address, data_converter=data_converter(keyring))
        for _ in range(2)
    ]
    racers = [dict(purchase, purchase_id=f"{purchase['purchase_id']}-{n}") for n in (1, 2)]
    handles = await asyncio.gather(
        *(
            c.start_workflow(
                WORKFLOW_TYPE,
                raw,
                id=workflow_id_for(raw["purchase_id"]),
                task_queue="mail-provisioning",
            )
            for c, raw in zip(clients, racers, strict=True)
        )
    )
    outcomes = await asyncio.gather(
        *(asyncio.wait_for(h.result(), 600) for h in handles), return_exceptions=True
    )
    failures = [o for o in outcomes if isinstance(o, WorkflowFailureError)]
    assert len(failures) == 1 and len(outcomes) - len(failures) == 1, outcomes
    cause = failures[0].cause
    assert isinstance(cause, ApplicationError) and cause.type == "TenantAlreadyProvisioned"
    assert purchase["tenant_id"] in cause.message and "nothing was bought" in cause.message
    assert len(cloud.servers(label_selector=f"tenant={purchase['tenant_id']}")) == 1

    # A later purchase for the tenant that now has its server is refused too.
    later = dict(purchase, purchase_id=f"{purchase['purchase_id']}-3")
    handle = await clients[0].start_workflow(
        WORKFLOW_TYPE,
        later,
        id=workflow_id_for(later["purchase_id"]),
        task_queue="mail-provisioning",
    )
    refused = Case(
        "tenant",
        "later purchase",
        lambda pid: [],
        "already has a mail server",
        "TenantAlreadyProvisioned",
    )
    await expect_refused(clients[0], handle.id, refused)
    assert len(cloud.servers(label_selector=f"tenant={purchase['tenant_id']}")) == 1


# ------------------------------------------------------------------ the other doors


def as_case(start: RawStart, error_type: str = "InvalidRotationRequest") -> Case:
    payloads = list(start.payloads)
    return Case("rotation", start.name, lambda pid: payloads, start.expect, error_type)


async def workflow_task_failures(client: Client, workflow_id: str) -> int:
    """Failed workflow tasks in the run's history: each is retried for ever (item 6)."""
    handle = client.get_workflow_handle(workflow_id)
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    return len([e async for e in handle.fetch_history_events() if e.event_type == failed])


async def schedule_ids(client: Client) -> set[str]:
    return {listed.id async for listed in await client.list_schedules()}


async def test_hostile_rotation_starts_end_at_once_and_create_nothing(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    """RotateSmtpCredentials: every start a client can make that is not a tenant id of
    ours is refused at once, and none reads, writes or schedules anything (issue 17
    items 2 and 6). The hand-made target aimed at another tenant's server is one case."""
    batch = uuid.uuid4().hex[:6]
    cases = [as_case(start) for start in ROTATION_CORPUS]
    cases.append(
        Case(
            "rotation",
            "tenant we never served",
            lambda pid: [(JSON, json.dumps({"tenant_id": f"never-{batch}"}).encode())],
            f"nothing to rotate for tenant never-{batch}",
            "TenantUnknown",
        )
    )
    before = await snapshot(info, cloud, client)
    schedules_before = await schedule_ids(client)

    started: list[tuple[str, Case]] = []
    for i, case in enumerate(cases):
        handle = await client.start_workflow(
            ROTATION_WORKFLOW_TYPE,
            args=[
                RawValue(Payload(metadata={"encoding": e}, data=d)) for e, d in case.payloads("")
            ],
            id=f"rotate-hostile-{batch}-py-{i}",
            task_queue="mail-provisioning",
        )
        started.append((handle.id, case))
    text_cases = [(i, c) for i, c in enumerate(cases) if c.payloads("") and c.json_text]
    for i, case in text_cases:
        workflow_id = f"rotate-hostile-{batch}-cli-{i}"
        if await via_cli(info, ROTATION_WORKFLOW_TYPE, workflow_id, case.payloads(""), True):
            started.append((workflow_id, case))

    durations = await run_limited([expect_refused(client, wid, case) for wid, case in started], 8)
    for workflow_id, case in started:
        assert await workflow_task_failures(client, workflow_id) == 0, case.name

    after = await snapshot(info, cloud, client)
    assert after.servers <= before.servers
    assert (after.vault_records, after.audit_rows) == (before.vault_records, before.audit_rows)
    assert await schedule_ids(client) <= schedules_before
    print(
        f"hostile rotation starts: {len(started)} runs ({len(text_cases)} by the CLI) lasted "
        f"{min(durations):.3f}-{max(durations):.3f} s (start to close, server clock)"
    )


async def test_hostile_deprovision_starts_end_at_once_and_remove_nothing(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    """DeprovisionMailTenant: every malformed start ends at once naming the field, and a
    start whose id is not `deprovision-{its tenant}` too, without one failed workflow task;
    a tenant we never served completes as `nothing_found`; nothing is removed or written."""
    batch = uuid.uuid4().hex[:6]
    cases = [as_case(start, "InvalidDeprovisionRequest") for start in DEPROVISION_CORPUS]
    cases.append(
        Case(
            "deprovision",
            "another tenant's id",
            lambda pid: [(JSON, b'{"tenant_id": "acme", "requested_by": "x"}')],
            "must match the workflow id",
            "InvalidDeprovisionRequest",
        )
    )
    before = await snapshot(info, cloud, client)
    servers_before = {server["id"] for server in cloud.servers()}
    schedules_before = await schedule_ids(client)
    started: list[tuple[str, Case]] = []
    for i, case in enumerate(cases):
        handle = await client.start_workflow(
            DEPROVISION_WORKFLOW_TYPE,
            args=[
                RawValue(Payload(metadata={"encoding": e}, data=d)) for e, d in case.payloads("")
            ],
            id=f"deprovision-hostile-{batch}-{i}",
            task_queue=QUEUE,
        )
        started.append((handle.id, case))
    await run_limited([expect_refused(client, wid, case) for wid, case in started], 8)
    for workflow_id, case in started:
        assert await workflow_task_failures(client, workflow_id) == 0, case.name

    never = f"never-{batch}"
    unknown = await client.execute_workflow(
        DEPROVISION_WORKFLOW_TYPE,
        {"tenant_id": never, "requested_by": "hostile"},
        id=deprovision_workflow_id(never),
        task_queue=QUEUE,
    )
    assert unknown["outcome"] == "nothing_found"

    after = await snapshot(info, cloud, client)
    assert servers_before <= {server["id"] for server in cloud.servers()}
    assert before.vault_records <= after.vault_records
    assert after.audit_rows == before.audit_rows
    assert schedules_before <= await schedule_ids(client)


def hostile_payloads() -> dict[str, list[Payload]]:
    """Signal and query arguments a client can send, by name (none, several, not JSON...)."""

    def one(encoding: bytes, data: bytes) -> list[Payload]:
        return [Payload(metadata={"encoding": encoding}, data=data)]

    return {
        "none": [],
        "string": one(JSON, b'"deleted"'),
        "two": one(JSON, b'"a"') * 2,
        "binary": one(b"binary/plain", b"\x00\xff"),
        "protobuf": one(b"json/protobuf", b"\x08\x01"),
        "undecodable": one(b"binary/x-mailprov-undecodable", b"unknown key id 'x'"),
        "not json": one(JSON, b"{not json"),
        "deep": one(JSON, b"[" * 5000 + b"]" * 5000),
        "256 KiB": one(JSON, json.dumps("x" * (1 << 18)).encode()),
    }


# Signal and query names a client can try on any run: ours, the SDK's, made up.
HOSTILE_SIGNALS = (
    "release",
    "provisioned",
    DNS_PUBLISHED_SIGNAL,
    "status",
    "cancel",
    "x" * 300,
)
HOSTILE_QUERIES = ("status", "claim", "statuss", "x" * 300)


async def hostile_queries(client: Client, workflow_id: str) -> dict[str, int]:
    """Every hostile query on the run: each answers or is refused, none hangs or breaks it.

    Returns how many were refused (WorkflowQueryFailedError) and how many answered."""
    handle = client.get_workflow_handle(workflow_id)
    outcome = {"refused": 0, "answered": 0}
    for name in HOSTILE_QUERIES:
        for payloads in hostile_payloads().values():
            try:
                await asyncio.wait_for(
                    handle.query(name, args=[RawValue(p) for p in payloads]), RUN_TIMEOUT
                )
            except WorkflowQueryFailedError:
                outcome["refused"] += 1
            else:
                outcome["answered"] += 1
    return outcome


async def send_hostile_signals(client: Client, workflow_id: str) -> int:
    handle = client.get_workflow_handle(workflow_id)
    sent = 0
    for name in HOSTILE_SIGNALS:
        for payloads in hostile_payloads().values():
            await handle.signal(name, args=[RawValue(p) for p in payloads])
            sent += 1
    return sent


async def test_hostile_signals_and_queries_leave_purchases_and_rotations_unharmed(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    """A running purchase signalled with every hostile name and payload still completes,
    without one failed workflow task; queries with bad names or arguments are refused
    or answered, never hang; a rotation started with a hostile signal (signal-with-start)
    is still refused at once; nothing is created beyond the one good purchase."""
    batch = uuid.uuid4().hex[:6]
    before = await snapshot(info, cloud, client)
    schedules_before = await schedule_ids(client)

    handle = await client.start_workflow(
        WORKFLOW_TYPE, purchase, id=workflow_id_for(purchase["purchase_id"]), task_queue=QUEUE
    )
    sent = await send_hostile_signals(client, handle.id)
    result = await asyncio.wait_for(handle.result(), 600)
    assert result["tenant_id"] == purchase["tenant_id"]
    assert await workflow_task_failures(client, handle.id) == 0
    signalled = [
        e
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert len(signalled) == sent  # every hostile signal reached the run
    purchase_queries = await hostile_queries(client, handle.id)
    assert purchase_queries["refused"] > 0

    # Signal-with-start: the hostile signal arrives in the rotation's first workflow task.
    rotations = []
    for i, (name, payloads) in enumerate(hostile_payloads().items()):
        started = await client.start_workflow(
            ROTATION_WORKFLOW_TYPE,
            {"tenant_id": f"never-{batch}"},
            id=f"rotate-signalled-{batch}-{i}",
            task_queue=QUEUE,
            start_signal=HOSTILE_SIGNALS[i % len(HOSTILE_SIGNALS)],
            start_signal_args=[RawValue(p) for p in payloads],
        )
        rotations.append(started.id)
        unknown = Case("rotation", name, lambda pid: [], f"never-{batch}", "TenantUnknown")
        await expect_refused(client, started.id, unknown)
        assert await workflow_task_failures(client, started.id) == 0, name
    rotation_queries = await hostile_queries(client, rotations[0])
    assert rotation_queries["refused"] > 0

    after = await snapshot(info, cloud, client)
    assert after.servers <= before.servers + 1
    # KV v2 lists a tenant as its folder, "{tenant}/".
    assert after.vault_records - before.vault_records <= {purchase["tenant_id"] + "/"}
    own_rows = len(audit_rows_of(info, handle.id))
    assert after.audit_rows == before.audit_rows + own_rows
    assert await schedule_ids(client) - schedules_before <= {
        rotation_schedule_id(purchase["tenant_id"])
    }
    print(
        f"hostile signals: {sent} on a running purchase; queries on the purchase "
        f"{purchase_queries}, on a rotation {rotation_queries}"
    )


def audit_rows_of(info: StackInfo, workflow_id: str) -> list[Any]:
    return [
        row
        for row in SqliteAuditStore(info.audit_db).rows()
        if row.event_key.startswith(workflow_id)
    ]


def one_arg(data: bytes, encoding: bytes = JSON) -> list[tuple[bytes, bytes]]:
    return [(encoding, data)]


# Starts of the reconciler a client can make that are not a request: each must end at once
# having looked nothing up. (No argument and {} are the operator's default run, valid.)
RECONCILE_CORPUS = [
    RawStart("string", one_arg(b'"all"'), "object"),
    RawStart("array", one_arg(b"[3600]"), "object"),
    RawStart("two arguments", one_arg(b"{}") * 2, "argument"),
    RawStart("unknown field", one_arg(b'{"grace_seconds": 0, "delete": "all"}'), "delete"),
    RawStart("negative grace", one_arg(b'{"grace_seconds": -1}'), "grace_seconds"),
    RawStart("grace string", one_arg(b'{"grace_seconds": "0"}'), "grace_seconds"),
    RawStart("dry_run string", one_arg(b'{"dry_run": "no"}'), "dry_run"),
    RawStart("binary", one_arg(b"\x00\xff", b"binary/plain"), "encoding"),
    RawStart("undecodable", one_arg(b"unknown key id 'x'", UNDECODABLE), "key"),
    RawStart("deep", one_arg(b"[" * 5000 + b"]" * 5000), "nest"),
    RawStart("oversized", one_arg(json.dumps({"a": "x" * MAX_INPUT_BYTES}).encode()), "at most"),
]
# Arguments no workflow type takes: for ChangeMailPlan each is refused naming the problem.
ANY_ARGUMENTS = [
    RawStart("no argument", [], "(got 0)"),
    RawStart("string", one_arg(b'"starter"'), "got a string"),
    RawStart("two arguments", one_arg(b"{}") * 2, "(got 2)"),
    RawStart("binary", one_arg(b"\x00\xff", b"binary/plain"), "encoding"),
    RawStart("undecodable", one_arg(b"unknown key id 'x'", UNDECODABLE), "unknown key"),
    RawStart("not json", one_arg(b"{plan"), "not valid JSON"),
    RawStart("deep", one_arg(b"[" * 5000 + b"]" * 5000), "nest"),
    RawStart("oversized", one_arg(json.dumps({"a": "x" * MAX_INPUT_BYTES}).encode()), "at most"),
]
PLAN_CHANGE_CORPUS = [
    *ANY_ARGUMENTS,
    RawStart("empty object", one_arg(b"{}"), "is required"),
    RawStart("unknown field", one_arg(b'{"server_id": 1}'), "'server_id'"),
]
# Starts of a claim on a fresh tenant id: a claim nobody's admission took must not hold.
CLAIM_CORPUS = [
    RawStart("no argument", [], ""),
    RawStart("a holder named", one_arg(b'"purchase-victim"'), ""),
    RawStart("two arguments", one_arg(b'"a"') * 2, ""),
    RawStart("binary", one_arg(b"\x00\xff", b"binary/plain"), ""),
    RawStart("undecodable", one_arg(b"unknown key id 'x'", UNDECODABLE), ""),
    RawStart("deep", one_arg(b"[" * 5000 + b"]" * 5000), ""),
]


async def ends_without_a_failed_task(client: Client, workflow_id: str) -> str:
    """Waits for the run to close; returns its status. It must close, whatever it was sent."""
    handle = client.get_workflow_handle(workflow_id)
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
    description = await handle.describe()
    assert description.status is not None
    assert await workflow_task_failures(client, workflow_id) == 0, workflow_id
    return description.status.name


async def activities_scheduled(client: Client, workflow_id: str) -> int:
    scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    handle = client.get_workflow_handle(workflow_id)
    return len([e async for e in handle.fetch_history_events() if e.event_type == scheduled])


async def test_hostile_starts_of_every_other_workflow_type_end_quickly_creating_nothing(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    """ReconcileOrphans, ChangeMailPlan and ActivateMailDomain refuse every start that is
    not a request before looking anything up; a TenantClaim started by a client on a fresh
    tenant id ends instead of holding the tenant; CheckWorld, read-only, ends whatever it
    is sent (issue 17 items 5 and 6). No run is left retrying a failed workflow task."""
    batch = uuid.uuid4().hex[:6]
    before = await snapshot(info, cloud, client)
    schedules_before = await schedule_ids(client)

    def raw(start: RawStart) -> list[RawValue]:
        return [RawValue(Payload(metadata={"encoding": e}, data=d)) for e, d in start.payloads]

    reconciles = []
    for i, start in enumerate(RECONCILE_CORPUS):
        handle = await client.start_workflow(
            RECONCILE_WORKFLOW,
            args=raw(start),
            id=f"reconcile-hostile-{batch}-{i}",
            task_queue=QUEUE,
        )
        reconciles.append((handle.id, start))
    claims = []
    for i, start in enumerate(CLAIM_CORPUS):
        tenant = f"hostile-claim-{batch}-{i}"
        handle = await client.start_workflow(
            TENANT_CLAIM_TYPE, args=raw(start), id=tenant_claim_id(tenant), task_queue=QUEUE
        )
        claims.append((handle.id, start))
    # A squatter naming a holder in the memo, as admission does: a purchase that never ran.
    forged = await client.start_workflow(
        TENANT_CLAIM_TYPE,
        id=tenant_claim_id(f"hostile-claim-{batch}-memo"),
        task_queue=QUEUE,
        memo={HOLDER_MEMO: workflow_id_for(f"never-{batch}")},
    )
    claims.append((forged.id, RawStart("forged holder memo", [], "")))

    plan_changes = []
    for i, start in enumerate(PLAN_CHANGE_CORPUS):
        handle = await client.start_workflow(
            PLAN_CHANGE_WORKFLOW_TYPE,
            args=raw(start),
            id=plan_change_workflow_id(f"hostile-{batch}", f"r{i}"),
            task_queue=QUEUE,
        )
        plan_changes.append((handle.id, start))
    activations = []
    for i, start in enumerate(ANY_ARGUMENTS):
        handle = await client.start_workflow(
            ACTIVATION_WORKFLOW_TYPE,
            args=raw(start),
            id=activation_workflow_id(f"hostile-{batch}-{i}"),
            task_queue=QUEUE,
        )
        activations.append((handle.id, start))
    world_checks = []
    for i, start in enumerate(ANY_ARGUMENTS):
        handle = await client.start_workflow(
            WORLD_CHECK_WORKFLOW,
            args=raw(start),
            id=f"check-world-hostile-{batch}-{i}",
            task_queue=QUEUE,
        )
        world_checks.append((handle.id, start))

    for workflow_id, start in plan_changes:
        refused = Case(
            "plan change", start.name, lambda pid: [], start.expect, "InvalidPlanChangeRequest"
        )
        await expect_refused(client, workflow_id, refused)
        assert await workflow_task_failures(client, workflow_id) == 0, start.name
        assert await activities_scheduled(client, workflow_id) == 0, start.name
    for workflow_id, start in activations:
        refused = Case(
            "activation", start.name, lambda pid: [], start.expect, "InvalidActivationRequest"
        )
        await expect_refused(client, workflow_id, refused)
        assert await workflow_task_failures(client, workflow_id) == 0, start.name
        assert await activities_scheduled(client, workflow_id) == 0, start.name
    for workflow_id, start in world_checks:
        # Read-only and takes no argument: it may run, but must end, whatever it was sent.
        status = await ends_without_a_failed_task(client, workflow_id)
        assert status in ("COMPLETED", "FAILED"), (start.name, status)
    for workflow_id, start in reconciles:
        status = await ends_without_a_failed_task(client, workflow_id)
        assert status == "FAILED", (start.name, status)
        assert await activities_scheduled(client, workflow_id) == 0, start.name
    for workflow_id, start in claims:
        status = await ends_without_a_failed_task(client, workflow_id)
        assert status != "RUNNING", (start.name, status)

    after = await snapshot(info, cloud, client)
    assert after.servers <= before.servers
    assert (after.vault_records, after.audit_rows) == (before.vault_records, before.audit_rows)
    assert await schedule_ids(client) <= schedules_before


# Debian 12, a system image of the local cloud's catalog (devstack/hetzner.py IMAGES;
# Hetzner's id): no timer may ever delete it.
SYSTEM_IMAGE_ID = hetzner.IMAGES["debian-12"]["id"]


async def test_hostile_expiry_starts_end_at_once_and_delete_no_image(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    """ExpireFinalSnapshot, the door a deprovisioning's timer leaves open: an id that
    names no image ends InvalidExpiryRequest before any look; any argument is ignored
    and an image that does not exist ends the run `gone` with no audit row; a real
    image that is not a final snapshot of ours (a system image) is refused
    NotAFinalSnapshot and still exists; two arguments end the run at once (TypeError,
    the SDK's, a failure type of the workflow's) before any look. No workflow task
    fails; nothing is deleted."""
    batch = uuid.uuid4().int % 10**9 + 10**9  # an image id the cloud never handed out
    before = await snapshot(info, cloud, client)
    one_or_none = [start for start in ANY_ARGUMENTS if len(start.payloads) <= 1]
    refused = []
    for i, workflow_id in enumerate(HOSTILE_EXPIRY_IDS):
        start = one_or_none[i % len(one_or_none)]
        # The ids are the workflow tests' corpus, verbatim (a suffix would change what is
        # tested); each run ends at once, so a later session may start the same id again.
        handle = await client.start_workflow(
            EXPIRY_WORKFLOW_TYPE,
            args=[RawValue(Payload(metadata={"encoding": e}, data=d)) for e, d in start.payloads],
            id=workflow_id,
            task_queue=QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
        refused.append(handle.id)
    for workflow_id in refused:
        case = Case(
            "expiry", workflow_id, lambda pid: [], "workflow id must be", "InvalidExpiryRequest"
        )
        await expect_refused(client, workflow_id, case)
        assert await workflow_task_failures(client, workflow_id) == 0, workflow_id
        assert await activities_scheduled(client, workflow_id) == 0, workflow_id

    missing = []
    for i, start in enumerate(ANY_ARGUMENTS):
        handle = await client.start_workflow(
            EXPIRY_WORKFLOW_TYPE,
            args=[RawValue(Payload(metadata={"encoding": e}, data=d)) for e, d in start.payloads],
            id=expiry_workflow_id(batch + i),
            task_queue=QUEUE,
        )
        missing.append((handle, start))
    for handle, start in missing:
        if len(start.payloads) > 1:
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
            cause = failure.value.cause
            assert isinstance(cause, ApplicationError) and cause.type == "TypeError", cause
            assert "positional argument" in cause.message, cause.message
            assert await activities_scheduled(client, handle.id) == 0, start.name
        else:
            outcome = await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
            assert outcome["state"] == "gone", (start.name, outcome)
        assert await workflow_task_failures(client, handle.id) == 0, start.name

    system = await client.start_workflow(
        EXPIRY_WORKFLOW_TYPE,
        id=expiry_workflow_id(SYSTEM_IMAGE_ID),
        task_queue=QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    case = Case(
        "expiry", "system image", lambda pid: [], "not a final snapshot", NOT_A_FINAL_SNAPSHOT
    )
    await expect_refused(client, system.id, case)
    assert await workflow_task_failures(client, system.id) == 0
    cloud.api.get(f"images/{SYSTEM_IMAGE_ID}").raise_for_status()

    after = await snapshot(info, cloud, client)
    assert (after.servers, after.vault_records, after.audit_rows) == (
        before.servers,
        before.vault_records,
        before.audit_rows,
    )


async def settled(client: Client, workflow_id: str, signals: int) -> None:
    """Until the run has seen `signals` signals and has no workflow task or activity pending."""
    handle = client.get_workflow_handle(workflow_id)
    signalled = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    for _ in range(RUN_TIMEOUT * 5):
        description = (await handle.describe()).raw_description
        seen = [e async for e in handle.fetch_history_events() if e.event_type == signalled]
        idle = not description.HasField("pending_workflow_task") and not list(
            description.pending_activities
        )
        if len(seen) == signals and idle:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} did not settle after {signals} signals")


async def test_hostile_signals_and_queries_leave_a_completed_purchases_claim_held(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any]
) -> None:
    """The claim of a tenant that has its server: `release` from any client (with a reason
    or with junk), `provisioned` with arguments, made-up names, bad payloads: the claim
    stays held, no workflow task fails, queries are answered or refused (issue 17 item 5)."""
    handle = await client.start_workflow(
        WORKFLOW_TYPE, purchase, id=workflow_id_for(purchase["purchase_id"]), task_queue=QUEUE
    )
    await asyncio.wait_for(handle.result(), 600)
    claim_id = tenant_claim_id(purchase["tenant_id"])
    before = await snapshot(info, cloud, client)

    sent = await send_hostile_signals(client, claim_id)
    await settled(client, claim_id, sent)

    claim = client.get_workflow_handle(claim_id)
    assert (await claim.describe()).status == WorkflowExecutionStatus.RUNNING
    assert await workflow_task_failures(client, claim_id) == 0
    state = await claim.query("claim")
    assert state["holder"] == handle.id and state["state"] in ("held", "provisioned"), state
    outcome = await hostile_queries(client, claim_id)
    assert outcome["refused"] > 0
    assert len(cloud.servers(label_selector=f"tenant={purchase['tenant_id']}")) == 1
    after = await snapshot(info, cloud, client)
    assert (after.servers, after.vault_records, after.audit_rows) == (
        before.servers,
        before.vault_records,
        before.audit_rows,
    )
