"""Least privilege and read-back against the real OpenBao server.

The worker may write records, create each tenant's Transit key `mail-credentials-{tenant}`,
get wrapped data keys and delete a deprovisioned tenant's key, nothing more: it can never
decrypt nor export. The reader (the mail-sending side) may read and decrypt with tenant
keys, nothing more. For
the audit chain the worker may MAC rows and move the anchored head, never export the
key nor touch the auditor's checkpoint; the auditor may check MACs, read the head and
write the checkpoint, never make a MAC nor move the head.
Every allowed and every denied capability is exercised against the real server.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions
import pytest
from temporalio.testing import ActivityEnvironment

from activities.credentials import CredentialsNotFound, read_admin_credentials
from activities.crypto import ENVELOPE_PREFIX, DataKey, EnvelopeError, seal
from activities.vault import Vault, VaultActivities, VaultError
from devstack.stack import ROOT, StackInfo
from workflows.contracts import (
    RemoveCredentialsRequest,
    SealedCredentials,
    StoreCredentialsRequest,
)

TENANT = "policy-tenant"
KEY = f"mail-credentials-{TENANT}"


def client(info: StackInfo, token_file: str) -> hvac.Client:
    token = (info.state_dir / "vault" / token_file).read_text().strip()
    return hvac.Client(url=info.vault_addr, token=token)


@pytest.fixture(scope="module")
def root(info: StackInfo) -> hvac.Client:
    return client(info, "root.token")


@pytest.fixture(scope="module")
def worker(info: StackInfo) -> hvac.Client:
    return client(info, "worker.token")


@pytest.fixture(scope="module")
def reader(info: StackInfo) -> hvac.Client:
    return client(info, "reader.token")


@pytest.fixture(scope="module")
def auditor(info: StackInfo) -> hvac.Client:
    return client(info, "auditor.token")


def record(envelope: str = ENVELOPE_PREFIX + "x") -> dict[str, str]:
    return {
        "username": "admin@p.example",
        "password": envelope,
        "webmail_url": "https://mail.p.example",
        "created_at": "2026-01-01T00:00:00Z",
        "last_rotated": "2026-01-01T00:00:00Z",
        "rotation_policy": "180_days",
    }


def kv_write(c: hvac.Client, path: str = f"{TENANT}/admin") -> Any:
    return c.secrets.kv.v2.create_or_update_secret(path=path, secret=record(), mount_point="smtp")


def kv_read(c: hvac.Client, path: str = f"{TENANT}/admin") -> Any:
    return c.secrets.kv.v2.read_secret_version(
        path=path, mount_point="smtp", raise_on_deleted_version=False
    )


def datakey(c: hvac.Client, key: str = KEY) -> Any:
    return c.secrets.transit.generate_data_key(name=key, key_type="plaintext")


def decrypt(c: hvac.Client, wrapped: str, key: str = KEY) -> Any:
    return c.secrets.transit.decrypt_data(name=key, ciphertext=wrapped)


def create_key(c: hvac.Client, key: str = KEY) -> Any:
    return c.secrets.transit.create_key(name=key, key_type="aes256-gcm96")


def delete_key(c: hvac.Client, key: str = KEY) -> Any:
    """Crypto-shredding as deprovisioning does it: allow deletion, then delete."""
    c.secrets.transit.update_key_configuration(name=key, deletion_allowed=True)
    return c.secrets.transit.delete_key(name=key)


@pytest.fixture(scope="module")
def wrapped_key(root: hvac.Client) -> str:
    create_key(root)
    return str(datakey(root)["data"]["ciphertext"])


def test_worker_allowed_capabilities(worker: hvac.Client, wrapped_key: str) -> None:
    assert kv_write(worker)["data"]["version"] >= 1
    assert kv_read(worker)["data"]["data"]["rotation_policy"] == "180_days"
    assert datakey(worker)["data"]["ciphertext"].startswith("vault:v")
    # A new tenant's first data key: the worker creates the tenant's key (again: no-op).
    fresh = f"mail-credentials-fresh-{secrets.token_hex(4)}"
    create_key(worker, fresh)
    create_key(worker, fresh)
    assert datakey(worker, fresh)["data"]["ciphertext"].startswith("vault:v1:")


def test_worker_may_delete_a_tenant_key_for_deprovisioning(
    worker: hvac.Client, root: hvac.Client
) -> None:
    """Deprovisioning destroys the tenant's Transit key: its envelopes stay closed."""
    key = f"mail-credentials-shred-{secrets.token_hex(4)}"
    create_key(root, key)
    wrapped = datakey(root, key)["data"]["ciphertext"]
    delete_key(worker, key)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.transit.read_key(name=key)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not found"):
        decrypt(root, wrapped, key)


