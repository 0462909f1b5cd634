"""Vault (OpenBao): Transit for data keys, KV v2 at `smtp` for the credentials record.

hvac is synchronous, so activities call it in a thread. Permission errors are
final (a token without the policy will not get it by retrying); sealed or
unreachable Vault is retried.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import hvac
import hvac.exceptions
import requests
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.crypto import DataKey, EnvelopeError
from workflows.contracts import (
    ROTATION_POLICY,
    VAULT_KV_MOUNT,
    RemoveCredentialsRequest,
    StoreCredentialsRequest,
    StoredCredentials,
    vault_secret_path_for,
)

CREDENTIAL_FIELDS = (
    "username",
    "password",
    "webmail_url",
    "created_at",
    "last_rotated",
    "rotation_policy",
)


class VaultError(Exception):
    """Vault refused or failed. `retryable` says whether another attempt may work."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class CasConflict(VaultError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path} changed while writing (check-and-set)", retryable=True)


@dataclass(frozen=True)
class VaultSettings:
    url: str
    token: str
    kv_mount: str = VAULT_KV_MOUNT
    transit_mount: str = "transit"
    transit_key: str = "mail-credentials"


@dataclass(frozen=True)
class CredentialsRecord:
    data: dict[str, str]
    version: int


class Vault:
    """The three Vault operations the product needs, with errors made explicit."""

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self._client = hvac.Client(url=settings.url, token=settings.token, timeout=15)

    def record_path(self, tenant_id: str) -> str:
        """The full path of a tenant's record, e.g. `smtp/acme/admin`: bound into the envelope."""
        return f"{self.settings.kv_mount}/{vault_secret_path_for(tenant_id)}"

    @property
    def kek(self) -> str:
        return f"{self.settings.transit_mount}/{self.settings.transit_key}"

    def generate_data_key(self, tenant_id: str) -> DataKey:
        """A fresh AES-256 key, returned in plaintext and wrapped under the tenant's derived key."""
        response = self._call(
            "transit datakey",
            self._client.secrets.transit.generate_data_key,
            name=self.settings.transit_key,
            key_type="plaintext",
            context=_context(tenant_id),
            bits=256,
            mount_point=self.settings.transit_mount,
        )
        data = response["data"]
        return DataKey(base64.b64decode(data["plaintext"]), data["ciphertext"], self.kek)

    def unwrap_data_key(self, tenant_id: str, wrapped: str) -> bytes:
        try:
            response = self._call(
                "transit decrypt",
                self._client.secrets.transit.decrypt_data,
                name=self.settings.transit_key,
                ciphertext=wrapped,
                context=_context(tenant_id),
                mount_point=self.settings.transit_mount,
            )
        except hvac.exceptions.InvalidRequest:
            # Transit answers 400 when the derived key (tenant context) does not fit.
            raise EnvelopeError(
                f"data key does not unwrap for tenant {tenant_id!r}: tampered or another tenant's"
            ) from None
        return base64.b64decode(response["data"]["plaintext"])

    def read_credentials(self, tenant_id: str) -> CredentialsRecord | None:
        """The current record, or None if there is none (never written, or withdrawn)."""
        data, version = self.latest(tenant_id)
        return CredentialsRecord(data, version) if data is not None else None

    def latest(self, tenant_id: str) -> tuple[dict[str, str] | None, int]:
        """The latest version's data (None if soft-deleted) and number (0 if never written).

        Check-and-set must name the latest version even when it was withdrawn,
        or a tenant whose earlier provisioning was compensated could never be written.
        """
        try:
            response = self._call(
                "kv read",
                self._client.secrets.kv.v2.read_secret_version,
                path=vault_secret_path_for(tenant_id),
                mount_point=self.settings.kv_mount,
                raise_on_deleted_version=False,
            )
        except hvac.exceptions.InvalidPath:
            return None, 0
        data = response["data"]
        version = int(data["metadata"]["version"])
        return (dict(data["data"]) if data.get("data") is not None else None), version

    def write_credentials(self, tenant_id: str, record: dict[str, str], cas: int) -> int:
        """Write with check-and-set: `cas=0` only creates, `cas=N` only replaces version N."""
        path = vault_secret_path_for(tenant_id)
        if set(record) != set(CREDENTIAL_FIELDS):
            raise ValueError(f"credentials record must have exactly {CREDENTIAL_FIELDS}")
        try:
            response = self._call(
                "kv write",
                self._client.secrets.kv.v2.create_or_update_secret,
                path=path,
                secret=record,
                cas=cas,
                mount_point=self.settings.kv_mount,
            )
        except hvac.exceptions.InvalidRequest as err:
            if "check-and-set" in str(err):
                raise CasConflict(f"{self.settings.kv_mount}/{path}") from None
            raise VaultError(f"kv write refused: {err}", retryable=False) from None
        return int(response["data"]["version"])

    def delete_version(self, tenant_id: str, version: int) -> None:
        """Soft-delete one version (an operator can still undelete it: nothing is lost)."""
        self._call(
            "kv delete version",
            self._client.secrets.kv.v2.delete_secret_versions,
            path=vault_secret_path_for(tenant_id),
            versions=[version],
            mount_point=self.settings.kv_mount,
        )

    def _call(self, what: str, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except hvac.exceptions.InvalidPath:
            raise
        except hvac.exceptions.InvalidRequest:
            raise
        except hvac.exceptions.Forbidden:
            raise VaultError(f"{what}: permission denied for this token", retryable=False) from None
        except (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError) as err:
            raise VaultError(f"{what}: vault unavailable: {err}", retryable=True) from None
        except requests.RequestException as err:
            raise VaultError(
                f"{what}: cannot reach vault: {type(err).__name__}", retryable=True
            ) from None


def _context(tenant_id: str) -> str:
    return base64.b64encode(tenant_id.encode()).decode()


def vault_failure(err: VaultError) -> ApplicationError:
    return ApplicationError(str(err), type=type(err).__name__, non_retryable=not err.retryable)


class VaultActivities:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    @activity.defn(name="store_credentials")
    async def store_credentials(self, request: StoreCredentialsRequest) -> StoredCredentials:
        """Write the record once: a retry finds its own envelope and adds no version."""
        try:
            return await asyncio.to_thread(self._store, request)
        except VaultError as err:
            raise vault_failure(err) from None

    @activity.defn(name="remove_credentials")
    async def remove_credentials(self, request: RemoveCredentialsRequest) -> bool:
        """Compensation: withdraw the version this run wrote, if it is still the current one.

        A newer version means someone provisioned or rotated since; it is left alone.
        """
        try:
            return await asyncio.to_thread(self._remove, request)
        except VaultError as err:
            raise vault_failure(err) from None

    def _remove(self, request: RemoveCredentialsRequest) -> bool:
        data, version = self._vault.latest(request.tenant_id)
        if data is None or version != request.version:
            return False
        self._vault.delete_version(request.tenant_id, request.version)
        return True

    def _store(self, request: StoreCredentialsRequest) -> StoredCredentials:
        tenant = request.tenant_id
        vault_path = self._vault.record_path(tenant)
        current, version = self._vault.latest(tenant)
        if current and current.get("password") == request.credentials.password_envelope:
            return StoredCredentials(vault_path, version, current["created_at"])
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = {
            "username": request.credentials.username,
            "password": request.credentials.password_envelope,
            "webmail_url": request.webmail_url,
            # A tenant provisioned again keeps its first creation date; this is a rotation.
            "created_at": current.get("created_at", now) if current else now,
            "last_rotated": now,
            "rotation_policy": ROTATION_POLICY,
        }
        written = self._vault.write_credentials(tenant, record, cas=version)
        return StoredCredentials(vault_path, written, record["created_at"])
