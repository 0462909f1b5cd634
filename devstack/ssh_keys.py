"""Hetzner Cloud SSH keys for the local cloud.

Follows the SSH Keys section of https://docs.hetzner.cloud/ and what clients meet:

* ``POST /v1/ssh_keys`` {name, public_key, labels} -> 201 {ssh_key}; ``ssh_key`` is
  {id, name, fingerprint, public_key, labels, created} (hcloud-python 2.27.0
  hcloud/ssh_keys/domain.py SSHKey). The fingerprint is the MD5 of the key blob in
  colon-separated hex, as Hetzner shows it.
* Names are unique per project ("SSH key name is already used (uniqueness_error)",
  snowdrop/k8s-infra#214), and so are fingerprints ("SSH key with the same fingerprint
  already exists (uniqueness_error)", hetznercloud/terraform-provider-hcloud#12,
  ansible-collections/hetzner.hcloud#55; hcloud-python#34: "The fingerprint is unique").
* ``GET /v1/ssh_keys`` filtered by ``name``, ``fingerprint``, ``label_selector``, paged;
  ``GET`` and ``DELETE /v1/ssh_keys/{id}`` (204; not_found when gone).
* A server create names keys in ``ssh_keys`` (ids or names); an unknown one is
  invalid_input. Hetzner hands the keys to the server's cloud-init as metadata.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from devstack import hetzner
from devstack.hetzner import ApiError, invalid_input, iso

_FIRST_SSH_KEY_ID = 3_000_001
_KEY_TYPES = {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384"}


@dataclass
class SshKey:
    id: int
    name: str
    public_key: str
    fingerprint: str
    labels: dict[str, str]
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "public_key": self.public_key,
            "labels": dict(self.labels),
            "created": iso(self.created),
        }


def fingerprint(public_key: str) -> str | None:
    """MD5 over the key blob, colon-separated hex; None when not an OpenSSH key line."""
    parts = public_key.split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class SshKeyBook:
    def __init__(self) -> None:
        self._keys: dict[int, SshKey] = {}
        self._ids = itertools.count(_FIRST_SSH_KEY_ID)

    def create(self, body: dict[str, Any]) -> SshKey:
        problems: dict[str, list[str]] = {}
        name, public_key = body.get("name"), body.get("public_key")
        if not isinstance(name, str) or not name.strip():
            problems["name"] = ["Missing data for required field."]
        if not isinstance(public_key, str) or not public_key.strip():
            problems["public_key"] = ["Missing data for required field."]
        elif fingerprint(public_key) is None:
            problems["public_key"] = ["invalid public key"]
        labels = body.get("labels", {})
        if label_problems := hetzner.validate_labels(labels):
            problems["labels"] = label_problems
        if problems:
            raise invalid_input(problems)
        assert isinstance(name, str) and isinstance(public_key, str)
        print_ = fingerprint(public_key)
        assert print_ is not None
        if any(k.name == name for k in self._keys.values()):
            raise ApiError(
                "uniqueness_error", "SSH key name is already used", {"fields": [{"name": "name"}]}
            )
        if any(k.fingerprint == print_ for k in self._keys.values()):
            raise ApiError(
                "uniqueness_error",
                "SSH key with the same fingerprint already exists",
                {"fields": [{"name": "public_key"}]},
            )
        key = SshKey(next(self._ids), name, public_key.strip(), print_, dict(labels))
        self._keys[key.id] = key
        return key

    def get(self, raw_id: str) -> SshKey:
        key = self._keys.get(int(raw_id)) if raw_id.isdigit() else None
        if key is None:
            raise ApiError("not_found", f"SSH key with ID '{raw_id}' not found")
        return key

    def listing(self, name: str | None, print_: str | None, selector: str) -> list[SshKey]:
        found = hetzner.select(self._keys.values(), name, selector)
        return [k for k in found if print_ is None or k.fingerprint == print_]

    def delete(self, raw_id: str) -> None:
        self._keys.pop(self.get(raw_id).id)

    def for_new_server(self, entries: Any) -> list[SshKey]:
        """The keys a create names (ids or names, as Hetzner accepts both)."""
        if entries is None:
            return []
        if not isinstance(entries, list):
            raise invalid_input({"ssh_keys": ["ssh_keys must be a list"]})
        keys = []
        for entry in entries:
            match = [
                k
                for k in self._keys.values()
                if (isinstance(entry, int) and k.id == entry) or k.name == entry
            ]
            if not match:
                raise invalid_input({"ssh_keys": [f"ssh key {entry!r} not found"]})
            keys.append(match[0])
        return keys
