"""Start, watch and query purchases: the CLI a back end or an operator uses.

    python starter.py start --purchase-id p-1 --tenant-id acme --domain acme.example \\
        --plan starter --requested-by shop --wait
    python starter.py start --file purchase.json --wait
    python starter.py status p-1
    python starter.py result p-1
    python starter.py credentials acme     # reader role: VAULT_ADDR, VAULT_TOKEN(_FILE)
    python starter.py switch-codec-key 2027-05   # after `python -m runtime.codec add`
    python starter.py replay history.json  # `temporal workflow show -o json` output, encrypted
    python starter.py reconcile --dry-run  # orphaned servers (terminated runs), once
    python starter.py schedule-reconciler --every-minutes 15 --grace-minutes 60
    python starter.py audit-verify --checkpoint  # auditor role: VAULT_ADDR, VAULT_TOKEN(_FILE)
    python starter.py check-world          # read-only: do all records agree? exit 1 if not
    python starter.py change-plan acme business --wait  # ChangeMailPlan, downtime reported
    python starter.py deprovision acme --reason cancelled --wait  # DeprovisionMailTenant
    python starter.py activation-status acme   # ActivateMailDomain: what DNS/TLS still misses
    python starter.py activate acme --dns-published  # the customer says DNS is in: check now

Human-readable progress goes to stderr; the result (JSON, never a secret) goes to
stdout, so `... | jq` works. Exit codes: 0 success, 1 the run failed, 2 bad input
or configuration, 3 not found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import PollerInfo, TaskQueue
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.exceptions import CancelledError, TerminatedError, WorkflowAlreadyStartedError
from temporalio.exceptions import TimeoutError as RunTimeoutError
from temporalio.service import RPCError, RPCStatusCode

from activities.connections import (
    ConnectionConfigError,
    connect_temporal,
    load_temporal_connection,
    vault_transport,
)
from runtime.codec import (
    CodecKeyError,
    KeyRing,
    UnknownKeyId,
    data_converter,
    keys_in_identity,
)
from runtime.exit import exit_without_teardown
from workflows.activation_contracts import (
    ACTIVATION_WORKFLOW_TYPE,
    DNS_PUBLISHED_SIGNAL,
    ActivationRequest,
    ActivationStatus,
    InvalidActivationRequest,
    activation_workflow_id,
)
from workflows.contracts import (
    DEFAULT_TASK_QUEUE,
    STEPS,
    WORKFLOW_TYPE,
    ProvisionResult,
    ProvisionStatus,
    PurchaseRequest,
    workflow_id_for,
)
from workflows.deprovision_contracts import (
    DEPROVISION_WORKFLOW_TYPE,
    DeprovisionRequest,
    DeprovisionResult,
    InvalidDeprovisionRequest,
    deprovision_workflow_id,
)
from workflows.dispatch import ProvisionMailTenant
from workflows.failures import cancelled_message
from workflows.input_rules import InvalidPurchaseRequest, decode_purchase_json
from workflows.plan_change_contracts import (
    PLAN_CHANGE_WORKFLOW_TYPE,
    InvalidPlanChangeRequest,
    PlanChangeRequest,
    PlanChangeResult,
    PlanChangeStatus,
    plan_change_workflow_id,
)
from workflows.reconcile_contracts import (
    RECONCILE_SCHEDULE_ID,
    RECONCILE_WORKFLOW,
    ReconcileReport,
    ReconcileRequest,
)
from workflows.world_check_contracts import (
    WORLD_CHECK_SCHEDULE_ID,
    WORLD_CHECK_WORKFLOW,
    WorldReport,
)

# The commands' heavier parts (Vault, the audit store, the replayer, the schedules'
# helpers) are imported by the commands that use them: most invocations are `start` or
# `status`, and importing everything cost each of them ~0.3 s of CPU.
if TYPE_CHECKING:
    from temporalio.worker import WorkflowReplayResult

    from activities.audit import AuditReport, Head
    from activities.audit_vault import AuditSettings
    from activities.vault import Vault, VaultSettings

# A query needs a live worker; do not let a missing one stall the CLI.
QUERY_TIMEOUT = timedelta(seconds=5)


class StarterError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def start_purchase(
    client: Client, request: PurchaseRequest, task_queue: str
) -> tuple[WorkflowHandle[Any, Any], bool]:
    """Start (or join) the purchase's workflow. Returns the handle and whether it is new.

    USE_EXISTING makes a repeated start while it runs return the running one;
    REJECT_DUPLICATE makes a finished purchase impossible to provision twice.
    """
    workflow_id = workflow_id_for(request.purchase_id)
    try:
        handle = await client.start_workflow(
            WORKFLOW_TYPE,
            asdict(request),
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            result_type=ProvisionResult,
            static_summary=f"mail server for {request.tenant_id} ({request.domain})",
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(workflow_id, result_type=ProvisionResult), False
    # With USE_EXISTING the server answers with the running run and `started=False`;
    # the SDK keeps that answer on the handle but exposes no public accessor for it.
    response = getattr(handle, "_start_workflow_response", None)
    return handle, bool(getattr(response, "started", True))


async def query_status(handle: WorkflowHandle[Any, Any]) -> ProvisionStatus:
    status: ProvisionStatus = await handle.query(
        "status", result_type=ProvisionStatus, rpc_timeout=QUERY_TIMEOUT
    )
    return status


# Activity type -> the step name the status query uses, where they differ; None: not shown.
STEP_OF_ACTIVITY: dict[str, str | None] = {
    "bring_up_server": "wait_for_server",
    "set_up_mailu": "configure_mailu",
    "record_audit_event": "audit",
    "ensure_rotation_schedule": "schedule_rotation",
    "notify_customer": "notify",
    "delete_purchase_servers": "delete_server",
}
_ACTIVITY_OUTCOME = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "done",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "failed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "failed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "cancelled",
}


# How often `start --wait` asks what a running step waits for: a describe (no billable
# action) shows the activity's attempt, its last heartbeat details and last failure.
WAIT_REPORT_SECONDS = 10.0


async def watch(
    handle: WorkflowHandle[Any, Any],
    *,
    quiet: bool = False,
    converter: DataConverter | None = None,
    report_every: float = WAIT_REPORT_SECONDS,
) -> ProvisionResult:
    """Show each step as it starts and ends until the run finishes, then return its result.

    Progress comes from the run's history, long-polled: unlike a `status` query a
    second (up to 170 billable actions per purchase on Temporal Cloud), it costs no
    action and needs no live worker. The two steps that are not activities are read
    from it too: validation is done once any activity is scheduled, and a completed
    run that never scheduled a notification skipped it. Each ended step shows how long
    it took (scheduled to ended, retries included). With a `converter`, what a running
    step waits for is shown as it changes (`_report_waits`). `quiet` prints nothing.
    """
    shown: set[tuple[str, str]] = set()
    scheduled: dict[int, tuple[str | None, datetime]] = {}
    reporter = None
    if converter is not None and not quiet:
        reporter = asyncio.create_task(_report_waits(handle, converter, report_every))
    try:
        async for event in handle.fetch_history_events(wait_new_event=True):
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = event.activity_task_scheduled_event_attributes.activity_type.name
                step = STEP_OF_ACTIVITY.get(name, name)
                scheduled[event.event_id] = (step, event.event_time.ToDatetime(tzinfo=UTC))
                if step != "validate_input":
                    _show_step("validate_input", "done", shown, quiet)
                _show_step(step, "running", shown, quiet)
            elif event.event_type in _ACTIVITY_OUTCOME:
                outcome = getattr(event, event.WhichOneof("attributes") or "")
                step, since = scheduled.get(outcome.scheduled_event_id, ("?", None))
                took = event.event_time.ToDatetime(tzinfo=UTC) - since if since else None
                _show_step(step, _ACTIVITY_OUTCOME[event.event_type], shown, quiet, took)
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    result: ProvisionResult = await handle.result()
    if "notify" not in {step for step, _ in scheduled.values()}:
        _show_step("notify", "skipped", shown, quiet)
    return result


async def _report_waits(
    handle: WorkflowHandle[Any, Any], converter: DataConverter, every: float
) -> None:
    """Every `every` seconds, what each running step waits for, when it changed: its
    attempt, its last heartbeat details (boot, cloud-init, image pulls...) and, on a
    retry, the last attempt's failure."""
    last: dict[str, str] = {}
    while True:
        await asyncio.sleep(every)
        try:
            description = await handle.describe()
        except RPCError:
            continue  # the server is briefly unreachable: the history poll reports it
        for pending in description.raw_description.pending_activities:
            name = pending.activity_type.name
            step = STEP_OF_ACTIVITY.get(name, name)
            if step is None:
                continue
            what = await _waiting_for(pending, converter)
            if what and last.get(pending.activity_id) != what:
                last[pending.activity_id] = what
                say(f"  [{_position(step)}] {step:<26} {what}")


