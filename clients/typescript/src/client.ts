/**
 * What a Node back end needs to enqueue a purchase and follow it, with the same policies
 * as starter.py: workflow id `purchase-{purchase_id}`, a repeated start while it runs
 * joins the running one (USE_EXISTING), a finished purchase is never started again
 * (REJECT_DUPLICATE). Every payload goes through the project's codec.
 */
import {
  Client,
  Connection,
  ConnectionOptions,
  WorkflowFailedError,
  WorkflowHandle,
} from '@temporalio/client';
import {
  ApplicationFailure,
  CancelledFailure,
  DataConverter,
  TerminatedFailure,
  TimeoutFailure,
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
} from '@temporalio/common';
import { EncryptionCodec, readKeyRing } from './codec';
import { DEFAULT_ADDRESS } from './connection';
import { DEFAULT_REPORT_EVERY_MS, ProgressEvent, watchProgress } from './progress';
import {
  ActivationResult,
  ActivationStatus,
  DEFAULT_TASK_QUEUE,
  DEPROVISION_WORKFLOW_TYPE,
  DNS_PUBLISHED_SIGNAL,
  DeprovisionRequest,
  DeprovisionResult,
  PLAN_CHANGE_WORKFLOW_TYPE,
  PlanChangeRequest,
  PlanChangeResult,
  ProvisionResult,
  ProvisionStatus,
  PurchaseRequest,
  STATUS_QUERY,
  WORKFLOW_TYPE,
  activationWorkflowIdFor,
  deprovisionWorkflowIdFor,
  planChangeWorkflowIdFor,
  workflowIdFor,
} from './contracts';

export interface MailProvisioningOptions {
  /** host:port of a plaintext Temporal frontend; for TLS, an API key or a client
   * certificate give `connection` instead (`temporalConfigFromEnv().connectionOptions`). */
  address?: string;
  /** Connection options as Temporal's client configuration gives them (./connection). */
  connection?: ConnectionOptions;
  /** The key-ring file shared with the worker (MAILPROV_CODEC_KEYS_FILE). */
  codecKeysFile: string;
  namespace?: string;
  taskQueue?: string;
}

/** The SDK data converter every client of this workflow must use. */
export function dataConverter(codecKeysFile: string): DataConverter {
  return {
    payloadCodecs: [new EncryptionCodec(readKeyRing(codecKeysFile))],
    failureConverterPath: require.resolve('./failure-converter'),
  };
}

/** The workflow rejected its input before creating anything; `field` and `rule` say why. */
export class InvalidPurchaseRequestError extends Error {
  readonly name = 'InvalidPurchaseRequestError';
  constructor(
    message: string,
    readonly field: string,
    readonly rule: string,
  ) {
    super(message);
  }
}

/** Provisioning failed at `step` and was compensated (nothing left behind). */
export class ProvisioningFailedError extends Error {
  readonly name = 'ProvisioningFailedError';
  constructor(
    message: string,
    readonly step: string,
    readonly errorType: string,
  ) {
    super(message);
  }
}

/** The tenant already has a mail server, or one being provisioned by `holder` (the
 * workflow id of the purchase holding the tenant's claim); nothing was bought. */
export class TenantAlreadyProvisionedError extends Error {
  readonly name = 'TenantAlreadyProvisionedError';
  constructor(
    message: string,
    readonly tenantId: string,
    readonly holder: string,
    readonly claimWorkflowId: string,
  ) {
    super(message);
  }
}

/** The purchase was cancelled at `step` and its compensation ran (nothing left behind).
 * `step` is null when no worker answered the status query that names it. */
export class PurchaseCancelledError extends Error {
  readonly name = 'PurchaseCancelledError';
  readonly compensated = true;
  constructor(readonly step: string | null) {
    super(
      step === null
        ? 'purchase cancelled; compensated (no worker answered which step)'
        : `purchase cancelled at ${step}; compensated`,
    );
  }
}

/** The server ended the run without its code (`terminated`, `timed_out`) at `step`:
 * no compensation ran; the orphan reconciler removes what it made. Any other end
 * without a result has state `unknown`. */
