/**
 * The JSON contracts of the ProvisionMailTenant, DeprovisionMailTenant, ChangeMailPlan and
 * ActivateMailDomain workflows.
 *
 * The types are generated (src/generated/contracts.ts) from schema/contracts.json, which
 * `python -m workflows.contract_schema` exports from the Python dataclasses in
 * workflows/*contracts.py (the source of truth), so they cannot drift: field names are
 * the JSON keys, and a rename there is a breaking change here. The workflow validates every
 * field itself and answers bad input with an `InvalidPurchaseRequest` failure naming the
 * field and the rule, so these types are for the compiler, not a second validator.
 *
 * PurchaseRequest: `purchase_id` `[A-Za-z0-9_.-]`, 1-63, alphanumeric at both ends (the
 * workflow id is `purchase-{purchase_id}`); `tenant_id` `[a-z0-9][a-z0-9-]{0,62}`;
 * `domain` a lowercase IDNA FQDN; `plan` a plan of the worker's catalog; `requested_by`
 * 1-200 printable characters; `notify_url` an absolute http(s) URL that gets
 * `POST {event: "mail_server_ready", ...}`. ProvisionStatus `state` `terminated` and
 * `timed_out` come from the server (`status()` asks it too); a step `interrupted` was
 * running when the server terminated the run or timed it out.
 */

export type {
  ActivationResult,
  ActivationStatus,
  DeprovisionRequest,
  DeprovisionResult,
  DnsRecord,
  PlanChangeRequest,
  PlanChangeResult,
  ProvisionResult,
  ProvisionStatus,
  PurchaseRequest,
  StepProgress,
} from './generated/contracts';

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

/** A customer cancelled: DeprovisionMailTenant (workflows/deprovision_contracts.py). */
export const DEPROVISION_WORKFLOW_TYPE = 'DeprovisionMailTenant';

/** One deprovisioning per tenant at a time: `deprovision-{tenant_id}`. */
export function deprovisionWorkflowIdFor(tenantId: string): string {
  return `deprovision-${tenantId}`;
}

/** Another plan of the catalog: ChangeMailPlan (workflows/plan_change_contracts.py). */
export const PLAN_CHANGE_WORKFLOW_TYPE = 'ChangeMailPlan';

/** One run per back-end request: `change-plan-{tenant_id}-{request_id}`. */
export function planChangeWorkflowIdFor(tenantId: string, requestId: string): string {
  return `change-plan-${tenantId}-${requestId}`;
}


/**
 * After a purchase: ActivateMailDomain (workflows/activation_contracts.py), started by the
 * purchase itself. It waits for the customer's DNS, then for MailU's certificate and TLS on
 * 443/465/993, and ends `active` (webhook `mail_active` to the purchase's notify_url) or
 * `gave_up` after 30 days (webhook `mail_activation_expired`). Status `state` is one of
 * `waiting_for_dns`, `checking`, `waiting_for_tls`, `checking_tls`, `restarting_front`,
 * `active`, `gave_up`, `tenant_gone`, `refused`, `cancelled`.
 */
export const ACTIVATION_WORKFLOW_TYPE = 'ActivateMailDomain';
/** The back end's "the customer says the records are published": check now. */
export const DNS_PUBLISHED_SIGNAL = 'dns_published';

/** One activation per tenant at a time: `activate-{tenant_id}`. */
export function activationWorkflowIdFor(tenantId: string): string {
  return `activate-${tenantId}`;
}
