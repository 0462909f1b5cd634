#!/usr/bin/env node
/**
 * mailprov-client: the package's functions from a shell, JSON in and out.
 *
 *   echo '{"purchase_id": ...}' | mailprov-client start     -> {"workflowId", "runId"}
 *   mailprov-client status PURCHASE_ID                       -> the status query's answer
 *   mailprov-client result PURCHASE_ID                       -> the result, or {"error": {...}} (exit 1)
 *   mailprov-client watch PURCHASE_ID [--progress-every S]   -> as `result`, and on stderr each step
 *                     with its duration and what a long step waits for (starter.py start --wait)
 *   mailprov-client deprovision TENANT_ID [REQUESTED_BY]     -> the result, or {"error": {...}} (exit 1)
 *   mailprov-client activation-status TENANT_ID              -> ActivationStatus (stage, what is missing)
 *   mailprov-client dns-published TENANT_ID                  -> {"signalled": true}: the activation checks now
 *   mailprov-client activation-result TENANT_ID              -> ActivationResult once it ended (waits), or
 *                                                               {"error": {...}} (exit 1)
 *   mailprov-client change-plan TENANT_ID PLAN REQUEST_ID [REQUESTED_BY]
 *                                                            -> the result, or {"error": {...}} (exit 1)
 *   echo '<json value>' | mailprov-client encode             -> {"payloads": [...]} (protobuf JSON)
 *   echo '{"payloads": [...]}' | mailprov-client decode      -> {"values": [...]}
 *
 * Reads Temporal's client configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
 * TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE + temporal.toml: ./connection),
 * MAILPROV_TASK_QUEUE and MAILPROV_CODEC_KEYS_FILE, as worker.py and starter.py do.
 */
import { readFileSync } from 'node:fs';
import { Payload, defaultPayloadConverter } from '@temporalio/common';
import {
  DeprovisionError,
  PlanChangeError,
  InvalidPurchaseRequestError,
  MailProvisioningClient,
  ProvisioningFailedError,
  PurchaseCancelledError,
  PurchaseEndedError,
  TenantAlreadyProvisionedError,
} from './client';
import { EncryptionCodec } from './codec';
import { temporalConfigFromEnv } from './connection';
import { DEFAULT_REPORT_EVERY_MS, progressLine } from './progress';

/** Protobuf JSON of a Payload (as the codec server protocol and `temporal ... -o json` use). */
interface PayloadJson {
  metadata?: Record<string, string>;
  data?: string;
}

function required(name: string): string {
  const value = process.env[name]?.trim();
  if (!value) {
    throw new Error(`${name} is required`);
  }
  return value;
}

function toJson(payload: Payload): PayloadJson {
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(payload.metadata ?? {})) {
    metadata[key] = Buffer.from(value).toString('base64');
  }
  return { metadata, data: Buffer.from(payload.data ?? new Uint8Array()).toString('base64') };
}

function fromJson(json: PayloadJson): Payload {
  const metadata: Record<string, Uint8Array> = {};
  for (const [key, value] of Object.entries(json.metadata ?? {})) {
    metadata[key] = Buffer.from(value, 'base64');
  }
  return { metadata, data: Buffer.from(json.data ?? '', 'base64') };
}

function errorJson(err: unknown): Record<string, unknown> {
  if (err instanceof InvalidPurchaseRequestError) {
    return { name: err.name, message: err.message, field: err.field, rule: err.rule };
  }
  if (err instanceof ProvisioningFailedError) {
    return { name: err.name, message: err.message, step: err.step, error_type: err.errorType };
  }
  if (err instanceof TenantAlreadyProvisionedError) {
    return {
      name: err.name,
      message: err.message,
      tenant_id: err.tenantId,
      holder: err.holder,
      claim_workflow_id: err.claimWorkflowId,
    };
  }
  if (err instanceof PurchaseCancelledError || err instanceof PurchaseEndedError) {
    const state = err instanceof PurchaseCancelledError ? 'cancelled' : err.state;
    return { name: err.name, message: err.message, state, step: err.step, compensated: err.compensated };
  }
  if (err instanceof DeprovisionError || err instanceof PlanChangeError) {
    return { name: err.name, message: err.message, type: err.type };
  }
  const error = err as Error;
  return { name: error.name, message: error.message };
}