async def _waiting_for(pending: PendingActivityInfo, converter: DataConverter) -> str:
    parts = []
    if pending.heartbeat_details.payloads:
        try:
            details = await converter.decode(pending.heartbeat_details.payloads)
            parts.append("waiting: " + "; ".join(str(d) for d in details)[:200])
        except Exception as err:  # an undecodable detail must not stop the progress
            parts.append(f"waiting (details unreadable: {type(err).__name__})")
    if pending.attempt > 1:
        retry = f"attempt {pending.attempt}"
        if pending.HasField("last_failure"):
            failure = await converter.decode_failure(pending.last_failure)
            retry += f", last: {str(failure)[:200]}"
        parts.append(retry)
    return "; ".join(parts)


def _show_step(
    step: str | None,
    state: str,
    shown: set[tuple[str, str]],
    quiet: bool,
    took: timedelta | None = None,
) -> None:
    if step is None or (step, state) in shown:
        return
    shown.add((step, state))
    if not quiet:
        duration = f" ({_duration(took)})" if took is not None else ""
        say(f"  [{_position(step)}] {step:<26} {state}{duration}")


def _position(step: str) -> str:
    return f"{STEPS.index(step) + 1}/{len(STEPS)}" if step in STEPS else "undo"


def _duration(took: timedelta) -> str:
    seconds = took.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def web_ui_link(
    ui_url: str | None, namespace: str, workflow_id: str, run_id: str | None
) -> str | None:
    if not ui_url:
        return None
    base = f"{ui_url.rstrip('/')}/namespaces/{namespace}/workflows/{workflow_id}"
    return f"{base}/{run_id}/history" if run_id else base


def describe_failure(err: WorkflowFailureError) -> str:
    cause: BaseException | None = err.cause
    messages = []
    while cause is not None:
        messages.append(str(cause))
        cause = cause.__cause__ if cause.__cause__ is not cause else None
    return messages[-1] if messages else str(err)


def _request_from_args(args: argparse.Namespace) -> PurchaseRequest:
    if args.file:
        try:
            # Bounded like the workflow's own decoding: a hostile file cannot exhaust the stack.
            raw = decode_purchase_json(Path(args.file).read_bytes())
        except OSError as err:
            raise StarterError(f"cannot read {args.file}: {err.strerror}", 2) from None
        except InvalidPurchaseRequest as err:
            raise StarterError(f"{args.file}: {err}", 2) from None
    else:
        raw = {
            "purchase_id": args.purchase_id,
            "tenant_id": args.tenant_id,
            "domain": args.domain,
            "plan": args.plan,
            "requested_by": args.requested_by,
        }
        if args.notify_url:
            raw["notify_url"] = args.notify_url
        raw = {k: v for k, v in raw.items() if v is not None}
    try:
        return PurchaseRequest.parse(raw)
    except InvalidPurchaseRequest as err:
        raise StarterError(str(err), 2) from None


