"""Payload codec: AES-256-GCM per payload, key id in metadata, old keys still decrypt."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from runtime.codec import (
    ENCODING,
    KEY_ID_METADATA,
    CodecKeyError,
    EncryptionCodec,
    KeyRing,
    NonceSource,
    UnknownKeyGrace,
    UnknownKeyId,
    data_converter,
    keys_in_identity,
    worker_identity,
)
from workflows.input_rules import UNDECODABLE_ENCODING

SECRETISH = b'"envelope-or-anything-else"'


def payload() -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=SECRETISH)


async def test_encode_hides_data_and_names_the_key() -> None:
    ring = KeyRing.generate("k1")
    [encoded] = await EncryptionCodec(ring).encode([payload()])
    assert encoded.metadata["encoding"] == ENCODING
    assert encoded.metadata[KEY_ID_METADATA] == b"k1"
    assert SECRETISH not in encoded.data
    assert await EncryptionCodec(ring).decode([encoded]) == [payload()]


async def test_format_is_the_samples_convention_byte_for_byte() -> None:
    """temporalio/samples-python encryption/codec.py, samples-typescript encryption/src:
    exactly two metadata entries, data = 12-byte nonce + AES-GCM(serialized Payload), no AD."""
    ring = KeyRing.generate("k1")
    [encoded] = await EncryptionCodec(ring).encode([payload()])
    assert dict(encoded.metadata) == {"encoding": b"binary/encrypted", "encryption-key-id": b"k1"}
    nonce, sealed = encoded.data[:12], encoded.data[12:]
    assert len(sealed) == len(payload().SerializeToString()) + 16  # ciphertext + 16-byte tag
    opened = AESGCM(ring.keys["k1"]).decrypt(nonce, sealed, None)
    assert Payload.FromString(opened) == payload()


async def test_decodes_what_a_samples_codec_wrote() -> None:
    ring = KeyRing.generate("k1")
    nonce = secrets.token_bytes(12)
    data = nonce + AESGCM(ring.keys["k1"]).encrypt(nonce, payload().SerializeToString(), None)
    foreign = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"k1"}, data=data
    )
    assert await EncryptionCodec(ring).decode([foreign]) == [payload()]


async def test_payloads_of_the_first_release_with_the_key_id_as_ad_still_decode() -> None:
    ring = KeyRing.generate("k1")
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(ring.keys["k1"]).encrypt(nonce, payload().SerializeToString(), b"k1")
    legacy = Payload(
        metadata={
            "encoding": b"binary/encrypted",
            "encryption-key-id": b"k1",
            "encryption-cipher": b"AES-256-GCM",
        },
        data=nonce + sealed,
    )
    assert await EncryptionCodec(ring).decode([legacy]) == [payload()]
    # Bound to another key id (associated data) it authenticates under neither form.
    wrong_ad = AESGCM(ring.keys["k1"]).encrypt(nonce, payload().SerializeToString(), b"k0")
    moved = Payload(metadata=dict(legacy.metadata), data=nonce + wrong_ad)
    with pytest.raises(CodecKeyError, match="does not authenticate"):
        await EncryptionCodec(ring).decode([moved])


async def test_rotation_keeps_old_payloads_readable_and_encrypts_with_the_new_key() -> None:
    old = KeyRing.generate("k1")
    [under_old] = await EncryptionCodec(old).encode([payload()])
    new = old.rotated("k2")
    [under_new] = await EncryptionCodec(new).encode([payload()])
    assert under_new.metadata[KEY_ID_METADATA] == b"k2"
    assert await EncryptionCodec(new).decode([under_old, under_new]) == [payload(), payload()]
    with pytest.raises(CodecKeyError, match="unknown key id 'k2'"):
        await EncryptionCodec(old).decode([under_new])


async def test_relabelled_or_tampered_payload_does_not_decrypt() -> None:
    ring = KeyRing.generate("k1").rotated("k2")
    [encoded] = await EncryptionCodec(ring).encode([payload()])
    relabelled = Payload(metadata={**encoded.metadata, KEY_ID_METADATA: b"k1"}, data=encoded.data)
    with pytest.raises(CodecKeyError, match="does not authenticate"):
        await EncryptionCodec(ring).decode([relabelled])
    flipped = encoded.data[:-1] + bytes([encoded.data[-1] ^ 1])
    tampered = Payload(metadata=dict(encoded.metadata), data=flipped)
    with pytest.raises(CodecKeyError):
        await EncryptionCodec(ring).decode([tampered])


def test_key_ring_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    ring = KeyRing.generate("k1").rotated("k2")
    path = tmp_path / "keys.json"
    ring.write(path)
    assert path.stat().st_mode & 0o077 == 0
    loaded = KeyRing.from_file(path)
    assert loaded.current_id == "k2" and loaded.keys == ring.keys
    path.write_text('{"current": "k9", "keys": {}}')
    with pytest.raises(CodecKeyError, match="'k9' is not in the key ring"):
        KeyRing.from_file(path)
    with pytest.raises(CodecKeyError, match="expected"):
        path.write_text("[]")
        KeyRing.from_file(path)


async def test_failures_are_encoded_too() -> None:
    converter = data_converter(KeyRing.generate("k1"))
    failure = Failure()
    await converter.encode_failure(ApplicationError("host 203.0.113.7 refused"), failure)
    assert "203.0.113.7" not in failure.message
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING


def test_key_ring_command_creates_and_adds_but_never_switches_in_one_step(
    tmp_path: Path,
) -> None:
    from runtime.codec import main

    path = tmp_path / "ring.json"
    assert main(["new", str(path), "2026-11"]) == 0
    assert main(["new", str(path), "again"]) == 2
    # One step would let a process encrypt under a key the others lack: refused.
    assert main(["rotate", str(path), "2027-05"]) == 2
    assert set(KeyRing.from_file(path).keys) == {"2026-11"}
    assert main(["add", str(path), "2027-05"]) == 0
    ring = KeyRing.from_file(path)
    assert ring.current_id == "2026-11" and set(ring.keys) == {"2026-11", "2027-05"}
    assert main(["add", str(path), "2027-05"]) == 2
    assert main(["add", str(path), "bad,id"]) == 2


def test_switch_needs_a_key_added_before() -> None:
    ring = KeyRing.generate("k1")
    with pytest.raises(CodecKeyError, match="`add` it first"):
        ring.switched("k2")
    with pytest.raises(CodecKeyError, match="already current"):
        ring.switched("k1")
    switched = ring.added("k2").switched("k2")
    assert switched.current_id == "k2" and switched.keys["k1"] == ring.keys["k1"]


def test_worker_identity_names_its_key_ids_and_nothing_secret() -> None:
    ring = KeyRing.generate("k1").added("k2")
    identity = worker_identity("4242@host", ring)
    assert keys_in_identity(identity) == {"k1", "k2"}
    assert keys_in_identity("4242@host") == frozenset()  # a worker of an older release
    assert not any(base64.b64encode(key).decode() in identity for key in ring.keys.values())


async def test_an_unknown_key_id_fails_the_task_during_the_grace_then_is_marked() -> None:
    """A rollout in the wrong order: Temporal retries the failed task until the worker has
    the key; a key nobody will bring (a foreign client) is refused once the grace is over."""
    [sealed] = await EncryptionCodec(KeyRing.generate("new")).encode([payload()])
    now = [1000.0]
    grace = UnknownKeyGrace(600, clock=lambda: now[0])
    codec = EncryptionCodec(KeyRing.generate("old"), mark_undecodable=True, unknown_key_grace=grace)
    with pytest.raises(UnknownKeyId, match="unknown key id 'new'"):
        await codec.decode([sealed])
    now[0] += 599
    with pytest.raises(UnknownKeyId):
        await codec.decode([sealed])
    now[0] += 1
    [marked] = await codec.decode([sealed])
    assert marked.metadata["encoding"] == UNDECODABLE_ENCODING
    # A payload that does not authenticate under a key we have is no rollout: at once.
    ring = KeyRing.generate("new")
    forged = EncryptionCodec(ring, mark_undecodable=True, unknown_key_grace=grace)
    [refused] = await forged.decode([sealed])
    assert refused.metadata["encoding"] == UNDECODABLE_ENCODING


def test_the_grace_times_a_bounded_number_of_key_ids() -> None:
    grace = UnknownKeyGrace(600, clock=lambda: 0.0, tracked=2)
    assert grace.still_waiting("a") and grace.still_waiting("b")
    assert not grace.still_waiting("c")  # invented ids beyond the table: refused at once
    assert grace.still_waiting("a")
    assert not UnknownKeyGrace(0).still_waiting("a")


async def test_the_worker_marks_what_it_cannot_decrypt_instead_of_failing_the_task() -> None:
    [sealed] = await EncryptionCodec(KeyRing.generate("stranger")).encode(
        [Payload(metadata={"encoding": b"json/plain"}, data=b"{}")]
    )
    ring = KeyRing.generate("ours")
    with pytest.raises(CodecKeyError):
        await EncryptionCodec(ring).decode([sealed])
    [marked] = await EncryptionCodec(ring, mark_undecodable=True).decode([sealed])
    assert marked.metadata["encoding"] == UNDECODABLE_ENCODING
    assert b"unknown key id 'stranger'" in marked.data


def test_nonces_are_twelve_fresh_bytes_never_repeated_across_batches() -> None:
    source = NonceSource(batch=4)
    nonces = [source.take() for _ in range(1000)]
    assert {len(n) for n in nonces} == {12}
    assert len(set(nonces)) == len(nonces)


def test_a_forked_child_does_not_reuse_the_parents_buffered_nonces() -> None:
    source = NonceSource(batch=64)
    source.take()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report its next nonce, then leave at once
        os.write(write, source.take())
        os._exit(0)
    os.close(write)
    from_child = os.read(read, 12)
    os.close(read)
    os.waitpid(child, 0)
    assert len(from_child) == 12
    assert from_child != source.take()


def test_a_child_forked_while_a_nonce_is_taken_can_take_nonces() -> None:
    """A fork while another thread holds the source's lock (a worker encodes on its event
    loop while anything forks) must not leave the child's lock held for ever."""
    source = NonceSource(batch=64)
    source.take()
    read, write = os.pipe()
    with source._lock:  # as another thread inside take() at the moment of the fork
        child = os.fork()
        if child == 0:  # the child: report whether its lock is free, then its nonce
            free = source._lock.acquire(blocking=False)
            if free:
                source._lock.release()
                os.write(write, b"free" + source.take())
            else:
                os.write(write, b"held")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(child, 0)
    assert answer[:4] == b"free"
    assert len(answer[4:]) == 12 and answer[4:] != source.take()


async def test_a_worker_requiring_encryption_marks_plaintext_and_reads_ciphertext() -> None:
    ring = KeyRing.generate("k1")
    [sealed] = await EncryptionCodec(ring).encode([payload()])
    requiring = EncryptionCodec(ring, mark_undecodable=True, require_encrypted=True)
    [refused, opened] = await requiring.decode([payload(), sealed])
    assert refused.metadata["encoding"] == UNDECODABLE_ENCODING
    assert b"payload not encrypted (encoding 'json/plain')" in refused.data
    assert SECRETISH not in refused.data  # the reason, never the plaintext
    assert opened == payload()
    # Without the setting a codec-less payload passes, as before.
    assert await EncryptionCodec(ring, mark_undecodable=True).decode([payload()]) == [payload()]
    with pytest.raises(CodecKeyError, match="not encrypted"):
        await EncryptionCodec(ring, require_encrypted=True).decode([payload()])