async function withClient<T>(run: (client: MailProvisioningClient) => Promise<T>): Promise<T> {
  const temporal = temporalConfigFromEnv();
  const client = await MailProvisioningClient.connect({
    connection: temporal.connectionOptions,
    namespace: temporal.namespace,
    taskQueue: process.env.MAILPROV_TASK_QUEUE || undefined,
    codecKeysFile: required('MAILPROV_CODEC_KEYS_FILE'),
  });
  try {
    return await run(client);
  } finally {
    await client.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const [command, argument] = argv;
  const stdin = () => JSON.parse(readFileSync(0, 'utf8'));
  const print = (value: unknown) => process.stdout.write(JSON.stringify(value) + '\n');
  switch (command) {
    case 'start':
      print(await withClient((client) => client.startPurchase(stdin())));
      return 0;
    case 'status':
      print(await withClient((client) => client.status(argument)));
      return 0;
    case 'result':
      try {
        print(await withClient((client) => client.result(argument)));
        return 0;
      } catch (err) {
        print({ error: errorJson(err) });
        return 1;
      }
    case 'watch':
      try {
        const every = argv[2] === '--progress-every' ? Number(argv[3]) * 1000 : DEFAULT_REPORT_EVERY_MS;
        if (!(every > 0)) throw new Error('--progress-every takes a number of seconds > 0');
        const show = (event: Parameters<typeof progressLine>[0]) =>
          process.stderr.write(progressLine(event) + '\n');
        print(await withClient((client) => client.watch(argument, show, every)));
        return 0;
      } catch (err) {
        print({ error: errorJson(err) });
        return 1;
      }
    case 'activation-status':
      try {
        print(await withClient((client) => client.activationStatus(argument)));
        return 0;
      } catch (err) {
        print({ error: errorJson(err) });
        return 1;
      }
    case 'activation-result':
      try {
        print(await withClient((client) => client.activationResult(argument)));
        return 0;
      } catch (err) {
        print({ error: errorJson(err) });
        return 1;
      }
    case 'dns-published':
      try {
        await withClient((client) => client.dnsPublished(argument));
        print({ signalled: true });
        return 0;
      } catch (err) {
        print({ error: errorJson(err) });
        return 1;
      }
    case 'deprovision':
      try {
        print(await withClient((client) => client.deprovision(argument, argv[2] ?? 'mailprov-client')));
        return 0;
      } catch (err) {
        print({ error: errorJson(err) });
        return 1;
      }
    case 'change-plan':
      try {
        const [, tenantId, plan, requestId, requestedBy] = argv;
        print(
          await withClient((client) =>
            client.changePlan(tenantId, plan, requestId, requestedBy ?? 'mailprov-client'),
          ),
        );
        return 0;
      } catch (err) {
        print({ error: errorJson(err) });
        return 1;
      }
    case 'encode': {
      const codec = EncryptionCodec.fromFile(required('MAILPROV_CODEC_KEYS_FILE'));
      const encoded = await codec.encode([defaultPayloadConverter.toPayload(stdin())]);
      print({ payloads: encoded.map(toJson) });
      return 0;
    }
    case 'decode': {
      const codec = EncryptionCodec.fromFile(required('MAILPROV_CODEC_KEYS_FILE'));
      const payloads = (stdin() as { payloads: PayloadJson[] }).payloads.map(fromJson);
      const decoded = await codec.decode(payloads);
      print({ values: decoded.map((p) => defaultPayloadConverter.fromPayload(p)) });
      return 0;
    }
    default:
      process.stderr.write('usage: mailprov-client start|status ID|result ID|watch ID [--progress-every S]|deprovision TENANT|activation-status TENANT|dns-published TENANT|activation-result TENANT|change-plan TENANT PLAN REQUEST_ID|encode|decode\n');
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`error: ${err.message}\n`);
    process.exitCode = 2;
  },
);