async def _connect(args: argparse.Namespace) -> Client:
    """Temporal's own client configuration (TEMPORAL_* variables, temporal.toml profiles:
    activities/connections.py, the same as the worker's); --address/--namespace/--profile win."""
    keyring = _keyring(args)
    try:
        connection = load_temporal_connection(
            os.environ, address=args.address, namespace=args.namespace, profile=args.profile
        )
        for warning in connection.warnings:
            say(f"warning: {warning}")
        client = await connect_temporal(connection, data_converter=data_converter(keyring))
    except ConnectionConfigError as err:
        raise StarterError(str(err), 2) from None
    return client


def _keyring(args: argparse.Namespace) -> KeyRing:
    if not args.codec_keys_file:
        raise StarterError("--codec-keys-file or MAILPROV_CODEC_KEYS_FILE is required", 2)
    try:
        return KeyRing.from_file(Path(args.codec_keys_file))
    except CodecKeyError as err:
        raise StarterError(f"codec keys: {err}", 2) from None


def _print_result(result: ProvisionResult) -> None:
    print(json.dumps(asdict(result), indent=2), flush=True)


async def cmd_start(args: argparse.Namespace) -> int:
    request = _request_from_args(args)
    client = await _connect(args)
    handle, is_new = await start_purchase(client, request, args.task_queue)
    description = await handle.describe()
    link = web_ui_link(args.ui_url, client.namespace, handle.id, description.run_id)
    if is_new:
        say(f"started {handle.id} (run {description.run_id})")
    elif description.status and description.status.name == "RUNNING":
        say(f"{handle.id} is already running: joined it, nothing new started")
    else:
        state = description.status.name.lower() if description.status else "closed"
        say(f"{handle.id} already ran ({state}): a purchase is never provisioned twice")
    if link:
        say(f"web ui: {link}")
    if not args.wait and is_new:
        return 0
    return await _finish(
        client, handle, watch_progress=bool(args.wait), report_every=args.progress_every
    )


async def _finish(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    watch_progress: bool,
    report_every: float = WAIT_REPORT_SECONDS,
) -> int:
    try:
        result = (
            await watch(handle, converter=client.data_converter, report_every=report_every)
            if watch_progress
            else await handle.result()
        )
    except WorkflowFailureError as err:
        say(f"FAILED {handle.id}: {await ended_message(client, handle, err)}")
        return 1
    _print_result(result)
    return 0


# What is left of a run its code did not end: the reconciler finds and removes it.
NOTHING_UNDONE = (
    "no compensation ran: what it made stays until `starter.py reconcile` (or its "
    "schedule) removes it"
)


async def ended_message(
    client: Client, handle: WorkflowHandle[Any, Any], err: WorkflowFailureError
) -> str:
    """Why the run has no result, in the project's words.

    A failure carries its own message (`provisioning failed at <step>: ...`). A
    cancelled, terminated or timed-out run carries none of ours (Temporal records no
    message for them), so the step comes from the status query's `stopped_at`.
    """
    cause = err.cause
    if not isinstance(cause, CancelledError | TerminatedError | RunTimeoutError):
        return describe_failure(err)
    status, _ = await run_status(client, handle)
    at = f" at {status.stopped_at}" if status.stopped_at else ""
    if isinstance(cause, CancelledError):
        if status.stopped_at:
            return cancelled_message(status.stopped_at)
        return "purchase cancelled; compensated (no worker answered which step)"
    if isinstance(cause, TerminatedError):
        return f"purchase terminated{at} ({cause.message}); {NOTHING_UNDONE}"
    return f"purchase timed out{at} (its execution timeout); {NOTHING_UNDONE}"


async def cmd_status(args: argparse.Namespace) -> int:
    client = await _connect(args)
    handle = client.get_workflow_handle(workflow_id_for(args.purchase_id))
    try:
        status, problem = await run_status(client, handle)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise StarterError(f"no purchase {args.purchase_id!r} ({handle.id})", 3) from None
        raise
    answer: dict[str, Any] = asdict(status)
    if problem is not None:
        answer["purchase_id"] = args.purchase_id
        answer["note"] = f"no step details: {problem}; state is from the server"
    print(json.dumps(answer, indent=2), flush=True)
    return 0


# The server's word on a run, in the words of the status query's `state`.
SERVER_STATES = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
}
# States the workflow code itself ends in; any other closed state was imposed by the server.
ENDED_BY_THE_CODE = frozenset({"completed", "failed", "cancelled"})


def settle_status(
    status: ProvisionStatus, server: WorkflowExecutionStatus | None
) -> ProvisionStatus:
    """The status query's answer, corrected by what the server reports.

    A query is answered by replaying the history, so a run the server stopped without
    its code (terminated, timed out) answers with its last state: `running`, at the
    step it was in. The server's word wins: that step becomes `stopped_at`, no step is
    current, and the step that was running is shown `interrupted`.
    """
    state = SERVER_STATES.get(server, "unknown") if server is not None else "unknown"
    if state == "running" or state == status.state:
        return status
    if state in ENDED_BY_THE_CODE and status.state in ENDED_BY_THE_CODE:
        return status  # a query racing the close: the code's own words are the same end
    steps = [
        replace(step, state="interrupted") if step.state == "running" else step
        for step in status.steps
    ]
    return replace(
        status,
        state=state,
        current_step=None,
        steps=steps,
        stopped_at=status.stopped_at or status.current_step,
    )


