"""CheckWorld: compare every record of the world once (`starter.py check-world`).

One activity (activities/world.py check_world) reads the provider's labelled servers,
the tenants' Vault records, the running tenant claims (and runs the claims' owner
check on each), the rotation schedules, the audit log and the purchase runs Temporal
still knows, and returns every disagreement with the fix it suggests
(workflows/world_check_contracts.py). It changes nothing. Run by hand, or by the
Schedule `mail-provisioning-check-world` (`starter.py check-world --schedule-every-minutes
N`), which alerts through the gauge `mailprov_world_disagreements{kind}`.

It takes no argument; whatever a client passes is taken raw and ignored, and a start
the SDK cannot decode fails the run at once (failure_exception_types).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, RetryPolicy

from workflows.world_check_contracts import WORLD_CHECK_WORKFLOW, WorldReport

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import WorldActivities

_NO_ARGUMENT = RawValue(Payload())


@workflow.defn(name=WORLD_CHECK_WORKFLOW, failure_exception_types=[RuntimeError, TypeError])
class CheckWorld:
    @workflow.run
    async def run(self, ignored: RawValue = _NO_ARGUMENT) -> WorldReport:
        del ignored
        report: WorldReport = await workflow.execute_activity_method(
            WorldActivities.check_world,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return report
