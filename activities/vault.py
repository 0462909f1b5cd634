"""Vault (OpenBao): Transit for data keys, KV v2 at `smtp` for the credentials record.

hvac is synchronous, so activities call it in a thread.

Authentication: AppRole (role_id + secret_id) or a static token. The token is
renewed once two thirds of its TTL have passed, and a 403 makes the client log in
again and retry once, so a restarted or re-bootstrapped Vault needs no worker restart.

Errors: sealed or unreachable Vault is retried. Permission denied is retried too,
for a bounded time (`VaultSettings.denied_retry_seconds`, 10 min by default,
counted from the activity's first attempt) with an alertable log line and metric
(`vault_access_degraded`), and only then final: a Vault that lost its policies or was
restored from an old snapshot must not make the workflow destroy configured servers.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.connections import VaultTransport, explain_vault_tls_error
from activities.crypto import DataKey, EnvelopeError
from workflows.contracts import (
    ROTATION_POLICY,
    VAULT_KV_MOUNT,
    RemoveCredentialsRequest,
    StoreCredentialsRequest,
    StoredCredentials,
    vault_secret_path_for,
)

# structlog itself, not the worker's log set-up (which configures it, in the worker's
# machinery above the activities): an outside system's module imports none of it.
log = structlog.get_logger("vault")

CREDENTIAL_FIELDS = (
    "username",
    "password",
    "webmail_url",
    "created_at",
    "last_rotated",
    "rotation_policy",
)


# Retrying a permission or seal error for this long gives an operator time to unseal,
# restore or re-run the bootstrap before a run gives up and compensates.
DEFAULT_DENIED_RETRY_SECONDS = 600.0
# Items per Transit batch request. OpenBao refuses a JSON body with more than
# `max_request_json_strings` strings, keys and values counted (default 1000, since
# 2.4.1: openbao/openbao CHANGELOG.md, GH-1756, CVE-2025-59043); a verify item has 4.
TRANSIT_BATCH = 200
# Renew the worker's token when this share of its TTL has passed.
RENEW_AFTER_FRACTION = 2 / 3


class VaultError(Exception):
    """Vault refused or failed. `retryable` says whether another attempt may work.

    `degraded` marks errors that mean Vault itself is not as the worker needs it
    (permission denied, sealed): retried only for a bounded time, and alerted on.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        degraded: str | None = None,
        retry_limit_seconds: float = DEFAULT_DENIED_RETRY_SECONDS,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.degraded = degraded
        self.retry_limit_seconds = retry_limit_seconds


class CasConflict(VaultError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path} changed while writing (check-and-set)", retryable=True)


@dataclass(frozen=True, repr=False)
class VaultSettings:
    """Where Vault is and how to log in: AppRole (role_id + secret_id) or a static token."""

    url: str
    token: str = ""
    role_id: str = ""
    secret_id: str = ""
    # Read again at every login, so a re-issued secret id (e.g. after restoring Vault)
    # needs no worker restart: rewrite the file.
    secret_id_file: str = ""
    approle_mount: str = "approle"
    # VAULT_CACERT / VAULT_CLIENT_CERT / VAULT_CLIENT_KEY / VAULT_NAMESPACE
    transport: VaultTransport = field(default_factory=VaultTransport)
    kv_mount: str = VAULT_KV_MOUNT
    transit_mount: str = "transit"
    transit_key: str = "mail-credentials"
    denied_retry_seconds: float = DEFAULT_DENIED_RETRY_SECONDS

    @property
    def uses_approle(self) -> bool:
        return bool(self.role_id and (self.secret_id or self.secret_id_file))


@dataclass(frozen=True)
class CredentialsRecord:
    data: dict[str, str]
    version: int


