"""A worker with MAILPROV_REQUIRE_ENCRYPTED_PAYLOADS refuses a codec-less start (issue 21).

A client without the project's codec can start a purchase; its input then sits in the
server's history in plaintext. With the setting on (deploy/), the worker's codec marks
every payload that is not `binary/encrypted`, so such a start ends at once as
InvalidPurchaseRequest, nothing bought, while a start through the codec runs as usual.
"""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from runtime.codec import KeyRing, data_converter
from tests.workflow.sandbox import restricted_sandbox
from tests.workflow.test_provision_workflow import ScriptedWorld, purchase
from worker import WORKFLOWS
from workflows.contracts import WORKFLOW_TYPE, ProvisionResult, workflow_id_for


def client_with(
    env: WorkflowEnvironment, ring: KeyRing, *, worker: bool = False, required: bool = False
) -> Client:
    """A client of the test server with the project's codec, as the worker or a back end."""
    config = env.client.config()
    config["data_converter"] = data_converter(
        ring, mark_undecodable=worker, require_encrypted=required
    )
    return Client(**config)


@pytest.mark.parametrize("required", [True, False])
async def test_a_codec_less_start_is_refused_only_where_encryption_is_required(
    time_skipping_env: WorkflowEnvironment, required: bool
) -> None:
    env, world = time_skipping_env, ScriptedWorld()
    ring = KeyRing.generate("k1")
    worker_client = client_with(env, ring, worker=True, required=required)
    back_end = client_with(env, ring)
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        worker_client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        workflow_runner=restricted_sandbox(),
        activities=world.activities(),
    ):
        plain = purchase()
        # env.client has no codec: its input is json/plain in the history.
        await env.client.start_workflow(
            WORKFLOW_TYPE, plain, id=workflow_id_for(plain["purchase_id"]), task_queue=task_queue
        )
        handle = back_end.get_workflow_handle(
            workflow_id_for(plain["purchase_id"]), result_type=ProvisionResult
        )
        if required:
            with pytest.raises(WorkflowFailureError) as failure:
                await handle.result()
            cause = failure.value.cause
            assert isinstance(cause, ApplicationError)
            assert cause.type == "InvalidPurchaseRequest"
            assert "payload not encrypted (encoding 'json/plain')" in cause.message
            assert dict(world.calls) == {}  # nothing bought, not even the claim
        else:
            assert (await handle.result()).purchase_id == plain["purchase_id"]

        encrypted = purchase()
        result = await back_end.execute_workflow(
            WORKFLOW_TYPE,
            encrypted,
            id=workflow_id_for(encrypted["purchase_id"]),
            task_queue=task_queue,
            result_type=ProvisionResult,
        )
        assert result.purchase_id == encrypted["purchase_id"]