def test_worker_may_destroy_a_tenant_record_for_deprovisioning(
    worker: hvac.Client, root: hvac.Client
) -> None:
    """Deprovisioning (workflows/deprovision.py) destroys every version and the metadata."""
    path = "deprovision-probe/admin"
    kv_write(root, path)
    kv_write(root, path)
    worker.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="smtp")
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.kv.v2.read_secret_metadata(path=path, mount_point="smtp")


DENIED_FOR_WORKER: dict[str, Callable[[hvac.Client, str], Any]] = {
    "transit decrypt": lambda c, w: decrypt(c, w),
    "transit encrypt": lambda c, w: c.secrets.transit.encrypt_data(name=KEY, plaintext="eA=="),
    "datakey of another key": lambda c, w: datakey(c, "other-key"),
    "transit key export": lambda c, w: c.secrets.transit.export_key(
        name=KEY, key_type="encryption-key"
    ),
    "transit key backup": lambda c, w: c.secrets.transit.backup_key(name=KEY),
    "transit key read": lambda c, w: c.secrets.transit.read_key(name=KEY),
    "transit key list": lambda c, w: c.secrets.transit.list_keys(),
    "create a key outside mail-credentials-*": lambda c, w: create_key(c, "other-key"),
    "delete the audit key": lambda c, w: c.secrets.transit.delete_key(name="mail-audit"),
    "kv write outside tenant/admin": lambda c, w: kv_write(c, f"{TENANT}/other"),
    "kv read outside tenant/admin": lambda c, w: kv_read(c, f"{TENANT}/other"),
    "kv delete": lambda c, w: c.secrets.kv.v2.delete_latest_version_of_secret(
        path=f"{TENANT}/admin", mount_point="smtp"
    ),
    "kv destroy metadata outside tenant/admin": (
        lambda c, w: c.secrets.kv.v2.delete_metadata_and_all_versions(
            path=f"{TENANT}/other", mount_point="smtp"
        )
    ),
    "kv destroy versions": lambda c, w: c.secrets.kv.v2.destroy_secret_versions(
        path=f"{TENANT}/admin", versions=[1], mount_point="smtp"
    ),
    "kv read metadata": lambda c, w: c.secrets.kv.v2.read_secret_metadata(
        path=f"{TENANT}/admin", mount_point="smtp"
    ),
    "kv list tenants": lambda c, w: c.secrets.kv.v2.list_secrets(path="", mount_point="smtp"),
    "read policies": lambda c, w: c.sys.read_policy("mail-credentials-reader"),
    "create tokens": lambda c, w: c.auth.token.create(policies=["mail-credentials-reader"]),
    "mount engines": lambda c, w: c.sys.enable_secrets_engine("kv", path="x"),
}


@pytest.mark.parametrize("capability", sorted(DENIED_FOR_WORKER))
def test_worker_denied_capabilities(worker: hvac.Client, wrapped_key: str, capability: str) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        DENIED_FOR_WORKER[capability](worker, wrapped_key)


def test_reader_allowed_capabilities(
    reader: hvac.Client, root: hvac.Client, wrapped_key: str
) -> None:
    kv_write(root)
    assert kv_read(reader)["data"]["data"]["username"] == "admin@p.example"
    assert len(base64.b64decode(decrypt(reader, wrapped_key)["data"]["plaintext"])) == 32


DENIED_FOR_READER: dict[str, Callable[[hvac.Client], Any]] = {
    "kv write": kv_write,
    "datakey": datakey,
    "kv delete": lambda c: c.secrets.kv.v2.delete_latest_version_of_secret(
        path=f"{TENANT}/admin", mount_point="smtp"
    ),
    "kv list tenants": lambda c: c.secrets.kv.v2.list_secrets(path="", mount_point="smtp"),
    "transit key export": lambda c: c.secrets.transit.export_key(
        name=KEY, key_type="encryption-key"
    ),
    "transit key create": lambda c: create_key(c, f"mail-credentials-{secrets.token_hex(4)}"),
    "transit key delete": delete_key,
    "transit key config": lambda c: c.secrets.transit.update_key_configuration(
        name=KEY, deletion_allowed=True
    ),
    "decrypt with a key outside mail-credentials-*": lambda c: decrypt(c, "vault:v1:x", "other"),
    "create tokens": lambda c: c.auth.token.create(policies=["mail-provisioning-worker"]),
    "audit hmac": lambda c: audit_hmac(c),
    "audit anchor write": lambda c: head_write(c, "head"),
}


