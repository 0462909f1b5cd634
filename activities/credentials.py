"""The one activity that ever holds the admin password in plaintext.

It spans three systems on purpose: generating the password, setting it in MailU,
proving it logs in (SMTP AUTH, activities/smtp_proof.py) and encrypting it must
happen inside a single activity, because anything an
activity returns is written to workflow history. What leaves here is the
encrypted envelope only.

Order matters for retries: the envelope is sealed before MailU is touched, so a
Vault outage fails the attempt without changing the server; a crash after MailU
accepted the password just makes the next attempt set a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.crypto import (
    generate_password,
    open_envelope,
    parse_envelope,
    seal,
)
from activities.mailu import MailuHost
from activities.plan_change_guard import TenantRuns
from activities.rotation_target import (
    TenantRecords,
    target_or_refusal,
    tenant_server_selector,
)
from activities.smtp_proof import prove_smtp_login
from activities.ssh import RemoteCommandError, ServerAccess, command_failure
from activities.vault import Vault, VaultError, vault_failure
from activities.vps_provider import ProviderError, VpsProvider, provider_failure
from workflows.contracts import (
    ROTATION_POLICY,
    MailuTarget,
    SealedCredentials,
    admin_username_for,
    webmail_url_for,
)
from workflows.rotation_contracts import RotatedCredentials, RotationRequest


class CredentialsActivities:
    def __init__(
        self,
        vault: Vault,
        access: ServerAccess,
        provider: VpsProvider | None = None,
        runs: TenantRuns | None = None,
    ) -> None:
        self._vault = vault
        self._access = access
        # Only rotation reads the provider (where the tenant's server is).
        self._provider = provider
        # The worker's: a rotation waits while another run's plan change holds the
        # tenant's lock (its server is down). Tests of the Vault/MailU logic alone pass
        # none.
        self._runs = runs

    @activity.defn(name="create_admin_credentials")
    async def create_admin_credentials(self, target: MailuTarget) -> SealedCredentials:
        username = admin_username_for(target.domain)
        vault_path = self._vault.record_path(target.tenant_id)
        password = generate_password()
        try:
            data_key = await asyncio.to_thread(self._vault.generate_data_key, target.tenant_id)
        except VaultError as err:
            raise vault_failure(err) from None
        envelope = seal(password, data_key, target.tenant_id, vault_path)
        await self._set_and_prove(target, username, password)
        activity.logger.info(
            "admin credentials set, proven by SMTP AUTH and sealed", extra={"username": username}
        )
        return SealedCredentials(username=username, password_envelope=envelope)

    @activity.defn(name="rotate_admin_credentials")
    async def rotate_admin_credentials(self, request: RotationRequest) -> RotatedCredentials:
        """Replace the admin password: Vault first (check-and-set), then MailU, then proof.

        The request names only the tenant: the server, its host key and the admin
        mailbox are read here, on every attempt, from the provider and Vault
        (activities/rotation_target.py), so no client's argument decides where the
        worker connects or what it writes; records that disagree refuse the rotation
        before anything is written (RotationRecordsDisagree, non-retryable).

        A change spanning two systems cannot be atomic, so the order is the one whose
        failures can be undone without the old plaintext (which this worker cannot
        decrypt): the new version is written with check-and-set on the version read
        here; if MailU then refuses or cannot be reached, the previous record is
        written back as the next version, so Vault again holds the password MailU
        accepts. Once MailU has accepted the new password, Vault already holds it.
        A racing writer makes the check-and-set fail before MailU is touched; one that
        writes after our check-and-set may set MailU before we do, so after the proof
        the latest version must still be ours, or the attempt fails and the retry
        rotates again (RotationRaced): the last password MailU took is the one stored.
        """
        tenant = request.tenant_id
        vault_path = self._vault.record_path(tenant)
        if self._runs is not None:
            # Before any write: a plan change of another run has the server stopped, so
            # MailU cannot take a password now; PlanChangeInProgress is retried (the
            # rotation's own retries wait the change out) with nothing written. The plan
            # change's own login proof (this activity, called by the lock's holder) passes.
            await self._runs.refuse_if_changing_plan(tenant, activity.info().workflow_id)
        try:
            current, version = await asyncio.to_thread(self._vault.latest, tenant)
            target = await self._target(tenant, current, version)
            username = admin_username_for(target.domain)
            password = generate_password()
            data_key = await asyncio.to_thread(self._vault.generate_data_key, tenant)
            envelope = seal(password, data_key, tenant, vault_path)
            now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            record = _rotated_record(current, envelope, now, username, target.domain)
            written = await asyncio.to_thread(
                self._vault.write_credentials, tenant, record, version
            )
        except VaultError as err:
            raise vault_failure(err) from None
        try:
            await self._set_and_prove(
                target, username, password, on_refused=self._restorer(tenant, current, written)
            )
        finally:
            del password
        await self._check_still_latest(tenant, written)
        activity.logger.info(
            "admin credentials rotated, proven by SMTP AUTH",
            extra={"username": username, "vault_version": written},
        )
        return RotatedCredentials(
            username=username,
            vault_path=vault_path,
            version=written,
            previous_version=version,
            last_rotated=now,
            reissued=current is None,
        )

    async def _target(
        self, tenant_id: str, current: dict[str, str] | None, version: int
    ) -> MailuTarget:
        """The rotation's target from the provider's and Vault's records (see above)."""
        if self._provider is None:
            raise RuntimeError("rotate_admin_credentials needs the provider (worker wiring)")
        try:
            servers = await self._provider.find_servers(
                label_selector=tenant_server_selector(tenant_id)
            )
        except ProviderError as err:
            raise provider_failure(err) from None
        return target_or_refusal(
            TenantRecords(tenant_id, servers, current, version),
            self._access.identity,
            "RotationRecordsDisagree",
        )

    async def _check_still_latest(self, tenant_id: str, written: int) -> None:
        try:
            _, latest = await asyncio.to_thread(self._vault.latest, tenant_id)
        except VaultError as err:
            raise vault_failure(err) from None
        if latest != written:
            raise ApplicationError(
                f"another writer stored version {latest} after this rotation's {written}; "
                "rotating again so that MailU and Vault hold the same password",
                type="RotationRaced",
            )

    def _restorer(
        self, tenant_id: str, previous: dict[str, str] | None, written: int
    ) -> Callable[[], Awaitable[None]]:
        """Undo a rotation's Vault write after MailU did not take the new password."""

        async def restore() -> None:
            if previous is None:
                await asyncio.to_thread(self._vault.delete_version, tenant_id, written)
            else:
                await asyncio.to_thread(self._vault.write_credentials, tenant_id, previous, written)
            activity.logger.warning(
                "rotation undone in Vault: MailU kept the previous password",
                extra={"vault_version": written},
            )

        return restore

    async def _set_and_prove(
        self,
        target: MailuTarget,
        username: str,
        password: str,
        on_refused: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Set the password in MailU over the pinned SSH channel, then prove it logs in.

        `on_refused` runs when MailU did not take the password (SSH unreachable,
        host key mismatch, config-import failing), before the error propagates.
        """
        accepted = False
        try:
            async with await self._access.open(target) as conn:
                try:
                    await MailuHost(conn).set_admin(username, password)
                except RemoteCommandError as err:
                    raise command_failure(err) from None
                accepted = True
                # The password must log in before anyone is told it is stored.
                await prove_smtp_login(conn, username, password)
        except BaseException:
            if not accepted and on_refused is not None:
                await on_refused()
            raise


def _rotated_record(
    current: dict[str, str] | None, envelope: str, now: str, username: str, domain: str
) -> dict[str, str]:
    """The next version: new envelope and `last_rotated`; every other field as it was.

    With no record at all (Vault data loss) the record is issued afresh; its
    original creation date is unknown, so `created_at` is now.
    """
    if current is not None:
        return {**current, "password": envelope, "last_rotated": now}
    return {
        "username": username,
        "password": envelope,
        "webmail_url": webmail_url_for(domain),
        "created_at": now,
        "last_rotated": now,
        "rotation_policy": ROTATION_POLICY,
    }


@dataclass(frozen=True, repr=False)
class AdminCredentials:
    """Decrypted credentials for the mail-sending side. repr hides the password."""

    username: str
    password: str
    webmail_url: str
    vault_version: int


class CredentialsNotFound(LookupError):
    pass


def read_admin_credentials(vault: Vault, tenant_id: str) -> AdminCredentials:
    """Read a tenant's record and open its envelope (needs the reader role's token).

    Raises CredentialsNotFound, EnvelopeError (tampered or another tenant's
    envelope; TenantKeyDestroyed once the tenant was deprovisioned), or VaultError
    (e.g. permission denied).
    """
    record = vault.read_credentials(tenant_id)
    if record is None:
        raise CredentialsNotFound(f"no credentials stored for tenant {tenant_id!r}")
    vault_path = vault.record_path(tenant_id)
    envelope = parse_envelope(record.data["password"])
    data_key = vault.unwrap_data_key(tenant_id, envelope.kek, envelope.wrapped_key)
    return AdminCredentials(
        username=record.data["username"],
        password=open_envelope(envelope, data_key, tenant_id, vault_path),
        webmail_url=record.data["webmail_url"],
        vault_version=record.version,
    )
