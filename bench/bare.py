"""The yardstick: a workflow of ProvisionMailTenant's shape (as many sequential
activities as a happy purchase runs) with nothing of ours: default converter, no
interceptors, no contracts, no validation."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

# admit_purchase, create_server, bring_up_server, rotate_host_key, set_up_mailu,
# create_admin_credentials, store_credentials, record_audit_event,
# ensure_rotation_schedule, notify_customer
BARE_STEPS = 10


@activity.defn(name="bare_step")
async def bare_step(step: str) -> str:
    return step


@workflow.defn(name="BareSameShape")
class BareSameShape:
    @workflow.run
    async def run(self, purchase_id: str) -> str:
        for step in range(BARE_STEPS):
            await workflow.execute_activity(
                bare_step, f"{purchase_id}/{step}", start_to_close_timeout=timedelta(seconds=30)
            )
        return purchase_id
