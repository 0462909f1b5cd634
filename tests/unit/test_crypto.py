"""The envelope: AES-256-GCM, fresh nonce, bound to tenant and path, tamper-evident."""

from __future__ import annotations

import base64
import json
import secrets

import pytest

from activities.crypto import (
    ENVELOPE_PREFIX,
    DataKey,
    EnvelopeError,
    generate_password,
    open_envelope,
    parse_envelope,
    seal,
)

KEY = DataKey(secrets.token_bytes(32), "vault:v1:wrapped", "transit/mail-credentials-acme")
PATH = "smtp/acme/admin"


def test_password_is_32_random_bytes_in_base64() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(base64.b64decode(password, validate=True)) == 32


def test_seal_then_open_round_trips_and_uses_a_fresh_nonce() -> None:
    first, second = seal("pw", KEY, "acme", PATH), seal("pw", KEY, "acme", PATH)
    assert first.startswith(ENVELOPE_PREFIX)
    assert "pw" not in base64.urlsafe_b64decode(first[len(ENVELOPE_PREFIX) :]).decode()
    assert parse_envelope(first).nonce != parse_envelope(second).nonce
    assert open_envelope(parse_envelope(first), KEY.plaintext, "acme", PATH) == "pw"
    assert parse_envelope(first).wrapped_key == "vault:v1:wrapped"


def test_envelope_of_another_tenant_or_path_does_not_open() -> None:
    envelope = parse_envelope(seal("pw", KEY, "acme", PATH))
    with pytest.raises(EnvelopeError, match="not for this tenant"):
        open_envelope(envelope, KEY.plaintext, "evil", "smtp/evil/admin")
    with pytest.raises(EnvelopeError):
        open_envelope(envelope, KEY.plaintext, "acme", "smtp/acme/other")


def _tamper(envelope: str, field: str, value: str) -> str:
    body = json.loads(base64.urlsafe_b64decode(envelope[len(ENVELOPE_PREFIX) :]))
    body[field] = value
    return ENVELOPE_PREFIX + base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


@pytest.mark.parametrize("field", ["ciphertext", "nonce"])
def test_tampered_ciphertext_or_nonce_fails_authentication(field: str) -> None:
    envelope = seal("pw", KEY, "acme", PATH)
    original = base64.b64decode(
        json.loads(base64.urlsafe_b64decode(envelope[len(ENVELOPE_PREFIX) :]))[field]
    )
    flipped = bytes([original[0] ^ 1]) + original[1:]
    tampered = parse_envelope(_tamper(envelope, field, base64.b64encode(flipped).decode()))
    with pytest.raises(EnvelopeError):
        open_envelope(tampered, KEY.plaintext, "acme", PATH)


@pytest.mark.parametrize(
    "envelope",
    ["", "plaintext-password", "mpenc:v3:abc", "mpenc:v2:!!!", "mpenc:v2:" + "e30="],
)
def test_malformed_or_unknown_version_is_rejected_clearly(envelope: str) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(envelope)


def test_wrong_algorithm_is_rejected() -> None:
    with pytest.raises(EnvelopeError, match="algorithm"):
        parse_envelope(_tamper(seal("pw", KEY, "acme", PATH), "alg", "AES-128-CBC"))


def test_data_key_repr_does_not_show_the_key() -> None:
    assert KEY.plaintext.hex() not in repr(KEY)
    assert str(list(KEY.plaintext)) not in repr(KEY)


def test_the_envelope_names_the_tenants_own_key() -> None:
    envelope = seal("pw", KEY, "acme", PATH)
    assert envelope.startswith("mpenc:v2:")
    assert parse_envelope(envelope).kek == "transit/mail-credentials-acme"


def test_a_v1_envelope_of_the_shared_key_is_no_longer_read() -> None:
    """v1 wrapped under one shared key nothing per tenant could destroy (crypto.py)."""
    body = json.loads(
        base64.urlsafe_b64decode(seal("pw", KEY, "acme", PATH)[len(ENVELOPE_PREFIX) :])
    )
    body["kek"] = "transit/mail-credentials"
    v1 = "mpenc:v1:" + base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(EnvelopeError, match="'v1'"):
        parse_envelope(v1)
