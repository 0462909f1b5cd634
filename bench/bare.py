"""The yardstick: a workflow of ProvisionMailTenant's shape (9 sequential activities)
with nothing of ours: default converter, no interceptors, no contracts, no validation."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

BARE_STEPS = 9


@activity.defn(name="bare_step")
async def bare_step(step: str) -> str:
    return step


@workflow.defn(name="BareNineSteps")
class BareNineSteps:
    @workflow.run
    async def run(self, purchase_id: str) -> str:
        for step in range(BARE_STEPS):
            await workflow.execute_activity(
                bare_step, f"{purchase_id}/{step}", start_to_close_timeout=timedelta(seconds=30)
            )
        return purchase_id
