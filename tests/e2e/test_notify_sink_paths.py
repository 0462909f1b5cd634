"""The operator sink's name on the real stack: its one URL, never another path of its host.

The stack's sink is the local cloud's /_devstack/notify/demo, reached by a name the
worker's MAILPROV_NOTIFY_OPERATOR_SINKS maps to 127.0.0.1. The same host and port also
serve the cloud's fault injection; a sink setting by host and port let a notify_url post
there (the payload became a fault rule and failed the next purchase).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from temporalio.client import Client, WorkflowFailureError

from devstack.stack import NOTIFY_SINK_PATH, StackInfo
from tests.e2e.conftest import CloudControl
from workflows.contracts import workflow_id_for


@pytest.mark.parametrize("path", ["/_devstack/faults", "/_devstack/notify/other"])
async def test_another_path_of_the_sink_is_refused_before_anything_is_bought(
    client: Client, info: StackInfo, cloud: CloudControl, purchase: dict[str, Any], path: str
) -> None:
    sink = urlsplit(info.notify_url)
    assert sink.path == NOTIFY_SINK_PATH
    purchase["notify_url"] = f"{sink.scheme}://{sink.netloc}{path}"
    handle = await client.start_workflow(
        "ProvisionMailTenant",
        purchase,
        id=workflow_id_for(purchase["purchase_id"]),
        task_queue="mail-provisioning",
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    message = str(failure.value.cause)
    assert "notify_url" in message
    assert f"operator sink that takes only the path '{NOTIFY_SINK_PATH}'" in message
    assert cloud.servers_of(purchase["purchase_id"]) == []
    faults = cloud.devstack.get("faults")
    faults.raise_for_status()
    assert faults.json()["faults"] == []
