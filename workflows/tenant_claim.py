"""TenantClaim: the durable lock that gives a tenant at most one mail server.

The Vault path `smtp/{tenant}/admin` holds one record, so a tenant can have one mail
server. Before a purchase buys anything, the `claim_tenant` activity
(activities/tenant_claims.py) starts this workflow with the fixed id
`tenant-{tenant_id}` and conflict policy FAIL. Temporal runs at most one open workflow
per id in a namespace, so of two purchases racing for one tenant, on any clients and
workers, exactly one start succeeds; the other purchase is refused at once with
`TenantAlreadyProvisioned` and has bought nothing.

The claim is a running workflow, so it is as durable as Temporal itself: it survives
worker and server restarts, and never expires (a closed workflow is deleted after the
namespace's retention period, freeing its id; an open one is not). It ends only on the
`release` signal, which the purchase sends when it compensates; a completed purchase
keeps it for as long as the tenant has the server (whether the holder completed is
the holder run's own status: no signal, so no billable action, is spent saying so).
An operator can release it by hand after deleting a tenant's server:

    temporal workflow signal --workflow-id tenant-acme --name release --input '"deleted"'
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

from workflows.claim_contracts import HOLDER_MEMO, TENANT_CLAIM_TYPE, TenantClaimState

# Typed exactly RawValue (the SDK passes such arguments through undecoded); the default
# lets a start without an argument run too.
_NO_ARGUMENT = RawValue(Payload())


@workflow.defn(name=TENANT_CLAIM_TYPE)
class TenantClaim:
    def __init__(self) -> None:
        self._state = "held"
        self._release_reason: str | None = None

    @workflow.run
    async def run(self, holder: RawValue = _NO_ARGUMENT) -> str:
        # The holder is read from the memo; the argument is taken raw so that no start,
        # whatever it carries, can make argument decoding fail the workflow task.
        del holder
        await workflow.wait_condition(lambda: self._state == "released")
        return f"released: {self._release_reason}"

    @workflow.signal(name="provisioned")
    def provisioned(self) -> None:
        """Sent only by purchases started before workflows.provision.FEWER_ACTIONS."""
        if self._state == "held":
            self._state = "provisioned"

    @workflow.signal(name="release")
    def release(self, reason: str) -> None:
        self._release_reason = str(reason)[:500]
        self._state = "released"

    @workflow.query(name="claim")
    def claim(self) -> TenantClaimState:
        return TenantClaimState(
            holder=str(workflow.memo_value(HOLDER_MEMO, default="(unknown)")),
            state=self._state,
            release_reason=self._release_reason,
        )
