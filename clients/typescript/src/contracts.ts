/**
 * The JSON contracts of the ProvisionMailTenant workflow, as TypeScript types.
 *
 * Mirrors workflows/contracts.py (the source of truth): field names are the JSON keys,
 * so a rename there is a breaking change here. The workflow validates every field itself
 * and answers bad input with an `InvalidPurchaseRequest` failure naming the field and the
 * rule, so these types are for the compiler, not a second validator.
 */

export const WORKFLOW_TYPE = 'ProvisionMailTenant';
export const DEFAULT_TASK_QUEUE = 'mail-provisioning';
export const STATUS_QUERY = 'status';

/** One workflow per purchase: the id is what makes starts idempotent. */
export function workflowIdFor(purchaseId: string): string {
  return `purchase-${purchaseId}`;
}

/** The plans the project ships (activities/plans.py); an operator adds its own. */
export const SHIPPED_PLANS = ['starter', 'business', 'enterprise'] as const;

/**
 * A plan name of the worker's catalog: any string, since an operator's own plans
 * (MAILPROV_PLANS_FILE) are as valid as the shipped ones. It is checked at run time by
 * the worker: a plan it does not know fails the run at once as InvalidPurchaseRequest
 * {field: 'plan'}, nothing bought.
 */
export type Plan = string;

/** The workflow input (PurchaseRequest). Unknown fields are rejected by the workflow. */
export interface PurchaseRequest {
  /** `[A-Za-z0-9_.-]`, 1-63, starts and ends alphanumeric; the workflow id is `purchase-{purchase_id}`. */
  purchase_id: string;
  /** `[a-z0-9][a-z0-9-]{0,62}`: becomes the Vault path, server name and labels. */
  tenant_id: string;
  /** Lowercase IDNA FQDN (<= 253 chars, labels <= 63, >= 2 labels). */
  domain: string;
  plan: Plan;
  /** Who asked (1-200 printable characters). */
  requested_by: string;
  /** Absolute http(s) URL that gets `POST {event: "mail_server_ready", ...}`. */
  notify_url?: string | null;
}

/** What the back end gets when the mail server is ready (ProvisionResult). Never a secret. */
/** One DNS record the customer publishes (workflows/contracts.py DnsRecord). */
export interface DnsRecord {
  name: string;
  type: string;
  ttl: number;
  value: string;
  zone_line: string;
}

export interface ProvisionResult {
  purchase_id: string;
  tenant_id: string;
  server_id: number;
  server_name: string;
  /** null on an IPv6-only plan */
  ipv4: string | null;
  /** null on an IPv4-only plan */
  ipv6: string | null;
  webmail_url: string;
  vault_path: string;
  vault_version: number;
  notified: boolean;
  dns_records: DnsRecord[];
}

export interface StepProgress {
  name: string;
  /** `interrupted`: it was running when the server terminated the run or timed it out. */
  state: 'running' | 'done' | 'failed' | 'skipped' | 'interrupted';
  started_at: string;
  finished_at: string | null;
}

/** Answer of the `status` query (ProvisionStatus). */
export interface ProvisionStatus {
  purchase_id: string | null;
  tenant_id: string | null;
  /** `terminated` and `timed_out` come from the server (`status()` asks it too): the
   * query alone answers for such a run with its last state, `running`. */
  state: 'running' | 'compensating' | 'completed' | 'failed' | 'cancelled' | 'terminated' | 'timed_out';
  current_step: string | null;
  steps: StepProgress[];
  error: string | null;
  dns_records: DnsRecord[];
  /** The step a failure, a cancel, a terminate or a timeout stopped the purchase at. */
  stopped_at: string | null;
}

/** A customer cancelled: DeprovisionMailTenant (workflows/deprovision_contracts.py). */
export const DEPROVISION_WORKFLOW_TYPE = 'DeprovisionMailTenant';

/** One deprovisioning per tenant at a time: `deprovision-{tenant_id}`. */
export function deprovisionWorkflowIdFor(tenantId: string): string {
  return `deprovision-${tenantId}`;
}

/** The input (DeprovisionRequest): what is removed comes from the worker's own records. */
export interface DeprovisionRequest {
  tenant_id: string;
  /** Who asked (1-200 printable characters), kept in the audit row. */
  requested_by: string;
  /** Why (1-500 printable characters), kept in the audit row. */
  reason?: string;
}

/** What is gone once the run completes (DeprovisionResult). */
export interface DeprovisionResult {
  tenant_id: string;
  /** `nothing_found`: an earlier run (or nobody) left nothing of the tenant. */
  outcome: 'deprovisioned' | 'nothing_found';
  servers_deleted: number[];
  vault_versions_destroyed: number;
  rotation_schedule_removed: boolean;
  claim_released: boolean;
  passes: number;
}

/** Another plan of the catalog: ChangeMailPlan (workflows/plan_change_contracts.py). */
export const PLAN_CHANGE_WORKFLOW_TYPE = 'ChangeMailPlan';

/** One run per back-end request: `change-plan-{tenant_id}-{request_id}`. */
export function planChangeWorkflowIdFor(tenantId: string, requestId: string): string {
  return `change-plan-${tenantId}-${requestId}`;
}

/** The input (PlanChangeRequest): the server comes from the worker's own records. */
export interface PlanChangeRequest {
  tenant_id: string;
  /** The back end's request id (the purchase id's rule); part of the workflow id. */
  request_id: string;
  /** A plan of the worker's catalog. */
  plan: string;
  /** Who asked (1-200 printable characters), kept in the audit row. */
  requested_by: string;
}

/** The change as done (PlanChangeResult); never a secret. */
export interface PlanChangeResult {
  tenant_id: string;
  request_id: string;
  plan: string;
  previous_plan: string | null;
  server_id: number;
  server_type: string;
  previous_server_type: string;
  disk_gb: number;
  /** From the stop request to MailU healthy again, as the worker measured it. */
  downtime_seconds: number;
  stopped_how: 'shutdown' | 'poweroff' | 'already_off';
  /** The Vault version of the admin credentials proven after the change. */
  vault_version: number;
}
