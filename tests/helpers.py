"""Small helpers shared by the test packages."""

from __future__ import annotations

import base64
import json
import os
from typing import Any, NoReturn

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError


def activity_failure_reason(error: WorkflowFailureError) -> str:
    """The message of the activity error that failed the workflow."""
    cause = error.cause
    assert isinstance(cause, ActivityError), f"expected an activity failure, got {cause!r}"
    return str(cause.cause)


# Temporal's SDK core writes two things of its own, past the payload codec, when a run
# takes a workflow.patched() branch: the patch marker's details and the
# TemporalChangeVersion search attribute (which the server indexes, so it can never be
# encrypted). Both carry the patch's name and nothing else; anything more is a failure.
# No patch is in use before the first release (docs/VERSIONING.md): a patch added then
# is listed here.
PATCH_IDS: frozenset[str] = frozenset()


def payload_encodings(exported: Any) -> set[bytes]:
    """The encodings of every payload of an exported history (`temporal workflow show -o
    json`), after checking that the SDK's patch metadata holds only known patch names."""
    found: set[bytes] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("markerName") == "core_patch":
                [data] = node["details"]["patch-data"]["payloads"]
                assert json.loads(base64.b64decode(data["data"]))["id"] in PATCH_IDS
                return
            if "encoding" in node.get("metadata", {}):
                found.add(base64.b64decode(node["metadata"]["encoding"]))
                return
            for name, value in node.items():
                if name == "TemporalChangeVersion":
                    assert set(json.loads(base64.b64decode(value["data"]))) <= PATCH_IDS
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(exported)
    return found


def unavailable(reason: str) -> NoReturn:
    """Skip a test this machine cannot run (a missing tool, no CAP_NET_ADMIN), saying
    why; under CI=true fail instead, so CI can never pass without the check. README.md
    lists every test that calls this."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this check: {reason}")
    pytest.skip(reason)