class Vault:
    """The three Vault operations the product needs, with errors made explicit."""

    def __init__(
        self, settings: VaultSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        # Explicit TLS settings: hvac would otherwise read VAULT_CACERT... from the
        # process's environment at import, bypassing the checked settings.
        transport = settings.transport
        self._client = hvac.Client(
            url=settings.url,
            token=settings.token or None,
            timeout=15,
            verify=transport.verify,
            cert=transport.cert,
            namespace=transport.namespace or None,
        )
        # sys/health belongs to the root namespace: OpenBao 2.7.2 answers 400 when it is
        # asked inside one (tests/integration/test_tls_connections.py), so the health
        # check goes without VAULT_NAMESPACE.
        self._health_client = (
            hvac.Client(
                url=settings.url,
                token="",  # unauthenticated endpoint: no token from the environment either
                timeout=15,
                verify=transport.verify,
                cert=transport.cert,
            )
            if transport.namespace
            else self._client
        )
        self._clock = clock
        self._auth_lock = threading.Lock()
        # When the current token should be renewed (clock time); None: not known yet.
        self._renew_at: float | None = None
        self._renewable = True

    def record_path(self, tenant_id: str) -> str:
        """The full path of a tenant's record, e.g. `smtp/acme/admin`: bound into the envelope."""
        return f"{self.settings.kv_mount}/{vault_secret_path_for(tenant_id)}"

    def tenant_key(self, tenant_id: str) -> str:
        """The tenant's own Transit key, e.g. `mail-credentials-acme`.

        One key per tenant, so deprovisioning can delete it (crypto-shredding): every
        envelope it ever wrapped, in Vault's backups too, then stays closed. The policies
        grant Transit only on `{transit_key}-*` (deploy/vault/policies/).
        """
        return f"{self.settings.transit_key}-{tenant_id}"

    def tenant_kek(self, tenant_id: str) -> str:
        """How an envelope names the key wrapping its data key: `transit/mail-credentials-acme`."""
        return f"{self.settings.transit_mount}/{self.tenant_key(tenant_id)}"

    @property
    def startup_check_key(self) -> str:
        """The key check_ready uses: `_` is in no tenant id, so it is no tenant's key."""
        return f"{self.settings.transit_key}-_startup-check"

    def generate_data_key(self, tenant_id: str) -> DataKey:
        """A fresh AES-256 key, in plaintext and wrapped under the tenant's own Transit key.

        The tenant's first data key creates its key (Transit `datakey` never creates
        one; OpenBao 2.7.2 answers 400 "encryption key not found"): create is
        idempotent, so two first attempts racing each other both succeed.
        """
        return self._data_key(self.tenant_key(tenant_id), self.tenant_kek(tenant_id))

    def _data_key(self, key: str, kek: str) -> DataKey:
        try:
            data = self._datakey(key)
        except hvac.exceptions.InvalidRequest as err:
            if "not found" not in str(err):
                raise VaultError(f"transit datakey {key}: {err}", retryable=False) from None
            self._create_key(key)
            data = self._datakey(key)
        return DataKey(base64.b64decode(data["plaintext"]), data["ciphertext"], kek)

    def _datakey(self, key: str) -> Any:
        return self._call(
            "transit datakey",
            self._client.secrets.transit.generate_data_key,
            name=key,
            key_type="plaintext",
            bits=256,
            mount_point=self.settings.transit_mount,
        )["data"]

    def _create_key(self, key: str) -> None:
        """A non-exportable AES-256-GCM key with no plaintext backup: it never leaves Vault."""
        self._call(
            "transit create key",
            self._client.secrets.transit.create_key,
            name=key,
            key_type="aes256-gcm96",
            exportable=False,
            allow_plaintext_backup=False,
            mount_point=self.settings.transit_mount,
        )

    def unwrap_data_key(self, tenant_id: str, kek: str, wrapped: str) -> bytes:
        """Unwrap with the key the envelope names, which must be this tenant's own.

        An envelope naming another tenant's key (copied or tampered with) is refused
        before Vault is asked; one whose key was destroyed (a deprovisioned tenant, or
        its old backup) fails with TenantKeyDestroyed.
        """
        expected = self.tenant_kek(tenant_id)
        if kek != expected:
            raise EnvelopeError(f"envelope key {kek!r} is not tenant {tenant_id!r}'s {expected!r}")
        try:
            response = self._call(
                "transit decrypt",
                self._client.secrets.transit.decrypt_data,
                name=self.tenant_key(tenant_id),
                ciphertext=wrapped,
                mount_point=self.settings.transit_mount,
            )
        except hvac.exceptions.InvalidRequest as err:
            if "not found" in str(err):
                raise TenantKeyDestroyed(
                    f"Transit key {expected!r} does not exist: tenant {tenant_id!r} was "
                    "deprovisioned (its key destroyed) or never had one"
                ) from None
            raise EnvelopeError(
                f"data key does not unwrap under {expected!r}: tampered or another key's"
            ) from None
        return base64.b64decode(response["data"]["plaintext"])

    def destroy_tenant_key(self, tenant_id: str) -> bool:
        """Delete the tenant's Transit key and all its versions: crypto-shredding.

        Transit refuses to delete a key until its config says `deletion_allowed`, so that
        is set first (two calls; a retry after either is fine). True if a key was
        deleted, False if there was none (a repeat: idempotent).
        """
        key = self.tenant_key(tenant_id)
        try:
            self._call(
                "transit allow deletion",
                self._client.secrets.transit.update_key_configuration,
                name=key,
                deletion_allowed=True,
                mount_point=self.settings.transit_mount,
            )
        except hvac.exceptions.InvalidRequest as err:
            # OpenBao 2.7.2: 400 "no existing key named ... could be found".
            if "no existing key" in str(err):
                return False
            raise VaultError(f"transit config {key}: {err}", retryable=False) from None
        try:
            self._call(
                "transit delete key",
                self._client.secrets.transit.delete_key,
                name=key,
                mount_point=self.settings.transit_mount,
            )
        except hvac.exceptions.InvalidRequest as err:
            # 400 "could not delete key; not found": an earlier attempt deleted it.
            if "not found" not in str(err):
                raise VaultError(f"transit delete {key}: {err}", retryable=False) from None
        return True

    def read_credentials(self, tenant_id: str) -> CredentialsRecord | None:
        """The current record, or None if there is none (never written, or withdrawn)."""
        data, version = self.latest(tenant_id)
        return CredentialsRecord(data, version) if data is not None else None

    def latest(self, tenant_id: str) -> tuple[dict[str, str] | None, int]:
        """The latest version's data (None if soft-deleted) and number (0 if never written).

        Check-and-set must name the latest version even when it was withdrawn,
        or a tenant whose earlier provisioning was compensated could never be written.
        """
        return self.read_kv(self.settings.kv_mount, vault_secret_path_for(tenant_id))

    def write_credentials(self, tenant_id: str, record: dict[str, str], cas: int) -> int:
        """Write with check-and-set: `cas=0` only creates, `cas=N` only replaces version N."""
        if set(record) != set(CREDENTIAL_FIELDS):
            raise ValueError(f"credentials record must have exactly {CREDENTIAL_FIELDS}")
        return self.write_kv(self.settings.kv_mount, vault_secret_path_for(tenant_id), record, cas)

    # ------------------------------------------------------------------ KV v2, any path

    def read_kv(self, mount: str, path: str) -> tuple[dict[str, Any] | None, int]:
        """A KV v2 secret's latest data (None if soft-deleted) and version (0: never written)."""
        try:
            response = self._call(
                "kv read",
                self._client.secrets.kv.v2.read_secret_version,
                path=path,
                mount_point=mount,
                raise_on_deleted_version=False,
            )
        except hvac.exceptions.InvalidPath:
            return None, 0
        data = response["data"]
        version = int(data["metadata"]["version"])
        return (dict(data["data"]) if data.get("data") is not None else None), version

    def write_kv(self, mount: str, path: str, data: dict[str, Any], cas: int) -> int:
        """Write with check-and-set; the new version. CasConflict if `cas` is not the latest."""
        try:
            response = self._call(
                "kv write",
                self._client.secrets.kv.v2.create_or_update_secret,
                path=path,
                secret=data,
                cas=cas,
                mount_point=mount,
            )
        except hvac.exceptions.InvalidRequest as err:
            if "check-and-set" in str(err):
                raise CasConflict(f"{mount}/{path}") from None
            raise VaultError(f"kv write refused: {err}", retryable=False) from None
        return int(response["data"]["version"])

    # ------------------------------------------------------------------ Transit HMAC

    def hmac(self, key: str, messages: list[bytes]) -> list[str]:
        """Transit HMAC-SHA256 of each message under `key` (`vault:vN:...`), batched.

        The key never leaves Vault: whoever holds the audit database cannot make a MAC.
        """
        macs: list[str] = []
        for start in range(0, len(messages), TRANSIT_BATCH):
            chunk = messages[start : start + TRANSIT_BATCH]
            response = self._transit_batch(
                "transit hmac",
                f"{self.settings.transit_mount}/hmac/{key}",
                [{"input": _b64(m)} for m in chunk],
            )
            results = response["data"]["batch_results"]
            if len(results) != len(chunk) or any("hmac" not in r for r in results):
                errors = sorted({str(r.get("error")) for r in results if "hmac" not in r})
                raise VaultError(f"transit hmac failed: {errors}", retryable=False)
            macs += [str(r["hmac"]) for r in results]
        return macs

    def verify_hmac(self, key: str, pairs: list[tuple[bytes, str]]) -> list[bool]:
        """Whether each (message, MAC) pair verifies under `key`, batched.

        A malformed or foreign MAC is simply False: OpenBao answers 200 with a per-item
        `error` and leaves out `valid` (checked against OpenBao 2.7.2, transit/verify).
        """
        valid: list[bool] = []
        for start in range(0, len(pairs), TRANSIT_BATCH):
            chunk = pairs[start : start + TRANSIT_BATCH]
            response = self._transit_batch(
                "transit verify",
                f"{self.settings.transit_mount}/verify/{key}",
                [{"input": _b64(m), "hmac": mac} for m, mac in chunk],
            )
            results = response["data"]["batch_results"]
            if len(results) != len(chunk):
                raise VaultError("transit verify: answer does not match the batch", retryable=True)
            valid += [r.get("valid") is True for r in results]
        return valid

    def _transit_batch(self, what: str, path: str, batch: list[dict[str, str]]) -> Any:
        try:
            return self._call(what, self._client.write_data, path=path, data={"batch_input": batch})
        except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest) as err:
            # No such key (the bootstrap was not run) or a request Transit refuses.
            raise VaultError(f"{what} {path}: {err}", retryable=False) from None

    def delete_version(self, tenant_id: str, version: int) -> None:
        """Soft-delete one version (an operator can still undelete it: nothing is lost)."""
        self._call(
            "kv delete version",
            self._client.secrets.kv.v2.delete_secret_versions,
            path=vault_secret_path_for(tenant_id),
            versions=[version],
            mount_point=self.settings.kv_mount,
        )

    def destroy_record(self, tenant_id: str) -> int:
        """Destroy the tenant's record for good: every version's data and the metadata
        (KV v2 `DELETE {mount}/metadata/{path}`, which Vault documents as permanently
        deleting all versions; no undelete). Returns how many versions it had, 0 when
        there was none (a repeat: idempotent).

        What this does not reach: copies of the record in Vault's storage backups
        (docs/OPERATIONS.md, "Deprovisioning a tenant", says what an old backup still opens).
        """
        _, version = self.latest(tenant_id)
        if version == 0:
            return 0
        self._call(
            "kv destroy record",
            self._client.secrets.kv.v2.delete_metadata_and_all_versions,
            path=vault_secret_path_for(tenant_id),
            mount_point=self.settings.kv_mount,
        )
        return version

    # ------------------------------------------------------------------ readiness

    def check_ready(self) -> None:
        """Raise VaultNotReady unless the mount, the KV path and the Transit key answer.

        First whether Vault answers at all (VaultUnavailable: start or unseal it, the
        bootstrap would not help), then, with only what the worker's policy allows, what
        the bootstrap sets up: a data key under the check key `{transit_key}-_startup-check`,
        created by the first start (proves the Transit mount and the permission to create
        and use per-tenant keys; no tenant id has `_`, so it is no tenant's key) and a
        read of a record that does not exist (proves the KV v2 mount).
        """
        self._check_available()
        try:
            self._data_key(self.startup_check_key, self.settings.transit_mount)
        except VaultError as err:
            raise self._startup_failure(err, f"Transit keys {self.tenant_key('*')!r}") from None
        except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest):
            raise VaultNotReady(
                f"Transit mount {self.settings.transit_mount!r} does not exist; "
                "run deploy/vault_bootstrap.py"
            ) from None
        try:
            self._call(
                "kv read",
                self._client.secrets.kv.v2.read_secret_version,
                path=vault_secret_path_for("startup-check"),
                mount_point=self.settings.kv_mount,
                raise_on_deleted_version=False,
            )
        except hvac.exceptions.InvalidPath as err:
            # A missing record is 404 with no message; a missing mount names the route.
            if "no handler for route" in str(err):
                raise VaultNotReady(
                    f"KV v2 mount {self.settings.kv_mount!r} does not exist; "
                    "run deploy/vault_bootstrap.py"
                ) from None
        except VaultError as err:
            raise self._startup_failure(err, f"KV mount {self.settings.kv_mount!r}") from None

    def _startup_failure(self, err: VaultError, what: str) -> VaultUnavailable | VaultNotReady:
        """A denied start-up check is a set-up gap the bootstrap closes; sealed,
        unreachable or failing since the health check is an outage, not a set-up gap."""
        if err.degraded != "denied":
            return VaultUnavailable(f"Vault at {self.settings.url} failed: {err}")
        return VaultNotReady(f"{what} is not usable: {err}; run deploy/vault_bootstrap.py")

    def _check_available(self) -> None:
        """VaultUnavailable unless Vault answers, is initialised and unsealed.

        /v1/sys/health needs no token. Its status codes (Vault and OpenBao API docs,
        "sys/health"): 200 active (a standby too, with standbyok), 501 not initialised,
        503 sealed; anything else is an unhealthy node.
        """
        url = self.settings.url
        try:
            health = self._health_client.sys.read_health_status(method="GET", standby_ok=True)
        except requests.Timeout:
            raise VaultUnavailable(
                f"Vault unreachable at {url}: no answer within the timeout; "
                "start Vault or fix VAULT_ADDR (the bootstrap is not the fix)"
            ) from None
        except requests.RequestException as err:
            tls_problem = explain_vault_tls_error(url, self.settings.transport, err)
            if tls_problem is not None:
                raise VaultUnavailable(tls_problem) from None
            raise VaultUnavailable(
                f"Vault unreachable at {url}: {_connection_reason(err)}; "
                "start Vault or fix VAULT_ADDR (the bootstrap is not the fix)"
            ) from None
        status = 200 if isinstance(health, dict) else int(health.status_code)
        if status == 503:
            raise VaultUnavailable(
                f"Vault at {url} is sealed: unseal it (bao/vault operator unseal), "
                "then start the worker"
            )
        if status == 501:
            raise VaultUnavailable(
                f"Vault at {url} is not initialised: `operator init`, unseal, "
                "then run deploy/vault_bootstrap.py"
            )
        if status != 200:
            raise VaultUnavailable(f"Vault at {url} is not healthy: sys/health answered {status}")

    # ------------------------------------------------------------------ auth

    def _login(self) -> None:
        """AppRole login: a fresh token, with its renewal time."""
        secret_id = self.settings.secret_id
        if self.settings.secret_id_file:
            try:
                secret_id = Path(self.settings.secret_id_file).read_text().strip()
            except OSError as err:
                raise self._degraded("approle login", "denied", f"secret id: {err}") from None
        try:
            response = self._client.auth.approle.login(
                role_id=self.settings.role_id,
                secret_id=secret_id,
                mount_point=self.settings.approle_mount,
            )
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest) as err:
            # Unknown role or secret id: the AppRole is gone (lost data) or rotated.
            raise self._degraded("approle login", "denied", f"refused: {err}") from None
        except hvac.exceptions.InvalidPath:
            raise self._degraded("approle login", "denied", "no AppRole auth mount") from None
        self._token_issued(response["auth"])

    def _degraded(self, what: str, kind: str, detail: str) -> VaultError:
        return VaultError(
            f"{what}: {detail}",
            retryable=True,
            degraded=kind,
            retry_limit_seconds=self.settings.denied_retry_seconds,
        )

    def _token_issued(self, auth: dict[str, Any]) -> None:
        ttl = float(auth.get("lease_duration") or 0)
        self._renewable = bool(auth.get("renewable")) and ttl > 0
        self._renew_at = self._clock() + ttl * RENEW_AFTER_FRACTION if self._renewable else None

    def _ensure_token(self) -> None:
        """Log in if we have no token yet; renew it once most of its TTL has passed."""
        with self._auth_lock:
            if self.settings.uses_approle and not self._client.token:
                self._login()
                return
            if self._renew_at is None and self._renewable:
                # A static token: learn its TTL once (a root token has none). A policy
                # without auth/token/lookup-self just means we cannot renew it.
                try:
                    data = self._client.auth.token.lookup_self()["data"]
                except hvac.exceptions.Forbidden:
                    data = {"ttl": 0, "renewable": False}
                self._token_issued(
                    {"lease_duration": data.get("ttl"), "renewable": data.get("renewable")}
                )
            if self._renew_at is not None and self._clock() >= self._renew_at:
                try:
                    self._token_issued(self._client.auth.token.renew_self()["auth"])
                    log.info("vault token renewed")
                except hvac.exceptions.VaultError:
                    if not self.settings.uses_approle:
                        raise
                    # Past its max TTL (or revoked): a new login gives a new token.
                    self._login()

    def _relogin_after_denied(self) -> bool:
        """On 403 with AppRole: log in again (the token may be gone). True if we did."""
        if not self.settings.uses_approle:
            return False
        with self._auth_lock:
            self._login()
        log.warning("vault denied the token; logged in again with AppRole")
        return True

    def _call(self, what: str, method: Any, **kwargs: Any) -> Any:
        try:
            try:
                self._ensure_token()
                return method(**kwargs)
            except hvac.exceptions.Forbidden:
                if not self._relogin_after_denied():
                    raise
                return method(**kwargs)
        except hvac.exceptions.InvalidPath:
            raise
        except hvac.exceptions.InvalidRequest:
            raise
        except hvac.exceptions.Forbidden:
            raise self._degraded(what, "denied", "permission denied for this token") from None
        except hvac.exceptions.VaultDown as err:
            raise self._degraded(what, "sealed", f"vault unavailable: {err}") from None
        except hvac.exceptions.InternalServerError as err:
            raise VaultError(f"{what}: vault unavailable: {err}", retryable=True) from None
        except hvac.exceptions.VaultError as err:
            # Any other answer (e.g. 429, 412 on a standby) is worth another attempt.
            raise VaultError(f"{what}: {type(err).__name__}: {err}", retryable=True) from None
        except requests.RequestException as err:
            tls_problem = explain_vault_tls_error(self.settings.url, self.settings.transport, err)
            raise VaultError(
                f"{what}: {tls_problem or 'cannot reach vault: ' + type(err).__name__}",
                retryable=True,
            ) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class TenantKeyDestroyed(EnvelopeError):
    """The tenant's Transit key is gone (deprovisioned): its envelopes cannot be opened."""