async def run_status(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> tuple[ProvisionStatus, str | None]:
    """The run's status as the query and the server together tell it, and why the
    query could not be asked (None if it was). Raises RPCError NOT_FOUND for no run."""
    description = await handle.describe()
    # Queries are answered by a worker: with none polling, say what the server knows
    # instead of waiting for an answer that cannot come.
    problem = None
    if await _has_workflow_pollers(client, client.namespace, description.task_queue):
        try:
            status = await query_status(handle)
        except (RPCError, WorkflowQueryFailedError) as err:
            problem = str(err)
    else:
        problem = f"no worker is polling task queue {description.task_queue!r}"
    if problem is not None:
        state = (
            SERVER_STATES.get(description.status, "unknown") if description.status else "unknown"
        )
        status = ProvisionStatus(purchase_id=None, tenant_id=None, state=state, current_step=None)
    return settle_status(status, description.status), problem


async def _has_workflow_pollers(client: Client, namespace: str, task_queue: str) -> bool:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return len(response.pollers) > 0


async def cmd_result(args: argparse.Namespace) -> int:
    client = await _connect(args)
    handle = client.get_workflow_handle(
        workflow_id_for(args.purchase_id), result_type=ProvisionResult
    )
    try:
        await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise StarterError(f"no purchase {args.purchase_id!r} ({handle.id})", 3) from None
        raise
    return await _finish(client, handle, watch_progress=False)


# A polling worker asks again at least every minute (a long poll ends after 60-70 s);
# an identity the server saw longer ago than this is a worker that stopped.
POLLER_FRESH = timedelta(seconds=90)


def workers_lacking_key(
    pollers: list[PollerInfo], key_id: str, now: datetime
) -> tuple[list[str], list[str]]:
    """(identities seen polling lately, those among them whose ring lacks `key_id`)."""
    recent = sorted(
        {
            poller.identity
            for poller in pollers
            if now - poller.last_access_time.ToDatetime(tzinfo=UTC) <= POLLER_FRESH
        }
    )
    return recent, [identity for identity in recent if key_id not in keys_in_identity(identity)]


async def cmd_switch_codec_key(args: argparse.Namespace) -> int:
    """Step 2 of a payload key rotation: make an added key current, only once every
    worker polling the task queue has it (so none meets a payload it cannot read)."""
    path = Path(args.codec_keys_file or "")
    ring = _keyring(args)
    try:
        switched = ring.switched(args.key_id)
    except CodecKeyError as err:
        raise StarterError(str(err), 2) from None
    client = await _connect(args)
    pollers: list[PollerInfo] = []
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=args.task_queue),
                task_queue_type=kind,
            )
        )
        pollers.extend(response.pollers)
    recent, lacking = workers_lacking_key(pollers, args.key_id, datetime.now(UTC))
    if not recent:
        raise StarterError(
            f"no worker polled task queue {args.task_queue!r} in the last "
            f"{POLLER_FRESH.seconds} s: nothing confirms the key is rolled out; start the "
            "workers with the added ring first",
            1,
        )
    if lacking:
        raise StarterError(
            f"not switched: {len(lacking)} worker(s) polling {args.task_queue!r} lack key "
            f"{args.key_id!r}: {'; '.join(lacking)}. Give them the ring with the key and "
            f"restart them (a stopped worker's identity ages out within {POLLER_FRESH.seconds} s)",
            1,
        )
    switched.write(path)
    say(
        f"{path}: {args.key_id!r} is current ({len(recent)} worker(s) on {args.task_queue!r} "
        "have it). Give this ring to every process; any of them may encrypt with it first"
    )
    return 0


async def cmd_credentials(args: argparse.Namespace) -> int:
    """Read a tenant's admin credentials back (needs the reader role's Vault token)."""
    from activities.credentials import CredentialsNotFound, read_admin_credentials
    from activities.crypto import EnvelopeError
    from activities.vault import Vault, VaultError

    try:
        vault = Vault(_vault_settings())
        credentials = await asyncio.to_thread(read_admin_credentials, vault, args.tenant_id)
    except CredentialsNotFound as err:
        raise StarterError(str(err), 3) from None
    except EnvelopeError as err:
        raise StarterError(f"refusing the stored envelope: {err}", 1) from None
    except VaultError as err:
        raise StarterError(f"vault: {err}", 2) from None
    print(
        json.dumps(
            {
                "username": credentials.username,
                "password": credentials.password,
                "webmail_url": credentials.webmail_url,
                "vault_version": credentials.vault_version,
            },
            indent=2,
        ),
        flush=True,
    )
    return 0


