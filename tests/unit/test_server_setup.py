"""The Docker install a plan asks for, and reading `docker compose ps` in both shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activities.cloud_init import (
    DOCKER_DAEMON_SETTINGS,
    DOCKER_KEYRING,
    DOCKER_PACKAGES,
    DockerInstallError,
    check_docker_install,
    docker_cloud_config,
)
from activities.mailu import (
    PublishAddresses,
    _admin_health,
    ps_containers,
    render_compose,
    render_mailu_env,
)
from activities.plans import DEFAULT_CATALOG as PLAN_CATALOG
from activities.ssh import SshIdentity
from devstack.compose import Shell
from devstack.mailu import MailuStore


@pytest.mark.parametrize("plan", sorted(PLAN_CATALOG))
def test_every_catalog_plan_names_a_docker_install_that_fits_its_image(plan: str) -> None:
    check_docker_install(PLAN_CATALOG[plan].image, PLAN_CATALOG[plan].docker_install)


@pytest.mark.parametrize(
    ("image", "method", "rule"),
    [
        ("debian-12", "snap", "must be one of"),
        ("centos-9", "docker-apt", "Docker apt suite"),
        ("debian-12", "preinstalled", "ships Docker"),
    ],
)
def test_a_mismatched_image_and_install_is_refused_naming_the_rule(
    image: str, method: str, rule: str
) -> None:
    with pytest.raises(DockerInstallError, match=rule):
        docker_cloud_config(image, method)


def test_docker_comes_from_dockers_repository_pinned_to_the_image_suite() -> None:
    for image, suite in (("debian-12", "bookworm"), ("debian-13", "trixie")):
        config = docker_cloud_config(image, "docker-apt")
        [source] = config["apt"]["sources"].values()
        assert source["source"] == (
            f"deb [signed-by={DOCKER_KEYRING}] https://download.docker.com/linux/debian "
            f"{suite} stable"
        )
        # No `key`/`keyid`: cloud-init would need gpg for them (canonical/cloud-init#5535).
        assert "key" not in source and "keyid" not in source
        files = {f["path"]: f for f in config["write_files"]}
        assert files[DOCKER_KEYRING]["content"].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        assert files[DOCKER_KEYRING]["permissions"] == "0644"
        assert json.loads(files["/etc/docker/daemon.json"]["content"]) == DOCKER_DAEMON_SETTINGS
        assert config["packages"] == list(DOCKER_PACKAGES)
        assert "docker.io" not in config["packages"]  # Debian's: no Compose v2 plugin
    preinstalled = docker_cloud_config("docker-ce", "preinstalled")
    [daemon] = preinstalled["write_files"]
    assert json.loads(daemon["content"])["userland-proxy"] is False
    assert preinstalled["runcmd"] == [["systemctl", "restart", "docker"]]
    assert "apt" not in preinstalled and "packages" not in preinstalled


def test_user_data_carries_the_install_and_no_empty_ssh_genkeytypes() -> None:
    user_data, _ = SshIdentity.generate().cloud_init_for(
        "mail-x", docker_cloud_config("debian-12", "docker-apt")
    )
    header, _, body = user_data.partition("\n")
    document = json.loads(body)
    assert header == "#cloud-config"
    assert "ssh_genkeytypes" not in document
    assert "docker-compose-plugin" in document["packages"]


BIND = PublishAddresses.of("127.0.0.1", None)
NDJSON = '{"Service":"admin","State":"running","Health":"healthy"}\n{"Service":"redis"}\n'
ARRAY = (
    '[{"Service":"redis","State":"running"},'
    '{"Service":"admin","State":"running","Health":"starting"}]\n'
)


def test_ps_json_is_read_in_both_shapes() -> None:
    assert [c["Service"] for c in ps_containers(NDJSON)] == ["admin", "redis"]
    assert [c["Service"] for c in ps_containers(ARRAY)] == ["redis", "admin"]
    assert _admin_health(NDJSON) == "healthy"
    assert _admin_health(ARRAY) == "starting"
    assert _admin_health("") == "absent"
    assert _admin_health("[]\n") == "absent"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("compose_version", "shape"), [("v2.20.3", "array"), ("v2.29.1", "ndjson")]
)
async def test_admin_health_through_each_compose_versions_ps_output(
    tmp_path: Path, compose_version: str, shape: str
) -> None:
    """The stand-in prints what that Compose version prints; the parser reads both."""
    clock = Clock()
    shell = Shell(
        tmp_path / "root", MailuStore(tmp_path / "mailu.json"), clock=clock,
        compose_version=compose_version,
    )  # fmt: skip
    mailu = shell.host_path("/mailu")
    mailu.mkdir(parents=True)
    (mailu / "docker-compose.yml").write_text(render_compose(BIND))
    (mailu / "mailu.env").write_text(render_mailu_env("example.com", "0" * 32, BIND))

    async def no_stdin() -> str:
        return ""

    compose = "docker compose -p mailu -f /mailu/docker-compose.yml"
    assert (await shell.run(f"{compose} up -d", no_stdin)).exit_status == 0
    ps = await shell.run(f"{compose} ps --format json admin", no_stdin)
    assert ps.stdout.startswith("[") == (shape == "array")
    assert _admin_health(ps.stdout) == "starting"
    clock.now += 60
    ps = await shell.run(f"{compose} ps --format json admin", no_stdin)
    assert _admin_health(ps.stdout) == "healthy"


async def test_admin_never_turns_healthy_without_the_resolver_as_its_dns(tmp_path: Path) -> None:
    """MailU's start.py loops in test_DNS() without a DNSSEC-validating resolver."""
    clock = Clock()
    shell = Shell(tmp_path / "root", MailuStore(tmp_path / "mailu.json"), clock=clock)
    mailu = shell.host_path("/mailu")
    mailu.mkdir(parents=True)
    without_dns = render_compose(BIND).replace("    dns:\n      - 192.168.203.254\n", "")
    (mailu / "docker-compose.yml").write_text(without_dns)
    (mailu / "mailu.env").write_text(render_mailu_env("example.com", "0" * 32, BIND))

    async def no_stdin() -> str:
        return ""

    compose = "docker compose -p mailu -f /mailu/docker-compose.yml"
    assert (await shell.run(f"{compose} up -d", no_stdin)).exit_status == 0
    clock.now += 3600
    ps = await shell.run(f"{compose} ps --format json admin", no_stdin)
    assert _admin_health(ps.stdout) == "starting"
