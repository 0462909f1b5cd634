"""Prepare a Vault (or OpenBao) for mail-provisioning; safe to run again.

Enables KV v2 at `smtp` and Transit (each tenant's key `mail-credentials-{tenant}` is
created by the worker with the tenant's first data key and deleted when the tenant is
deprovisioned; a shared `mail-credentials` key left by an earlier version is unused and
may be deleted), and for the audit chain the Transit HMAC key
`mail-audit` (not exportable) and KV v2 at `audit-chain` (its anchored head and checkpoint);
installs the three policies from deploy/vault/policies/, sets up the worker's AppRole
(role id + a secret id: the worker logs in, renews and logs in again by itself) and
issues one token per role for tools that take a token. Needs an admin token.

    python -m deploy.vault_bootstrap --addr http://127.0.0.1:8200 --out-dir .state/vault
    (admin token from VAULT_TOKEN)
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import hvac

from activities.audit_vault import AUDIT_HMAC_KEY, AUDIT_KV_MOUNT
from activities.connections import ConnectionConfigError, vault_transport

POLICY_DIR = Path(__file__).parent / "vault" / "policies"
WORKER_POLICY = "mail-provisioning-worker"
READER_POLICY = "mail-credentials-reader"
AUDITOR_POLICY = "mail-audit-verifier"
KV_MOUNT = "smtp"
TRANSIT_MOUNT = "transit"
APPROLE_MOUNT = "approle"
WORKER_ROLE = "mail-provisioning-worker"


@dataclass(frozen=True, repr=False)
class RoleTokens:
    worker: str
    reader: str
    auditor: str
    worker_role_id: str
    worker_secret_id: str


def bootstrap(client: hvac.Client, ttl: str = "768h", worker_token_ttl: str = "1h") -> RoleTokens:  # noqa: S107 - a TTL
    """Idempotent: a second run keeps mounts and key, refreshes policies, issues new ids."""
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    for kv_mount in (KV_MOUNT, AUDIT_KV_MOUNT):
        if f"{kv_mount}/" not in mounts:
            client.sys.enable_secrets_engine("kv", path=kv_mount, options={"version": "2"})
    if f"{TRANSIT_MOUNT}/" not in mounts:
        client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
    try:
        client.secrets.transit.read_key(name=AUDIT_HMAC_KEY, mount_point=TRANSIT_MOUNT)
    except hvac.exceptions.InvalidPath:
        # An HMAC-only key (no encrypt, no sign), never exportable: MACs of audit rows
        # can only be made through Vault. hvac's create_key has no key_size parameter.
        client.write_data(
            f"{TRANSIT_MOUNT}/keys/{AUDIT_HMAC_KEY}",
            data={"type": "hmac", "key_size": 32, "exportable": False},
        )
    for policy in (WORKER_POLICY, READER_POLICY, AUDITOR_POLICY):
        client.sys.create_or_update_policy(policy, (POLICY_DIR / f"{policy}.hcl").read_text())
    role_id, secret_id = _worker_approle(client, worker_token_ttl)
    return RoleTokens(
        worker=_token(client, WORKER_POLICY, ttl),
        reader=_token(client, READER_POLICY, ttl),
        auditor=_token(client, AUDITOR_POLICY, ttl),
        worker_role_id=role_id,
        worker_secret_id=secret_id,
    )


def _worker_approle(client: hvac.Client, token_ttl: str) -> tuple[str, str]:
    """The worker's AppRole: short renewable tokens carrying only the worker policy."""
    if f"{APPROLE_MOUNT}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle", path=APPROLE_MOUNT)
    client.auth.approle.create_or_update_approle(
        WORKER_ROLE,
        token_policies=[WORKER_POLICY],
        token_no_default_policy=True,
        token_ttl=token_ttl,
        # A token is renewed up to a day; after that the worker logs in again.
        token_max_ttl="24h",  # noqa: S106 - a TTL, not a secret
        token_type="service",  # noqa: S106 - a token kind
        mount_point=APPROLE_MOUNT,
    )
    role_id = client.auth.approle.read_role_id(WORKER_ROLE, mount_point=APPROLE_MOUNT)
    secret_id = client.auth.approle.generate_secret_id(WORKER_ROLE, mount_point=APPROLE_MOUNT)
    return str(role_id["data"]["role_id"]), str(secret_id["data"]["secret_id"])


def _token(client: hvac.Client, policy: str, ttl: str) -> str:
    response = client.auth.token.create(
        policies=[policy],
        no_default_policy=True,
        ttl=ttl,
        renewable=True,
        display_name=policy,
    )
    return str(response["auth"]["client_token"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", default=os.environ.get("VAULT_ADDR", "http://127.0.0.1:8200"))
    parser.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="where worker.role-id, worker.secret-id, worker.token, reader.token and "
        "auditor.token go (0600)",
    )
    args = parser.parse_args()
    admin_token = os.environ.get("VAULT_TOKEN")
    if not admin_token:
        print("error: VAULT_TOKEN (an admin token) is required", file=sys.stderr)
        return 2
    try:
        # VAULT_CACERT / VAULT_CLIENT_CERT / VAULT_CLIENT_KEY / VAULT_NAMESPACE, as the worker.
        transport, warning = vault_transport(os.environ, args.addr)
    except ConnectionConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    client = hvac.Client(
        url=args.addr,
        token=admin_token,
        verify=transport.verify,
        cert=transport.cert,
        namespace=transport.namespace or None,
    )
    tokens = bootstrap(client)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, value in credential_files(tokens).items():
        path = args.out_dir / name
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(value + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


def credential_files(tokens: RoleTokens) -> dict[str, str]:
    """File name -> secret, as the worker (VAULT_ROLE_ID_FILE, ...) and tools read them."""
    return {
        "worker.role-id": tokens.worker_role_id,
        "worker.secret-id": tokens.worker_secret_id,
        "worker.token": tokens.worker,
        "reader.token": tokens.reader,
        "auditor.token": tokens.auditor,
    }


if __name__ == "__main__":
    sys.exit(main())
