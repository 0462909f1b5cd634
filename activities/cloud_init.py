"""cloud-init on a new server: the Docker install it carries, and waiting for it to finish.

A fresh provider image (Hetzner `debian-12`, `debian-13`) has no Docker Engine and no
Compose v2 plugin. Debian's own packages do not help: `docker.io` ships no Compose v2
plugin and `docker-compose` is Compose v1. So the cloud-config installs Docker from
Docker's own apt repository the way Docker documents it
(https://docs.docker.com/engine/install/debian/ "Install using the apt repository"):
Docker's release key as an ASCII-armoured file, /etc/apt/keyrings/docker.asc, and the
repository line pinned to the image's suite with `signed-by=` that file.

The key is written by `write_files` (init stage), not by cloud-init's apt `key`
handling: that runs `gpg --dearmor` (cloudinit/gpg.py dearmor, called from
cc_apt_configure add_apt_key_raw in 22.4.2), and on an image without gpg, which
Debian's cloud images are reported to be (canonical/cloud-init#5535), it logs the
error and writes `signed-by=/dev/null`, so apt refuses Docker's repository and the
install fails. apt reads an .asc keyring itself (apt >= 1.4), so no gpg is needed.

The same cloud-config writes /etc/docker/daemon.json before Docker starts: MailU's
FAQ ("How to make IPv6 work?", docs/faq.rst tag 2024.06.57) says the userland proxy
MUST be off before IPv6 is enabled, or IPv6 clients reach front from the bridge
gateway and MailU relays for them; its documented daemon settings are used verbatim.

SSH answers long before cloud-init's final stage has installed the packages, so
nothing may touch Docker before `cloud-init status --wait` has returned.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import asyncssh
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ssh import RemoteCommandError, command_failure, run_remote_heartbeating

# Docker's documented release-key fingerprint (docs.docker.com, "Install Docker Engine on
# Debian"); tests/unit/test_cloud_init.py checks the shipped key against it with gpg.
DOCKER_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
DOCKER_KEY_FILE = Path(__file__).with_name("data") / "docker-archive-keyring.asc"
# Docker's package list for Debian (same page): Engine, CLI, containerd, and the
# Compose v2 plugin that provides `docker compose`.
DOCKER_PACKAGES = (
    "docker-ce",
    "docker-ce-cli",
    "containerd.io",
    "docker-buildx-plugin",
    "docker-compose-plugin",
)
# Where Docker's documentation keeps the key (docs.docker.com, Debian install).
DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
# MailU docs/faq.rst "How to make IPv6 work?" (tag 2024.06.57), the block for Docker's
# own IPv6 support: userland proxy off (else IPv6 clients appear as the bridge gateway,
# inside SUBNET: an open relay), ip6tables NAT for the compose network's IPv6 subnet.
DOCKER_DAEMON_SETTINGS: dict[str, object] = {
    "userland-proxy": False,
    "ipv6": True,
    "experimental": True,
    "fixed-cidr-v6": "fd00:1234:abcd::/48",
    "ip6tables": True,
}
# Provider image -> (Docker repository distribution, suite it is pinned to).
APT_SUITES = {
    "debian-12": ("debian", "bookworm"),
    "debian-13": ("debian", "trixie"),
    "ubuntu-24.04": ("ubuntu", "noble"),
}
# Images that already carry Docker CE and the Compose plugin (Hetzner's "docker-ce" app).
PREINSTALLED_IMAGES = frozenset({"docker-ce"})
DOCKER_INSTALLS = ("docker-apt", "preinstalled")

# cloud-init's answer can take as long as the package installs; the wait heartbeats.
CLOUD_INIT_WAIT_TIMEOUT = 20 * 60.0
CLOUD_INIT_WAIT = "cloud-init status --wait --long --format json"
# Exit codes of `cloud-init status` (docs: explanation/failure_states, "Error codes"):
# 0 done, 1 unrecoverable error, 2 done with recoverable errors (cloud-init >= 23.4;
# 22.4.2, Debian 12's, knows only 0 and 1: cloudinit/cmd/status.py).
CLOUD_INIT_RECOVERABLE = 2


class DockerInstallError(ValueError):
    """A plan names an image and Docker install that do not fit together."""


def check_docker_install(image: str, method: str) -> None:
    """Raise DockerInstallError naming the rule a plan's image/install pair breaks."""
    if method not in DOCKER_INSTALLS:
        raise DockerInstallError(
            f"docker_install {method!r} must be one of {', '.join(DOCKER_INSTALLS)}"
        )
    if method == "docker-apt" and image not in APT_SUITES:
        raise DockerInstallError(
            f"docker_install 'docker-apt' needs an image with a Docker apt suite "
            f"({', '.join(sorted(APT_SUITES))}), not {image!r}"
        )
    if method == "preinstalled" and image not in PREINSTALLED_IMAGES:
        raise DockerInstallError(
            f"docker_install 'preinstalled' needs an image that ships Docker "
            f"({', '.join(sorted(PREINSTALLED_IMAGES))}), not {image!r}"
        )


