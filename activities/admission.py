"""Admit a purchase before anything is bought: plan, notify URL policy, tenant claim.

The notify URL gets every rule of the send-time guard, its host's DNS answer included
(activities/notify.py): a name resolving to an internal address is refused here, with
`InvalidPurchaseRequest` on `notify_url`, instead of after a server was bought.

The three checks were three activities; they are one because each activity is a
billable action on Temporal Cloud and all three are quick answers from the worker's
own configuration and from Temporal (docs/PERFORMANCE.md, "fewer actions"). The
order matters: the two checks that can refuse bad input run first, so a refused
purchase never takes the tenant's claim and leaves nothing to release. Taking the
claim is idempotent (a retried attempt finds its own holder in the claim's memo),
so the whole activity is.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.notify import NotifyActivities
from activities.plans import PlanActivities
from activities.tenant_claims import TenantClaimActivities
from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import (
    Admission,
    AdmissionRequest,
    InvalidPurchaseRequest,
    NotifyUrlCheck,
    PlanRequest,
)


class AdmissionActivities:
    def __init__(
        self, plans: PlanActivities, notify: NotifyActivities, claims: TenantClaimActivities
    ) -> None:
        self._plans = plans
        self._notify = notify
        self._claims = claims

    @activity.defn(name="admit_purchase")
    async def admit_purchase(self, request: AdmissionRequest) -> Admission:
        """The plan and the claim run id, or InvalidPurchaseRequest / TenantAlreadyProvisioned."""
        plan = await self._plans.resolve_plan(PlanRequest(request.tenant_id, request.plan))
        if request.notify_url is not None:
            try:
                await self._notify.check_notify_url(
                    NotifyUrlCheck(request.tenant_id, request.notify_url)
                )
            except ApplicationError as err:
                refused = InvalidPurchaseRequest("notify_url", err.message)
                raise ApplicationError(
                    str(refused),
                    {"field": refused.field, "rule": refused.rule},
                    type="InvalidPurchaseRequest",
                    non_retryable=True,
                ) from None
        run_id = await self._claims.claim_tenant(
            TenantClaimRequest(request.tenant_id, request.holder)
        )
        return Admission(plan, run_id)
