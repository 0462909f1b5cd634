"""Tenant claim and raw start arguments on the time-skipping server (scripted activities).

RotateSmtpCredentials gets the corpus any client of the namespace can send (no argument,
several, the wrong JSON, bytes that are not JSON, an encoding we do not read, a hand-made
target): every run must end at once with InvalidRotationRequest naming the field, after
one workflow task and without a failed one (a failed workflow task is retried for ever:
issue 17 item 6), and without a single activity. The same corpus runs against the real
stack in tests/e2e/test_hostile_starts.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflow.sandbox import restricted_sandbox
from tests.workflow.test_provision_workflow import Harness, ScriptedWorld, purchase
from tests.workflow.test_rotation_workflow import RotationWorld
from workflows.contracts import workflow_id_for
from workflows.dispatch import ProvisionMailTenant
from workflows.input_rules import MAX_INPUT_BYTES, UNDECODABLE_ENCODING
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE


@pytest.fixture
def harness(time_skipping_env: WorkflowEnvironment) -> Harness:
    return Harness(time_skipping_env, ScriptedWorld())


async def test_a_second_purchase_for_a_tenant_is_refused_before_anything_is_bought(
    harness: Harness,
) -> None:
    first = purchase()
    await harness.run(first)
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(purchase(tenant_id=first["tenant_id"]))
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "TenantAlreadyProvisioned"
    assert cause.non_retryable and first["tenant_id"] in cause.message
    assert harness.world.calls["create_server"] == 1
    assert harness.world.claims[first["tenant_id"]][1] == "held"


async def test_a_compensated_purchase_releases_the_claim(harness: Harness) -> None:
    harness.world.failures["configure_mailu"] = [
        ApplicationError("broken", type="RemoteCommandFailed", non_retryable=True)
    ]
    raw = purchase()
    with pytest.raises(WorkflowFailureError):
        await harness.run(raw)
    assert harness.world.claims[raw["tenant_id"]][1] == "released"


def raw(encoding: bytes, data: bytes) -> RawValue:
    return RawValue(Payload(metadata={"encoding": encoding}, data=data))


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        ([], "(got 0)"),
        ([raw(b"json/plain", b"{}"), raw(b"json/plain", b"{}")], "(got 2)"),
        ([raw(b"json/plain", b"[" * 5000 + b"]" * 5000)], "nest"),
        ([raw(b"json/plain", b'"hello"')], "got a string"),
        ([raw(b"binary/plain", b"\x00")], "encoding"),
        ([raw(b"binary/x-mailprov-undecodable", b"unknown key id 'k9'")], "unknown key id"),
    ],
)
async def test_raw_start_arguments_end_at_once_as_invalid_purchase_request(
    harness: Harness, args: list[Any], rule: str
) -> None:
    async with harness.worker():
        handle = await harness.env.client.start_workflow(
            "ProvisionMailTenant",
            args=args,
            id=workflow_id_for("p-raw"),
            task_queue=harness.task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidPurchaseRequest"
    assert rule in cause.details[0]["rule"]
    assert sum(harness.world.calls.values()) == 0


JSON = b"json/plain"


@dataclass(frozen=True)
class RawStart:
    name: str
    payloads: list[tuple[bytes, bytes]]
    expect: str  # a fragment of the refusal's message


def one(data: bytes, encoding: bytes = JSON) -> list[tuple[bytes, bytes]]:
    return [(encoding, data)]


TARGET = {
    "tenant_id": "acme",
    "domain": "acme.example",
    "server_name": "mail-acme-1",
    "address": "127.0.0.1",
    "host_public_key": "ssh-ed25519 AAAA",
}

# Shared with the end-to-end corpus (tests/e2e/test_hostile_starts.py).
ROTATION_CORPUS = [
    RawStart("no argument", [], "(got 0)"),
    RawStart("two arguments", one(b'{"tenant_id":"acme"}') * 2, "(got 2)"),
    RawStart("two arguments, one not json", [*one(b"{}"), *one(b"\xff", b"binary/x")], "(got 2)"),
    RawStart("string", one(b'"acme"'), "got a string"),
    RawStart("array", one(b'["acme"]'), "got an array"),
    RawStart("null", one(b"null"), "got null"),
    RawStart("binary/null", one(b"", b"binary/null"), "got null"),
    RawStart("number", one(b"7"), "got a number"),
    RawStart("empty object", one(b"{}"), "'tenant_id' is required"),
    RawStart("tenant number", one(b'{"tenant_id": 7}'), "'tenant_id' must be a string"),
    RawStart("tenant path", one(b'{"tenant_id": "../etc"}'), "'tenant_id' must be 1-63"),
    RawStart("tenant upper case", one(b'{"tenant_id": "Acme"}'), "'tenant_id' must be 1-63"),
    RawStart("tenant 64 chars", one(json.dumps({"tenant_id": "a" * 64}).encode()), "1-63"),
    RawStart("hand-made target", one(json.dumps(TARGET).encode()), "'address' is not a known"),
    RawStart("not utf-8", one(b'{"tenant_id":"\xff"}'), "UTF-8"),
    RawStart("truncated json", one(b'{"tenant_id": "ac'), "not valid JSON"),
    RawStart("duplicate key", one(b'{"tenant_id":"a","tenant_id":"b"}'), "duplicate"),
    RawStart("NaN", one(b'{"tenant_id": NaN}'), "NaN is not JSON"),
    RawStart("binary/plain", one(b"\x00\x01", b"binary/plain"), "encoding"),
    RawStart("protobuf", one(b"\x08\x01", b"json/protobuf"), "encoding"),
    RawStart("no encoding", one(b"{}", b""), "encoding"),
    RawStart("undecodable", one(b"unknown key id 'x'", UNDECODABLE_ENCODING), "unknown key"),
    RawStart("oversized", one(json.dumps({"a": "x" * MAX_INPUT_BYTES}).encode()), "at most"),
    RawStart("deep nesting", one(b"[" * 5000 + b"]" * 5000), "nest"),
    RawStart("unclosed nesting", one(b"{" * 10000), "nest"),
]


def raw_args(start: RawStart) -> list[RawValue]:
    return [RawValue(Payload(metadata={"encoding": e}, data=d)) for e, d in start.payloads]


async def refused_at_once(
    env: WorkflowEnvironment,
    activities: list[Any],
    workflow_type: str,
    workflow_id: str,
    start: RawStart,
) -> ApplicationError:
    """Start `workflow_type` with the raw `start`: the run must fail in its first workflow
    task, never fail a task (which would retry forever) nor schedule an activity, with a
    final ApplicationError naming `start.expect`; returned for the caller's checks."""
    task_queue = f"hostile-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProvisionMailTenant],
        workflow_runner=restricted_sandbox(),
        activities=activities,
    ):
        handle = await env.client.start_workflow(
            workflow_type, args=raw_args(start), id=workflow_id, task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert cause.non_retryable
    assert start.expect in cause.message, cause.message
    events = [event.event_type async for event in handle.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events
    assert events.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in events
    return cause


@pytest.mark.parametrize("start", ROTATION_CORPUS, ids=lambda start: start.name)
async def test_a_hostile_rotation_start_ends_at_once_with_nothing_touched(
    time_skipping_env: WorkflowEnvironment, start: RawStart
) -> None:
    world = RotationWorld()
    workflow_id = f"rotate-hostile-{uuid.uuid4().hex[:8]}"
    cause = await refused_at_once(
        time_skipping_env, world.activities(), ROTATION_WORKFLOW_TYPE, workflow_id, start
    )
    assert cause.type == "InvalidRotationRequest"
    assert "invalid rotation request: field" in cause.message
    assert (world.rotations, world.audit, world.removed_schedules) == (0, [], [])
