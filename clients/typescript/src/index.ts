export * from './contracts';
export { EncryptionCodec, KeyRing, readKeyRing, ENCODING, METADATA_ENCRYPTION_KEY_ID } from './codec';
export * from './client';
export { temporalConfigFromEnv, TemporalConnectConfig } from './connection';
export { ProgressEvent, progressLine, formatDuration } from './progress';
