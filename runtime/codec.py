"""AES-256-GCM encryption of every Temporal payload, with key ids for rotation.

Temporal stores workflow inputs, results, activity arguments, query answers and
failures in its history, forever, and shows them to whoever can reach the server.
This codec encrypts each payload before it leaves the process; the server only
ever holds ciphertext. The key id travels in the payload metadata, so after a
rotation the new key encrypts while older keys still decrypt old histories.

The format is Temporal's samples convention byte for byte, so a codec copied from
the samples in any language reads and writes our payloads (TypeScript:
clients/typescript/src/codec.ts; Go: docs/OPERATIONS.md):

    metadata  encoding: binary/encrypted, encryption-key-id: <key id>
    data      12-byte nonce || AES-256-GCM(Payload.SerializeToString()) with its
              16-byte tag, no associated data

as in temporalio/samples-python encryption/codec.py and temporalio/samples-typescript
encryption/src/encryption-codec.ts + crypto.ts. Payloads written by this project's
first release bound the key id as associated data; decode still accepts them
(they also carried an `encryption-cipher` metadata entry, ignored); see docs/security.md.
Failures are encoded too (DefaultFailureConverterWithEncodedAttributes moves
messages and stack traces into an encrypted payload).

Keys come from a key-ring file (MAILPROV_CODEC_KEYS_FILE), never from code:

    {"current": "2026-11", "keys": {"2026-11": "<base64 32 bytes>", "2026-05": "..."}}

The worker, the starter and the codec server all use `data_converter(keyring)`.

Rotation is two steps, so no process ever meets a payload under a key it lacks
(docs/OPERATIONS.md, "Rotate the payload key ring"): `add` puts the new key in the
ring without making it current; once every process has that ring, `starter.py
switch-codec-key` makes it current, and refuses while a worker polling the task queue
does not advertise the key (workers name their key ids in their Temporal identity,
`worker_identity`). A worker that still meets an unknown key id (a ring switched by
hand) fails the task, so Temporal retries it, for a bounded grace (UnknownKeyGrace)
before it marks the payload undecodable.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from runtime.json_converter import ContractPayloadConverter
from workflows.input_rules import UNDECODABLE_ENCODING

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12


# Key ids travel in payload metadata and in worker identities (comma-separated there).
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# How a worker's Temporal identity names the key ids of its ring (not secret: ids only).
IDENTITY_KEYS_MARK = "codec-keys="


class CodecKeyError(Exception):
    """The key ring is unusable, or a payload names a key we do not have."""


class UnknownKeyId(CodecKeyError):
    """A payload names a key id this ring lacks: during a rollout, not yet here."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"payload encrypted with unknown key id {key_id!r}")
        self.key_id = key_id


@dataclass(frozen=True, repr=False)
class KeyRing:
    """The current key (encrypts) and every key still needed to decrypt."""

    current_id: str
    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        if self.current_id not in self.keys:
            raise CodecKeyError(f"current key id {self.current_id!r} is not in the key ring")
        for key_id, key in self.keys.items():
            if len(key) != 32:
                raise CodecKeyError(f"key {key_id!r} must be 32 bytes (AES-256)")

    @classmethod
    def generate(cls, key_id: str) -> KeyRing:
        return cls(key_id, {key_id: secrets.token_bytes(32)})

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        try:
            document = json.loads(path.read_text())
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in document["keys"].items()}
            return cls(str(document["current"]), keys)
        except OSError as err:
            raise CodecKeyError(f"{path}: {err.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CodecKeyError(
                f"{path}: expected {{'current': id, 'keys': {{id: base64}}}} ({type(err).__name__})"
            ) from None

    def added(self, new_id: str) -> KeyRing:
        """Step 1 of a rotation: a new key that decrypts everywhere, current unchanged."""
        if not KEY_ID_PATTERN.fullmatch(new_id):
            raise CodecKeyError(f"key id {new_id!r} must match {KEY_ID_PATTERN.pattern}")
        if new_id in self.keys:
            raise CodecKeyError(f"key id {new_id!r} already exists")
        return KeyRing(self.current_id, {**self.keys, new_id: secrets.token_bytes(32)})

    def switched(self, key_id: str) -> KeyRing:
        """Step 2: `key_id`, added by an earlier step 1, becomes the key that encrypts."""
        if key_id == self.current_id:
            raise CodecKeyError(f"key id {key_id!r} is already current")
        if key_id not in self.keys:
            raise CodecKeyError(
                f"key id {key_id!r} is not in this ring: `add` it first and give that ring to "
                "every worker, codec server and back end"
            )
        return KeyRing(key_id, dict(self.keys))

    def rotated(self, new_id: str) -> KeyRing:
        """Both steps at once, for rings no running process shares (tests, a new stack)."""
        return self.added(new_id).switched(new_id)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        document = {
            "current": self.current_id,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
        }
        path.write_text(json.dumps(document, indent=1) + "\n")


