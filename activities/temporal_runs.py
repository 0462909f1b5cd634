"""Temporal, seen from an activity: what became of each purchase's run.

The reconciler needs to know, per purchase, whether its run is still going, completed,
compensated itself, or was stopped from outside (terminated, timed out) and so will
never clean up. For a stopped run it also reads, from the run's own history, the
Vault version that run stored, so exactly that version can be withdrawn.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workflows.contracts import StoredCredentials, workflow_id_for
from workflows.reconcile_contracts import ORPHANING_STATES, PurchaseRun


class TemporalRunsActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="describe_purchase_runs")
    async def describe_purchase_runs(self, purchase_ids: list[str]) -> list[PurchaseRun]:
        return [await self._describe(purchase_id) for purchase_id in purchase_ids]

    async def _describe(self, purchase_id: str) -> PurchaseRun:
        handle = self._client.get_workflow_handle(workflow_id_for(purchase_id))
        try:
            description = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return PurchaseRun(purchase_id, "NOT_FOUND")
            raise
        status = description.status or WorkflowExecutionStatus.RUNNING
        run = PurchaseRun(
            purchase_id,
            status.name,
            closed_at=description.close_time.isoformat() if description.close_time else None,
            run_id=description.run_id,
        )
        if run.status in ORPHANING_STATES:
            run = PurchaseRun(
                run.purchase_id,
                run.status,
                run.closed_at,
                run.run_id,
                stored_version=await self._stored_version(purchase_id, description.run_id),
            )
        return run

    async def _stored_version(self, purchase_id: str, run_id: str) -> int | None:
        """The version store_credentials returned in that run, if it completed."""
        handle = self._client.get_workflow_handle(workflow_id_for(purchase_id), run_id=run_id)
        store_scheduled: set[int] = set()
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attributes = event.activity_task_scheduled_event_attributes
                if attributes.activity_type.name == "store_credentials":
                    store_scheduled.add(event.event_id)
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                completed = event.activity_task_completed_event_attributes
                if completed.scheduled_event_id in store_scheduled:
                    # Payloads are encrypted by the codec; the client's converter opens them.
                    [stored] = await self._client.data_converter.decode(
                        completed.result.payloads, [StoredCredentials]
                    )
                    return int(stored.version)
        return None
