"""RotateSmtpCredentials: a tenant's admin password replaced, stored and proven.

    decode {"tenant_id"} ─► rotate_admin_credentials (target read from our records)
        ─► audit smtp_credentials_rotated
    server gone, or record withdrawn ─► remove_rotation_schedule ─► audit
    records disagree ─► the run fails at once (RotationRecordsDisagree), nothing written
    rotation failed ─► audit smtp_credentials_rotation_failed ─► the run fails

Started by the tenant's Temporal Schedule `rotate-{tenant}` (every interval of
the record's `rotation_policy`) or at once by `starter.py rotate TENANT`, which
triggers the same schedule so the two never overlap. Any client of the namespace
can start it too, so the argument is only `{"tenant_id": ...}`: the server, its
pinned host key and the admin mailbox come from the provider's labels, the worker's
own key derivation and the Vault record (activities/rotation_target.py).

The argument arrives raw: the queue's dynamic workflow (ProvisionMailTenant in
workflows/dispatch.py) hands this type's runs to `Rotation`, because only a
dynamic workflow gets every start argument undecoded; a bad or missing argument
then ends the run at once with InvalidRotationRequest instead of failing the
workflow task forever.

A failed run leaves Vault holding the password MailU accepts (the activity undoes
its Vault write when MailU did not take the new password), and the next run
(the next interval, or an operator's `rotate`) tries again; the `rotation overdue`
alert (deploy/observability) tells operators before the policy's age is exceeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.contracts import AuditEvent
from workflows.rotation_contracts import (
    InvalidRotationRequest,
    RotatedCredentials,
    RotationRequest,
    RotationResult,
    RotationStatus,
    rotation_request_from_payloads,
)

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        AuditActivities,
        CredentialsActivities,
        RotationScheduleActivities,
    )
    from workflows.failures import error_type as _error_type
    from workflows.failures import reason as _reason
    from workflows.policies import AUDIT

# The same audit retry as provisioning: the row must not be lost.
AUDIT_OPTIONS: dict[str, Any] = AUDIT
# The provider and Vault reads, a Vault write, one SSH session and an SMTP login. A
# retry starts over from the records (the activity undid its own write if MailU
# refused), so retrying is safe; after about an hour of failures the run gives up
# and is audited.
ROTATE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=3),
    schedule_to_close_timeout=timedelta(hours=1),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=10),
        maximum_interval=timedelta(minutes=5),
        non_retryable_error_types=[
            "CredentialsWithdrawn",
            "ServerGone",
            "RotationRecordsDisagree",
            "HostKeyMismatch",
        ],
    ),
)
# Deleting a schedule is one Temporal call.
REMOVE_SCHEDULE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(hours=1),
    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
)
# Why a rotation stops for good instead of retrying: the tenant no longer exists.
TENANT_GONE = ("CredentialsWithdrawn", "ServerGone")
# Our own records contradict each other: refused, nothing written, nothing audited
# (the run fails naming the field; an operator must decide which record is wrong).
REFUSED = ("RotationRecordsDisagree",)


class Rotation:
    """One rotation run; ProvisionMailTenant runs it for the RotateSmtpCredentials type."""

    def __init__(self) -> None:
        self.status = RotationStatus(tenant_id=None, state="running")

    async def run(self, args: Sequence[RawValue]) -> RotationResult:
        request = self._validate(args)
        self.status.tenant_id = request.tenant_id
        try:
            result = await self._rotate(request)
        except BaseException:
            self.status.state = "failed"
            raise
        self.status.state = result.outcome
        return result

    @staticmethod
    def _validate(args: Sequence[RawValue]) -> RotationRequest:
        try:
            return rotation_request_from_payloads(
                [(arg.payload.metadata.get("encoding", b""), arg.payload.data) for arg in args]
            )
        except InvalidRotationRequest as err:
            raise ApplicationError(
                str(err),
                {"field": err.field, "rule": err.rule},
                type="InvalidRotationRequest",
                non_retryable=True,
            ) from None

    async def _rotate(self, request: RotationRequest) -> RotationResult:
        tenant = request.tenant_id
        try:
            rotated: RotatedCredentials = await workflow.execute_activity_method(
                CredentialsActivities.rotate_admin_credentials, request, **ROTATE
            )
        except ActivityError as err:
            if _error_type(err) in TENANT_GONE:
                return await self._retire(request, _reason(err))
            if _error_type(err) in REFUSED:
                raise ApplicationError(
                    _reason(err), type=_error_type(err), non_retryable=True
                ) from err
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

    async def _retire(self, request: RotationRequest, reason: str) -> RotationResult:
        """The tenant's server or record is gone: remove its schedule, say so in the audit.

        A tenant with neither a server nor a schedule was never ours (or is long gone):
        the run is refused and nothing is written, so a client naming any tenant id it
        likes creates no audit row.
        """
        removed: bool = await workflow.execute_activity_method(
            RotationScheduleActivities.remove_rotation_schedule, request, **REMOVE_SCHEDULE
        )
        if not removed:
            raise ApplicationError(
                f"nothing to rotate for tenant {request.tenant_id}: {reason}, and it has no "
                "rotation schedule",
                type="TenantUnknown",
                non_retryable=True,
            )
        await self._audit("rotation_schedule_removed", request.tenant_id, {"reason": reason})
        return RotationResult(request.tenant_id, "schedule_removed", reason=reason)

    async def _audit(self, event: str, tenant: str, details: dict[str, str]) -> None:
        info = workflow.info()
        await workflow.execute_activity_method(
            AuditActivities.record_audit_event,
            AuditEvent(f"{info.workflow_id}/{info.run_id}/{event}", event, tenant, details),
            **AUDIT_OPTIONS,
        )
