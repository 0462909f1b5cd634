"""Committed histories must replay against today's workflow code.

A change that alters the sequence of commands for an existing history (new
activity in the middle, different order, removed timer) breaks every purchase
in flight at deploy time; this test makes CI fail on it instead. Re-record with
`python -m tests.replay.record_histories` only together with workflow.patched().
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.provision import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_committed() -> None:
    assert {p.stem for p in HISTORIES} >= {"happy_path", "retried_steps", "compensated"}


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_deterministically(path: Path) -> None:
    # The recorder names each run purchase-replay-<scenario>; the workflow checks its id.
    workflow_id = f"purchase-replay-{path.stem.replace('_', '-')}"
    history = WorkflowHistory.from_json(workflow_id, path.read_text())
    result = await Replayer(workflows=list(WORKFLOWS)).replay_workflow(history)
    assert result.replay_failure is None