class NonceSource:
    """Fresh 96-bit AES-GCM nonces from the OS's CSPRNG, fetched `batch` at a time.

    Random nonces are the standard for GCM with one key per ring entry; the cost was the
    fetching: one os.urandom call per payload releases and re-takes the GIL, which on a
    busy worker (core's threads, activity threads) cost more than the encryption itself
    (docs/PERFORMANCE.md). Each nonce is still unpredictable and used once; a forked
    child drops the parent's buffer (an at-fork hook, rather than a getpid() system call
    per nonce), so the two can never hand out the same bytes.
    """

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        _NONCE_SOURCES.add(self)

    def take(self) -> bytes:
        with self._lock:
            if self._offset >= len(self._buffer):
                self._buffer = os.urandom(NONCE_BYTES * self._batch)
                self._offset = 0
            nonce = self._buffer[self._offset : self._offset + NONCE_BYTES]
            self._offset += NONCE_BYTES
            return nonce

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's buffer is the parent's (and a lock another
        thread held at the fork would stay held for ever)."""
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0


_NONCE_SOURCES: weakref.WeakSet[NonceSource] = weakref.WeakSet()


def _forget_nonces_after_fork() -> None:
    for source in list(_NONCE_SOURCES):
        source._forget_after_fork()


os.register_at_fork(after_in_child=_forget_nonces_after_fork)


def worker_identity(base: str, keyring: KeyRing) -> str:
    """The worker's Temporal identity with its key ids, which switch-codec-key checks."""
    return f"{base} {IDENTITY_KEYS_MARK}{','.join(sorted(keyring.keys))}"


def keys_in_identity(identity: str) -> frozenset[str]:
    """The key ids a poller's identity advertises (none for a worker of an older release)."""
    for word in identity.split():
        if word.startswith(IDENTITY_KEYS_MARK):
            return frozenset(k for k in word[len(IDENTITY_KEYS_MARK) :].split(",") if k)
    return frozenset()


class UnknownKeyGrace:
    """How long a worker keeps failing a task whose payload names a key id it lacks.

    A failed task is retried by Temporal (workflow tasks without end, activities by
    their retry policy), so a ring rolled out in the wrong order costs a delay, not a
    purchase: once this worker restarts with the key, the retry decodes. After
    `seconds` from the first time this process met the key id, the payload is marked
    undecodable instead, so a start under a key nobody will ever have (a foreign
    client) still ends as InvalidPurchaseRequest. At most `tracked` key ids are timed
    (a client inventing ids cannot grow the table); beyond, they are marked at once.
    """

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        tracked: int = 64,
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self._tracked = tracked
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def still_waiting(self, key_id: str) -> bool:
        if self.seconds <= 0:
            return False
        now = self._clock()
        with self._lock:
            first = self._first_seen.get(key_id)
            if first is None:
                if len(self._first_seen) >= self._tracked:
                    return False
                self._first_seen[key_id] = first = now
        return now - first < self.seconds


