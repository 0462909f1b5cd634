"""The task queue's one dynamic workflow: every start arrives here with raw arguments.

The SDK decodes a named workflow's arguments before its code runs, and an argument it
cannot decode fails the workflow task for ever; only a dynamic workflow gets every start
argument undecoded. So every type any client may start with anything runs through this
one class, registered as the worker's dynamic workflow, and each decodes its own input
with bounds and ends at once, naming the field, on a bad one:

    ProvisionMailTenant     workflows/provision.py     (the purchase; the default)
    RotateSmtpCredentials   workflows/rotation.py
    ChangeMailPlan          workflows/plan_change.py
    DeprovisionMailTenant   workflows/deprovision.py
    ActivateMailDomain      workflows/activation.py

A start of a type the worker does not know (a typo, a retired name) ends with
UnknownWorkflowType at once (Purchase checks the type).

The class is a thin shell, and the stories live on plain classes (docs/PERFORMANCE.md).
The worker passes this module through the sandbox (worker.PASSED_THROUGH_STORIES): a
workflow class's module is otherwise executed again for every run, `workflow.defn` then
inspecting every member of the class and each handler's decorator its signature (~1.3 ms
of CPU per run, change 10). So it keeps the static rules of a passed-through story: no
module state (the table below is a tuple), nothing imported at the top level but the
SDK and shared contracts. Each type's module is imported inside its run, through the
sandbox's importer: a run loads its own story and nothing else, and the stories that
are not passed through run under the sandbox's runtime restrictions as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue

from workflows.activation_contracts import ACTIVATION_WORKFLOW_TYPE, DNS_PUBLISHED_SIGNAL
from workflows.deprovision_contracts import DEPROVISION_WORKFLOW_TYPE
from workflows.plan_change_contracts import PLAN_CHANGE_WORKFLOW_TYPE
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE


@workflow.defn(dynamic=True)
class ProvisionMailTenant:
    """Workflow type ProvisionMailTenant, and the runs of the types listed above."""

    def __init__(self) -> None:
        # The run's story (Purchase, Rotation, ...), set as the run begins, before its
        # first await, so the `status` query always finds it.
        self._story: Any = None
        # `dns_published` signals received (ActivateMailDomain reads the count; a
        # signal may arrive before its run has begun, and on any other type it is
        # counted and ignored).
        self._dns_published = 0

    @workflow.signal(name=DNS_PUBLISHED_SIGNAL)
    def dns_published(self) -> None:
        """The back end says the customer published the records: check at once."""
        self._dns_published += 1

    @workflow.query(name="status")
    def status(self) -> Any:
        """ProvisionStatus, RotationStatus on a RotateSmtpCredentials run, PlanChangeStatus
        on a ChangeMailPlan run, DeprovisionStatus on a DeprovisionMailTenant run,
        ActivationStatus on an ActivateMailDomain run."""
        return self._story.status

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> Any:
        # Any type not listed is a purchase, whose story refuses an unknown type.
        workflow_type = workflow.info().workflow_type
        start = next((story for name, story in _STORIES if name == workflow_type), _purchase)
        # Imported in the run, on purpose (so without the sandbox's warning about a late
        # import): a run's sandbox never loads the other types' modules.
        with workflow.unsafe.sandbox_import_notification_policy(
            workflow.SandboxImportNotificationPolicy.SILENT
        ):
            return await start(self, args)


async def _purchase(shell: ProvisionMailTenant, args: Sequence[RawValue]) -> Any:
    from workflows.provision import Purchase

    shell._story = Purchase()
    return await shell._story.run(args)


async def _rotation(shell: ProvisionMailTenant, args: Sequence[RawValue]) -> Any:
    from workflows.rotation import Rotation

    shell._story = Rotation()
    return await shell._story.run(args)


async def _plan_change(shell: ProvisionMailTenant, args: Sequence[RawValue]) -> Any:
    from workflows.plan_change import PlanChange

    shell._story = PlanChange()
    return await shell._story.run(args)


async def _deprovision(shell: ProvisionMailTenant, args: Sequence[RawValue]) -> Any:
    from workflows.deprovision import Deprovision

    shell._story = Deprovision()
    return await shell._story.run(args)


async def _activation(shell: ProvisionMailTenant, args: Sequence[RawValue]) -> Any:
    from workflows.activation import Activation, run_activation

    shell._story = Activation(lambda: shell._dns_published)
    return await run_activation(shell._story, args)


# Pairs, not a dict: module state shared by every run must be immutable.
_STORIES: tuple[
    tuple[str, Callable[[ProvisionMailTenant, Sequence[RawValue]], Awaitable[Any]]], ...
] = (
    (ROTATION_WORKFLOW_TYPE, _rotation),
    (PLAN_CHANGE_WORKFLOW_TYPE, _plan_change),
    (DEPROVISION_WORKFLOW_TYPE, _deprovision),
    (ACTIVATION_WORKFLOW_TYPE, _activation),
)
