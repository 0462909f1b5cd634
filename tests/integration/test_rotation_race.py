"""Two rotations of one tenant racing, against the real OpenBao (issue 17 item 2).

The schedule's overlap SKIP keeps its own runs apart, but any client can start
RotateSmtpCredentials beside it. Check-and-set orders the two Vault writes; the MailU
calls can still land in the other order (ours after theirs), which would leave Vault
holding their password and MailU ours. So after the SMTP proof the attempt checks that
the latest version is still its own, and fails retryably (RotationRaced) otherwise: the
retry rotates again, and the last password MailU took is the one stored.

MailU (SSH) and the provider are outside this test: the subclass below replaces only
where the activity connects and what happens on the server, so the Vault steps run
exactly as in production, against the real server and the worker's own policy.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.credentials import CredentialsActivities
from activities.ssh import ServerAccess, SshIdentity
from activities.vault import Vault, VaultSettings
from tests.integration.openbao_dev import DevOpenBao
from workflows.contracts import MailuTarget, webmail_url_for
from workflows.rotation_contracts import RotatedCredentials, RotationRequest


class RacedRotation(CredentialsActivities):
    """The real activity; `during_mailu` runs where MailU would take the password."""

    def __init__(self, vault: Vault, during_mailu: Callable[[], None]) -> None:
        super().__init__(vault, ServerAccess(SshIdentity.generate()))
        self.during_mailu = during_mailu
        self.set_passwords = 0

    async def _target(
        self, tenant_id: str, current: dict[str, str] | None, version: int
    ) -> MailuTarget:
        return MailuTarget(tenant_id, "acme.example", "mail-acme", "192.0.2.7", "ssh-ed25519 A")

    async def _set_and_prove(
        self,
        target: MailuTarget,
        username: str,
        password: str,
        on_refused: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.set_passwords += 1
        self.during_mailu()


def record(marker: str) -> dict[str, str]:
    return {
        "username": "admin@acme.example",
        "password": f"v1:{marker}",
        "webmail_url": webmail_url_for("acme.example"),
        "created_at": "2026-01-01T00:00:00Z",
        "last_rotated": "2026-01-01T00:00:00Z",
        "rotation_policy": "180_days",
    }


@pytest.fixture
def vault(openbao: DevOpenBao) -> Vault:
    return Vault(VaultSettings(url=openbao.addr, token=openbao.tokens.worker))


@pytest.fixture
def tenant(vault: Vault) -> str:
    name = f"race-{uuid.uuid4().hex[:8]}"
    vault.write_credentials(name, record("provisioned"), 0)
    return name


async def test_a_rotation_alone_stores_its_version(vault: Vault, tenant: str) -> None:
    rotation = RacedRotation(vault, lambda: None)
    rotated: RotatedCredentials = await ActivityEnvironment().run(
        rotation.rotate_admin_credentials, RotationRequest(tenant)
    )
    assert (rotated.previous_version, rotated.version) == (1, 2)
    current = vault.read_credentials(tenant)
    assert current is not None and current.version == 2


async def test_a_version_written_while_mailu_took_ours_fails_the_attempt_for_a_retry(
    vault: Vault, tenant: str
) -> None:
    def other_rotation_writes() -> None:
        # Another run's check-and-set after ours (version 2): its version 3.
        vault.write_credentials(tenant, record("other"), 2)

    rotation = RacedRotation(vault, other_rotation_writes)
    with pytest.raises(ApplicationError) as raced:
        await ActivityEnvironment().run(rotation.rotate_admin_credentials, RotationRequest(tenant))
    assert (raced.value.type, raced.value.non_retryable) == ("RotationRaced", False)
    assert "version 3 after this rotation's 2" in raced.value.message
    assert rotation.set_passwords == 1

    # The retry (the next attempt) rotates again on top of the other writer's version.
    retry = RacedRotation(vault, lambda: None)
    rotated = await ActivityEnvironment().run(
        retry.rotate_admin_credentials, RotationRequest(tenant)
    )
    assert (rotated.previous_version, rotated.version) == (3, 4)
