"""Committed, encrypted histories of real runs must replay against today's workflow code.

A change that alters the sequence of commands for an existing history (new activity in
the middle, different order, removed timer) breaks every purchase in flight at deploy
time; this test makes CI fail on it instead. The histories were exported with
`temporal workflow show -o json` from real runs on the local stack (so every payload is
ciphertext) and replay through the project's data converter, with the committed
test-only key ring, via the same function as the operator's `starter.py replay FILE`.
Before the first release they are re-recorded with `python -m tests.replay.record_histories`
whenever the sequence changes; from the first release on, a change must replay the
histories of that release unchanged (docs/VERSIONING.md).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from devstack.stack import ROOT
from runtime.codec import ENCODING, KeyRing
from starter import StarterError, replay_history
from tests.helpers import payload_encodings
from tests.replay.scripted import SCRIPTED, ScriptedWorkflow
from workflows.dispatch import ProvisionMailTenant

HISTORY_DIR = Path(__file__).parent / "histories"
HISTORIES = [p for p in sorted(HISTORY_DIR.glob("*.json")) if not p.name.startswith("TEST-ONLY")]
HISTORY_IDS = [str(p.relative_to(HISTORY_DIR).with_suffix("")) for p in HISTORIES]
TEST_KEYS = HISTORY_DIR / "TEST-ONLY-codec-keys.json"
SCENARIOS = {"happy", "retried", "compensated", "cancelled"}


def payloads(node: Any) -> list[dict[str, Any]]:
    """Every Payload object in an exported history (they have metadata.encoding)."""
    if isinstance(node, dict):
        if "encoding" in node.get("metadata", {}):
            return [node]
        return [p for value in node.values() for p in payloads(value)]
    if isinstance(node, list):
        return [p for value in node for p in payloads(value)]
    return []


def event_types(path: Path) -> list[str]:
    return [
        e["eventType"].removeprefix("EVENT_TYPE_") for e in json.loads(path.read_text())["events"]
    ]


def patch_markers(path: Path) -> list[str]:
    events = json.loads(path.read_text())["events"]
    return [
        e["markerRecordedEventAttributes"]["markerName"]
        for e in events
        if "markerRecordedEventAttributes" in e
    ]


def test_the_histories_are_of_the_one_sequence_without_patches() -> None:
    """Unreleased: one sequence, no workflow.patched() branch (docs/VERSIONING.md)."""
    assert {p.stem for p in HISTORIES} >= SCENARIOS
    assert all(patch_markers(p) == [] for p in HISTORIES)
    happy = event_types(HISTORY_DIR / "happy.json")
    assert happy.count("ACTIVITY_TASK_SCHEDULED") == 10


def test_the_four_scenarios_are_committed_and_are_what_they_claim() -> None:
    assert event_types(HISTORY_DIR / "happy.json")[-1] == "WORKFLOW_EXECUTION_COMPLETED"
    retried = json.loads((HISTORY_DIR / "retried.json").read_text())["events"]
    attempts = [
        e["activityTaskStartedEventAttributes"].get("attempt", 1)
        for e in retried
        if "activityTaskStartedEventAttributes" in e
    ]
    assert max(attempts) > 1
    assert "ACTIVITY_TASK_SCHEDULED" in event_types(HISTORY_DIR / "compensated.json")
    assert event_types(HISTORY_DIR / "compensated.json")[-1] == "WORKFLOW_EXECUTION_FAILED"
    assert "WORKFLOW_EXECUTION_CANCEL_REQUESTED" in event_types(HISTORY_DIR / "cancelled.json")


@pytest.mark.parametrize("path", HISTORIES, ids=HISTORY_IDS)
def test_every_payload_in_the_history_is_encrypted(path: Path) -> None:
    """All but the SDK's own patch metadata, which holds only the patch's name."""
    assert payloads(json.loads(path.read_text()))
    assert payload_encodings(json.loads(path.read_text())) == {ENCODING}


@pytest.mark.parametrize("path", HISTORIES, ids=HISTORY_IDS)
async def test_history_replays_deterministically(path: Path) -> None:
    history, result = await replay_history(path.read_text(), KeyRing.from_file(TEST_KEYS))
    assert history.workflow_id.startswith(f"purchase-replay-{path.stem}-")
    assert result.replay_failure is None


async def test_a_changed_history_is_reported_as_not_replayable() -> None:
    changed = (HISTORY_DIR / "happy.json").read_text().replace('"bring_up_server"', '"renamed"')
    _, result = await replay_history(changed, KeyRing.from_file(TEST_KEYS))
    assert result.replay_failure is not None
    assert "Nondeterminism" in str(result.replay_failure)


async def test_without_the_right_key_ring_replay_stops_with_a_clear_error() -> None:
    with pytest.raises(StarterError, match="key ring cannot decrypt"):
        await replay_history((HISTORY_DIR / "happy.json").read_text(), KeyRing.generate("other"))


def test_operator_command_replays_a_downloaded_history() -> None:
    command = [sys.executable, str(ROOT / "starter.py"), "--codec-keys-file", str(TEST_KEYS)]
    ok = subprocess.run(
        [*command, "replay", str(HISTORY_DIR / "retried.json")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "replays on the current code" in ok.stderr


# Run in a fresh interpreter, as `python starter.py replay` is: which modules are loaded
# when the replayer starts.
_MODULES_AT_REPLAY = """
import asyncio, sys
from pathlib import Path
from temporalio.worker import Replayer
import starter
from runtime.codec import KeyRing

