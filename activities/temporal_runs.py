"""Temporal, seen from an activity: what became of each purchase's run.

The reconciler asks, per server, about one run: the run that holds the tenant's claim
(by run id, so a later run of the same purchase id cannot stand in for it), or the
purchase's latest run. For a run that ended without completing it also reads, from the
run's own history, the Vault version that run stored, so exactly that version can be
withdrawn. A run Temporal no longer knows is NOT_FOUND, which proves nothing.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workflows.contracts import StoredCredentials, workflow_id_for
from workflows.reconcile_contracts import UNFINISHED_STATES, PurchaseRun, RunQuery


class TemporalRunsActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="describe_purchase_runs")
    async def describe_purchase_runs(self, queries: list[RunQuery]) -> list[PurchaseRun]:
        return [await self._describe(query.purchase_id, query.run_id) for query in queries]

    async def _describe(self, purchase_id: str, run_id: str | None) -> PurchaseRun:
        handle = self._client.get_workflow_handle(workflow_id_for(purchase_id), run_id=run_id)
        try:
            description = await handle.describe()
        except RPCError as err:
            # INVALID_ARGUMENT: a run id that is no run id (a hand-made claim memo).
            if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return PurchaseRun(purchase_id, "NOT_FOUND", run_id=run_id)
            raise
        status = description.status or WorkflowExecutionStatus.RUNNING
        run = PurchaseRun(
            purchase_id,
            status.name,
            closed_at=description.close_time.isoformat() if description.close_time else None,
            run_id=description.run_id,
        )
        if run.status in UNFINISHED_STATES:
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