export class PurchaseEndedError extends Error {
  readonly name = 'PurchaseEndedError';
  readonly compensated = false;
  constructor(
    message: string,
    readonly state: 'terminated' | 'timed_out' | 'unknown' = 'unknown',
    readonly step: string | null = null,
  ) {
    super(message);
  }
}

/** The server's word on a run, in the words of the status query's `state`. */
const SERVER_STATES: Record<string, ProvisionStatus['state']> = {
  RUNNING: 'running',
  COMPLETED: 'completed',
  FAILED: 'failed',
  CANCELLED: 'cancelled',
  TERMINATED: 'terminated',
  TIMED_OUT: 'timed_out',
};
/** States the workflow code itself ends in; any other closed state the server imposed. */
const ENDED_BY_THE_CODE = new Set(['completed', 'failed', 'cancelled']);

/**
 * The status query's answer corrected by what the server reports (as starter.py's
 * settle_status): a query is answered by replaying the history, so a run the server
 * stopped without its code answers `running` at the step it was in. The server wins:
 * that step becomes `stopped_at`, no step is current, the running step `interrupted`.
 */
export function settleStatus(status: ProvisionStatus, serverStatus: string): ProvisionStatus {
  const state = SERVER_STATES[serverStatus];
  if (state === undefined || state === 'running' || state === status.state) {
    return status;
  }
  if (ENDED_BY_THE_CODE.has(state) && ENDED_BY_THE_CODE.has(status.state)) {
    return status;
  }
  return {
    ...status,
    state,
    current_step: null,
    steps: status.steps.map((step) =>
      step.state === 'running' ? { ...step, state: 'interrupted' } : step,
    ),
    stopped_at: status.stopped_at ?? status.current_step,
  };
}

export interface StartedPurchase {
  workflowId: string;
  /** The run that handles the purchase: the same for a start that joined a running one. */
  runId: string;
}

export class MailProvisioningClient {
  private constructor(
    readonly client: Client,
    private readonly taskQueue: string,
  ) {}

  static async connect(options: MailProvisioningOptions): Promise<MailProvisioningClient> {
    const connection = await Connection.connect(
      options.connection ?? { address: options.address ?? DEFAULT_ADDRESS },
    );
    const client = new Client({
      connection,
      namespace: options.namespace ?? 'default',
      dataConverter: dataConverter(options.codecKeysFile),
    });
    return new MailProvisioningClient(client, options.taskQueue ?? DEFAULT_TASK_QUEUE);
  }

  async close(): Promise<void> {
    await this.client.connection.close();
  }

