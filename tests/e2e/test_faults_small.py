"""`make faults` at a small size, inside `make test`, on the session's stack.

Two scenarios keep it short: workers SIGKILLed at random moments and all at once
(recovery through heartbeat timeouts), and OpenBao frozen then restarted on its
storage. The full set and default size run with `make faults` (docs/RELIABILITY.md).
"""

from __future__ import annotations

from temporalio.client import Client

from devstack.faults_run import recovery_by_step, run_on, summary, table
from devstack.stack import Stack
from workflows.contracts import STEPS


async def test_small_fault_run_loses_nothing(stack: Stack, client: Client) -> None:
    results = await run_on(stack, client, ["worker_kill", "vault"], purchases=2, burst=0)
    report = table(results) + "\n" + summary(results)
    assert [r.lost for r in results] == [0, 0], report
    assert [r.survived for r in results] == [2, 2], report
    assert [r.injected for r in results] == [4, 2], report
    assert summary(results) == "faults: 6 injected, 4 survived, 0 lost"
    # Every recovery names the step its purchase was in when the fault hit.
    recovered_steps = {step for r in results for _, step in r.recoveries}
    compensation = {"remove_credentials", "delete_server", "audit_failure", "-"}
    assert recovered_steps and recovered_steps <= {*STEPS, *compensation}, recovered_steps
    assert recovery_by_step(results).startswith("slowest recovery by step, worker SIGKILL")
