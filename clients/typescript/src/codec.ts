/**
 * The project's payload codec in TypeScript: AES-256-GCM, Temporal's samples convention.
 *
 * Same format as runtime/codec.py and as temporalio/samples-typescript
 * encryption/src/encryption-codec.ts + crypto.ts:
 *   metadata  encoding: binary/encrypted, encryption-key-id: <key id>
 *   data      12-byte nonce || AES-256-GCM(serialized Payload) with a 16-byte tag, no associated data
 * Keys come from the same key-ring file as the Python side (MAILPROV_CODEC_KEYS_FILE):
 *   {"current": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}
 */
import { webcrypto } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { METADATA_ENCODING_KEY, Payload, PayloadCodec, ValueError } from '@temporalio/common';
import { temporal } from '@temporalio/proto';

export const ENCODING = 'binary/encrypted';
export const METADATA_ENCRYPTION_KEY_ID = 'encryption-key-id';
const NONCE_BYTES = 12;
const TAG_BITS = 128;

/** The current key (encrypts) and every key still needed to decrypt old histories. */
export interface KeyRing {
  currentId: string;
  keys: Map<string, Uint8Array>;
}

/** Reads the key-ring file the worker, starter and codec server use. */
export function readKeyRing(path: string): KeyRing {
  let document: unknown;
  try {
    document = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ValueError(`${path}: cannot read the key ring (${(err as Error).message})`);
  }
  const { current, keys } = (document ?? {}) as { current?: unknown; keys?: unknown };
  if (typeof current !== 'string' || typeof keys !== 'object' || keys === null) {
    throw new ValueError(`${path}: expected {"current": id, "keys": {id: base64}}`);
  }
  const ring = new Map<string, Uint8Array>();
  for (const [keyId, value] of Object.entries(keys)) {
    const key = typeof value === 'string' ? Buffer.from(value, 'base64') : Buffer.alloc(0);
    if (key.length !== 32) {
      throw new ValueError(`${path}: key '${keyId}' must be 32 bytes (AES-256), base64`);
    }
    ring.set(keyId, key);
  }
  if (!ring.has(current)) {
    throw new ValueError(`${path}: current key id '${current}' is not in the key ring`);
  }
  return { currentId: current, keys: ring };
}

function encodeText(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

function decodeText(bytes: Uint8Array | null | undefined): string {
  return bytes ? new TextDecoder().decode(bytes) : '';
}

export class EncryptionCodec implements PayloadCodec {
  private readonly cryptoKeys = new Map<string, Promise<webcrypto.CryptoKey>>();

  constructor(private readonly ring: KeyRing) {}

  static fromFile(path: string): EncryptionCodec {
    return new EncryptionCodec(readKeyRing(path));
  }

  private key(keyId: string): Promise<webcrypto.CryptoKey> {
    let key = this.cryptoKeys.get(keyId);
    if (!key) {
      const raw = this.ring.keys.get(keyId);
      if (!raw) {
        throw new ValueError(`payload encrypted with unknown key id '${keyId}'`);
      }
      key = webcrypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, false, [
        'encrypt',
        'decrypt',
      ]);
      this.cryptoKeys.set(keyId, key);
    }
    return key;
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    const keyId = this.ring.currentId;
    const key = await this.key(keyId);
    return Promise.all(
      payloads.map(async (payload) => {
        const nonce = webcrypto.getRandomValues(new Uint8Array(NONCE_BYTES));
        const plaintext = temporal.api.common.v1.Payload.encode(payload).finish();
        const sealed = await webcrypto.subtle.encrypt(
          { name: 'AES-GCM', iv: nonce, tagLength: TAG_BITS },
          key,
          plaintext,
        );
        return {
          metadata: {
            [METADATA_ENCODING_KEY]: encodeText(ENCODING),
            [METADATA_ENCRYPTION_KEY_ID]: encodeText(keyId),
          },
          data: Buffer.concat([nonce, new Uint8Array(sealed)]),
        };
      }),
    );
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return Promise.all(
      payloads.map(async (payload) => {
        if (decodeText(payload.metadata?.[METADATA_ENCODING_KEY]) !== ENCODING) {
          return payload; // not encrypted: written by a client without the codec
        }
        const keyId = decodeText(payload.metadata?.[METADATA_ENCRYPTION_KEY_ID]);
        const data = payload.data ?? new Uint8Array();
        const key = await this.key(keyId);
        // The samples' form first; then, as runtime/codec.py does, the first release's
        // form with the key id as associated data, so old purchases stay readable.
        for (const additionalData of [undefined, encodeText(keyId)]) {
          let opened: ArrayBuffer;
          try {
            opened = await webcrypto.subtle.decrypt(
              {
                name: 'AES-GCM',
                iv: data.subarray(0, NONCE_BYTES),
                tagLength: TAG_BITS,
                ...(additionalData ? { additionalData } : {}),
              },
              key,
              data.subarray(NONCE_BYTES),
            );
          } catch {
            continue; // the tag does not match this form: try the next one
          }
          return temporal.api.common.v1.Payload.decode(new Uint8Array(opened));
        }
        throw new ValueError(`payload under key '${keyId}' does not authenticate`);
      }),
    );
  }
}
