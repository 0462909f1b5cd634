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
from dataclasses import dataclass

from temporalio import activity

from activities.crypto import (
    EnvelopeError,
    generate_password,
    open_envelope,
    parse_envelope,
    seal,
)
from activities.mailu import MailuHost
from activities.smtp_proof import prove_smtp_login
from activities.ssh import RemoteCommandError, ServerAccess, command_failure
from activities.vault import Vault, VaultError, vault_failure
from workflows.contracts import (
    MailuTarget,
    SealedCredentials,
    admin_username_for,
)


class CredentialsActivities:
    def __init__(self, vault: Vault, access: ServerAccess) -> None:
        self._vault = vault
        self._access = access

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
        async with await self._access.open(target) as conn:
            try:
                await MailuHost(conn).set_admin(username, password)
            except RemoteCommandError as err:
                raise command_failure(err) from None
            # "VPS ready" only with proof: the password must log in before it is stored.
            await prove_smtp_login(conn, username, password)
        activity.logger.info(
            "admin credentials set, proven by SMTP AUTH and sealed", extra={"username": username}
        )
        return SealedCredentials(username=username, password_envelope=envelope)


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
    envelope), or VaultError (e.g. permission denied).
    """
    record = vault.read_credentials(tenant_id)
    if record is None:
        raise CredentialsNotFound(f"no credentials stored for tenant {tenant_id!r}")
    vault_path = vault.record_path(tenant_id)
    envelope = parse_envelope(record.data["password"])
    if envelope.kek != vault.kek:
        raise EnvelopeError(f"envelope key {envelope.kek!r} is not this Vault's {vault.kek!r}")
    data_key = vault.unwrap_data_key(tenant_id, envelope.wrapped_key)
    return AdminCredentials(
        username=record.data["username"],
        password=open_envelope(envelope, data_key, tenant_id, vault_path),
        webmail_url=record.data["webmail_url"],
        vault_version=record.version,
    )