async def replay_workflow(self, history, raise_on_replay_failure=True):
    print(" ".join(sorted(sys.modules)))
    raise SystemExit(0)

Replayer.replay_workflow = replay_workflow
history, keys = Path(sys.argv[1]).read_text(), KeyRing.from_file(Path(sys.argv[2]))
asyncio.run(starter.replay_history(history, keys))
"""


def test_the_replay_command_loads_the_activity_modules_before_it_replays() -> None:
    """The workflows name activity classes passed through the sandbox: loaded on the
    first activation instead (httpx, hvac, asyncssh), they count against the SDK's 2 s
    deadlock limit, and on a loaded machine the replay failed as CORRUPTED."""
    loaded = subprocess.run(
        [sys.executable, "-c", _MODULES_AT_REPLAY, str(HISTORY_DIR / "happy.json"), str(TEST_KEYS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert {"workflows.activity_refs", "activities.notify", "httpx"} <= set(loaded.stdout.split())


def tampered(change: Callable[[list[dict[str, Any]]], None]) -> str:
    """A copy of the happy history with `change` applied to its events."""
    history = json.loads((HISTORY_DIR / "happy.json").read_text())
    change(history["events"])
    return json.dumps(history)


def completed_indexes(events: list[dict[str, Any]]) -> list[int]:
    return [i for i, e in enumerate(events) if "activityTaskCompletedEventAttributes" in e]


def flip_a_bit_of_an_activity_result(events: list[dict[str, Any]]) -> None:
    event = events[completed_indexes(events)[0]]
    [payload] = event["activityTaskCompletedEventAttributes"]["result"]["payloads"]
    data = bytearray(base64.b64decode(payload["data"]))
    data[len(data) // 2] ^= 0x01
    payload["data"] = base64.b64encode(bytes(data)).decode()


def drop_an_event(events: list[dict[str, Any]]) -> None:
    del events[completed_indexes(events)[2]]


def drop_an_event_and_renumber(events: list[dict[str, Any]]) -> None:
    drop_an_event(events)
    for number, event in enumerate(events, start=1):
        event["eventId"] = str(number)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (flip_a_bit_of_an_activity_result, r"CORRUPTED: event \d+ \(ACTIVITY_TASK_COMPLETED\)"),
        (drop_an_event, r"CORRUPTED: event \d+ is missing"),
        (drop_an_event_and_renumber, r"CORRUPTED: event \d+ \(WORKFLOW_TASK_STARTED\) names"),
    ],
    ids=["bit-flipped", "event-dropped", "event-dropped-renumbered"],
)
async def test_a_damaged_history_is_called_corrupted_not_a_code_change(
    change: Callable[[list[dict[str, Any]]], None], named: str
) -> None:
    with pytest.raises(StarterError, match=named) as refused:
        await replay_history(tampered(change), KeyRing.from_file(TEST_KEYS))
    assert "not a code change" in str(refused.value)
    assert refused.value.exit_code == 2


def test_the_operator_command_names_each_verdict_and_keeps_stdout_for_results(
    tmp_path: Path,
) -> None:
    """Nondeterminism is NOT REPLAYABLE (exit 1); damage is CORRUPTED (exit 2); the SDK
    core's own WARN lines, written from Rust to file descriptor 1, land on stderr."""
    command = [sys.executable, str(ROOT / "starter.py"), "--codec-keys-file", str(TEST_KEYS)]
    cases = {
        "changed": (
            (HISTORY_DIR / "happy.json").read_text().replace('"bring_up_server"', '"renamed"'),
            1,
            "NOT REPLAYABLE",
        ),
        "flipped": (tampered(flip_a_bit_of_an_activity_result), 2, "CORRUPTED"),
    }
    for name, (text, code, verdict) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        done = subprocess.run(
            [*command, "replay", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == code, done.stderr
        assert verdict in done.stderr
        assert done.stdout == ""
        if name == "changed":
            assert "WARN" in done.stderr and "Nondeterminism" in done.stderr


@pytest.mark.parametrize("scripted", SCRIPTED, ids=[s.directory for s in SCRIPTED])
def test_every_scripted_scenario_is_committed(scripted: ScriptedWorkflow) -> None:
    """The table's scenarios are on disk (the recorder only adds missing ones)."""
    assert {p.stem for p in scripted.histories()} >= set(scripted.scenarios())


SCRIPTED_HISTORIES = [(s, p) for s in SCRIPTED for p in s.histories()]


@pytest.mark.parametrize(
    ("scripted", "path"),
    SCRIPTED_HISTORIES,
    ids=[f"{s.directory}/{p.stem}" for s, p in SCRIPTED_HISTORIES],
)
async def test_scripted_history_replays_deterministically(
    scripted: ScriptedWorkflow, path: Path
) -> None:
    """Scripted runs of the other workflows (tests/replay/scripted.py), without the codec."""
    # Each run checks its own workflow id: replay under the one it was recorded with.
    history = WorkflowHistory.from_json(scripted.workflow_id(path.stem), path.read_text())
    result = await Replayer(workflows=[ProvisionMailTenant]).replay_workflow(history)
    assert result.replay_failure is None
