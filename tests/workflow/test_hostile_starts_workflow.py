"""Tenant claim and raw start arguments on the time-skipping server (scripted activities)."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.workflow.test_provision_workflow import Harness, ScriptedWorld, purchase
from workflows.contracts import workflow_id_for


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