async def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit log: every row's MAC through Vault, continuity, head vs anchor.

    Needs the auditor's Vault token (VAULT_ADDR, VAULT_TOKEN or VAULT_TOKEN_FILE).
    With --checkpoint, a log that verifies has its head recorded as the auditor's
    checkpoint, which the worker's token cannot move.
    """
    from activities.audit import AnchorMoved, AuditChainBroken
    from activities.audit_vault import DEFAULT_AUDIT_CHAIN, AuditSettings, verify_audit_log
    from activities.vault import Vault, VaultError

    location = (
        args.audit or os.environ.get("MAILPROV_AUDIT_DSN") or os.environ.get("MAILPROV_AUDIT_DB")
    )
    if not location:
        raise StarterError("--audit, MAILPROV_AUDIT_DSN or MAILPROV_AUDIT_DB is required", 2)
    try:
        chain = args.chain or os.environ.get("MAILPROV_AUDIT_CHAIN") or DEFAULT_AUDIT_CHAIN
        settings = AuditSettings(location=location, chain=chain)
    except ValueError as err:
        raise StarterError(str(err), 2) from None
    vault = Vault(_vault_settings())
    try:
        report = await asyncio.to_thread(verify_audit_log, settings, vault)
    except AuditChainBroken as err:  # a store of an earlier, unkeyed layout
        raise StarterError(str(err), 1) from None
    except VaultError as err:
        raise StarterError(f"vault: {err}", 2) from None
    print_audit_report(report, settings.chain)
    if not report.ok:
        return 1
    if args.checkpoint and report.head is not None:
        try:
            await asyncio.to_thread(_write_checkpoint, settings, vault, report.head)
        except (VaultError, AnchorMoved) as err:
            raise StarterError(f"checkpoint not written: {err}", 2) from None
        say(f"checkpoint: seq {report.head.seq} recorded in Vault")
    return 0


# A rewrite of a whole log would otherwise print one line per row.
MAX_PROBLEMS_SHOWN = 50


def print_audit_report(report: AuditReport, chain: str) -> None:
    for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
        say(f"BROKEN: {problem}")
    if len(report.problems) > MAX_PROBLEMS_SHOWN:
        say(f"BROKEN: ... and {len(report.problems) - MAX_PROBLEMS_SHOWN} more")
    for note in report.notes:
        say(f"note: {note}")
    anchored = f"anchored at seq {report.anchor.seq}" if report.anchor else "no anchor yet"
    checkpoint = f", checkpoint at seq {report.checkpoint.seq}" if report.checkpoint else ""
    if report.ok:
        say(
            f"ok: {report.rows} audit rows in chain {chain!r}, MACs and links verify, "
            f"{anchored}{checkpoint}"
        )
    else:
        say(
            f"{len(report.problems)} problem(s) in {report.rows} audit rows of chain {chain!r} "
            f"({anchored}{checkpoint})"
        )


def _write_checkpoint(settings: AuditSettings, vault: Vault, head: Head) -> None:
    from activities.audit_vault import checkpoint_record

    record = checkpoint_record(settings, vault)
    _, version = record.read()
    record.write(head, cas=version)


async def history_damage(events: Sequence[HistoryEvent], codec: PayloadCodec) -> str | None:
    """What makes a history unusable regardless of the code, or None.

    A replay that fails on such a history would otherwise read as nondeterminism: a
    dropped event makes the SDK see commands without their events, a payload that no
    longer authenticates fails the decoding of the workflow task. Event ids are 1, 2,
    ... without gaps in every history Temporal exports; every payload must decrypt.
    """
    for expected, event in enumerate(events, start=1):
        if event.event_id != expected:
            return (
                f"CORRUPTED: event {expected} is missing (ids jump from {expected - 1} to "
                f"{event.event_id}): events were dropped or the export is incomplete"
            )
    by_id = {event.event_id: event for event in events}
    for event in events:
        attributes = getattr(event, event.WhichOneof("attributes") or "", None)
        if not isinstance(attributes, Message):
            continue
        for field, value in attributes.ListFields():
            suffix = EVENT_REFERENCES.get(field.name)
            if suffix is None or not value:
                continue
            target = by_id.get(value)
            if target is None or value >= event.event_id or not _type(target).endswith(suffix):
                named = _type(target) if target is not None else "absent"
                return (
                    f"CORRUPTED: event {event.event_id} ({_type(event)}) names event {value} "
                    f"as its {field.name}, but that event is {named}: events were dropped "
                    "and renumbered, or reordered"
                )
    for event in events:
        for payload in _payloads_in(event):
            try:
                await codec.decode([payload])
            except UnknownKeyId as err:
                return (
                    f"UNDECODABLE: the key ring cannot decrypt this history: event "
                    f"{event.event_id} ({_type(event)}): {err}; replay "
                    "with the ring that has that key"
                )
            except CodecKeyError as err:
                return (
                    f"CORRUPTED: event {event.event_id} ({_type(event)}): "
                    f"{err}: the payload was changed after it was written"
                )
    return None


# An event's reference to an earlier one -> what that event's type must end with.
EVENT_REFERENCES = {
    "scheduled_event_id": "_SCHEDULED",
    "started_event_id": "_STARTED",
    "initiated_event_id": "_INITIATED",
}


def _type(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def _payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload inside a protobuf message (inputs, results, failures, memos...)."""
    if isinstance(message, Payload):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if isinstance(value, Message):
            values: list[Any] = [value]
        elif descriptor.message_type.GetOptions().map_entry:
            values = list(value.values())
        else:
            values = list(value)
        for item in values:
            if isinstance(item, Message):
                yield from _payloads_in(item)


async def replay_history(
    history_json: str, keyring: KeyRing, workflow_id: str | None = None
) -> tuple[WorkflowHistory, WorkflowReplayResult]:
    """Replay an exported history (encrypted or not) against this workflow code.

    The workflow checks that its id is `purchase-{purchase_id}`, so the id is needed;
    `temporal workflow show -o json` does not include it, so by default it is read from
    the (decrypted) input of the first event. A damaged history (history_damage) raises
    StarterError before any replay: it says nothing about the code.
    """
    history = WorkflowHistory.from_json(workflow_id or "", history_json)
    converter = data_converter(keyring)
    assert converter.payload_codec is not None
    damage = await history_damage(history.events, converter.payload_codec)
    if damage is not None:
        raise StarterError(f"{damage}; not a code change, workflow.patched() cannot help", 2)
    if workflow_id is None:
        try:
            started = history.events[0].workflow_execution_started_event_attributes
            [raw] = await converter.decode(started.input.payloads)
            workflow_id = workflow_id_for(raw["purchase_id"])
        except (IndexError, KeyError, TypeError, ValueError) as err:
            raise StarterError(
                f"cannot read the purchase id from the history ({err}); pass --workflow-id", 2
            ) from None
        history = WorkflowHistory(workflow_id, history.events)
    from temporalio.worker import Replayer

    # The activity classes the stories name (through workflows/activity_refs.py) are
    # passed through the sandbox: loaded here, with the purchase story, not on the first
    # activation, where importing httpx, hvac and asyncssh counts against the SDK's 2 s
    # deadlock limit (a loaded machine passed it, and the replay failed as CORRUPTED).
    import workflows.provision  # noqa: F401

    replayer = Replayer(workflows=[ProvisionMailTenant], data_converter=converter)
    return history, await replayer.replay_workflow(history, raise_on_replay_failure=False)


def replay_verdict(workflow_id: str, result: WorkflowReplayResult) -> tuple[str, int]:
    """What a replay's outcome means, and the exit code: only nondeterminism is the code's."""
    failure = result.replay_failure
    if failure is None:
        return "", 0
    if "nondetermin" in str(failure).lower():
        return (
            f"NOT REPLAYABLE {workflow_id}: the current workflow code makes other decisions "
            f"than this history ({failure}); running purchases like it would break on "
            "deploy: guard the change with workflow.patched()",
            1,
        )
    return (
        f"CORRUPTED {workflow_id}: the SDK could not apply this history ({failure}); not a "
        "code change (no nondeterminism): the history was altered or is incomplete",
        2,
    )


