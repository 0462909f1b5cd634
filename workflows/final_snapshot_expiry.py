"""ExpireFinalSnapshot: the durable timer that deletes a final snapshot after its retention.

    look (expire_final_snapshot: not yet, its delete-after) ─► sleep until then
        ─► look again: delete (404 = already gone) ─► audit final_snapshot_deleted

DeprovisionMailTenant starts it as a child, id `final-snapshot-expiry-{image_id}`, with
ParentClosePolicy.ABANDON, as soon as the snapshot is available: the deprovisioning ends
at once (the tenant may buy again, and a new `deprovision-{tenant}` can start) while
this run sleeps for the retention (a Temporal timer, not a worker's sleep).

The image id is read from the workflow id; a start argument, if any, is taken raw and
ignored (two or more end the run at once, the SDK's TypeError), and when to delete is
read from the snapshot's own `delete-after` label on every look, so an operator extends
or shortens the retention by relabelling the image (the run looks again at the old
time and sleeps on), and deletes early by deleting the image.
An image without our final-snapshot labels is never deleted (NotAFinalSnapshot, the
run fails): a hand-started timer can expire only what a deprovisioning kept.

Costs in billable actions: its start (the deprovisioning's child start), two looks,
the timer, the audit row (plus one look and one timer per extension).
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.contracts import AuditEvent
from workflows.final_snapshot_contracts import (
    EXPIRY_WORKFLOW_TYPE,
    FINAL_SNAPSHOT_DELETED_EVENT,
    NOT_A_FINAL_SNAPSHOT,
    ExpiryOutcome,
    ExpiryRequest,
    ExpiryStatus,
    image_id_of_expiry,
)

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import AuditActivities, FinalSnapshotActivities
    from workflows.failures import error_type, reason
    from workflows.policies import AUDIT, EXPIRE_FINAL_SNAPSHOT

_NO_ARGUMENT = RawValue(Payload())


@workflow.defn(name=EXPIRY_WORKFLOW_TYPE, failure_exception_types=[RuntimeError, TypeError])
class ExpireFinalSnapshot:
    def __init__(self) -> None:
        self._status = ExpiryStatus(None, "waiting")

    @workflow.query(name="status")
    def status(self) -> ExpiryStatus:
        return self._status

    @workflow.run
    async def run(self, ignored: RawValue = _NO_ARGUMENT) -> ExpiryOutcome:
        del ignored
        image_id = image_id_of_expiry(workflow.info().workflow_id)
        if image_id is None:
            self._status.state = "refused"
            raise ApplicationError(
                f"workflow id must be final-snapshot-expiry-{{image id}}, "
                f"not {workflow.info().workflow_id!r}",
                type="InvalidExpiryRequest",
                non_retryable=True,
            )
        self._status.image_id = image_id
        tenant = ""
        while True:
            now = int(workflow.now().timestamp())
            outcome = await self._look(ExpiryRequest(image_id, now))
            tenant = outcome.tenant_id or tenant
            self._status.delete_after = outcome.delete_after or self._status.delete_after
            if outcome.state != "not_yet":
                break
            await workflow.sleep(max(1, outcome.delete_after - now))
        self._status.state = outcome.state
        if tenant:
            await self._audit(image_id, tenant, outcome)
        return outcome

    async def _look(self, request: ExpiryRequest) -> ExpiryOutcome:
        try:
            outcome: ExpiryOutcome = await workflow.execute_activity_method(
                FinalSnapshotActivities.expire_final_snapshot, request, **EXPIRE_FINAL_SNAPSHOT
            )
        except ActivityError as err:
            if error_type(err) == NOT_A_FINAL_SNAPSHOT:
                self._status.state = "refused"
                raise ApplicationError(
                    reason(err), type=NOT_A_FINAL_SNAPSHOT, non_retryable=True
                ) from None
            raise
        return outcome

    @staticmethod
    async def _audit(image_id: int, tenant: str, outcome: ExpiryOutcome) -> None:
        info = workflow.info()
        event = AuditEvent(
            f"{info.workflow_id}/{info.run_id}/{FINAL_SNAPSHOT_DELETED_EVENT}",
            FINAL_SNAPSHOT_DELETED_EVENT,
            tenant,
            {
                "image_id": str(image_id),
                # "deleted" by this run, or "gone" already (deleted by hand).
                "outcome": outcome.state,
                "delete_after": str(outcome.delete_after),
            },
        )
        await workflow.execute_activity_method(AuditActivities.record_audit_event, event, **AUDIT)
