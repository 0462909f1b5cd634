"""Workflow metrics: runs started, completed and failed, compensations, rotations,
deprovisionings, activations.

Recorded through the workflow's own metric meter, which the SDK silences while a
workflow replays, so a run is counted once however often a worker replays it.
The names are those of the Prometheus endpoint (MAILPROV_METRICS_BIND); alerts and
the dashboard in deploy/observability/ use them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.worker import ExecuteWorkflowInput, WorkflowInboundInterceptor

from workflows.activation_contracts import ACTIVATION_WORKFLOW_TYPE
from workflows.deprovision_contracts import DEPROVISION_WORKFLOW_TYPE
from workflows.plan_change_contracts import PLAN_CHANGE_WORKFLOW_TYPE
from workflows.rotation_contracts import ROTATION_WORKFLOW_TYPE

STARTED = "mailprov_workflow_started"
COMPLETED = "mailprov_workflow_completed"
FAILED = "mailprov_workflow_failed"
DURATION = "mailprov_workflow_duration_seconds"
COMPENSATIONS = "mailprov_compensations"
ROTATIONS = "mailprov_rotations"
PLAN_CHANGE_DOWNTIME = "mailprov_plan_change_downtime_seconds"
DEPROVISIONS = "mailprov_deprovisions"
ACTIVATIONS = "mailprov_activations"
ACTIVATION_FRONT_RESTARTS = "mailprov_activation_front_restarts"


def failure_type(err: BaseException) -> str:
    """The error type operators group failures by; a compensated purchase names its cause."""
    if isinstance(err, ApplicationError):
        details = err.details[0] if err.details else None
        if isinstance(details, dict) and details.get("error_type"):
            return str(details["error_type"])
        return err.type or "ApplicationError"
    return type(err).__name__


class WorkflowMetrics(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        meter = workflow.metric_meter().with_additional_attributes(
            {"workflow": workflow.info().workflow_type}
        )
        meter.create_counter(STARTED, "workflow runs started").add(1)
        started = workflow.now()
        try:
            result = await super().execute_workflow(input)
        except (FailureError, asyncio.CancelledError) as err:
            # Only failures that end the run: any other exception fails the workflow
            # task, which Temporal retries, and would be counted on every retry.
            error_type = "cancelled" if isinstance(err, asyncio.CancelledError) else None
            error_type = error_type or failure_type(err)
            meter.create_counter(FAILED, "workflow runs failed").with_additional_attributes(
                {"error_type": error_type}
            ).add(1)
            if isinstance(err, ApplicationError) and err.type == "ProvisioningFailed":
                meter.create_counter(
                    COMPENSATIONS, "purchases undone after a failure"
                ).with_additional_attributes({"error_type": error_type}).add(1)
            raise
        meter.create_counter(COMPLETED, "workflow runs completed").add(1)
        meter.create_histogram_float(
            DURATION, "workflow run duration, start to completion", "s"
        ).record((workflow.now() - started).total_seconds())
        # By type name, not isinstance: the sandbox imports its own copy of the class.
        if workflow.info().workflow_type == ROTATION_WORKFLOW_TYPE:
            meter.create_counter(ROTATIONS, "rotation runs by outcome").with_additional_attributes(
                {"outcome": result.outcome}
            ).add(1)
        if workflow.info().workflow_type == PLAN_CHANGE_WORKFLOW_TYPE:
            meter.create_histogram_float(
                PLAN_CHANGE_DOWNTIME, "mail server down during a plan change, stop to healthy", "s"
            ).record(result.downtime_seconds)
        if workflow.info().workflow_type == DEPROVISION_WORKFLOW_TYPE:
            meter.create_counter(
                DEPROVISIONS, "deprovisioning runs by outcome"
            ).with_additional_attributes({"outcome": result.outcome}).add(1)
        if workflow.info().workflow_type == ACTIVATION_WORKFLOW_TYPE:
            meter.create_counter(
                ACTIVATIONS,
                "activation runs by outcome (active, gave_up, tenant_gone) and the stage "
                "reached (dns, tls, active)",
            ).with_additional_attributes({"outcome": result.outcome, "stage": result.stage}).add(1)
            if result.front_restarted:
                # MailU 2024.06 needed front restarted for its first certificate (#3827).
                meter.create_counter(
                    ACTIVATION_FRONT_RESTARTS, "activations that restarted MailU's front"
                ).add(1)
        return result
