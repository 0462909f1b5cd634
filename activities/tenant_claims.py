"""Take, confirm and release a tenant's claim (workflows/tenant_claim.py) in Temporal.

The claim is a TenantClaim workflow with id `tenant-{tenant_id}`: starting it with
conflict policy FAIL is an atomic test-and-set that Temporal's server enforces across
every client and worker. Each call here is idempotent, so the activity can be retried:
a retried claim finds its own earlier start (same holder in the memo) and succeeds;
release and confirm target the exact run this purchase started, so they can never
touch a claim another purchase took later.
"""

from __future__ import annotations

from dataclasses import replace

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from workflows.claim_contracts import (
    HOLDER_MEMO,
    TENANT_CLAIM_TYPE,
    TenantClaimRequest,
    tenant_claim_id,
)


async def take_tenant_claim(request: TenantClaimRequest) -> str:
    """Start the tenant's claim from inside an activity (its client, its task queue);
    returns the claim's run id. TenantAlreadyProvisioned if another purchase holds it."""
    client = activity.client()
    claim_id = tenant_claim_id(request.tenant_id)
    try:
        handle = await client.start_workflow(
            TENANT_CLAIM_TYPE,
            request.holder,
            id=claim_id,
            task_queue=activity.info().task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            memo={HOLDER_MEMO: request.holder},
            static_summary=f"mail server claim of tenant {request.tenant_id}",
        )
        return str(handle.result_run_id)
    except WorkflowAlreadyStartedError:
        pass
    description = await client.get_workflow_handle(claim_id).describe()
    holder = await description.memo_value(HOLDER_MEMO, default=None)
    if description.status != WorkflowExecutionStatus.RUNNING:
        # Released between our start and this look: another attempt will take it.
        raise ApplicationError(f"claim {claim_id} changed hands; retrying", type="ClaimRace")
    if holder == request.holder:
        return description.run_id  # our own earlier attempt took it
    raise ApplicationError(
        f"tenant {request.tenant_id!r} already has a mail server or one being provisioned "
        f"(claim {claim_id} held by {holder}); nothing was bought",
        {"tenant_id": request.tenant_id, "claim_workflow_id": claim_id, "holder": holder},
        type="TenantAlreadyProvisioned",
        non_retryable=True,
    )


class TenantClaimActivities:
    @activity.defn(name="claim_tenant")
    async def claim_tenant(self, request: TenantClaimRequest) -> str:
        """Only for runs of the sequence before admit_purchase took the claim."""
        return await take_tenant_claim(request)

    @activity.defn(name="release_tenant_claim")
    async def release_tenant_claim(self, request: TenantClaimRequest) -> None:
        """Compensation: end this purchase's claim run so the tenant can buy again.

        Without a run id (the reconciler cleaning up after a terminated purchase, which
        never learnt it), the open claim is released only if this purchase holds it.
        """
        if request.run_id is None:
            handle = activity.client().get_workflow_handle(tenant_claim_id(request.tenant_id))
            try:
                description = await handle.describe()
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                return  # never claimed (a purchase from before claims existed)
            holder = await description.memo_value(HOLDER_MEMO, default=None)
            if description.status != WorkflowExecutionStatus.RUNNING or holder != request.holder:
                return  # released already, or another purchase's claim now
            request = replace(request, run_id=description.run_id)
        await self._signal(request, "release", request.reason)

    @activity.defn(name="confirm_tenant_claim")
    async def confirm_tenant_claim(self, request: TenantClaimRequest) -> None:
        """The purchase completed: the claim stays, marked provisioned."""
        await self._signal(request, "provisioned")

    @staticmethod
    async def _signal(request: TenantClaimRequest, signal: str, *args: str) -> None:
        handle = activity.client().get_workflow_handle(
            tenant_claim_id(request.tenant_id), run_id=request.run_id
        )
        try:
            await handle.signal(signal, args=list(args))
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            # Already ended (a retried release): nothing left to do.