async def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a downloaded history against the current code: does a deploy break it?"""
    try:
        text = Path(args.history).read_text()
    except OSError as err:
        raise StarterError(f"cannot read {args.history}: {err.strerror}", 2) from None
    keyring = _keyring(args)
    # The SDK core writes its log lines (WARN Failing workflow task ...) from Rust to
    # file descriptor 1; this command's stdout carries nothing, so point it at stderr.
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        history, result = await replay_history(text, keyring, args.workflow_id)
    except (ValueError, RuntimeError) as err:  # not JSON, or not a history
        raise StarterError(f"{args.history} is not a workflow history: {err}", 2) from None
    finally:
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    verdict, code = replay_verdict(history.workflow_id, result)
    if code:
        say(verdict)
        return code
    say(f"ok: {history.workflow_id} ({len(history.events)} events) replays on the current code")
    return 0


async def run_reconciler(
    client: Client, task_queue: str, request: ReconcileRequest, run_id: str
) -> ReconcileReport:
    """One reconciler pass, now (the schedule runs the same workflow)."""
    report: ReconcileReport = await client.execute_workflow(
        RECONCILE_WORKFLOW,
        request,
        id=f"{RECONCILE_SCHEDULE_ID}-manual-{run_id}",
        task_queue=task_queue,
        result_type=ReconcileReport,
    )
    return report


async def schedule_reconciler(
    client: Client, task_queue: str, request: ReconcileRequest, every: timedelta
) -> None:
    """Create, or update in place, the Temporal Schedule that runs the reconciler.

    Updated like a tenant's rotation schedule: an operator's pause survives a re-run.
    """
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            RECONCILE_WORKFLOW, request, id=RECONCILE_SCHEDULE_ID, task_queue=task_queue
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # A pass still running when the next is due: skip the new one.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    from activities.rotation_schedule import ensure_schedule

    await ensure_schedule(client, RECONCILE_SCHEDULE_ID, schedule)


def _reconcile_request(args: argparse.Namespace) -> ReconcileRequest:
    return ReconcileRequest(grace_seconds=int(args.grace_minutes * 60), dry_run=args.dry_run)


async def cmd_reconcile(args: argparse.Namespace) -> int:
    client = await _connect(args)
    report = await run_reconciler(
        client, args.task_queue, _reconcile_request(args), uuid.uuid4().hex[:8]
    )
    for orphan in report.orphans:
        say(f"{orphan.action}: server {orphan.server_name} ({orphan.run_status} run)")
    print(json.dumps(asdict(report), indent=2))
    return 0


async def check_world(client: Client, task_queue: str, run_id: str) -> WorldReport:
    """One read-only comparison of every record, on a worker (which holds the tokens)."""
    report: WorldReport = await client.execute_workflow(
        WORLD_CHECK_WORKFLOW,
        id=f"{WORLD_CHECK_SCHEDULE_ID}-manual-{run_id}",
        task_queue=task_queue,
        result_type=WorldReport,
    )
    return report


async def schedule_check_world(client: Client, task_queue: str, every: timedelta) -> None:
    """Create, or update in place, the Schedule that runs check-world (alerts: metrics)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            WORLD_CHECK_WORKFLOW, id=WORLD_CHECK_SCHEDULE_ID, task_queue=task_queue
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    from activities.rotation_schedule import ensure_schedule

    await ensure_schedule(client, WORLD_CHECK_SCHEDULE_ID, schedule)


def print_world_report(report: WorldReport) -> None:
    for item in report.disagreements:
        say(f"DISAGREE {item.kind}: {item.subject}: {item.detail}\n    fix: {item.fix}")
    looked_at = ", ".join(f"{count} {name}" for name, count in report.checked.items())
    say(f"{len(report.disagreements)} disagreements ({looked_at})")


async def cmd_check_world(args: argparse.Namespace) -> int:
    """Do servers, Vault records, claims, schedules, audit rows and runs agree?"""
    client = await _connect(args)
    if args.schedule_every_minutes is not None:
        every = timedelta(minutes=args.schedule_every_minutes)
        await schedule_check_world(client, args.task_queue, every)
        say(f"schedule {WORLD_CHECK_SCHEDULE_ID!r}: every {every}")
        return 0
    report = await check_world(client, args.task_queue, uuid.uuid4().hex[:8])
    print_world_report(report)
    print(json.dumps(asdict(report), indent=2), flush=True)
    return 1 if report.disagreements else 0


async def cmd_schedule_reconciler(args: argparse.Namespace) -> int:
    client = await _connect(args)
    every = timedelta(minutes=args.every_minutes)
    await schedule_reconciler(client, args.task_queue, _reconcile_request(args), every)
    say(f"schedule {RECONCILE_SCHEDULE_ID!r}: every {every}, dry run: {args.dry_run}")
    return 0


async def cmd_rotate(args: argparse.Namespace) -> int:
    """Rotate a tenant's admin credentials now (suspected leak, or Vault data lost)."""
    from activities.rotation_schedule import NoRotationSchedule, rotate_now

    client = await _connect(args)
    try:
        workflow_id = await rotate_now(client, args.tenant_id)
    except NoRotationSchedule as err:
        raise StarterError(str(err), 3) from None
    say(f"rotation {workflow_id} running; waiting for it")
    try:
        result = await client.get_workflow_handle(workflow_id).result()
    except WorkflowFailureError as err:
        say(f"FAILED {workflow_id}: {describe_failure(err)}")
        return 1
    print(json.dumps(result, indent=2), flush=True)
    return 0