@pytest.mark.parametrize("capability", sorted(DENIED_FOR_READER))
def test_reader_denied_capabilities(reader: hvac.Client, capability: str) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        DENIED_FOR_READER[capability](reader)


# ------------------------------------------------------------------ the audit chain

AUDIT_CHAIN = f"policy-{secrets.token_hex(4)}"
AUDIT_INPUT = base64.b64encode(b"an audit row").decode()


def audit_hmac(c: hvac.Client, key: str = "mail-audit") -> Any:
    return c.write_data(f"transit/hmac/{key}", data={"input": AUDIT_INPUT})


def audit_verify(c: hvac.Client, mac: str) -> Any:
    return c.write_data("transit/verify/mail-audit", data={"input": AUDIT_INPUT, "hmac": mac})


def head_write(c: hvac.Client, kind: str, chain: str = AUDIT_CHAIN) -> Any:
    return c.secrets.kv.v2.create_or_update_secret(
        path=f"{kind}/{chain}", secret={"seq": 1, "mac": "vault:v1:x"}, mount_point="audit-chain"
    )


def head_read(c: hvac.Client, kind: str, chain: str = AUDIT_CHAIN) -> Any:
    return c.secrets.kv.v2.read_secret_version(
        path=f"{kind}/{chain}", mount_point="audit-chain", raise_on_deleted_version=False
    )


@pytest.fixture(scope="module")
def audit_mac(root: hvac.Client) -> str:
    return str(audit_hmac(root)["data"]["hmac"])


def test_worker_allowed_audit_capabilities(worker: hvac.Client, audit_mac: str) -> None:
    assert audit_hmac(worker)["data"]["hmac"] == audit_mac
    assert audit_verify(worker, audit_mac)["data"]["valid"] is True
    assert head_write(worker, "head")["data"]["version"] >= 1
    assert head_read(worker, "head")["data"]["data"]["seq"] == 1


def test_the_audit_key_is_created_not_exportable(root: hvac.Client) -> None:
    key = root.secrets.transit.read_key(name="mail-audit")["data"]
    assert (key["type"], key["exportable"]) == ("hmac", False)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not exportable"):
        root.secrets.transit.export_key(name="mail-audit", key_type="hmac-key")


DENIED_FOR_WORKER_AUDIT: dict[str, Callable[[hvac.Client], Any]] = {
    "audit key export": lambda c: c.secrets.transit.export_key(
        name="mail-audit", key_type="hmac-key"
    ),
    "audit key read": lambda c: c.secrets.transit.read_key(name="mail-audit"),
    "audit key rotate": lambda c: c.secrets.transit.rotate_key(name="mail-audit"),
    "audit key config": lambda c: c.secrets.transit.update_key_configuration(
        name="mail-audit", min_decryption_version=2
    ),
    "hmac with another key": lambda c: audit_hmac(c, "mail-credentials"),
    "checkpoint write": lambda c: head_write(c, "checkpoint"),
    "checkpoint read": lambda c: head_read(c, "checkpoint"),
    "anchor outside head/": lambda c: head_write(c, "other"),
    "anchor delete": lambda c: c.secrets.kv.v2.delete_latest_version_of_secret(
        path=f"head/{AUDIT_CHAIN}", mount_point="audit-chain"
    ),
    "anchor destroy": lambda c: c.secrets.kv.v2.destroy_secret_versions(
        path=f"head/{AUDIT_CHAIN}", versions=[1], mount_point="audit-chain"
    ),
    "anchor metadata delete": lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"head/{AUDIT_CHAIN}", mount_point="audit-chain"
    ),
    "anchor metadata write": lambda c: c.secrets.kv.v2.update_metadata(
        path=f"head/{AUDIT_CHAIN}", max_versions=1, mount_point="audit-chain"
    ),
    "anchor list": lambda c: c.secrets.kv.v2.list_secrets(path="head", mount_point="audit-chain"),
}


@pytest.mark.parametrize("capability", sorted(DENIED_FOR_WORKER_AUDIT))
def test_worker_denied_audit_capabilities(worker: hvac.Client, capability: str) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        DENIED_FOR_WORKER_AUDIT[capability](worker)


def test_auditor_allowed_capabilities(
    auditor: hvac.Client, root: hvac.Client, audit_mac: str
) -> None:
    head_write(root, "head")
    assert audit_verify(auditor, audit_mac)["data"]["valid"] is True
    assert head_read(auditor, "head")["data"]["data"]["mac"] == "vault:v1:x"
    assert head_write(auditor, "checkpoint")["data"]["version"] >= 1
    assert head_read(auditor, "checkpoint")["data"]["data"]["seq"] == 1


