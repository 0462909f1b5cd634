"""TenantClaim: the durable lock that gives a tenant at most one mail server.

The Vault path `smtp/{tenant}/admin` holds one record, so a tenant can have one mail
server. Before a purchase buys anything, the `claim_tenant` activity
(activities/tenant_claims.py) starts this workflow with the fixed id
`tenant-{tenant_id}` and conflict policy FAIL. Temporal runs at most one open workflow
per id in a namespace, so of two purchases racing for one tenant, on any clients and
workers, exactly one start succeeds; the other purchase is refused at once with
`TenantAlreadyProvisioned` and has bought nothing.

The claim is a running workflow, so it is as durable as Temporal itself: it survives
worker and server restarts (a closed workflow is deleted after the namespace's
retention period, freeing its id; an open one is not). Its memo names the purchase
run that took it. Any client can start or signal a workflow, so the claim trusts
neither: it ends only when its owner check (the `check_claim_holder` activity, which
reads our records: the holder run, the provider's servers, the tenant's Vault record)
says the holder has no right to it any more. While the holder run is open the claim is
kept, whoever asks: its own compensation sends `release` while it still runs, so a
`release` cannot tell the purchase from a stranger. The check runs when the claim
starts (a claim nobody's admission took ends at once), when a `release` signal asks for
it (the purchase's compensation, the reconciler, deprovisioning, an operator after
deleting a server), on a durable timer (10 min, 1 h, 6 h, 1 day, then weekly: 3
billable actions each), so a purchase terminated during admission does not block its
tenant for ever. The check a `release` asks for first waits up to 10 s for an open
holder run to close (a purchase's compensation asks a moment before its run closes,
so its claim ends about a second after the purchase's result); a holder still open
then is looked at again after 15 s, 30 s and 1 min (RELEASE_FOLLOW_UPS) until it has
closed, and a stranger's `release` to a live purchase changes nothing (it costs the
signal, one look that waits 10 s and at most 3 follow-up looks; more `release`s during
the follow-ups add only the signal).
Once the holder has closed, its status and our records decide (a server or a current
Vault record keeps the claim). A completed purchase keeps its
claim for as long as it has its server or its tenant's record is current. By hand,
after deleting a tenant's server and withdrawing its record:

    temporal workflow signal --workflow-id tenant-acme --name release --input '"deleted"'

Every signal lands in one dynamic handler that takes its arguments raw, so no name,
argument count or encoding can fail the claim; names other than `release` are dropped.
The run takes its argument raw, and a start the SDK cannot decode at all (more than
one argument, an encoding no converter reads) fails the run at once instead of the
workflow task for ever (failure_exception_types): only a new run can get such a start,
never a held claim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.claim_contracts import (
    HOLDER_CHECK_INTERVALS,
    HOLDER_MEMO,
    HOLDER_RUN_MEMO,
    RELEASE_FOLLOW_UPS,
    TENANT_CLAIM_TYPE,
    ClaimHolderCheck,
    ClaimVerdict,
    TenantClaimState,
)

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import TenantClaimActivities

# Typed exactly RawValue (the SDK passes such arguments through undecoded); the default
# lets a start without an argument run too.
_NO_ARGUMENT = RawValue(Payload())
# Reads of Temporal, the provider and Vault; an outage is retried for a day, and the
# claim stays held meanwhile (the safe side).
CHECK_HOLDER: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=5),
    ),
)
MAX_REASON_BYTES = 500


@workflow.defn(name=TENANT_CLAIM_TYPE, failure_exception_types=[RuntimeError, TypeError])
class TenantClaim:
    def __init__(self) -> None:
        self._state = "held"
        self._release_reason: str | None = None
        self._release_requested = False
        self._last_check: str | None = None
        # Looks still due soon: set when a release was asked for while the holder run was
        # open, cleared once the holder is closed or the looks are used up.
        self._follow_ups: list[timedelta] = []

    @workflow.run
    async def run(self, holder: RawValue = _NO_ARGUMENT) -> str:
        # The holder is read from the memo by the owner check; the argument is taken raw
        # so that no start, whatever it carries, can make argument decoding fail.
        del holder
        intervals = list(HOLDER_CHECK_INTERVALS)
        while True:
            asked = self._release_requested
            self._release_requested = False
            verdict = await self._check(asked)
            if not verdict.keep:
                self._state = "released"
                asked_for = f"{self._release_reason}; " if self._release_reason else ""
                self._release_reason = f"{asked_for}{verdict.reason}"
                return f"released: {self._release_reason}"
            if not verdict.holder_running:
                self._follow_ups = []
            elif asked and not self._follow_ups:
                # A release asked for while the holder run is open is never granted then
                # (anyone can send it); the claim looks again soon, and decides once the
                # holder has closed (a failed purchase's run closes during the check's
                # own wait, so its claim rarely needs these looks).
                self._follow_ups = list(RELEASE_FOLLOW_UPS)
            if self._follow_ups:
                await workflow.sleep(self._follow_ups.pop(0))
                continue
            interval = intervals.pop(0) if len(intervals) > 1 else intervals[0]
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._release_requested, timeout=interval)

    async def _check(self, release_requested: bool) -> ClaimVerdict:
        try:
            verdict: ClaimVerdict = await workflow.execute_activity_method(
                TenantClaimActivities.check_claim_holder,
                ClaimHolderCheck(release_requested),
                **CHECK_HOLDER,
            )
        except ActivityError:
            # Our records could not be read for a day: keep the claim, look again later.
            verdict = ClaimVerdict(True, "owner check failed; kept")
        self._last_check = verdict.reason
        return verdict

    @workflow.signal(dynamic=True)
    def _signal(self, name: str, args: Sequence[RawValue]) -> None:
        """Every signal, whatever its name, argument count or encoding, lands here raw.

        Only `release` means anything: a request, not an order (the owner check decides,
        see the module docstring). Any other name is dropped. Nothing here can raise, so
        no client's signal can fail the claim (failure_exception_types).
        """
        if name != "release" or self._state != "held":
            return
        self._release_reason = _reason_text(args[0].payload) if args else None
        self._release_requested = True

    @workflow.query(name="claim")
    def claim(self) -> TenantClaimState:
        return TenantClaimState(
            holder=str(workflow.memo_value(HOLDER_MEMO, default="(unknown)")),
            state=self._state,
            release_reason=self._release_reason,
            holder_run_id=str(workflow.memo_value(HOLDER_RUN_MEMO, default="")) or None,
            last_check=self._last_check,
        )


def _reason_text(payload: Payload) -> str:
    """The reason a release names, if it is a short JSON string; else a placeholder."""
    if payload.metadata.get("encoding") != b"json/plain" or len(payload.data) > MAX_REASON_BYTES:
        return "(unreadable reason)"
    try:
        value = workflow.payload_converter().from_payload(payload, str)
    except Exception:
        return "(unreadable reason)"
    return str(value)[:MAX_REASON_BYTES]
