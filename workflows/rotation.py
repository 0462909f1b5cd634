"""RotateSmtpCredentials: a tenant's admin password replaced, stored and proven.

    server_exists ─► rotate_admin_credentials ─► audit smtp_credentials_rotated
    server gone, or record withdrawn ─► remove_rotation_schedule ─► audit
    rotation failed ─► audit smtp_credentials_rotation_failed ─► the run fails

Started by the tenant's Temporal Schedule `rotate-{tenant}` (every interval of
the record's `rotation_policy`) or at once by `starter.py rotate TENANT`, which
triggers the same schedule so the two never overlap. The argument is the
MailuTarget the schedule carries: server name, address, pinned host key; no secret.

A failed run leaves Vault holding the password MailU accepts (the activity undoes
its Vault write when MailU did not take the new password), and the next run
(the next interval, or an operator's `rotate`) tries again; the `rotation overdue`
alert (deploy/observability) tells operators before the policy's age is exceeded.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.contracts import AuditEvent, MailuTarget
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE, RotatedCredentials, RotationResult

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AuditActivities,
        CredentialsActivities,
        RotationScheduleActivities,
        VpsActivities,
    )
    from workflows.provision import AUDIT, _error_type, _reason

# The same audit retry as provisioning: the row must not be lost.
AUDIT_OPTIONS: dict[str, Any] = AUDIT
# One provider GET; the provider's transient errors clear within minutes.
SERVER_EXISTS: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60), maximum_attempts=8),
)
# Vault write, one SSH session and an SMTP login. A retry starts over from the
# current Vault version (the activity undid its own write if MailU refused), so
# retrying is safe; after about an hour of failures the run gives up and is audited.
ROTATE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=3),
    schedule_to_close_timeout=timedelta(hours=1),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=10),
        maximum_interval=timedelta(minutes=5),
        non_retryable_error_types=["CredentialsWithdrawn", "HostKeyMismatch"],
    ),
)
# Deleting a schedule is one Temporal call.
REMOVE_SCHEDULE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(hours=1),
    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
)
# Why a rotation stops for good instead of retrying: the tenant no longer exists.
TENANT_GONE = ("CredentialsWithdrawn",)


@workflow.defn(name=ROTATION_WORKFLOW_TYPE)
class RotateSmtpCredentials:
    @workflow.run
    async def run(self, target: MailuTarget) -> RotationResult:
        tenant = target.tenant_id
        exists: bool = await workflow.execute_activity_method(
            VpsActivities.server_exists, target, **SERVER_EXISTS
        )
        if not exists:
            return await self._retire(target, f"server {target.server_name} no longer exists")
        try:
            rotated: RotatedCredentials = await workflow.execute_activity_method(
                CredentialsActivities.rotate_admin_credentials,
                target,
                **ROTATE,
            )
        except ActivityError as err:
            if _error_type(err) in TENANT_GONE:
                return await self._retire(target, _reason(err))
            await self._audit(
                "smtp_credentials_rotation_failed",
                tenant,
                {"error_type": _error_type(err), "reason": _reason(err)},
            )
            raise ApplicationError(
                f"rotation failed for tenant {tenant}: {_reason(err)}",
                {"error_type": _error_type(err)},
                type="RotationFailed",
                non_retryable=True,
            ) from err
        await self._audit(
            "smtp_credentials_rotated",
            tenant,
            {
                "username": rotated.username,
                "vault_path": rotated.vault_path,
                "vault_version": str(rotated.version),
                "previous_version": str(rotated.previous_version),
                "reissued": str(rotated.reissued).lower(),
            },
        )
        return RotationResult(tenant, "rotated", rotated.version, rotated.last_rotated)

    async def _retire(self, target: MailuTarget, reason: str) -> RotationResult:
        """The tenant's server or record is gone: remove its schedule, say so in the audit."""
        await workflow.execute_activity_method(
            RotationScheduleActivities.remove_rotation_schedule, target, **REMOVE_SCHEDULE
        )
        await self._audit("rotation_schedule_removed", target.tenant_id, {"reason": reason})
        return RotationResult(target.tenant_id, "schedule_removed", reason=reason)

    async def _audit(self, event: str, tenant: str, details: dict[str, str]) -> None:
        info = workflow.info()
        await workflow.execute_activity_method(
            AuditActivities.record_audit_event,
            AuditEvent(f"{info.workflow_id}/{info.run_id}/{event}", event, tenant, details),
            **AUDIT_OPTIONS,
        )