class EncryptionCodec(temporalio.converter.PayloadCodec):
    """Encrypts every payload; decrypts what our key ring can open.

    With `mark_undecodable` (the worker's setting) a payload that does not decrypt is
    replaced by a marker payload (UNDECODABLE_ENCODING, the reason as data) instead of
    raising: an exception here fails the whole workflow task, which Temporal retries
    forever, while the marker reaches the workflow, which refuses a start it cannot read
    (InvalidPurchaseRequest) and, anywhere else, fails to convert it like any bad payload.
    A key id the ring lacks is the exception: during `unknown_key_grace` it raises, so
    Temporal retries the task until this worker has the key (a rollout in progress).
    With `require_encrypted` (the worker's MAILPROV_REQUIRE_ENCRYPTED_PAYLOADS) a payload
    that is not `binary/encrypted` (a codec-less client's start, signal or query
    argument) is marked too, so it is refused instead of read.
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        mark_undecodable: bool = False,
        unknown_key_grace: UnknownKeyGrace | None = None,
        require_encrypted: bool = False,
    ) -> None:
        self._keyring = keyring
        self._mark_undecodable = mark_undecodable
        self._grace = unknown_key_grace
        self._require_encrypted = require_encrypted
        # One cipher per key, made once: every workflow task encodes and decodes, and
        # the key schedule is the same each time.
        self._aeads = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}
        self._nonces = NonceSource()
        # The metadata of every payload this codec writes, built once: copying it costs a
        # third of building the protobuf map from a dict for each payload.
        self._encrypted = Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: keyring.current_id.encode()}
        )

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        aead = self._aeads[self._keyring.current_id]
        encoded = []
        for payload in payloads:
            nonce = self._nonces.take()
            # No associated data: the samples' codecs (TypeScript, Go, Python) bind none,
            # and every other language's back end must be able to open our payloads.
            ciphertext = aead.encrypt(nonce, payload.SerializeToString(), None)
            encrypted = Payload()
            encrypted.CopyFrom(self._encrypted)
            encrypted.data = nonce + ciphertext
            encoded.append(encrypted)
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decode_or_mark(payload) for payload in payloads]

    def _decode_or_mark(self, payload: Payload) -> Payload:
        encoding = payload.metadata.get("encoding")
        if encoding != ENCODING:
            if not self._require_encrypted:
                return payload  # written before encryption was on, or by a codec-less client
            shown = (encoding or b"").decode("ascii", "replace")[:60]
            refused = CodecKeyError(
                f"payload not encrypted (encoding {shown!r}); this worker accepts only "
                "binary/encrypted payloads (MAILPROV_REQUIRE_ENCRYPTED_PAYLOADS): start it "
                "with the project's codec"
            )
            if not self._mark_undecodable:
                raise refused
            return self._marker(refused)
        if not self._mark_undecodable:
            return self._decrypt(payload)
        try:
            return self._decrypt(payload)
        except UnknownKeyId as err:
            if self._grace is not None and self._grace.still_waiting(err.key_id):
                raise  # the task fails and is retried: the key may be on its way
            return self._marker(err)
        except CodecKeyError as err:
            return self._marker(err)

    @staticmethod
    def _marker(err: CodecKeyError) -> Payload:
        return Payload(metadata={"encoding": UNDECODABLE_ENCODING}, data=str(err).encode())

    def _decrypt(self, payload: Payload) -> Payload:
        """A `binary/encrypted` payload opened, or CodecKeyError."""
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        aead = self._aeads.get(key_id)
        if aead is None:
            raise UnknownKeyId(key_id)
        nonce, ciphertext = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        # The samples' format first (everything written now); then, for histories
        # written by the first release, the key id as associated data. A payload that
        # authenticates under neither was changed or was not made with this key.
        # Drop the second entry once no retained history predates the switch.
        for associated_data in (None, key_id.encode()):
            try:
                plaintext = aead.decrypt(nonce, ciphertext, associated_data)
            except InvalidTag:
                continue
            try:
                return Payload.FromString(plaintext)
            except ValueError:  # protobuf's DecodeError; only our own key could produce this
                raise CodecKeyError(
                    f"payload under key {key_id!r} is not a Temporal payload"
                ) from None
        raise CodecKeyError(f"payload under key {key_id!r} does not authenticate")


def data_converter(
    keyring: KeyRing,
    *,
    mark_undecodable: bool = False,
    unknown_key_grace: UnknownKeyGrace | None = None,
    require_encrypted: bool = False,
) -> temporalio.converter.DataConverter:
    """The converter of worker, starter and codec server; the worker marks undecodables
    (after the grace, for a key id it lacks) and, if required, unencrypted payloads.
    JSON as the SDK's default converter writes and reads it, with the dataclass work
    cached per class (runtime/json_converter.py)."""
    codec = EncryptionCodec(
        keyring,
        mark_undecodable=mark_undecodable,
        unknown_key_grace=unknown_key_grace,
        require_encrypted=require_encrypted,
    )
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_converter_class=ContractPayloadConverter,
        payload_codec=codec,
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m runtime.codec new|add FILE KEY_ID`: manage a key-ring file.

    `add` is step 1 of a rotation; step 2, making the key current, is `starter.py
    switch-codec-key KEY_ID`, which first checks that every worker has the key.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runtime.codec", description=main.__doc__)
    parser.add_argument("action", choices=["new", "add", "rotate"])
    parser.add_argument("file", type=Path)
    parser.add_argument("key_id")
    args = parser.parse_args(argv)
    try:
        if args.action == "new":
            if args.file.exists():
                raise CodecKeyError(f"{args.file} exists; use add")
            if not KEY_ID_PATTERN.fullmatch(args.key_id):
                raise CodecKeyError(f"key id must match {KEY_ID_PATTERN.pattern}")
            KeyRing.generate(args.key_id).write(args.file)
            message = f"current key is {args.key_id!r}"
        elif args.action == "add":
            ring = KeyRing.from_file(args.file)
            ring.added(args.key_id).write(args.file)
            message = (
                f"key {args.key_id!r} added, {ring.current_id!r} still encrypts. Give this "
                "ring to every worker, codec server and back end and restart them; then "
                f"`python starter.py switch-codec-key {args.key_id}` makes it current"
            )
        else:
            # One step would let a process encrypt under a key the others do not have yet.
            raise CodecKeyError(
                "rotate is two steps: `add FILE KEY_ID`, give the ring to every process, "
                "then `python starter.py switch-codec-key KEY_ID` (docs/OPERATIONS.md)"
            )
    except CodecKeyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.file}: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
