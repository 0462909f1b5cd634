"""Compensation as one ordered list of undo steps, registered as the story advances.

As in Temporal's saga samples (temporalio/samples-python, temporalio/money-transfer-
project-template-python): each step's undo is added *before* the step runs, because an
attempt can take effect and still fail, time out or be cancelled before its answer
arrives. So every undo must work without the step's result (delete the purchase's
servers by label when no server id came back) and be idempotent (it may find nothing
to do). On a failure or a cancel, the undo steps run newest first.

No I/O and no module state: the worker passes this module through the sandbox.
"""

from collections.abc import Awaitable, Callable

Undo = Callable[[], Awaitable[object]]


class Saga:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Undo]] = []

    def add(self, name: str, undo: Undo) -> None:
        """Register `undo` to run if anything from here on fails or the run is cancelled."""
        self._undo.append((name, undo))

    @property
    def names(self) -> list[str]:
        """The undo steps in the order they would run (for tests and docs)."""
        return [name for name, _ in reversed(self._undo)]

    async def compensate(self) -> None:
        """Run every registered undo, newest first; an undo that fails stops the rest,
        so what is left (a server, a held claim) stays visible to operators."""
        for _, undo in reversed(self._undo):
            await undo()
