"""The yardstick: a workflow of ProvisionMailTenant's shape (as many sequential
activities as a happy purchase runs) with nothing of ours: default converter, no
interceptors, no contracts, no validation."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

# check_notify_url, resolve_plan, claim_tenant, create_server, wait_for_server,
# set_reverse_dns, rotate_host_key, configure_mailu, mail_dns_records,
# create_admin_credentials, store_credentials, record_audit_event,
# ensure_rotation_schedule, notify_customer, confirm_tenant_claim
BARE_STEPS = 15


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