DENIED_FOR_AUDITOR: dict[str, Callable[[hvac.Client], Any]] = {
    "audit hmac (forge a row)": lambda c: audit_hmac(c),
    "anchor write": lambda c: head_write(c, "head"),
    "audit key export": lambda c: c.secrets.transit.export_key(
        name="mail-audit", key_type="hmac-key"
    ),
    "checkpoint delete": lambda c: c.secrets.kv.v2.delete_latest_version_of_secret(
        path=f"checkpoint/{AUDIT_CHAIN}", mount_point="audit-chain"
    ),
    "checkpoint metadata delete": lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"checkpoint/{AUDIT_CHAIN}", mount_point="audit-chain"
    ),
    "kv read credentials": lambda c: kv_read(c),
    "transit decrypt": lambda c: decrypt(c, "vault:v1:x"),
    "datakey": datakey,
    "create tokens": lambda c: c.auth.token.create(policies=["mail-provisioning-worker"]),
}


@pytest.mark.parametrize("capability", sorted(DENIED_FOR_AUDITOR))
def test_auditor_denied_capabilities(auditor: hvac.Client, capability: str) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        DENIED_FOR_AUDITOR[capability](auditor)


# ------------------------------------------------------------------ read-back


def store_envelope(root: hvac.Client, tenant: str, password: str, for_tenant: str) -> str:
    """Seal `password` the way the worker does, for `for_tenant`, into `tenant`'s record."""
    name = f"mail-credentials-{for_tenant}"
    create_key(root, name)
    data = datakey(root, name)["data"]
    key = DataKey(base64.b64decode(data["plaintext"]), data["ciphertext"], f"transit/{name}")
    envelope = seal(password, key, for_tenant, f"smtp/{for_tenant}/admin")
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{tenant}/admin", secret=record(envelope), mount_point="smtp"
    )
    return envelope


def tamper(envelope: str, field: str, value: Any) -> str:
    body = json.loads(base64.urlsafe_b64decode(envelope[len(ENVELOPE_PREFIX) :]))
    body[field] = value(body[field]) if callable(value) else value
    return ENVELOPE_PREFIX + base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


def flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def test_read_back_returns_the_password(root: hvac.Client, reader_vault: Vault) -> None:
    password = base64.b64encode(secrets.token_bytes(32)).decode()
    store_envelope(root, "rb-ok", password, "rb-ok")
    credentials = read_admin_credentials(reader_vault, "rb-ok")
    assert credentials.password == password
    assert password not in repr(credentials)


def test_read_back_missing_tenant(reader_vault: Vault) -> None:
    with pytest.raises(CredentialsNotFound, match="no-such-tenant"):
        read_admin_credentials(reader_vault, "no-such-tenant")


def test_read_back_refuses_another_tenants_envelope(root: hvac.Client, reader_vault: Vault) -> None:
    store_envelope(root, "rb-victim", "pw", for_tenant="rb-attacker")
    with pytest.raises(EnvelopeError, match="not tenant 'rb-victim'"):
        read_admin_credentials(reader_vault, "rb-victim")


def test_another_tenants_key_cannot_open_an_envelope(
    root: hvac.Client, reader_vault: Vault
) -> None:
    # The attacker's data key, sealed for the victim's path and relabelled with the
    # victim's key name: the victim's key does not unwrap it.
    create_key(root, "mail-credentials-rb-victim2")
    create_key(root, "mail-credentials-rb-attacker2")
    data = datakey(root, "mail-credentials-rb-attacker2")
    envelope = seal(
        "pw",
        DataKey(
            base64.b64decode(data["data"]["plaintext"]),
            data["data"]["ciphertext"],
            "transit/mail-credentials-rb-victim2",
        ),
        "rb-victim2",
        "smtp/rb-victim2/admin",
    )
    root.secrets.kv.v2.create_or_update_secret(
        path="rb-victim2/admin", secret=record(envelope), mount_point="smtp"
    )
    with pytest.raises(EnvelopeError, match="does not unwrap"):
        read_admin_credentials(reader_vault, "rb-victim2")


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("ciphertext", flip_b64),
        ("nonce", flip_b64),
        ("kek", "transit/other-key"),
        ("wrapped_key", lambda w: w[:-4] + "AAAA"),
        ("alg", "AES-128-GCM"),
    ],
)
def test_read_back_refuses_a_tampered_envelope(
    root: hvac.Client, reader_vault: Vault, field: str, change: Any
) -> None:
    envelope = store_envelope(root, "rb-tamper", "pw", "rb-tamper")
    root.secrets.kv.v2.create_or_update_secret(
        path="rb-tamper/admin", secret=record(tamper(envelope, field, change)), mount_point="smtp"
    )
    with pytest.raises(EnvelopeError):
        read_admin_credentials(reader_vault, "rb-tamper")