@cache
def docker_release_key() -> str:
    return DOCKER_KEY_FILE.read_text(encoding="ascii")


def docker_daemon_json() -> str:
    return json.dumps(DOCKER_DAEMON_SETTINGS, indent=2, sort_keys=True) + "\n"


def docker_cloud_config(image: str, method: str) -> dict[str, Any]:
    """The cloud-config keys that give this image Docker Engine, Compose v2 and the
    daemon settings MailU asks for."""
    check_docker_install(image, method)
    daemon = {
        "path": DOCKER_DAEMON_JSON,
        "content": docker_daemon_json(),
        "owner": "root:root",
        "permissions": "0644",
    }
    if method == "preinstalled":
        # Docker already runs on this image: restart it once the settings are in place
        # (runcmd runs in the final stage, after write_files).
        return {"write_files": [daemon], "runcmd": [["systemctl", "restart", "docker"]]}
    distro, suite = APT_SUITES[image]
    return {
        # write_files runs in cloud-init's init stage, before apt_configure and the
        # package install (Debian 12's /etc/cloud/cloud.cfg module order), so apt finds
        # the key and dockerd starts with its settings on first start.
        "write_files": [
            {
                "path": DOCKER_KEYRING,
                "content": docker_release_key(),
                "owner": "root:root",
                "permissions": "0644",
            },
            daemon,
        ],
        "apt": {
            "sources": {
                "docker.list": {
                    "source": (
                        f"deb [signed-by={DOCKER_KEYRING}] "
                        f"https://download.docker.com/linux/{distro} {suite} stable"
                    ),
                }
            }
        },
        # cc_package_update_upgrade_install: refresh the lists (the new source) first.
        "package_update": True,
        "packages": list(DOCKER_PACKAGES),
    }


async def wait_for_cloud_init(conn: asyncssh.SSHClientConnection) -> None:
    """Block (heartbeating) until cloud-init has finished; fail classified if it failed.

    A failed cloud-init is final (`CloudInitFailed`): it does not run again on this
    server, so a retry would meet the same half-installed machine; compensation
    deletes it instead.
    """
    try:
        output = await run_remote_heartbeating(
            conn, CLOUD_INIT_WAIT, timeout=CLOUD_INIT_WAIT_TIMEOUT, what="cloud-init"
        )
        exit_status = 0
    except RemoteCommandError as err:
        if err.exit_status not in (1, CLOUD_INIT_RECOVERABLE):
            raise command_failure(err) from None
        output, exit_status = err.stdout, err.exit_status or 0
    report = _status_report(output)
    status = str(report.get("status", "unknown"))
    errors = [str(e) for e in report.get("errors") or []]
    if exit_status == 1 or status == "error":
        raise ApplicationError(
            f"cloud-init failed on the server: {'; '.join(errors) or report.get('detail')}",
            type="CloudInitFailed",
            non_retryable=True,
        )
    if status == "disabled":
        raise ApplicationError(
            "cloud-init is disabled on the server, so its Docker install never ran",
            type="CloudInitFailed",
            non_retryable=True,
        )
    if exit_status == CLOUD_INIT_RECOVERABLE:
        activity.logger.warning("cloud-init finished with recoverable errors: %s", errors)


def _status_report(output: str) -> dict[str, Any]:
    """The JSON `cloud-init status --format json` prints (keys as in status.py)."""
    try:
        report = json.loads(output)
    except json.JSONDecodeError:
        raise ApplicationError(
            f"`{CLOUD_INIT_WAIT}` printed no JSON status: {output.strip()[:200]!r}",
            type="CloudInitFailed",
            non_retryable=True,
        ) from None
    if not isinstance(report, dict):
        raise ApplicationError(
            "cloud-init status JSON is not an object", type="CloudInitFailed", non_retryable=True
        )
    return report
