"""Take, check and release a tenant's claim (workflows/tenant_claim.py) in Temporal.

The claim is a TenantClaim workflow with id `tenant-{tenant_id}`: starting it with
conflict policy FAIL is an atomic test-and-set that Temporal's server enforces across
every client and worker. Its memo names the purchase run that took it (workflow id and
run id, read from the admitting activity's own context, never from its input), so a
later run of the same purchase id (started with another reuse policy, by a cron or a
retry policy) is not the holder and is refused. Each call here is idempotent, so the
activity can be retried: a retried claim finds its own earlier start (same holder run
in the memo) and succeeds; release targets the exact claim run this purchase started.

Before taking a claim, our own records must agree that the tenant and the purchase
are free (activities/world.py): no server of this purchase id exists (a finished
purchase is never provisioned again, even once its claim is gone) and the tenant has
no current Vault record (a tenant whose claim was lost keeps its one server).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.world import WorldRecords, purchase_id_of, tenant_of_claim_id
from workflows.claim_contracts import (
    HOLDER_MEMO,
    HOLDER_RUN_MEMO,
    TENANT_CLAIM_TYPE,
    ClaimHolderCheck,
    ClaimVerdict,
    TenantClaimRequest,
    tenant_claim_id,
)

# How long an owner check that a `release` asked for waits for the holder run to close,
# and how often it looks meanwhile (see _wait_for_run_to_close).
HOLDER_CLOSE_WAIT = timedelta(seconds=10)
HOLDER_CLOSE_POLL = timedelta(milliseconds=250)
_RUNNING = WorkflowExecutionStatus.RUNNING.name  # as RunFacts names statuses


async def take_tenant_claim(
    request: TenantClaimRequest, records: WorldRecords | None = None
) -> str:
    """Start the tenant's claim from inside the admitting activity (its client, its task
    queue, its own run as the holder); returns the claim's run id.

    TenantAlreadyProvisioned if another purchase, or an earlier run of this purchase,
    holds it, or (with `records`) if our records say the purchase id already has a
    server or the tenant a current Vault record.
    """
    client = activity.client()
    info = activity.info()
    # The caller's own run: the admitting activity runs inside the purchase run.
    holder, holder_run = info.workflow_id or "", info.workflow_run_id or ""
    claim_id = tenant_claim_id(request.tenant_id)
    if records is not None:
        # Before the claim: a claim taken and then refused would name this run as the
        # holder of a purchase whose server belongs to an earlier run.
        await _refuse_if_records_disagree(records, request.tenant_id, holder, claim_id)
    try:
        handle = await client.start_workflow(
            TENANT_CLAIM_TYPE,
            holder,
            id=claim_id,
            task_queue=info.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            memo={HOLDER_MEMO: holder, HOLDER_RUN_MEMO: holder_run},
            static_summary=f"mail server claim of tenant {request.tenant_id}",
        )
        return str(handle.result_run_id)
    except WorkflowAlreadyStartedError:
        pass
    description = await client.get_workflow_handle(claim_id).describe()
    held_by = await description.memo_value(HOLDER_MEMO, default=None)
    held_by_run = await description.memo_value(HOLDER_RUN_MEMO, default=None)
    if description.status != WorkflowExecutionStatus.RUNNING:
        # Released between our start and this look: another attempt will take it.
        raise ApplicationError(f"claim {claim_id} changed hands; retrying", type="ClaimRace")
    if (held_by, held_by_run) == (holder, holder_run):
        return description.run_id  # our own earlier attempt took it
    if held_by == holder:
        raise _refused(
            request.tenant_id,
            f"purchase {holder} was provisioned by an earlier run ({held_by_run}); "
            "a purchase is never provisioned again, whatever the reuse policy",
            claim_id,
            str(held_by),
        )
    raise _refused(
        request.tenant_id,
        f"tenant {request.tenant_id!r} already has a mail server or one being provisioned "
        f"(claim {claim_id} held by {held_by})",
        claim_id,
        str(held_by),
    )


async def _refuse_if_records_disagree(
    records: WorldRecords, tenant_id: str, holder: str, claim_id: str
) -> None:
    """When no claim is held: TenantAlreadyProvisioned if a server of this purchase or
    the tenant's current record exists (a held claim decides by itself, naming its
    holder, an earlier run of this purchase included)."""
    if await WorldRecords.claim_of(activity.client(), tenant_id) is not None:
        return
    purchase_id = purchase_id_of(holder)
    if purchase_id is not None:
        servers = await records.managed_servers(f"purchase={purchase_id}")
        if servers:
            raise _refused(
                tenant_id,
                f"purchase {holder} already has server {servers[0].name}; "
                "a purchase is never provisioned again",
                claim_id,
                holder,
            )
    if await records.vault_version(tenant_id) is not None:
        raise _refused(
            tenant_id,
            f"tenant {tenant_id!r} already has a mail server (its Vault record is current) "
            "but no claim: run `starter.py check-world`",
            claim_id,
            "(tenant's Vault record)",
        )


class TenantClaimActivities:
    def __init__(
        self, records: WorldRecords | None = None, holder_close_wait: timedelta = HOLDER_CLOSE_WAIT
    ) -> None:
        # Without records (unit tests) the claim alone decides.
        self._records = records
        self._holder_close_wait = holder_close_wait

    async def take(self, request: TenantClaimRequest) -> str:
        """take_tenant_claim with this worker's records (admission's claim taker)."""
        return await take_tenant_claim(request, self._records)

    @activity.defn(name="claim_tenant")
    async def claim_tenant(self, request: TenantClaimRequest) -> str:
        """Only for runs of the sequence before admit_purchase took the claim."""
        return await self.take(request)

    @activity.defn(name="release_tenant_claim")
    async def release_tenant_claim(self, request: TenantClaimRequest) -> None:
        """Compensation: ask this purchase's claim run to end so the tenant can buy again.

        The claim ends only if its owner check agrees (the holder has no server left),
        which it decides once this run has closed (the check this signal asks for waits
        up to HOLDER_CLOSE_WAIT for that; else it looks again 15 s, 30 s, 1 min on).
        Without a run id (a purchase whose admission ran out of retries, which never
        learnt it), the open claim is asked only if this very run holds it.
        """
        if request.run_id is None:
            handle = activity.client().get_workflow_handle(tenant_claim_id(request.tenant_id))
            try:
                description = await handle.describe()
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                return  # never claimed
            held_by = await description.memo_value(HOLDER_MEMO, default=None)
            held_by_run = await description.memo_value(HOLDER_RUN_MEMO, default=None)
            if description.status != WorkflowExecutionStatus.RUNNING or (held_by, held_by_run) != (
                request.holder,
                activity.info().workflow_run_id,
            ):
                return  # released already, or another run's claim
            request = replace(request, run_id=description.run_id)
        await self._signal(request, "release", request.reason)

    @activity.defn(name="check_claim_holder")
    async def check_claim_holder(self, check: ClaimHolderCheck) -> ClaimVerdict:
        """The owner check a TenantClaim runs on itself: may its holder keep it?

        Everything is read from the calling claim (its id, its memo) and our records.
        """
        info = activity.info()
        tenant_id = tenant_of_claim_id(info.workflow_id or "")
        # The argument names no tenant, so the log context (runtime/logs.py) could not:
        # every activity log line names its tenant.
        structlog.contextvars.bind_contextvars(tenant_id=tenant_id)
        if tenant_id is None or self._records is None or info.workflow_id is None:
            return ClaimVerdict(False, "not a tenant claim started by admission")
        client = activity.client()
        description = await client.get_workflow_handle(
            info.workflow_id, run_id=info.workflow_run_id
        ).describe()
        holder = await _memo_str(description, HOLDER_MEMO)
        holder_run = await _memo_str(description, HOLDER_RUN_MEMO)
        structlog.contextvars.bind_contextvars(release_requested=check.release_requested)
        if check.release_requested and holder and holder_run:
            await _wait_for_holder_to_close(
                self._records, client, holder, holder_run, self._holder_close_wait
            )
        return await self._records.assess_holder(client, tenant_id, holder, holder_run)

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


async def _wait_for_holder_to_close(
    records: WorldRecords, client: Client, holder: str, holder_run: str, patience: timedelta
) -> None:
    """Give a holder that asked for its own release a moment to close.

    A purchase's compensation sends `release` as its last undo step, a fraction of a
    second before its run closes; a check made at once would find it open and the claim
    would end only at its first follow-up look (15 s on). Looking a few times within
    `patience` ends a failed purchase's claim within about a second instead, so no claim
    outlives the purchase's result by more than that. A stranger's `release` to a live
    purchase costs this wait once per follow-up series and changes nothing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience.total_seconds()
    while (await records.run_of(client, holder, holder_run)).status == _RUNNING:
        if loop.time() >= deadline:
            return
        activity.heartbeat()
        await asyncio.sleep(HOLDER_CLOSE_POLL.total_seconds())


def _refused(tenant_id: str, message: str, claim_id: str, holder: str) -> ApplicationError:
    return ApplicationError(
        f"{message}; nothing was bought",
        {"tenant_id": tenant_id, "claim_workflow_id": claim_id, "holder": holder},
        type="TenantAlreadyProvisioned",
        non_retryable=True,
    )


async def _memo_str(description: object, key: str) -> str | None:
    try:
        value = await description.memo_value(key, default=None)  # type: ignore[attr-defined]
    except Exception:  # a hand-made memo in an encoding we do not read
        return None
    return value if isinstance(value, str) else None