def test_read_back_refuses_an_envelope_moved_to_another_path(
    root: hvac.Client, reader_vault: Vault
) -> None:
    # Same tenant, so the data key unwraps; the associated data (path) still does not fit.
    envelope = store_envelope(root, "rb-moved", "pw", "rb-moved")
    body = json.loads(base64.urlsafe_b64decode(envelope[len(ENVELOPE_PREFIX) :]))
    key = base64.b64decode(
        decrypt(root, body["wrapped_key"], "mail-credentials-rb-moved")["data"]["plaintext"]
    )
    moved = seal(
        "pw", DataKey(key, body["wrapped_key"], body["kek"]), "rb-moved", "smtp/rb-moved/elsewhere"
    )
    root.secrets.kv.v2.create_or_update_secret(
        path="rb-moved/admin", secret=record(moved), mount_point="smtp"
    )
    with pytest.raises(EnvelopeError, match="not for this tenant and path"):
        read_admin_credentials(reader_vault, "rb-moved")


def test_read_back_refuses_an_unknown_envelope_version(
    root: hvac.Client, reader_vault: Vault
) -> None:
    envelope = store_envelope(root, "rb-version", "pw", "rb-version")
    root.secrets.kv.v2.create_or_update_secret(
        path="rb-version/admin",
        secret=record(envelope.replace(ENVELOPE_PREFIX, "mpenc:v9:")),
        mount_point="smtp",
    )
    with pytest.raises(EnvelopeError, match="'v9'"):
        read_admin_credentials(reader_vault, "rb-version")


def test_read_back_with_a_worker_token_is_denied(root: hvac.Client, worker_vault: Vault) -> None:
    store_envelope(root, "rb-denied", "pw", "rb-denied")
    with pytest.raises(VaultError, match="permission denied"):
        read_admin_credentials(worker_vault, "rb-denied")


def test_credentials_command_prints_them_and_fails_clearly(
    root: hvac.Client, info: StackInfo
) -> None:
    password = base64.b64encode(secrets.token_bytes(32)).decode()
    store_envelope(root, "rb-cli", password, "rb-cli")
    env = {
        "VAULT_ADDR": info.vault_addr,
        "VAULT_TOKEN_FILE": str(info.reader_token_file),
        "PATH": "/usr/bin:/bin",
    }
    ok = subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), "credentials", "rb-cli"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["password"] == password
    assert password not in ok.stderr
    missing = subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), "credentials", "rb-nobody"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert missing.returncode == 3
    assert "no credentials stored for tenant 'rb-nobody'" in missing.stderr


# ------------------------------------------------------------------ the worker's writes


async def test_store_is_idempotent_withdrawable_and_writable_again(
    worker_vault: Vault, reader_vault: Vault
) -> None:
    activities = VaultActivities(worker_vault)
    env = ActivityEnvironment()
    tenant = f"cas-{secrets.token_hex(4)}"

    def request(envelope: str) -> StoreCredentialsRequest:
        return StoreCredentialsRequest(
            tenant, SealedCredentials("admin@cas.example", envelope), "https://mail.cas.example"
        )

    first = await env.run(activities.store_credentials, request(ENVELOPE_PREFIX + "one"))
    assert first.version == 1
    # A retry of the same write (its answer was lost) adds no version.
    again = await env.run(activities.store_credentials, request(ENVELOPE_PREFIX + "one"))
    assert again == first
    # Compensation withdraws it; the reader then finds nothing.
    assert await env.run(activities.remove_credentials, RemoveCredentialsRequest(tenant, 1))
    assert reader_vault.read_credentials(tenant) is None
    assert not await env.run(activities.remove_credentials, RemoveCredentialsRequest(tenant, 1))
    # The tenant can be provisioned again after a compensated run.
    second = await env.run(activities.store_credentials, request(ENVELOPE_PREFIX + "two"))
    assert second.version == 2
    record = reader_vault.read_credentials(tenant)
    assert record is not None and record.data["password"] == ENVELOPE_PREFIX + "two"
    # A newer version is never withdrawn by an older run's compensation.
    assert not await env.run(activities.remove_credentials, RemoveCredentialsRequest(tenant, 1))
    assert reader_vault.read_credentials(tenant) is not None
