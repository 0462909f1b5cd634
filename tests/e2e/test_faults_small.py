"""`make faults` at a small size, inside `make test`, on the session's stack.

Three scenarios keep it short: workers SIGKILLed at random moments and all at once
(recovery through heartbeat timeouts), OpenBao frozen then restarted on its storage,
and two tenants deprovisioned while OpenBao is frozen, their servers' DELETE answers
503/429/a lost answer and the workers are SIGKILLed mid-delete (at this size both on
`starter`: the scenario's backup-plan tenants, whose snapshot timers take minutes, come
with `--purchases` 10 or more). The full set and default size run with `make faults`
(docs/RELIABILITY.md).
"""

from __future__ import annotations

from temporalio.client import Client

from devstack.faults_run import recovery_by_step, run_on, summary, table
from devstack.stack import Stack
from workflows.contracts import STEPS


async def test_small_fault_run_loses_nothing(stack: Stack, client: Client) -> None:
    results = await run_on(
        stack, client, ["worker_kill", "vault", "deprovision"], purchases=2, burst=0
    )
    report = table(results) + "\n" + summary(results)
    assert [r.lost for r in results] == [0, 0, 0], report
    # deprovision: 2 purchases, then their 2 deprovisions.
    assert [r.survived for r in results] == [2, 2, 4], report
    # deprovision: the OpenBao freeze and the 3 DELETE faults of each server are always
    # consumed; the SIGKILL counts only when a run was caught deleting (nearly always).
    assert [r.injected for r in results[:2]] == [4, 2], report
    assert results[2].injected in (7, 8), report
    assert summary(results).endswith(" 8 survived, 0 lost"), report
    # Every recovery names the step its purchase was in when the fault hit.
    recovered_steps = {step for r in results for _, step in r.recoveries}
    compensation = {"remove_credentials", "delete_server", "audit_failure", "-"}
    deprovision = {
        "inspect_tenant",
        "remove_rotation_schedule",
        "delete_tenant_servers",
        "destroy_tenant_credentials",
        "release_deprovisioned_claim",
        "audit",
    }
    assert recovered_steps and recovered_steps <= {*STEPS, *compensation, *deprovision}, (
        recovered_steps
    )
    # The deprovisions' own recoveries name their steps.
    assert {step for _, step in results[2].recoveries} <= deprovision | {"-"}, results[2]
    assert recovery_by_step(results).startswith("slowest recovery by step, worker SIGKILL")