async def start_deprovision(
    client: Client, request: DeprovisionRequest, task_queue: str
) -> WorkflowHandle[Any, Any]:
    """Start the tenant's deprovisioning, or join the one running (USE_EXISTING); a
    finished one may run again (it finds nothing left and says so)."""
    return await client.start_workflow(
        DEPROVISION_WORKFLOW_TYPE,
        {k: v for k, v in asdict(request).items() if v is not None},
        id=deprovision_workflow_id(request.tenant_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        result_type=DeprovisionResult,
        static_summary=f"deprovision tenant {request.tenant_id}",
    )


async def cmd_deprovision(args: argparse.Namespace) -> int:
    """A customer cancelled: remove the tenant's server, records and claim for good."""
    try:
        request = DeprovisionRequest.parse(
            {"tenant_id": args.tenant_id, "requested_by": args.requested_by, "reason": args.reason}
        )
    except InvalidDeprovisionRequest as err:
        raise StarterError(str(err), 2) from None
    client = await _connect(args)
    handle = await start_deprovision(client, request, args.task_queue)
    say(f"deprovisioning {handle.id} (run {handle.result_run_id})")
    if not args.wait:
        return 0
    try:
        result = await handle.result()
    except WorkflowFailureError as err:
        say(f"FAILED {handle.id}: {describe_failure(err)}")
        return 1
    print(json.dumps(asdict(result), indent=2), flush=True)
    return 0


async def activate(
    client: Client, tenant_id: str, task_queue: str, dns_published: bool
) -> WorkflowHandle[Any, Any]:
    """Start the tenant's activation or join the one waiting; with `dns_published`, also
    signal it to check at once (signal-with-start: a run that gave up starts over)."""
    try:
        request = ActivationRequest.parse({"tenant_id": tenant_id})
    except InvalidActivationRequest as err:
        raise StarterError(str(err), 2) from None
    return await client.start_workflow(
        ACTIVATION_WORKFLOW_TYPE,
        asdict(request),
        id=activation_workflow_id(request.tenant_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal=DNS_PUBLISHED_SIGNAL if dns_published else None,
        static_summary=f"activate tenant {request.tenant_id}",
    )


async def activation_status(client: Client, tenant_id: str) -> ActivationStatus:
    """The latest activation run's status; StarterError (exit 3) when there is none."""
    handle = client.get_workflow_handle(activation_workflow_id(tenant_id))
    try:
        status: ActivationStatus = await handle.query("status", result_type=ActivationStatus)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise StarterError(f"no activation of tenant {tenant_id!r} ({handle.id})", 3) from None
        raise
    return status


async def cmd_activate(args: argparse.Namespace) -> int:
    client = await _connect(args)
    handle = await activate(client, args.tenant_id, args.task_queue, args.dns_published)
    what = "signalled dns_published to" if args.dns_published else "running"
    say(f"activation {handle.id} {what} (run {handle.result_run_id})")
    return 0


async def cmd_activation_status(args: argparse.Namespace) -> int:
    status = await activation_status(await _connect(args), args.tenant_id)
    print(json.dumps(asdict(status), indent=2), flush=True)
    return 0


async def cmd_rotation_status(args: argparse.Namespace) -> int:
    from activities.rotation_schedule import NoRotationSchedule, rotation_status

    client = await _connect(args)
    try:
        status = await rotation_status(client, args.tenant_id)
    except NoRotationSchedule as err:
        raise StarterError(str(err), 3) from None
    print(json.dumps(status, indent=2), flush=True)
    return 0


async def cmd_change_plan(args: argparse.Namespace) -> int:
    """Start ChangeMailPlan; with --wait, print its steps as they finish, then the result."""
    request = PlanChangeRequest(
        args.tenant_id,
        args.request_id or f"cli-{uuid.uuid4().hex[:12]}",
        args.plan,
        args.requested_by or f"operator:{os.environ.get('USER', 'unknown')}",
    )
    try:
        request.validate()
    except InvalidPlanChangeRequest as err:
        raise StarterError(str(err), 2) from None
    client = await _connect(args)
    workflow_id = plan_change_workflow_id(request.tenant_id, request.request_id)
    try:
        handle = await client.start_workflow(
            PLAN_CHANGE_WORKFLOW_TYPE,
            asdict(request),
            id=workflow_id,
            task_queue=args.task_queue,
            # A repeated request joins the running change; a finished one never reruns.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            result_type=PlanChangeResult,
            static_summary=f"plan change of {request.tenant_id} to {request.plan}",
        )
    except WorkflowAlreadyStartedError:
        handle = client.get_workflow_handle(workflow_id, result_type=PlanChangeResult)
    say(f"plan change {workflow_id} started")
    if not args.wait:
        return 0
    task = asyncio.ensure_future(handle.result())
    shown = 0
    while not task.done():
        shown = await _say_finished_steps(handle, shown)
        await asyncio.wait([task], timeout=2.0)
    # The steps that finished since the last look (a closed run still answers queries).
    await _say_finished_steps(handle, shown)
    try:
        result = task.result()
    except WorkflowFailureError as err:
        say(f"FAILED {workflow_id}: {describe_failure(err)}")
        return 1
    print(json.dumps(asdict(result), indent=2), flush=True)
    return 0


async def _say_finished_steps(handle: WorkflowHandle[Any, Any], shown: int) -> int:
    """Print the steps finished after the first `shown`; returns how many are shown now."""
    try:
        status: PlanChangeStatus = await handle.query(
            "status", result_type=PlanChangeStatus, rpc_timeout=QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):
        return shown
    for step in status.steps[shown:]:
        if step.state == "running":
            break
        say(f"  {step.name}: {step.state}")
        shown += 1
    return shown


def _vault_settings() -> VaultSettings:
    """VAULT_ADDR, the token and the TLS settings the vault CLI reads (VAULT_CACERT...)."""
    from activities.vault import VaultSettings

    url = _env_required("VAULT_ADDR")
    try:
        transport, warning = vault_transport(os.environ, url)
    except ConnectionConfigError as err:
        raise StarterError(str(err), 2) from None
    if warning:
        say(f"warning: {warning}")
    return VaultSettings(url=url, token=_vault_token_from_env(), transport=transport)


def _env_required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise StarterError(f"{name} is required", 2)
    return value


def _vault_token_from_env() -> str:
    path = os.environ.get("VAULT_TOKEN_FILE", "").strip()
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as err:
            raise StarterError(f"VAULT_TOKEN_FILE={path}: {err.strerror}", 2) from None
    return _env_required("VAULT_TOKEN")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="starter.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--address", help="default: TEMPORAL_ADDRESS or the profile's, else localhost:7233"
    )
    parser.add_argument(
        "--namespace", help="default: TEMPORAL_NAMESPACE or the profile's, else default"
    )
    parser.add_argument(
        "--profile", help="temporal.toml profile (default: TEMPORAL_PROFILE, else default)"
    )
    parser.add_argument(
        "--task-queue", default=os.environ.get("MAILPROV_TASK_QUEUE", DEFAULT_TASK_QUEUE)
    )
    parser.add_argument(
        "--codec-keys-file",
        default=os.environ.get("MAILPROV_CODEC_KEYS_FILE"),
        help="payload encryption key ring, the same as the worker's",
    )
    parser.add_argument(
        "--ui-url",
        default=os.environ.get("TEMPORAL_UI_URL"),
        help="Temporal Web UI base URL, to print a link to the run",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start (or join) a purchase's provisioning")
    start.add_argument("--file", help="JSON file with the purchase request")
    start.add_argument("--purchase-id")
    start.add_argument("--tenant-id")
    start.add_argument("--domain")
    start.add_argument("--plan")
    start.add_argument("--requested-by")
    start.add_argument("--notify-url")
    start.add_argument("--wait", action="store_true", help="show progress until it finishes")
    start.add_argument(
        "--progress-every",
        type=float,
        default=WAIT_REPORT_SECONDS,
        help="with --wait: seconds between looks at what a running step waits for",
    )
    start.set_defaults(func=cmd_start)

    status = commands.add_parser("status", help="current step and steps done")
    status.add_argument("purchase_id")
    status.set_defaults(func=cmd_status)

    result = commands.add_parser("result", help="wait for and print the result")
    result.add_argument("purchase_id")
    result.set_defaults(func=cmd_result)

    switch = commands.add_parser(
        "switch-codec-key",
        help="make a key added with `python -m runtime.codec add` current, once every "
        "worker on the task queue has it (step 2 of a payload key rotation)",
    )
    switch.add_argument("key_id")
    switch.set_defaults(func=cmd_switch_codec_key)

    credentials = commands.add_parser(
        "credentials",
        help="print a tenant's decrypted admin credentials (VAULT_ADDR, reader VAULT_TOKEN)",
    )
    credentials.add_argument("tenant_id")
    credentials.set_defaults(func=cmd_credentials)

    rotate = commands.add_parser(
        "rotate", help="rotate a tenant's admin credentials now, through its schedule"
    )
    rotate.add_argument("tenant_id")
    rotate.set_defaults(func=cmd_rotate)

    rotation = commands.add_parser(
        "rotation-status", help="a tenant's rotation schedule: interval, next and last runs"
    )
    rotation.add_argument("tenant_id")
    rotation.set_defaults(func=cmd_rotation_status)

    change = commands.add_parser(
        "change-plan", help="move a tenant's mail server to another catalog plan"
    )
    change.add_argument("tenant_id")
    change.add_argument("plan")
    change.add_argument("--request-id", help="the back end's request id (default: generated)")
    change.add_argument("--requested-by")
    change.add_argument("--wait", action="store_true", help="show the steps until it finishes")
    change.set_defaults(func=cmd_change_plan)

    activation = commands.add_parser(
        "activation-status",
        help="a tenant's activation: its stage (DNS, certificate/TLS, active), what is missing",
    )
    activation.add_argument("tenant_id")
    activation.set_defaults(func=cmd_activation_status)

    activate_cmd = commands.add_parser(
        "activate", help="start (or join) a tenant's activation; --dns-published checks now"
    )
    activate_cmd.add_argument("tenant_id")
    activate_cmd.add_argument(
        "--dns-published", action="store_true", help="the customer published the records"
    )
    activate_cmd.set_defaults(func=cmd_activate)

    deprovision = commands.add_parser(
        "deprovision",
        help="a customer cancelled: delete the tenant's server, Vault record, schedule, claim",
    )
    deprovision.add_argument("tenant_id")
    deprovision.add_argument(
        "--requested-by", default="starter.py", help="who asked (kept in the audit row)"
    )
    deprovision.add_argument("--reason", help="why (kept in the audit row)")
    deprovision.add_argument("--wait", action="store_true", help="wait and print the result")
    deprovision.set_defaults(func=cmd_deprovision)

    verify = commands.add_parser(
        "audit-verify",
        help="check the audit log's MACs and its head against Vault (auditor VAULT_TOKEN)",
    )
    verify.add_argument("--audit", help="SQLite path or postgresql:// DSN")
    verify.add_argument(
        "--chain",
        help="the chain's name, as the workers' MAILPROV_AUDIT_CHAIN (default: that "
        "variable, else the workers' default chain)",
    )
    verify.add_argument(
        "--checkpoint",
        action="store_true",
        help="if it verifies, record its head as the auditor's checkpoint in Vault",
    )
    verify.set_defaults(func=cmd_audit_verify)

    replay = commands.add_parser(
        "replay",
        help="replay a history from `temporal workflow show -o json` against this code",
    )
    replay.add_argument("history", help="the exported JSON file (encrypted payloads are fine)")
    replay.add_argument("--workflow-id", help="default: purchase-{purchase_id of its input}")
    replay.set_defaults(func=cmd_replay)
    world = commands.add_parser(
        "check-world",
        help="read-only: do servers, Vault records, claims, schedules, audit and runs agree?",
    )
    world.add_argument(
        "--schedule-every-minutes",
        type=float,
        help="instead of checking now, run it on a Temporal Schedule (alerts via metrics)",
    )
    world.set_defaults(func=cmd_check_world)
    for name, func, text in (
        ("reconcile", cmd_reconcile, "delete orphaned servers (decided from our records), once"),
        ("schedule-reconciler", cmd_schedule_reconciler, "run the reconciler on a schedule"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--grace-minutes", type=float, default=60.0)
        command.add_argument("--dry-run", action="store_true", help="report, change nothing")
        if name == "schedule-reconciler":
            command.add_argument("--every-minutes", type=float, default=15.0)
        command.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(asyncio.run(args.func(args)))
    except StarterError as err:
        say(f"error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        say("interrupted: the workflow keeps running; `starter.py status` shows it")
        return 130


if __name__ == "__main__":
    # The exit code is the CLI's contract: no SIGABRT from teardown (runtime/exit.py).
    exit_without_teardown(main())
