/**
 * Temporal's own client configuration, the same worker.py and starter.py read
 * (activities/connections.py) and the `temporal` CLI reads: a profile in temporal.toml
 * (TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE) with the standard variables on top
 * (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS,
 * TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_CLIENT_CERT_PATH/_KEY_PATH,
 * TEMPORAL_TLS_SERVER_NAME, ...), loaded by the SDK's @temporalio/envconfig.
 */
import { ConnectionOptions } from '@temporalio/client';
import { loadClientConnectConfig } from '@temporalio/envconfig';

export const DEFAULT_ADDRESS = 'localhost:7233';
export const DEFAULT_NAMESPACE = 'default';

export interface TemporalConnectConfig {
  /** For `Connection.connect`: address, TLS (CA, client certificate), API key, metadata. */
  connectionOptions: ConnectionOptions;
  namespace: string;
}

/** The connection every client of this package uses, from the environment (and profile). */
export function temporalConfigFromEnv(
  env: Record<string, string | undefined> = process.env,
): TemporalConnectConfig {
  const defined = Object.fromEntries(
    Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined),
  );
  const loaded = loadClientConnectConfig({
    profile: defined.TEMPORAL_PROFILE || undefined,
    overrideEnvVars: defined,
  });
  // envconfig types its options for the worker's native connection; the fields it sets
  // (address, tls, apiKey, metadata) are the client Connection's too.
  const options = loaded.connectionOptions as ConnectionOptions;
  return {
    connectionOptions: { ...options, address: options.address || DEFAULT_ADDRESS },
    namespace: loaded.namespace || DEFAULT_NAMESPACE,
  };
}
