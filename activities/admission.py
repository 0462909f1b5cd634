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

from collections.abc import Awaitable, Callable, Mapping

from temporalio import activity

from activities.notify import (
    NotifyPolicy,
    NotifyRefused,
    Resolver,
    check_at_admission,
    resolve_host,
)
from activities.plans import plan_for
from activities.tenant_claims import take_tenant_claim
from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import Admission, AdmissionRequest, Plan
from workflows.input_rules import InvalidPurchaseRequest

ClaimTaker = Callable[[TenantClaimRequest], Awaitable[str]]


class AdmissionActivities:
    """The three checks through plain functions they share: the catalog's plan_for, the
    notify policy's check_at_admission, take_tenant_claim (bench and unit tests pass a
    resolver and a claim taker that touch neither DNS nor Temporal)."""

    def __init__(
        self,
        catalog: Mapping[str, Plan],
        notify_policy: NotifyPolicy,
        resolve: Resolver = resolve_host,
        take_claim: ClaimTaker = take_tenant_claim,
        *,
        keep_failed_servers: bool = False,
    ) -> None:
        self._catalog = dict(catalog)
        self._notify_policy = notify_policy
        self._resolve = resolve
        self._take_claim = take_claim
        # Operator configuration (worker.Settings), handed to the run with its admission.
        self._keep_failed_servers = keep_failed_servers

    @activity.defn(name="admit_purchase")
    async def admit_purchase(self, request: AdmissionRequest) -> Admission:
        """The plan and the claim run id, or InvalidPurchaseRequest / TenantAlreadyProvisioned."""
        try:
            plan = plan_for(self._catalog, request.plan)
            if request.notify_url is not None:
                await self._check_notify_url(request.notify_url)
        except InvalidPurchaseRequest as err:
            raise err.as_failure() from None
        run_id = await self._take_claim(TenantClaimRequest(request.tenant_id, request.holder))
        return Admission(plan, run_id, self._keep_failed_servers)

    async def _check_notify_url(self, url: str) -> None:
        try:
            await check_at_admission(self._notify_policy, url, self._resolve)
        except NotifyRefused as err:
            raise InvalidPurchaseRequest("notify_url", str(err)) from None
