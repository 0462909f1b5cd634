"""Vault's life cycle on the stack's real OpenBao (raft storage, unsealed by the stack).

A restart keeps every record, the tenants' Transit keys, the policies and the AppRole;
the worker logs in with AppRole, renews its token, logs in again when the token is
gone, and refuses to start against a Vault that lacks what it needs. Deprovisioning
destroys a tenant's Transit key, so an old copy of its record no longer opens.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import hvac
import pytest
from temporalio.client import Client

from activities.credentials import read_admin_credentials
from activities.crypto import EnvelopeError, parse_envelope, seal
from activities.vault import TenantKeyDestroyed, Vault, VaultSettings
from devstack.stack import Stack, StackInfo
from starter import start_deprovision, start_purchase
from tests.e2e.conftest import new_request
from tests.e2e.test_purchase_end_to_end import provision
from worker import ConfigError, Settings, build_activities
from workflows.deprovision_contracts import DeprovisionRequest


def vault_file(info: StackInfo, name: str) -> str:
    return (info.state_dir / "vault" / name).read_text().strip()


def approle_vault(info: StackInfo, clock: Any = None) -> Vault:
    settings = VaultSettings(
        url=info.vault_addr,
        role_id=vault_file(info, "worker.role-id"),
        secret_id=vault_file(info, "worker.secret-id"),
    )
    return Vault(settings) if clock is None else Vault(settings, clock=clock)


def record_for(worker: Vault, tenant: str, password: str) -> dict[str, str]:
    envelope = seal(password, worker.generate_data_key(tenant), tenant, worker.record_path(tenant))
    return {
        "username": f"admin@{tenant}.example",
        "password": envelope,
        "webmail_url": f"https://mail.{tenant}.example",
        "created_at": "2026-01-01T00:00:00Z",
        "last_rotated": "2026-01-01T00:00:00Z",
        "rotation_policy": "180_days",
    }


def test_stack_state_files_are_private(info: StackInfo) -> None:
    names = ("init.json", "root.token", "worker.role-id", "worker.secret-id", "reader.token")
    for name in (*names, "auditor.token"):
        assert (info.state_dir / "vault" / name).stat().st_mode & 0o077 == 0, name


def test_vault_secrets_stay_out_of_logs_and_argv(stack: Stack, info: StackInfo) -> None:
    """The AppRole secret id, tokens and unseal key live only in their 0600 files."""
    init = json.loads((info.state_dir / "vault" / "init.json").read_text())
    secrets_ = [
        vault_file(info, "worker.secret-id"),
        vault_file(info, "root.token"),
        vault_file(info, "reader.token"),
        vault_file(info, "auditor.token"),
        *init["unseal_keys"],
    ]
    logs = b"".join(path.read_bytes() for path in (info.state_dir / "logs").glob("*.log"))
    argv = " ".join(
        " ".join(p.args) for name in ("openbao", "worker") for p in stack.processes(name)
    )
    for secret in secrets_:
        assert secret.encode() not in logs
        assert secret not in argv


async def test_restart_keeps_records_keys_and_logins(
    stack: Stack, info: StackInfo, client: Client, reader_vault: Vault
) -> None:
    worker = approle_vault(info)
    tenant = f"restart-{secrets.token_hex(4)}"
    password = base64.b64encode(secrets.token_bytes(32)).decode()
    version = worker.write_credentials(tenant, record_for(worker, tenant, password), cas=0)

    await stack.restart_vault()

    # Record, Transit key (the reader can still unwrap) and reader token survived.
    credentials = read_admin_credentials(reader_vault, tenant)
    assert (credentials.password, credentials.vault_version) == (password, version)
    # The worker's token (kept in raft storage too) still works, with no new login.
    assert worker.latest(tenant)[1] == version
    # And the running worker process provisions a purchase after the restart.
    request = new_request(info)
    handle, _ = await start_purchase(client, request, info_task_queue(info))
    result = await handle.result()
    stored = read_admin_credentials(reader_vault, request.tenant_id)
    assert stored.vault_version == result.vault_version == 1


def info_task_queue(info: StackInfo) -> str:
    return Settings.from_env(info.worker_env).task_queue


def test_a_revoked_token_makes_the_worker_log_in_again(info: StackInfo) -> None:
    worker = approle_vault(info)
    worker.generate_data_key("relogin")
    first_token = worker._client.token
    root = hvac.Client(url=info.vault_addr, token=vault_file(info, "root.token"))
    root.auth.token.revoke(first_token)

    assert worker.generate_data_key("relogin").wrapped.startswith("vault:v")
    assert worker._client.token != first_token


def test_a_reissued_secret_id_is_read_at_the_next_login(info: StackInfo, tmp_path: Path) -> None:
    root = hvac.Client(url=info.vault_addr, token=vault_file(info, "root.token"))
    role = "mail-provisioning-worker"
    first = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(first)
    worker = Vault(
        VaultSettings(
            url=info.vault_addr,
            role_id=vault_file(info, "worker.role-id"),
            secret_id_file=str(secret_file),
        )
    )
    worker.generate_data_key("reissue")
    # An operator re-issues the secret id: the old one and its token stop working.
    root.auth.approle.destroy_secret_id(role, first)
    root.auth.token.revoke(worker._client.token)
    secret_file.write_text(root.auth.approle.generate_secret_id(role)["data"]["secret_id"])

    assert worker.generate_data_key("reissue").wrapped.startswith("vault:v")


def test_the_token_is_renewed_before_it_expires(info: StackInfo) -> None:
    now = [0.0]
    worker = approle_vault(info, clock=lambda: now[0])
    worker.generate_data_key("renewal")
    token = worker._client.token
    root = hvac.Client(url=info.vault_addr, token=vault_file(info, "root.token"))
    assert not root.auth.token.lookup(token)["data"].get("last_renewal_time")

    now[0] += 3600  # the bootstrap's 1 h AppRole TTL has (by this clock) mostly passed
    worker.generate_data_key("renewal")

    assert worker._client.token == token
    assert root.auth.token.lookup(token)["data"]["last_renewal_time"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"MAILPROV_TRANSIT_MOUNT": "absent-transit"},
            r"Transit mount 'absent-transit' does not exist",
        ),
        ({"MAILPROV_KV_MOUNT": "absent-kv"}, r"KV v2 mount 'absent-kv' does not exist"),
    ],
)
async def test_worker_refuses_a_vault_without_its_mounts(
    info: StackInfo, override: dict[str, str], message: str
) -> None:
    # The root token sees a missing mount or key as missing (the worker's own policy
    # would only see "permission denied", which is refused as well, see below).
    env = {**info.worker_env, **override}
    env.pop("VAULT_ROLE_ID_FILE")
    env["VAULT_TOKEN_FILE"] = str(info.state_dir / "vault" / "root.token")
    with pytest.raises(ConfigError, match=message):
        async with build_activities(Settings.from_env(env)):
            pass


async def test_worker_refuses_a_token_without_the_policy(info: StackInfo, tmp_path: Path) -> None:
    root = hvac.Client(url=info.vault_addr, token=vault_file(info, "root.token"))
    token = root.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    (tmp_path / "token").write_text(token)
    env = {**info.worker_env, "VAULT_TOKEN_FILE": str(tmp_path / "token")}
    env.pop("VAULT_ROLE_ID_FILE")
    settings = Settings.from_env(env)
    with pytest.raises(ConfigError, match=r"Transit keys .* not usable: .*permission denied"):
        async with build_activities(settings):
            pass


async def test_deprovisioning_shreds_the_tenants_key_so_a_backup_stays_closed(
    client: Client, info: StackInfo, reader_vault: Vault, purchase: dict[str, Any]
) -> None:
    """purchase -> the reader opens the record -> a copy of the KV version is kept (as a
    Vault backup would hold it) -> deprovision -> the copy, restored, no longer opens
    (the tenant's Transit key is gone) -> the same tenant buys again with a fresh key,
    which opens the new record but not the old copy.
    """
    tenant = purchase["tenant_id"]
    root = hvac.Client(url=info.vault_addr, token=vault_file(info, "root.token"))
    key = f"mail-credentials-{tenant}"
    await provision(client, purchase)
    first = read_admin_credentials(reader_vault, tenant)
    backup = dict(
        root.secrets.kv.v2.read_secret_version(
            path=f"{tenant}/admin", mount_point="smtp", raise_on_deleted_version=True
        )["data"]["data"]
    )
    assert parse_envelope(backup["password"]).kek == f"transit/{key}"
    assert root.secrets.transit.read_key(name=key)["data"]["exportable"] is False

    handle = await start_deprovision(
        client, DeprovisionRequest(tenant, "e2e-shredding"), info_task_queue(info)
    )
    assert (await handle.result()).outcome == "deprovisioned"
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.transit.read_key(name=key)

    # The backup restored into Vault: the reader finds the record but cannot open it.
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{tenant}/admin", secret=backup, mount_point="smtp"
    )
    with pytest.raises(TenantKeyDestroyed):
        read_admin_credentials(reader_vault, tenant)
    root.secrets.kv.v2.delete_metadata_and_all_versions(path=f"{tenant}/admin", mount_point="smtp")

    # The same tenant buys again: a fresh key, which does not open the old copy.
    await provision(client, {**purchase, "purchase_id": f"{purchase['purchase_id']}-again"})
    second = read_admin_credentials(reader_vault, tenant)
    assert second.password != first.password
    old = parse_envelope(backup["password"])
    with pytest.raises(EnvelopeError, match="does not unwrap"):
        reader_vault.unwrap_data_key(tenant, old.kek, old.wrapped_key)

    # Clean-up through the same door; the new key goes too.
    handle = await start_deprovision(
        client, DeprovisionRequest(tenant, "e2e-cleanup"), info_task_queue(info)
    )
    assert (await handle.result()).outcome == "deprovisioned"
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.transit.read_key(name=key)