  /** Start the purchase's workflow, or join it if it is running. */
  async startPurchase(request: PurchaseRequest): Promise<StartedPurchase> {
    const workflowId = workflowIdFor(request.purchase_id);
    try {
      const handle = await this.client.workflow.start(WORKFLOW_TYPE, {
        args: [request],
        taskQueue: this.taskQueue,
        workflowId,
        workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        staticSummary: `mail server for ${request.tenant_id} (${request.domain})`,
      });
      // With USE_EXISTING the server answers with the running run's id.
      return { workflowId, runId: handle.firstExecutionRunId };
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) {
        // REJECT_DUPLICATE: the purchase already ran; report that run, start nothing.
        const description = await this.client.workflow.getHandle(workflowId).describe();
        return { workflowId, runId: description.runId };
      }
      throw err;
    }
  }

  /** A customer cancelled: start the tenant's deprovisioning (or join the running one,
   * as starter.py does) and wait for it. Throws `DeprovisionError` (e.g. `type`
   * `PurchaseInProgress` while a purchase of the tenant runs, `InvalidDeprovisionRequest`). */
  async deprovision(
    tenantId: string,
    requestedBy: string,
    reason?: string,
  ): Promise<DeprovisionResult> {
    const request: DeprovisionRequest = { tenant_id: tenantId, requested_by: requestedBy };
    if (reason !== undefined) {
      request.reason = reason;
    }
    const handle = await this.client.workflow.start(DEPROVISION_WORKFLOW_TYPE, {
      args: [request],
      taskQueue: this.taskQueue,
      workflowId: deprovisionWorkflowIdFor(tenantId),
      workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      staticSummary: `deprovision tenant ${tenantId}`,
    });
    try {
      return (await handle.result()) as DeprovisionResult;
    } catch (err) {
      if (err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure) {
        throw new DeprovisionError(err.cause.message, err.cause.type ?? 'ApplicationFailure');
      }
      throw err;
    }
  }

  /** Move the tenant's mail server to another catalog plan and wait (minutes: the
   * server is stopped, changed, started, MailU proven again). A repeated request id
   * joins the running change; a finished one is never rerun (as starter.py
   * change-plan). Throws `PlanChangeError`: `type` `PlanChangeImpossible`,
   * `PlanUnchanged`, `PlanChangeUnavailable`, `ServerBusy`, `InvalidPlanChangeRequest`
   * or `PlanChangeInProgress` (another change of the tenant runs; `details.holder`
   * names it) before anything is touched; `PlanChangeFailed` after the server was
   * brought back up on its old type; `TenantDeprovisioned` when the tenant was
   * deprovisioned during the change (nothing restored or restarted). A cancelled
   * change rejects with the SDK's WorkflowFailedError (CancelledFailure). */
  async changePlan(
    tenantId: string,
    plan: string,
    requestId: string,
    requestedBy: string,
  ): Promise<PlanChangeResult> {
    const request: PlanChangeRequest = {
      tenant_id: tenantId,
      request_id: requestId,
      plan,
      requested_by: requestedBy,
    };
    let handle: WorkflowHandle;
    try {
      handle = await this.client.workflow.start(PLAN_CHANGE_WORKFLOW_TYPE, {
        args: [request],
        taskQueue: this.taskQueue,
        workflowId: planChangeWorkflowIdFor(tenantId, requestId),
        workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        staticSummary: `plan change of ${tenantId} to ${plan}`,
      });
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) {
        throw err;
      }
      handle = this.client.workflow.getHandle(planChangeWorkflowIdFor(tenantId, requestId));
    }
    try {
      return (await handle.result()) as PlanChangeResult;
    } catch (err) {
      if (err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure) {
        throw new PlanChangeError(
          err.cause.message,
          err.cause.type ?? 'ApplicationFailure',
          err.cause.details?.[0],
        );
      }
      throw err;
    }
  }

  /** The tenant's activation as `starter.py activation-status` shows it: its stage
   * (`state`), what DNS or TLS still misses (`missing`, `tls_missing`), the checks so far,
   * the certificate's expiry, front restarts. Reads the latest run (a finished one too). */
  async activationStatus(tenantId: string): Promise<ActivationStatus> {
    const handle = this.client.workflow.getHandle(activationWorkflowIdFor(tenantId));
    return handle.query<ActivationStatus>(STATUS_QUERY);
  }

  /** The customer says the records are published: the waiting activation checks now (at
   * most one check a minute however often this is called). Throws if none is running. */
  async dnsPublished(tenantId: string): Promise<void> {
    await this.client.workflow.getHandle(activationWorkflowIdFor(tenantId)).signal(DNS_PUBLISHED_SIGNAL);
  }

  /** Waits for the activation's end: `outcome` `active`, `gave_up` (with `stage` and what
   * is missing) or `tenant_gone`. */
  async activationResult(tenantId: string): Promise<ActivationResult> {
    return (await this.client.workflow.getHandle(activationWorkflowIdFor(tenantId)).result()) as ActivationResult;
  }

  private handle(purchaseId: string): WorkflowHandle {
    return this.client.workflow.getHandle(workflowIdFor(purchaseId));
  }

  /** The `status` query (current step, steps done, timestamps; needs a running worker),
   * with the state the server reports for a run it ended (terminated, timed out). */
  async status(purchaseId: string): Promise<ProvisionStatus> {
    const handle = this.handle(purchaseId);
    const answer = await handle.query<ProvisionStatus>(STATUS_QUERY);
    const description = await handle.describe();
    return settleStatus({ ...answer, stopped_at: answer.stopped_at ?? null }, description.status.name);
  }

  /** `result()`, showing the run's progress on the way: each step as it starts and ends
   * with its duration, and what a long step waits for (its heartbeat details, attempt and
   * last failure, looked up every `reportEveryMs`), as `starter.py start --wait` does. */
  async watch(
    purchaseId: string,
    onEvent: (event: ProgressEvent) => void,
    reportEveryMs: number = DEFAULT_REPORT_EVERY_MS,
  ): Promise<ProvisionResult> {
    await watchProgress(this.client, workflowIdFor(purchaseId), onEvent, reportEveryMs);
    return this.result(purchaseId);
  }

  /** Waits for the run; throws InvalidPurchaseRequestError, TenantAlreadyProvisionedError,
   * ProvisioningFailedError, PurchaseCancelledError or PurchaseEndedError. */
  async result(purchaseId: string): Promise<ProvisionResult> {
    try {
      return (await this.handle(purchaseId).result()) as ProvisionResult;
    } catch (err) {
      const decoded = decodeFailure(err);
      if (decoded instanceof PurchaseCancelledError || decoded instanceof PurchaseEndedError) {
        throw await this.withStep(purchaseId, decoded);
      }
      throw decoded;
    }
  }

  /** Temporal keeps no message of ours for a cancelled, terminated or timed-out run: the
   * step it stopped at comes from the status query (null if no worker answers). */
  private async withStep(
    purchaseId: string,
    err: PurchaseCancelledError | PurchaseEndedError,
  ): Promise<Error> {
    if (err instanceof PurchaseEndedError && err.state === 'unknown') {
      return err;
    }
    let step: string | null = null;
    try {
      step = (await this.status(purchaseId)).stopped_at;
    } catch {
      step = null;
    }
    if (err instanceof PurchaseCancelledError) {
      return new PurchaseCancelledError(step);
    }
    const at = step === null ? '' : ` at ${step}`;
    const what = err.state === 'terminated' ? 'terminated' : 'timed out';
    return new PurchaseEndedError(
      `purchase ${what}${at} (${err.message}); no compensation ran: the orphan reconciler removes what it made`,
      err.state,
      step,
    );
  }
}

