"""The workflow sandbox, without its per-payload question about serialization contexts.

For each payload sequence of every workflow activation it decodes and every completion
it encodes, the SDK asks the workflow instance which serialization context applies
(temporalio's `_CommandAwareDataConverter`: three passes each way, one question per
sequence per pass, and once more for the external-storage target on the way out), so a
per-workflow or per-activity codec could key its work on it. Under the sandbox each
question is code executed inside the sandbox with its import hooks applied: some 60 of
them per purchase, about a quarter of the worker's CPU for a purchase with no-op
activities (docs/PERFORMANCE.md, change 11).

The answer changes nothing for a data converter none of whose parts takes a context
(`with_context` returns the converter itself) and that has no external storage: the SDK
then converts with that same converter whatever the context is. Ours is such a converter
(runtime/codec.py: the contract converter, the encryption codec and the failure converter
take none), and `workflow_runner` checks it (`context_free`) before leaving the question
out; a converter that takes a context gets the SDK's sandbox unchanged. Everything else
is the SDK's sandbox: the same restrictions, the same instance running the workflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import temporalio.bridge.proto.workflow_activation
import temporalio.bridge.proto.workflow_completion
import temporalio.workflow
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    SerializationContext,
    StorageDriverStoreContext,
    WorkflowSerializationContext,
)
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

if TYPE_CHECKING:
    from temporalio.worker._command_aware_visitor import CommandInfo

# Contexts of each kind the SDK hands a workflow's converter (which ones the values hold
# does not matter: a converter that takes a context would return a copy for any of them).
_PROBES: tuple[SerializationContext, ...] = (
    WorkflowSerializationContext(namespace="probe", workflow_id="probe"),
    ActivitySerializationContext(
        namespace="probe",
        workflow_id="probe",
        workflow_type="probe",
        activity_type="probe",
        activity_id="1",
        activity_task_queue="probe",
        is_local=False,
    ),
)


def context_free(converter: DataConverter) -> bool:
    """Whether `converter` converts the same under every serialization context: none of
    its parts takes one (DataConverter.with_context then returns it unchanged) and it has
    no external storage (whose target the SDK also asks the instance for)."""
    return converter.external_storage is None and all(
        converter.with_context(context) is converter for context in _PROBES
    )


@dataclass(frozen=True)
class ContextFreeSandboxRunner(SandboxedWorkflowRunner):
    """The SDK's sandbox runner whose instances answer the serialization-context
    questions without entering the sandbox. Only for a worker whose data converter is
    `context_free` (workflow_runner checks it)."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _ContextFreeInstance(super().create_instance(det))


class _ContextFreeInstance(WorkflowInstance):
    """A sandboxed instance that answers "no context" itself; all else is the sandbox's."""

    def __init__(self, sandboxed: WorkflowInstance) -> None:
        self._sandboxed = sandboxed
        self._store_context = StorageDriverStoreContext(target=None)

    def activate(
        self, act: temporalio.bridge.proto.workflow_activation.WorkflowActivation
    ) -> temporalio.bridge.proto.workflow_completion.WorkflowActivationCompletion:
        return self._sandboxed.activate(act)

    def get_serialization_context(
        self, command_info: CommandInfo | None
    ) -> SerializationContext | None:
        # None: the worker's context-free converter, the one it would use for any context.
        return None

    def get_external_store_context(
        self, command_info: CommandInfo | None
    ) -> StorageDriverStoreContext:
        # Read only when the converter has external storage, which a context-free one lacks.
        return self._store_context

    def get_info(self) -> temporalio.workflow.Info:
        return self._sandboxed.get_info()

    def get_thread_id(self) -> int | None:
        return self._sandboxed.get_thread_id()
