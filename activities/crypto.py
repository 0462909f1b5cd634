"""The admin password and its envelope: AES-256-GCM under a per-tenant data key.

Envelope encryption: a fresh 256-bit data key per password, generated and wrapped
by the tenant's own Vault Transit key (`transit/mail-credentials-{tenant}`), which
never leaves Vault; deprovisioning deletes that key, so every envelope of the tenant,
old backups included, can no longer be opened (crypto-shredding). The associated data
binds the ciphertext to its tenant and Vault path, so an envelope copied to another
tenant's record fails to open even with a valid data key.

The envelope is a self-describing, versioned string:
`mpenc:v2:` + base64url(JSON{alg, kek, wrapped_key, nonce, ciphertext}), `kek` naming
the Transit key that wrapped the data key. v1 (one shared key derived per tenant,
which nothing per tenant could destroy) is no longer read: the product had no release
with it, and a rotation re-wraps a tenant's password under v2 without reading it.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PASSWORD_BYTES = 32
ENVELOPE_PREFIX = "mpenc:v2:"
ALGORITHM = "AES-256-GCM"
NONCE_BYTES = 12


class EnvelopeError(Exception):
    """An envelope that is malformed, tampered with, or not for this tenant/path."""


def generate_password() -> str:
    """32 random bytes, base64: the same shape as Node's randomBytes(32).toString('base64')."""
    return base64.b64encode(secrets.token_bytes(PASSWORD_BYTES)).decode("ascii")


@dataclass(frozen=True, repr=False)
class DataKey:
    """A data key in both forms. repr is hidden: the plaintext key is a secret."""

    plaintext: bytes
    wrapped: str
    kek: str  # which Transit key wrapped it, e.g. "transit/mail-credentials-acme"


@dataclass(frozen=True)
class Envelope:
    kek: str
    wrapped_key: str
    nonce: bytes
    ciphertext: bytes


def associated_data(tenant_id: str, vault_path: str) -> bytes:
    return f"mail-provisioning/v1\x00tenant={tenant_id}\x00path={vault_path}".encode()


def seal(plaintext: str, key: DataKey, tenant_id: str, vault_path: str) -> str:
    if len(key.plaintext) != 32:
        raise EnvelopeError("data key must be 256 bits")
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(key.plaintext).encrypt(
        nonce, plaintext.encode(), associated_data(tenant_id, vault_path)
    )
    body = {
        "alg": ALGORITHM,
        "kek": key.kek,
        "wrapped_key": key.wrapped,
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    encoded = base64.urlsafe_b64encode(json.dumps(body, sort_keys=True).encode()).decode()
    return ENVELOPE_PREFIX + encoded


def parse_envelope(envelope: str) -> Envelope:
    if not envelope.startswith(ENVELOPE_PREFIX):
        version = envelope.split(":", 2)[1] if envelope.count(":") >= 2 else "?"
        raise EnvelopeError(f"unknown envelope format or version {version!r}")
    try:
        body = json.loads(base64.urlsafe_b64decode(envelope[len(ENVELOPE_PREFIX) :]))
        if body["alg"] != ALGORITHM:
            raise EnvelopeError(f"unsupported algorithm {body['alg']!r}")
        nonce = base64.b64decode(body["nonce"], validate=True)
        if len(nonce) != NONCE_BYTES:
            raise EnvelopeError("nonce must be 96 bits")
        return Envelope(
            kek=str(body["kek"]),
            wrapped_key=str(body["wrapped_key"]),
            nonce=nonce,
            ciphertext=base64.b64decode(body["ciphertext"], validate=True),
        )
    except EnvelopeError:
        raise
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise EnvelopeError(f"malformed envelope: {type(err).__name__}") from None


def open_envelope(envelope: Envelope, data_key: bytes, tenant_id: str, vault_path: str) -> str:
    try:
        plaintext = AESGCM(data_key).decrypt(
            envelope.nonce, envelope.ciphertext, associated_data(tenant_id, vault_path)
        )
    except (InvalidTag, ValueError):
        raise EnvelopeError(
            "envelope does not authenticate: tampered, or not for this tenant and path"
        ) from None
    return plaintext.decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
