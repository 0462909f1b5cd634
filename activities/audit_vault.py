"""The audit chain's key and heads in Vault (OpenBao).

- Key: Transit `mail-audit` (type `hmac`, not exportable). The worker may make MACs
  (`transit/hmac/mail-audit`); the auditor may only check them (`transit/verify/...`),
  so an auditor's token cannot forge a row.
- Anchor: KV v2 `audit-chain/head/<chain>` = {seq, mac} of the last row, written by the
  worker with check-and-set after each append. The auditor may only read it.
- Checkpoint: KV v2 `audit-chain/checkpoint/<chain>`, written only by the auditor
  (`starter.py audit-verify --checkpoint`) after a full verification. The worker
  cannot write it, so history up to the checkpoint cannot be rewritten even with
  the worker's token (which can make MACs and move the anchor).

deploy/vault_bootstrap.py creates the key and the mount; deploy/vault/policies/ grant
exactly the paths above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from activities.audit import AnchorMoved, AuditLog, AuditReport, Head, open_audit_store
from activities.vault import CasConflict, Vault, VaultError

AUDIT_HMAC_KEY = "mail-audit"
# Not `audit`: Vault and OpenBao reserve that mount path (sys/audit devices).
AUDIT_KV_MOUNT = "audit-chain"
DEFAULT_AUDIT_CHAIN = "mail-provisioning"
# One path segment: it names the KV records (and is bound into every MAC).
CHAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class AuditSettings:
    """Where the rows are (SQLite path or postgresql:// DSN) and which chain they form."""

    location: str
    chain: str = DEFAULT_AUDIT_CHAIN
    hmac_key: str = AUDIT_HMAC_KEY
    kv_mount: str = AUDIT_KV_MOUNT

    def __post_init__(self) -> None:
        if not CHAIN_NAME.match(self.chain):
            raise ValueError(
                f"audit chain name {self.chain!r}: lower-case letters, digits, '.', '_', '-'"
            )

    @property
    def anchor_path(self) -> str:
        return f"head/{self.chain}"

    @property
    def checkpoint_path(self) -> str:
        return f"checkpoint/{self.chain}"


class VaultChainKey:
    """Row MACs by Transit; the key never leaves Vault."""

    def __init__(self, vault: Vault, key: str) -> None:
        self._vault = vault
        self._key = key

    def mac(self, messages: list[bytes]) -> list[str]:
        return self._vault.hmac(self._key, messages)

    def verify(self, pairs: list[tuple[bytes, str]]) -> list[bool]:
        return self._vault.verify_hmac(self._key, pairs)


class VaultHead:
    """A head ({seq, mac}) in a KV v2 record, replaced only with check-and-set."""

    def __init__(self, vault: Vault, mount: str, path: str) -> None:
        self._vault = vault
        self._mount = mount
        self._path = path

    def read(self) -> tuple[Head | None, int]:
        data, version = self._vault.read_kv(self._mount, self._path)
        if data is None:
            return None, version
        try:
            return Head(int(data["seq"]), str(data["mac"])), version
        except (KeyError, TypeError, ValueError):
            raise VaultError(
                f"{self._mount}/{self._path} is not an audit head: {sorted(data)}", retryable=False
            ) from None

    def write(self, head: Head, cas: int) -> int:
        try:
            return self._vault.write_kv(
                self._mount, self._path, {"seq": head.seq, "mac": head.mac}, cas
            )
        except CasConflict:
            raise AnchorMoved(f"{self._mount}/{self._path}") from None


def open_audit_log(settings: AuditSettings, vault: Vault) -> AuditLog:
    """The keyed, anchored log the worker appends to (and `audit-verify` checks)."""
    return AuditLog(
        open_audit_store(settings.location),
        VaultChainKey(vault, settings.hmac_key),
        VaultHead(vault, settings.kv_mount, settings.anchor_path),
        settings.chain,
    )


def checkpoint_record(settings: AuditSettings, vault: Vault) -> VaultHead:
    """The auditor's checkpoint of this chain."""
    return VaultHead(vault, settings.kv_mount, settings.checkpoint_path)


def verify_audit_log(settings: AuditSettings, vault: Vault) -> AuditReport:
    """Read-only: every row's MAC through Vault, continuity, head vs anchor and checkpoint.

    Needs a token allowed `transit/verify/<key>` and reading `audit-chain/head/<chain>` and
    `audit-chain/checkpoint/<chain>` (the auditor's policy; the worker's also suffices for the
    anchor, not for the checkpoint).
    """
    return open_audit_log(settings, vault).verify(checkpoint_record(settings, vault))