/** The contract's typed errors from what the SDK throws (details are decoded payloads). */
export function decodeFailure(err: unknown): unknown {
  if (!(err instanceof WorkflowFailedError)) {
    return err;
  }
  const cause = err.cause;
  if (cause instanceof ApplicationFailure) {
    const details = (cause.details?.[0] ?? {}) as Record<string, unknown>;
    if (cause.type === 'InvalidPurchaseRequest') {
      return new InvalidPurchaseRequestError(
        cause.message,
        String(details.field ?? ''),
        String(details.rule ?? ''),
      );
    }
    if (cause.type === 'TenantAlreadyProvisioned') {
      return new TenantAlreadyProvisionedError(
        cause.message,
        String(details.tenant_id ?? ''),
        String(details.holder ?? ''),
        String(details.claim_workflow_id ?? ''),
      );
    }
    if (cause.type === 'ProvisioningFailed') {
      return new ProvisioningFailedError(
        cause.message,
        String(details.step ?? ''),
        String(details.error_type ?? ''),
      );
    }
  }
  if (cause instanceof CancelledFailure) {
    return new PurchaseCancelledError(null);
  }
  if (cause instanceof TerminatedFailure) {
    return new PurchaseEndedError(cause.message, 'terminated');
  }
  if (cause instanceof TimeoutFailure) {
    return new PurchaseEndedError(cause.message, 'timed_out');
  }
  return new PurchaseEndedError(cause?.message ?? err.message);
}

/** A deprovisioning that ended failed: `type` is the workflow's error type. */
export class DeprovisionError extends Error {
  constructor(
    message: string,
    readonly type: string,
  ) {
    super(message);
    this.name = 'DeprovisionError';
  }
}

/** A plan change that ended failed or refused: `type` is the workflow's error type,
 * `details` its first detail (e.g. `{holder, lock_workflow_id}` for
 * PlanChangeInProgress, `{step, error_type, restored}` after the server was touched). */
export class PlanChangeError extends Error {
  constructor(
    message: string,
    readonly type: string,
    readonly details: unknown = undefined,
  ) {
    super(message);
    this.name = 'PlanChangeError';
  }
}
