"""Activity metrics: duration per step, Vault and provider errors, credential age,
refused audit appends.

Recorded through the activity metric meter, so they appear on the worker's
Prometheus endpoint beside the SDK's own metrics. The worker's one interceptor
(runtime/interceptor.py) records them for every activity: no activity carries metric
code of its own.
"""

from __future__ import annotations

import time
from typing import Any

from temporalio import activity
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError

from workflows import world_check_contracts
from workflows.contracts import StoredCredentials
from workflows.metrics import DURATION as WORKFLOW_DURATION
from workflows.rotation_contracts import RotatedCredentials

STEP_DURATION = "mailprov_activity_duration_seconds"
VAULT_ERRORS = "mailprov_vault_errors"
PROVIDER_ERRORS = "mailprov_provider_errors"
LAST_ROTATED = "mailprov_credentials_last_rotated_timestamp_seconds"
AUDIT_CHAIN_BROKEN = "mailprov_audit_chain_broken"
# The failure type of an append refused because the audit chain does not verify
# (activities/audit.py raises it; the import rules keep the two modules apart).
AUDIT_CHAIN_BROKEN_TYPE = "AuditChainBroken"
# Set by check-world (activities/world.py check_world; the names live with its contracts
# so that the activity, which may not import this module, uses them too).
WORLD_DISAGREEMENTS = world_check_contracts.WORLD_DISAGREEMENTS
WORLD_CHECKED = world_check_contracts.WORLD_CHECKED
# Seconds: SSH steps take seconds to many minutes (set_up_mailu up to 20).
STEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
# For the Prometheus exporter (worker.py): the SDK's default buckets are not seconds.
HISTOGRAM_BUCKETS = {
    STEP_DURATION: STEP_BUCKETS,
    WORKFLOW_DURATION: (*STEP_BUCKETS, 1800.0, 3600.0, 7200.0),
}
VAULT_ERROR_TYPES = {"VaultError", "CasConflict"}
PROVIDER_PREFIX = "Provider."


class ActivityMeters:
    """The activity metrics' instruments, made once per activity type, not per attempt.

    `activity.metric_meter()` builds a meter with the attempt's namespace, task queue and
    activity type for every attempt, and each `create_*` and `with_additional_attributes`
    on a Prometheus-backed meter is a call into the SDK's core; the instruments and their
    labels are the same for every attempt of a type, so they are kept here, keyed by
    namespace, task queue and activity type. One instance per worker (the worker's
    interceptor holds it; worker.worker_interceptors() makes a new one for each worker),
    since the meter also carries the worker's runtime.
    """

    def __init__(self) -> None:
        self._by_type: dict[tuple[str, str, str], _TypeMeters] = {}

    def of(self, info: activity.Info) -> _TypeMeters:
        """The instruments of the current attempt's activity type (inside an activity)."""
        key = (info.namespace, info.task_queue, info.activity_type)
        meters = self._by_type.get(key)
        if meters is None:
            meters = self._by_type[key] = _TypeMeters(
                activity.metric_meter().with_additional_attributes({"activity": info.activity_type})
            )
        return meters


class _TypeMeters:
    """One activity type's meter and its attempt-duration histogram per outcome."""

    def __init__(self, meter: MetricMeter) -> None:
        self.meter = meter
        duration = meter.create_histogram_float(STEP_DURATION, "activity attempt duration", "s")
        self.completed = duration.with_additional_attributes({"outcome": "completed"})
        self.failed = duration.with_additional_attributes({"outcome": "failed"})

    def record_failure(self, seconds: float, err: BaseException) -> None:
        if isinstance(err, ApplicationError):
            _count_error(self.meter, err)
        self.failed.record(seconds)

    def record_success(self, seconds: float, result: Any, tenant: str | None) -> None:
        self.completed.record(seconds)
        # The storing activities' arguments all name their tenant (workflows/contracts.py).
        if tenant is not None and isinstance(result, (RotatedCredentials, StoredCredentials)):
            self.meter.create_gauge(
                LAST_ROTATED, "when the tenant's admin password was last set", "s"
            ).with_additional_attributes({"tenant": tenant}).set(int(time.time()))


def _count_error(meter: Any, err: ApplicationError) -> None:
    error_type = err.type or ""
    if error_type in VAULT_ERROR_TYPES:
        meter.create_counter(VAULT_ERRORS, "Vault calls that failed").with_additional_attributes(
            {"error_type": error_type, "retryable": str(not err.non_retryable).lower()}
        ).add(1)
    elif error_type == AUDIT_CHAIN_BROKEN_TYPE:
        meter.create_counter(
            AUDIT_CHAIN_BROKEN, "audit appends refused: the chain does not verify"
        ).add(1)
    elif error_type.startswith(PROVIDER_PREFIX):
        meter.create_counter(
            PROVIDER_ERRORS, "provider API calls that failed"
        ).with_additional_attributes({"code": error_type.removeprefix(PROVIDER_PREFIX)}).add(1)
