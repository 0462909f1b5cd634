"""Ask a real Docker engine which address a remote client has inside the container.

Issue 19 item 3. Postfix behind MailU's front trusts SUBNET; whether a mail server is an
open relay therefore depends on the address a client arrives with. This runs Debian's
`docker.io` engine (dockerd 20.10, as root) twice, each time with a container listening
on the same kind of network front has, published the way a compose file publishes it,
and a client in its own network namespace (a "remote" host behind a veth pair):

* `before`: what the product rendered before issue 19: ports on every address
  (`"P:P"`), an IPv4-only network, the daemon's defaults (userland proxy on);
* `ours`: the product's front ports and network as `activities.mailu.render_compose`
  renders them for the server's addresses, with the daemon settings cloud-init writes
  (`activities.cloud_init.docker_daemon_json`, MailU docs/faq.rst).

The container answers each connection with the peer address it sees. No registry: the
image is a Debian rootfs made by `mmdebstrap` and loaded with `docker import`.
Everything it creates (dockerd, netns, veth, addresses, bridges, files) is removed.
Run: `python -m devstack.docker_probe` (root; packages docker.io, mmdebstrap).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from activities.cloud_init import DOCKER_DAEMON_SETTINGS
from activities.mailu import SUBNET6, PublishAddresses, render_compose
from devstack.compose import Publisher, network_has_ipv6, service_publishers

PORT = 2525  # the family and address of a binding matter here, not the port number
SUBNET = "192.168.203.0/24"  # MailU's SUBNET (activities/mailu.py mailu.env)
GATEWAY4 = "192.168.203.1"
IMAGE = "mailprov-probe:bookworm"
SERVER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('::', {PORT}))\n"
    "s.listen(8)\n"
    "while True:\n"
    "    c, peer = s.accept()\n"
    "    c.sendall((peer[0].removeprefix('::ffff:') + '\\n').encode())\n"
    "    c.close()\n"
)


class ProbeUnavailable(Exception):
    """This machine cannot run the probe; the message says why."""


@dataclass(frozen=True)
class Case:
    name: str
    daemon: dict[str, object]
    bindings: tuple[str, ...]  # host addresses of the published port ("" = every address)
    ipv6_network: bool


@dataclass(frozen=True)
class Addresses:
    """The "server" (on the host) and the "remote client" (in its namespace)."""

    server4: str
    server6: str
    client4: str
    client6: str
    host4: str
    host6: str
    namespace: str


def cases(addresses: Addresses) -> list[Case]:
    compose = render_compose(PublishAddresses.of(addresses.server4, addresses.server6))
    front: list[Publisher] = service_publishers(compose, "front")
    ours = tuple(sorted({p.host_ip for p in front}))
    return [
        Case("before", {}, ("",), ipv6_network=False),
        Case("ours", dict(DOCKER_DAEMON_SETTINGS), ours, ipv6_network=network_has_ipv6(compose)),
    ]


def _run(
    *argv: str, check: bool = True, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, text=True, capture_output=True, env=env, input=stdin)


def require_tools() -> None:
    if os.geteuid() != 0:
        raise ProbeUnavailable("needs root (dockerd, network namespaces)")
    for tool, package in (
        ("dockerd", "docker.io"),
        ("mmdebstrap", "mmdebstrap"),
        ("ip", "iproute2"),
    ):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise ProbeUnavailable(f"needs {tool} (Debian package {package})")


def build_image_tar(directory: Path) -> Path:
    """A minimal Debian with python3, as a rootfs tarball (from Debian's archive)."""
    tar = directory / "rootfs.tar"
    _run("mmdebstrap", "--variant=essential", "--include=python3-minimal", "bookworm", str(tar))
    return tar


@contextlib.contextmanager
def network(prefix: str) -> Iterator[Addresses]:
    """Addresses on lo for the server, and a namespace with a veth pair for the client."""
    tag = secrets.token_hex(2)
    ns, veth_host, veth_ns = f"mp-probe-{tag}", f"mpp{tag}h", f"mpp{tag}n"
    octet = int(tag[:2], 16) % 200 + 20
    addresses = Addresses(
        server4=f"10.{octet}.7.1",
        server6=f"{prefix}7::1",
        client4=f"10.{octet}.8.2",
        client6=f"{prefix}8::2",
        host4=f"10.{octet}.8.1",
        host6=f"{prefix}8::1",
        namespace=ns,
    )
    forwarding = {
        key: Path(f"/proc/sys/net/{key}").read_text().strip()
        for key in ("ipv4/ip_forward", "ipv6/conf/all/forwarding")
    }
    # dockerd adds its chains and sets FORWARD to DROP, and leaves them: put back what was.
    firewall = {save: _run(save).stdout for save in ("iptables-save", "ip6tables-save")}
    steps = [
        ("ip", "addr", "add", f"{addresses.server4}/32", "dev", "lo"),
        ("ip", "-6", "addr", "add", f"{addresses.server6}/128", "dev", "lo", "nodad"),
        ("ip", "netns", "add", ns),
        ("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns),
        ("ip", "link", "set", veth_ns, "netns", ns),
        ("ip", "addr", "add", f"{addresses.host4}/24", "dev", veth_host),
        ("ip", "-6", "addr", "add", f"{addresses.host6}/64", "dev", veth_host, "nodad"),
        ("ip", "link", "set", veth_host, "up"),
        ("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addresses.client4}/24", "dev", veth_ns),
        (
            "ip",
            "netns",
            "exec",
            ns,
            "ip",
            "-6",
            "addr",
            "add",
            f"{addresses.client6}/64",
            "dev",
            veth_ns,
            "nodad",
        ),
        ("ip", "netns", "exec", ns, "ip", "link", "set", veth_ns, "up"),
        ("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", addresses.host4),
        ("ip", "netns", "exec", ns, "ip", "-6", "route", "add", "default", "via", addresses.host6),
    ]
    try:
        for step in steps:
            _run(*step)
        for key in forwarding:
            Path(f"/proc/sys/net/{key}").write_text("1\n")
        yield addresses
    finally:
        for save, rules in firewall.items():
            _run(save.replace("-save", "-restore"), stdin=rules, check=False)
        for key, value in forwarding.items():
            Path(f"/proc/sys/net/{key}").write_text(value + "\n")
        _run("ip", "netns", "del", ns, check=False)  # takes the veth pair with it
        _run("ip", "link", "del", veth_host, check=False)
        _run("ip", "addr", "del", f"{addresses.server4}/32", "dev", "lo", check=False)
        _run("ip", "-6", "addr", "del", f"{addresses.server6}/128", "dev", "lo", check=False)


class Dockerd:
    """One dockerd of our own: its own socket, data and exec roots and pid file."""

    def __init__(self, root: Path, daemon: dict[str, object]) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.daemon = daemon
        self.process: subprocess.Popen[bytes] | None = None
        self.had_docker0 = _run("ip", "link", "show", "docker0", check=False).returncode == 0

    def docker(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        return _run("docker", *argv, check=check, env=env)

    def __enter__(self) -> Dockerd:
        config = self.root / "daemon.json"
        config.write_text(json.dumps(self.daemon))
        log = (self.root / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "-H",
                f"unix://{self.socket}",
                "--config-file",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                tail = (self.root / "dockerd.log").read_text(errors="replace")[-800:]
                raise ProbeUnavailable(f"dockerd did not start: {tail}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.had_docker0:
            _run("ip", "link", "del", "docker0", check=False)  # dockerd leaves its bridge


def seen_addresses(case: Case, addresses: Addresses, image_tar: Path, root: Path) -> dict[str, str]:
    """{"ipv4": ..., "ipv6": ...}: the peer address the container saw per client family."""
    with Dockerd(root, case.daemon) as dockerd:
        dockerd.docker("import", str(image_tar), IMAGE)
        net = ["network", "create", "--subnet", SUBNET]
        if case.ipv6_network:
            net += ["--ipv6", "--subnet", SUBNET6]
        dockerd.docker(*net, "mp-probe")
        publish: list[str] = []
        for host in case.bindings:
            address = f"[{host}]:" if ":" in host else f"{host}:" if host else ""
            publish += ["-p", f"{address}{PORT}:{PORT}"]
        dockerd.docker(
            "run", "-d", "--name", "mp-probe", "--network", "mp-probe", *publish,
            IMAGE, "python3", "-c", SERVER,
        )  # fmt: skip
        try:
            return {
                family: _ask(addresses.namespace, server)
                for family, server in (("ipv4", addresses.server4), ("ipv6", addresses.server6))
            }
        finally:
            dockerd.docker("rm", "-f", "mp-probe", check=False)
            dockerd.docker("network", "rm", "mp-probe", check=False)


def _ask(namespace: str, server: str) -> str:
    """Connect from the client's namespace; the container's answer, or why none came."""
    client = (
        "import socket, sys, time\n"
        "for attempt in range(50):\n"
        "    try:\n"
        f"        s = socket.create_connection(({server!r}, {PORT}), timeout=5)\n"
        "        print(s.recv(100).decode().strip()); break\n"
        "    except ConnectionRefusedError:\n"
        "        time.sleep(0.1)\n"
        "    except OSError as err:\n"
        "        print(f'unreachable: {err}'); break\n"
        "else:\n"
        "    print('unreachable: refused')\n"
    )
    result = _run("ip", "netns", "exec", namespace, sys.executable, "-c", client, check=False)
    return result.stdout.strip() or f"unreachable: {result.stderr.strip()[-200:]}"


def probe(image_tar: Path | None = None) -> dict[str, dict[str, str]]:
    """Both cases; returns {case: {"ipv4": seen, "ipv6": seen, "client4": .., "client6": ..}}."""
    require_tools()
    prefix = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}:"
    with tempfile.TemporaryDirectory(prefix="mailprov-docker-probe-") as tmp:
        work = Path(tmp)
        tar = image_tar or build_image_tar(work)
        results: dict[str, dict[str, str]] = {}
        with network(prefix) as addresses:
            for case in cases(addresses):
                root = work / case.name
                root.mkdir()
                seen = seen_addresses(case, addresses, tar, root)
                results[case.name] = {
                    **seen,
                    "client4": addresses.client4,
                    "client6": addresses.client6,
                }
        return results


if __name__ == "__main__":
    try:
        print(json.dumps(probe(Path(sys.argv[1]) if len(sys.argv) > 1 else None), indent=2))
    except ProbeUnavailable as err:
        print(f"docker probe unavailable: {err}", file=sys.stderr)
        sys.exit(2)
