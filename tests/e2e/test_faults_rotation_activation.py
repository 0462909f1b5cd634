"""`make faults`' rotation and activation scenarios at a small size, on the session's
stack: two tenants' passwords rotated while workers are SIGKILLed, OpenBao is frozen,
MailU refuses the first import and the server list answers 503; two tenants' DNS
checks (records served by a real Knot DNS server) under the same kinds of fault. Each
run must end as the design promises (devstack/faults_rotation_activation.py), and the
tenants are deprovisioned after, leaving nothing behind.
"""

from __future__ import annotations

import shutil

from temporalio.client import Client

from devstack.acme_server import PEBBLE
from devstack.dns_server import KNOTD
from devstack.faults_run import run_on, summary, table
from devstack.stack import Stack
from devstack.test_tools import SEARCH_PATH
from tests.helpers import unavailable


async def test_rotations_and_dns_checks_under_faults_lose_nothing(
    stack: Stack, client: Client
) -> None:
    results = await run_on(stack, client, ["rotation", "activation"], purchases=2, burst=0)
    report = (
        table(results)
        + "\n"
        + summary(results)
        + "\n"
        + "\n".join(problem for r in results for problem in r.problems)
    )
    assert [r.lost for r in results] == [0, 0], report
    # Each: 2 purchases, then the 2 runs of the workflow.
    assert [r.survived for r in results] == [4, 4], report
    # At least the SIGKILL of all workers (a run is caught at once: each starts with its
    # only activity, or its check) and one armed provider or MailU fault were consumed.
    assert all(r.injected >= 2 for r in results), report
    # Recoveries name what the run was doing when the fault hit: a rotation's state
    # (it has no steps), an activation's check.
    assert {step for _, step in results[0].recoveries} <= {"running"}, report
    assert {step for _, step in results[1].recoveries} <= {
        "checking",
        "waiting_for_dns",
        "audit",
    }, report


async def test_the_certificate_stage_under_worker_kills_loses_nothing(
    stack: Stack, client: Client
) -> None:
    """make faults' `activation_tls` at its smallest: one tenant whose front already has
    its certificates (pebble, through Debian's certbot) when the back end signals; the
    engine refuses its first `restart front`, and all workers are SIGKILLed while the
    run restarts front. The run must end active with one certificate per lineage and
    one real front restart (devstack/faults_activation_tls.py); the heavier groups (CA
    down, restart not taken, DNS removed) run in make faults only."""
    for tool in (KNOTD, PEBBLE, "certbot"):
        if shutil.which(tool, path=SEARCH_PATH) is None:
            unavailable(f"{tool} not installed (devstack/test_tools.py)")
    [result] = await run_on(stack, client, ["activation_tls"], purchases=2, burst=0)
    report = table([result]) + "\n" + "\n".join(result.problems)
    assert (result.lost, result.survived) == (0, 2), report
    # The engine's refusal of the first restart, and the kill while the run restarted
    # front (the step lasts until the retry).
    assert result.injected == 2, report
    assert [step for _, step in result.recoveries] == ["restarting_front"], report
