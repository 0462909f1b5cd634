"""Why a worker cannot start against this Vault, told apart on a real OpenBao.

Vault that does not answer (down, not initialised, sealed) is not a set-up gap: the
operator must start or unseal it, and deploy/vault_bootstrap.py would not help. Only a
Vault that answers but lacks the bootstrap's mounts, key or policies gets that hint.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import hvac
import pytest

from activities.vault import Vault, VaultNotReady, VaultSettings, VaultUnavailable
from devstack.processes import free_port
from devstack.stack import tool


@pytest.fixture
def openbao(tmp_path: Path) -> Iterator[str]:
    """A fresh OpenBao on raft storage: up, not initialised, sealed (as after install)."""
    port, cluster_port = free_port(), free_port()
    (tmp_path / "data").mkdir()
    (tmp_path / "openbao.hcl").write_text(
        f'storage "raft" {{\n  path = "{tmp_path / "data"}"\n  node_id = "t"\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
        f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n}}\n'
        f'api_addr = "http://127.0.0.1:{port}"\n'
        f'cluster_addr = "https://127.0.0.1:{cluster_port}"\n'
    )
    log = (tmp_path / "openbao.log").open("w")
    server = subprocess.Popen(
        [tool("bao"), "server", f"-config={tmp_path / 'openbao.hcl'}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # wait until it listens (a bound on attempts, not a test)
            assert server.poll() is None, (tmp_path / "openbao.log").read_text()
            try:
                httpx.get(f"{url}/v1/sys/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def check(url: str, token: str) -> VaultNotReady:
    with pytest.raises(VaultNotReady) as err:
        Vault(VaultSettings(url=url, token=token)).check_ready()
    return err.value


def test_down_not_initialised_sealed_and_not_bootstrapped_are_told_apart(openbao: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    down = check(closed, "unused")
    assert isinstance(down, VaultUnavailable)
    assert str(down).startswith(f"Vault unreachable at {closed}: [Errno 111] Connection refused")

    uninitialised = check(openbao, "unused")
    assert isinstance(uninitialised, VaultUnavailable)
    assert f"Vault at {openbao} is not initialised" in str(uninitialised)

    client = hvac.Client(url=openbao)
    init = client.sys.initialize(secret_shares=1, secret_threshold=1)
    sealed = check(openbao, init["root_token"])
    assert isinstance(sealed, VaultUnavailable)
    assert f"Vault at {openbao} is sealed" in str(sealed)
    for unavailable in (down, sealed):
        assert "vault_bootstrap" not in str(unavailable)

    client.sys.submit_unseal_key(init["keys_base64"][0])
    for _ in range(240):  # the node becomes active shortly after unsealing (200: a dict)
        if isinstance(client.sys.read_health_status(method="GET"), dict):
            break
        time.sleep(0.25)
    # Up and unsealed, but nothing of the bootstrap: that is what the bootstrap fixes.
    bare = check(openbao, init["root_token"])
    assert not isinstance(bare, VaultUnavailable)
    assert "does not exist; run deploy/vault_bootstrap.py" in str(bare)
