"""tests/scheduling.py, on xdist's own loadfile scheduler: which module a worker gets."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from tests.scheduling import LongModulesApart, is_slow

QUEUE = [
    "tests/e2e/test_activation.py",
    "tests/e2e/test_plan_change.py",
    "tests/devstack/test_local_cloud.py",
    "tests/unit/test_codec.py",
    "tests/workflow/test_rotation_workflow.py",
]


class FakeNode:
    def __init__(self) -> None:
        self.sent: list[list[int]] = []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent.append(indexes)


def scheduler(busy_with: str | None) -> tuple[LongModulesApart, FakeNode]:
    """A scheduler mid-run (built without xdist's start-up): its queue, and one worker
    that has `busy_with` with one test still to run (or nothing)."""
    chosen: Any = object.__new__(LongModulesApart)
    chosen.workqueue = OrderedDict((module, {f"{module}::test_a": False}) for module in QUEUE)
    node = FakeNode()
    running = {busy_with: {f"{busy_with}::test_x": True, f"{busy_with}::test_y": False}}
    chosen.assigned_work = {node: running if busy_with else {}}
    chosen.registered_collections = {
        node: [f"{m}::test_a" for m in QUEUE] + ([f"{busy_with}::test_y"] if busy_with else [])
    }
    return chosen, node


def test_a_worker_still_busy_with_a_slow_module_gets_the_shortest_left() -> None:
    chosen, node = scheduler("tests/e2e/test_faults_small.py")
    chosen._assign_work_unit(node)
    assert node.sent == [[QUEUE.index("tests/workflow/test_rotation_workflow.py")]]
    assert list(chosen.workqueue) == QUEUE[:-1]


def test_an_idle_worker_or_one_ending_a_short_module_gets_the_longest_left() -> None:
    for busy_with in (None, "tests/unit/test_crypto.py"):
        chosen, node = scheduler(busy_with)
        chosen._assign_work_unit(node)
        assert node.sent == [[0]], busy_with
        assert list(chosen.workqueue) == QUEUE[1:]


def test_slow_modules_are_those_that_need_a_stack_or_outside_programs() -> None:
    assert [is_slow(module) for module in QUEUE] == [True, True, True, False, False]