class VaultNotReady(Exception):
    """Vault lacks a mount, the Transit key or a permission the worker needs: do not start."""


class VaultUnavailable(VaultNotReady):
    """Vault does not answer (down, unreachable, sealed, not initialised): start it first."""


def _connection_reason(err: requests.RequestException) -> str:
    """The innermost cause of a failed connection ("[Errno 111] Connection refused")."""
    cause: BaseException | None = err
    reason = type(err).__name__
    while cause is not None:
        text = str(cause)
        if "Errno" in text or "Name or service" in text:
            reason = text[text.find("[Errno") :] if "[Errno" in text else text
        cause = cause.__cause__ or cause.__context__
    return reason.rstrip("')\"")


def vault_failure(err: VaultError) -> ApplicationError:
    """The activity failure for a Vault error; a degraded Vault is retried for a bounded time."""
    retryable = err.retryable
    if err.degraded is not None and activity.in_activity():
        info = activity.info()
        waited = datetime.now(UTC) - info.scheduled_time
        retryable = waited < timedelta(seconds=err.retry_limit_seconds)
        # The line operators alert on (and its counter, exported with the SDK metrics).
        log.error(
            "vault_access_degraded",
            kind=err.degraded,
            error=str(err),
            waited_seconds=round(waited.total_seconds()),
            retry_limit_seconds=err.retry_limit_seconds,
            giving_up=not retryable,
        )
        activity.metric_meter().create_counter(
            "mailprov_vault_degraded", "Vault answered permission denied or sealed"
        ).add(1, {"kind": err.degraded})
    return ApplicationError(
        str(err),
        type="VaultUnavailable" if err.degraded and retryable else type(err).__name__,
        non_retryable=not retryable,
    )


class VaultActivities:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    @activity.defn(name="store_credentials")
    async def store_credentials(self, request: StoreCredentialsRequest) -> StoredCredentials:
        """Write the record once: a retry finds its own envelope and adds no version.

        A cancel cannot stop a write already under way (it runs in a thread), so the
        attempt waits for it and reports the version written: the purchase waits for
        this step on cancel (workflows/policies.py) and withdraws that version.
        """
        write = asyncio.ensure_future(asyncio.to_thread(self._store, request))
        try:
            try:
                return await asyncio.shield(write)
            except asyncio.CancelledError:
                activity.logger.info("cancel requested during the Vault write; finishing it")
                return await write
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
