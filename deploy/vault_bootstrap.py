"""Prepare a Vault (or OpenBao) for mail-provisioning; safe to run again.

Enables KV v2 at `smtp` and Transit, creates the derived Transit key whose
per-tenant keys wrap every data key, installs the two policies from
deploy/vault/policies/, and issues one token per role. Needs an admin token;
the issued tokens are what the worker and the mail-sending side get.

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

POLICY_DIR = Path(__file__).parent / "vault" / "policies"
WORKER_POLICY = "mail-provisioning-worker"
READER_POLICY = "mail-credentials-reader"
KV_MOUNT = "smtp"
TRANSIT_MOUNT = "transit"
TRANSIT_KEY = "mail-credentials"


@dataclass(frozen=True, repr=False)
class RoleTokens:
    worker: str
    reader: str


def bootstrap(client: hvac.Client, ttl: str = "768h") -> RoleTokens:
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if f"{KV_MOUNT}/" not in mounts:
        client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
    if f"{TRANSIT_MOUNT}/" not in mounts:
        client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
    try:
        client.secrets.transit.read_key(name=TRANSIT_KEY, mount_point=TRANSIT_MOUNT)
    except hvac.exceptions.InvalidPath:
        # derived=True: every tenant id (the context) gets its own key under the master.
        client.secrets.transit.create_key(
            name=TRANSIT_KEY, key_type="aes256-gcm96", derived=True, mount_point=TRANSIT_MOUNT
        )
    for policy in (WORKER_POLICY, READER_POLICY):
        client.sys.create_or_update_policy(policy, (POLICY_DIR / f"{policy}.hcl").read_text())
    return RoleTokens(
        worker=_token(client, WORKER_POLICY, ttl),
        reader=_token(client, READER_POLICY, ttl),
    )


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
        help="where worker.token and reader.token are written (0600)",
    )
    args = parser.parse_args()
    admin_token = os.environ.get("VAULT_TOKEN")
    if not admin_token:
        print("error: VAULT_TOKEN (an admin token) is required", file=sys.stderr)
        return 2
    tokens = bootstrap(hvac.Client(url=args.addr, token=admin_token))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, value in (("worker.token", tokens.worker), ("reader.token", tokens.reader)):
        path = args.out_dir / name
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(value + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
