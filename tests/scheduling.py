"""How `make test` hands modules to its pytest-xdist workers: whole, longest first, and
never one long module queued behind another.

xdist's loadfile scheduler sends a worker a module's tests and sends it the next module
(the next in the queue) as soon as two or fewer of its tests are left to run: a worker
must know its next test before it runs its last one. A module that is one long test
(test_faults_small, 3 minutes) therefore had the next long module of the queue wait
behind it from the start: in one run, test_faults_small, test_activation and
test_plan_change (7.5 minutes together) ran in turn on one worker while the other five
were done a minute earlier.

Here a module handed to a worker that is still busy with a slow one (it needs a stack
or outside programs) is the shortest left, from the end of the queue (the unit,
workflow and replay modules, seconds each); every other hand-out takes the longest,
from the front.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadFileScheduling

# The directories whose modules take tens of seconds to minutes (tests/conftest.py).
SLOW_DIRECTORIES = ("e2e", "devstack", "integration")


def is_slow(module: str) -> bool:
    """`module` as xdist names it: tests/<directory>/test_x.py."""
    parts = module.split("/")
    return len(parts) > 2 and parts[-2] in SLOW_DIRECTORIES


class LongModulesApart(LoadFileScheduling):  # type: ignore[misc]  # xdist ships no types
    """xdist's loadfile, with only the choice of the next module changed (above)."""

    def _assign_work_unit(self, node: Any) -> None:
        busy_with = [
            module
            for module, tests in self.assigned_work.get(node, {}).items()
            if not all(tests.values())
        ]
        if len(self.workqueue) > 1 and any(is_slow(module) for module in busy_with):
            shortest = next(reversed(self.workqueue))
            self.workqueue.move_to_end(shortest, last=False)
        super()._assign_work_unit(node)
