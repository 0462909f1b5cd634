/**
 * What a Node back end needs to enqueue a purchase and follow it, with the same policies
 * as starter.py: workflow id `purchase-{purchase_id}`, a repeated start while it runs
 * joins the running one (USE_EXISTING), a finished purchase is never started again
 * (REJECT_DUPLICATE). Every payload goes through the project's codec.
 */
import { Client, Connection, WorkflowFailedError, WorkflowHandle } from '@temporalio/client';
import {
  ApplicationFailure,
  DataConverter,
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
} from '@temporalio/common';
import { EncryptionCodec, readKeyRing } from './codec';
import {
  DEFAULT_TASK_QUEUE,
  ProvisionResult,
  ProvisionStatus,
  PurchaseRequest,
  STATUS_QUERY,
  WORKFLOW_TYPE,
  workflowIdFor,
} from './contracts';

export interface MailProvisioningOptions {
  /** host:port of the Temporal frontend (TEMPORAL_ADDRESS). */
  address: string;
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

/** Any other way the run ended without a result (cancelled, terminated, timed out). */
export class PurchaseEndedError extends Error {
  readonly name = 'PurchaseEndedError';
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
    const connection = await Connection.connect({ address: options.address });
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

  private handle(purchaseId: string): WorkflowHandle {
    return this.client.workflow.getHandle(workflowIdFor(purchaseId));
  }

  /** The `status` query: current step, steps done, timestamps (needs a running worker). */
  async status(purchaseId: string): Promise<ProvisionStatus> {
    return this.handle(purchaseId).query<ProvisionStatus>(STATUS_QUERY);
  }

  /** Waits for the run; throws InvalidPurchaseRequestError, ProvisioningFailedError or PurchaseEndedError. */
  async result(purchaseId: string): Promise<ProvisionResult> {
    try {
      return (await this.handle(purchaseId).result()) as ProvisionResult;
    } catch (err) {
      throw decodeFailure(err);
    }
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
    if (cause.type === 'ProvisioningFailed') {
      return new ProvisioningFailedError(
        cause.message,
        String(details.step ?? ''),
        String(details.error_type ?? ''),
      );
    }
  }
  return new PurchaseEndedError(cause?.message ?? err.message);
}
