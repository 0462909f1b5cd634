"""The local VPS's shell: the few commands MailU provisioning runs over SSH.

A real VPS would hand each exec request to ``sh -c``; here a small interpreter answers
the commands the product uses, in the words Docker Compose v2 and MailU 2024.06 use:
the same messages on the same stream (Compose writes progress to stderr), the same
exit codes, the same ``ps --format json`` lines. Anything else fails like ``sh`` does
for an unknown program, so a product that drifts from the supported commands finds out
in tests instead of on a customer's server.

Supported (after ``shlex`` splitting):

* ``docker compose [-p NAME] [-f FILE]... up -d [--wait] [SERVICE...]``
* ``docker compose [-p NAME] [-f FILE]... ps [--format json|table] [-a] [-q] [SERVICE...]``
* ``docker compose [-p NAME] [-f FILE]... exec [-T] [-i] SERVICE flask mailu ...``
  (``config-import``, ``domain``, ``admin``; see :mod:`devstack.mailu`)
* ``docker compose ... exec -T admin curl ... http://127.0.0.1:8080/internal/auth/email``
  (MailU's login check; see :mod:`devstack.mailu_auth`)
* ``docker compose version``
* ``cat FILE...`` for files under the VPS root, e.g. ``/etc/ssh/ssh_host_ed25519_key.pub``
* ``systemctl reload UNIT`` for the units the machine registers (``ssh``/``sshd``)
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import posixpath
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devstack.cloudinit import COMPOSE_PLUGIN, DOCKER_BIN, CloudInitRun
from devstack.mailu import ExecResult, MailuCli, MailuStore, StdinReader
from devstack.mailu_auth import ADMIN_PORT, AdminAuthEndpoint, curl_in_admin

# What ``systemctl reload UNIT`` runs for a unit the machine provides.
ReloadHandler = Callable[[], Awaitable[ExecResult]]

MAILU_VERSION = "2024.06.57"  # the pinned release activities/mailu.py deploys
COMPOSE_VERSION = "v2.29.1"
# MailU's admin image runs DB migrations before its healthcheck passes; the stand-in
# keeps the window short but real, so clients must poll ``ps`` instead of assuming.
ADMIN_HEALTHY_AFTER = 1.0
CWD = "/root"  # where an SSH exec starts, as root

REQUIRED_ENV = ("SECRET_KEY", "DOMAIN", "HOSTNAMES", "POSTMASTER", "TLS_FLAVOR")
TLS_FLAVORS = ("letsencrypt", "cert", "notls", "mail", "mail-letsencrypt")
DEFAULT_COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
IMAGES = {
    "redis": "redis:alpine",
    "front": f"ghcr.io/mailu/nginx:{MAILU_VERSION}",
    "resolver": f"ghcr.io/mailu/unbound:{MAILU_VERSION}",
    "admin": f"ghcr.io/mailu/admin:{MAILU_VERSION}",
    "imap": f"ghcr.io/mailu/dovecot:{MAILU_VERSION}",
    "smtp": f"ghcr.io/mailu/postfix:{MAILU_VERSION}",
    "oletools": f"ghcr.io/mailu/oletools:{MAILU_VERSION}",
    "antispam": f"ghcr.io/mailu/rspamd:{MAILU_VERSION}",
    "webmail": f"ghcr.io/mailu/webmail:{MAILU_VERSION}",
}
HEALTHCHECKED = {"admin"}
ServiceHook = Callable[[list[str]], Awaitable[None]]
log = logging.getLogger("devstack.compose")
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
# The stand-in's record of the compose projects that were up (dockerd's own state lives
# under /var/lib/docker too), so a reboot restarts them (Shell.restart_at_boot).
UP_PROJECTS = "/var/lib/docker/devstack-compose-up.json"
_SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "<<", "2>", "2>&1"}
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _fail(message: str, status: int = 1) -> ExecResult:
    return ExecResult(status, "", message.rstrip("\n") + "\n")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _ago(seconds: float) -> str:
    s = max(1, int(seconds))
    if s < 60:
        return f"{s} second{'s' if s != 1 else ''}"
    minutes = s // 60
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a Compose env_file: ``KEY=VALUE`` lines, ``#`` comments, optional quotes."""
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def mailu_env_problems(env: dict[str, str]) -> list[str]:
    """Why MailU's admin container would exit at start; names keys, never values."""
    problems = [f"missing required setting {key}" for key in REQUIRED_ENV if not env.get(key)]
    if env.get("SECRET_KEY") and len(env["SECRET_KEY"]) < 16:
        problems.append("SECRET_KEY must be at least 16 characters")
    if env.get("TLS_FLAVOR") and env["TLS_FLAVOR"] not in TLS_FLAVORS:
        problems.append(f"TLS_FLAVOR must be one of {', '.join(TLS_FLAVORS)}")
    return problems


def compose_services(text: str) -> list[str]:
    """Service names from a compose file written as JSON or as block-style YAML.

    There is no YAML parser here; block-style YAML's ``services:`` section is regular
    enough to read its keys by indentation, and JSON covers the rest.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        services = data.get("services")
        return sorted(services) if isinstance(services, dict) else []
    names: list[str] = []
    in_services = False
    indent: int | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = len(line) - len(line.lstrip(" "))
        if depth == 0:
            in_services = line.rstrip().split("#")[0].strip() == "services:"
            continue
        if not in_services:
            continue
        if indent is None:
            indent = depth
        m = re.match(r"^\s*['\"]?([A-Za-z0-9._-]+)['\"]?\s*:\s*(#.*)?$", line)
        if depth == indent and m:
            names.append(m.group(1))
    return sorted(names)


def _service_block(text: str, service: str) -> list[str]:
    """The lines of one service in block-style YAML (two-space service indent)."""
    lines = text.splitlines()
    block: list[str] = []
    inside = False
    for line in lines:
        if re.match(rf"^  {re.escape(service)}:\s*$", line):
            inside = True
            continue
        if inside:
            if line.strip() and (len(line) - len(line.lstrip(" "))) <= 2:
                break
            block.append(line)
    return block


def admin_resolver_ok(compose_text: str) -> bool:
    """Would MailU's admin get past ``test_DNS()`` (core/admin/start.py, 2024.06)?

    start.py loops (logging "Your DNS resolver at ... isn't doing DNSSEC validation")
    until a DNSSEC-validating resolver answers. MailU's setup gives admin
    ``dns: [RESOLVER_IP]`` and runs unbound (the ``resolver`` service) at that address;
    a file without both leaves admin on the host's resolver, which the stand-in takes
    as not validating, so admin never turns healthy.
    """
    resolver = "\n".join(_service_block(compose_text, "resolver"))
    admin = "\n".join(_service_block(compose_text, "admin"))
    address = re.search(r"ipv4_address:\s*([0-9.]+)", resolver)
    if address is None:
        return False
    return re.search(rf"dns:\s*\n\s*-\s*{re.escape(address.group(1))}\b", admin) is not None


@dataclass(frozen=True)
class Publisher:
    """One published port of a service: host address ("" = every address) and port."""

    host_ip: str
    published: int
    target: int


_PORT_LINE = re.compile(
    r'^\s*-\s*"?(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(?P<host>\d+):(?P<target>\d+)"?\s*$'
)


def service_publishers(compose_text: str, service: str) -> list[Publisher]:
    """The short-syntax `ports:` of one service (`[IP:]HOST:CONTAINER`, IPv6 bracketed)."""
    publishers: list[Publisher] = []
    in_ports = False
    for line in _service_block(compose_text, service):
        if re.match(r"^    ports:\s*$", line):
            in_ports = True
            continue
        if in_ports and re.match(r"^    \S", line):
            in_ports = False
        match = _PORT_LINE.match(line) if in_ports else None
        if match:
            ip = (match["ip"] or "").strip("[]")
            publishers.append(Publisher(ip, int(match["host"]), int(match["target"])))
    return publishers


def network_has_ipv6(compose_text: str, network: str = "default") -> bool:
    """`networks.<name>.enable_ipv6: true` in block-style YAML."""
    block = re.search(
        rf"^networks:\s*\n(?:(?:  .*|\s*)\n)*?  {re.escape(network)}:\s*\n(?P<body>(?:    .*\n)*)",
        compose_text,
        re.MULTILINE,
    )
    return bool(block and re.search(r"^    enable_ipv6:\s*true\s*$", block["body"], re.MULTILINE))


def ipv6_client_source(
    publishers: list[Publisher], host_has_ipv6: bool, daemon: dict[str, object], ipv6_net: bool
) -> str:
    """Where an IPv6 client of a published port appears to come from, inside front.

    Docker's documented mechanics: with the userland proxy on (daemon default
    `"userland-proxy": true`), a host port bound on IPv6 whose container has no IPv6
    address is served by docker-proxy, which connects to the container over IPv4 from
    the bridge gateway (192.168.203.1 here, inside MailU's SUBNET, which postfix
    trusts: MailU setup/templates/steps/compose/03_expose.html "will turn your Mailu
    installation into an open-relay", docs/faq.rst "How to make IPv6 work?"). A network
    with IPv6 (`enable_ipv6`) and ip6tables (Docker >= 27 default; MailU's documented
    daemon.json sets it) is NATed, keeping the client's address. Proxy off and no IPv6
    on the network: nothing forwards IPv6 to the container.

    Returns "client", "gateway", "unreachable" or "none" (no IPv6 binding).
    """
    on_ipv6 = [p for p in publishers if ":" in p.host_ip or (p.host_ip == "" and host_has_ipv6)]
    if not on_ipv6:
        return "none"
    ip6tables = bool(daemon.get("ip6tables", True))
    if ipv6_net and ip6tables:
        return "client"
    if daemon.get("userland-proxy", True) is not False:
        return "gateway"
    return "unreachable"


@dataclass
class Deployment:
    """One ``docker compose up``'d project: when it started and from which config."""

    project: str
    services: list[str]
    started: float
    created_wall: float
    config_digest: str
    container_ids: dict[str, str] = field(default_factory=dict)
    # False when admin's start.py would loop in test_DNS() forever (see admin_resolver_ok).
    admin_dns_ok: bool = True
    publishers: dict[str, list[Publisher]] = field(default_factory=dict)
    # What front sees as an IPv6 client's address (see ipv6_client_source).
    ipv6_clients_seen_as: str = "none"


@dataclass
class ComposeCall:
    project: str
    compose_path: str  # as the client named it, for messages
    host_file: Path
    subcommand: str
    args: list[str]


class Shell:
    """Answers one exec request's command line; state lives for the VPS's lifetime."""

    def __init__(
        self,
        root: Path,
        store: MailuStore,
        clock: Callable[[], float] = time.monotonic,
        healthy_after: float = ADMIN_HEALTHY_AFTER,
        units: dict[str, ReloadHandler] | None = None,
        cloud_init: CloudInitRun | None = None,
        compose_version: str = COMPOSE_VERSION,
        auth_log: Path | None = None,
        addresses: list[str] | None = None,
        on_start: ServiceHook | None = None,
    ) -> None:
        self.root = root
        # Called with the services whose containers (re)started (up, restart): front's
        # processes start over then (devstack/mailu_front.py).
        self.on_start = on_start
        # None: a machine whose cloud-init is long done and which has Docker (unit tests).
        self.cloud_init = cloud_init
        self.compose_version = compose_version
        # systemd units by name (without ".service"; aliases are entries of their own)
        self.units: dict[str, ReloadHandler] = dict(units or {})
        self.mailu = MailuCli(store)
        self.admin_http = AdminAuthEndpoint(store, auth_log)
        # The host's own addresses; None: a unit test's shell that binds anything.
        self.addresses = addresses
        self.clock = clock
        self.healthy_after = healthy_after
        self.deployments: dict[str, Deployment] = {}

    # --- paths ------------------------------------------------------------------

    def host_path(self, path: str) -> Path:
        """Map a VPS path onto the state directory; ``..`` cannot climb out of root."""
        normalized = posixpath.normpath(posixpath.join(CWD, path))
        return self.root / normalized.lstrip("/")

    # --- entry point ------------------------------------------------------------

    async def run(self, command: str, read_stdin: StdinReader) -> ExecResult:
        try:
            argv = shlex.split(command)
        except ValueError:
            return _fail("bash: -c: line 1: unexpected EOF while looking for matching quote", 2)
        if not argv:
            return ExecResult(0)
        operators = [tok for tok in argv if tok in _SHELL_OPERATORS]
        if operators:
            return _fail(
                f"bash: shell syntax {operators[0]!r} is not supported by the devstack "
                "VPS; run one command per exec request",
                2,
            )
        program = argv[0]
        if program == "cat":
            return await self._cat(argv[1:], read_stdin)
        if program == "docker" and self._installed(DOCKER_BIN):
            return await self._docker(argv[1:], read_stdin)
        if program == "systemctl":
            return await self._systemctl(argv[1:])
        if program == "cloud-init" and self.cloud_init is not None:
            if argv[1:2] != ["status"]:
                return _fail(f"devstack: 'cloud-init {' '.join(argv[1:2])}' is not modelled")
            return await self.cloud_init.status_command(argv[2:])
        # Debian's bash, run by sshd as `bash -c COMMAND`, for a program not on PATH.
        return _fail(f"bash: line 1: {program}: command not found", 127)

    def _installed(self, vps_path: str) -> bool:
        return self.cloud_init is None or self.cloud_init.has(vps_path)

    async def _cat(self, files: list[str], read_stdin: StdinReader) -> ExecResult:
        if not files:
            return ExecResult(0, await read_stdin())
        out: list[str] = []
        errors: list[str] = []
        for name in files:
            path = self.host_path(name)
            if path.is_dir():
                errors.append(f"cat: {name}: Is a directory")
            elif not path.is_file():
                errors.append(f"cat: {name}: No such file or directory")
            else:
                out.append(path.read_text(encoding="utf-8", errors="replace"))
        return ExecResult(1 if errors else 0, "".join(out), "".join(f"{e}\n" for e in errors))

    # --- systemctl --------------------------------------------------------------

    async def _systemctl(self, args: list[str]) -> ExecResult:
        """``systemctl [-q] reload UNIT...``, in systemd 252's (Debian 12's) words."""
        words = [a for a in args if a not in ("-q", "--quiet", "--no-pager")]
        flags = [a for a in words if a.startswith("-")]
        if flags:
            return _fail(f"devstack: systemctl option {flags[0]} is not supported")
        if not words:
            return _fail("Too few arguments.")
        verb, units = words[0], words[1:]
        known_verbs = {
            "start", "stop", "restart", "reload", "try-restart", "reload-or-restart",
            "try-reload-or-restart", "status", "is-active", "enable", "disable",
        }  # fmt: skip
        if verb not in known_verbs:
            return _fail(f"Unknown command verb '{verb}'.")
        if verb != "reload":
            return _fail(
                f"devstack: 'systemctl {verb}' is not supported by the local VPS; "
                "only 'systemctl reload UNIT' is"
            )
        if not units:
            return _fail("Too few arguments.")
        for unit in units:
            name = unit.removesuffix(".service")
            handler = self.units.get(name)
            if handler is None:
                return _fail(f"Failed to reload {name}.service: Unit {name}.service not found.", 5)
            result = await handler()
            if result.exit_status != 0:
                return result
        return ExecResult(0)

    # --- docker compose ---------------------------------------------------------

    async def _docker(self, args: list[str], read_stdin: StdinReader) -> ExecResult:
        if args[:1] == ["compose"] and not self._installed(COMPOSE_PLUGIN):
            # Without the plugin the docker CLI parses compose's flags as its own
            # (Debian's docker.io): `docker compose -p x` -> exit 125.
            flag = next((a for a in args[1:] if a.startswith("-")), None)
            if flag is not None:
                if flag.startswith("--"):
                    return _fail(f"unknown flag: {flag}\nSee 'docker --help'.", 125)
                return _fail(
                    f"unknown shorthand flag: '{flag[1:2]}' in {flag}\nSee 'docker --help'.", 125
                )
            return _fail("docker: 'compose' is not a docker command.\nSee 'docker --help'")
        if not args or args[0] != "compose":
            what = args[0] if args else ""
            return _fail(f"docker: '{what}' is not a docker command.\nSee 'docker --help'")
        call = self._parse_compose(args[1:])
        if isinstance(call, ExecResult):
            return call
        if call.subcommand == "up":
            result = await self._up(call)
            if result.exit_status == 0:
                self._remember_up(call.project, args)
            return result
        if call.subcommand == "ps":
            return self._ps(call)
        if call.subcommand == "exec":
            return await self._exec(call, read_stdin)
        if call.subcommand == "restart":
            return await self._restart(call)
        return _fail(f'unknown docker command: "compose {call.subcommand}"')

    async def _restart(self, call: ComposeCall) -> ExecResult:
        """`docker compose restart [SERVICE...]`: the running containers stop and start
        again with their configuration unchanged (Compose v2 `restart`: "Restarts all
        stopped and running services ... changes to the compose.yml are not reflected"),
        reporting each as Restarting/Started on stderr; a project that is not up has
        nothing to restart and says nothing."""
        deployment = self.deployments.get(call.project)
        selected = [a for a in call.args if not a.startswith("-")]
        if deployment is None:
            return ExecResult(0)
        for name in selected:
            if name not in deployment.services:
                return _fail(f"no such service: {name}")
        services = selected or list(deployment.services)
        progress: list[str] = []
        for s in services:
            container = self._container(call.project, s)
            progress += [f" Container {container}  Restarting", f" Container {container}  Started"]
        if self.on_start is not None:
            await self.on_start(services)
        return ExecResult(0, "", "".join(f"{line}\n" for line in progress))

    # --- restart policy across reboots ------------------------------------------

    def _remember_up(self, project: str, args: list[str]) -> None:
        """Record an up'd project where dockerd keeps its state (/var/lib/docker)."""
        path = self.host_path(UP_PROJECTS)
        projects = self._up_projects()
        projects[project] = args
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(projects), encoding="utf-8")

    def _up_projects(self) -> dict[str, list[str]]:
        path = self.host_path(UP_PROJECTS)
        if not path.is_file():
            return {}
        loaded = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): [str(a) for a in v] for k, v in loaded.items()}

    async def restart_at_boot(self) -> None:
        """dockerd starting at boot restarts the containers of `restart: always`
        services (every MailU service in our compose file): Docker docs, "Start
        containers automatically": "always ... restarted only when Docker daemon
        restarts or the container itself is manually restarted" (after a stop).
        Their health starts over, so admin is "starting" again for healthy_after."""
        if not self._installed(DOCKER_BIN):
            return

        async def no_stdin() -> str:
            return ""

        for project, args in self._up_projects().items():
            result = await self._docker(args, no_stdin)
            if result.exit_status != 0:
                log.warning("project %s did not restart at boot: %s", project, result.stderr)

    def _parse_compose(self, args: list[str]) -> ComposeCall | ExecResult:
        files: list[str] = []
        project: str | None = None
        valued = {
            "-p",
            "--project-name",
            "-f",
            "--file",
            "--project-directory",
            "--env-file",
            "--ansi",
            "--progress",
            "--profile",
            "--parallel",
        }
        i = 0
        while i < len(args) and args[i].startswith("-"):
            name, eq, value = args[i].partition("=")
            if name not in valued:
                if name.startswith("--"):
                    return _fail(f"unknown flag: {name}")
                return _fail(f"unknown shorthand flag: '{name[1:2]}' in {args[i]}")
            if not eq:
                i += 1
                if i >= len(args):
                    return _fail(f"flag needs an argument: {name}")
                value = args[i]
            if name in ("-f", "--file"):
                files.append(value)
            elif name in ("-p", "--project-name"):
                project = value
            i += 1
        if i >= len(args):
            return _fail(
                "Usage:  docker compose [OPTIONS] COMMAND\n\n"
                "Define and run multi-container applications with Docker"
            )
        subcommand, rest = args[i], args[i + 1 :]
        if subcommand == "version":
            return ExecResult(0, f"Docker Compose version {self.compose_version}\n")
        if subcommand not in ("up", "ps", "exec", "restart"):
            return _fail(f'unknown docker command: "compose {subcommand}"')

        if files:
            compose_path = posixpath.normpath(posixpath.join(CWD, files[0]))
            host_file = self.host_path(compose_path)
            if not host_file.is_file():
                return _fail(f"open {compose_path}: no such file or directory")
        else:
            found = [n for n in DEFAULT_COMPOSE_FILES if self.host_path(n).is_file()]
            if not found:
                return _fail("no configuration file provided: not found")
            compose_path = posixpath.join(CWD, found[0])
            host_file = self.host_path(compose_path)
        if project is None:
            # Compose names the project after the directory holding the first file.
            project = posixpath.basename(posixpath.dirname(compose_path)).lower()
        if not _PROJECT_NAME.match(project):
            return _fail(
                f'invalid project name "{project}": must consist only of lowercase '
                "alphanumeric characters, hyphens, and underscores as well as start with "
                "a letter or number"
            )
        return ComposeCall(project, compose_path, host_file, subcommand, rest)

    def _container(self, project: str, service: str) -> str:
        return f"{project}-{service}-1"

    def _health(self, deployment: Deployment, service: str) -> str:
        if service not in HEALTHCHECKED:
            return ""
        if service == "admin" and not deployment.admin_dns_ok:
            return "starting"  # start.py never gets past test_DNS(); gunicorn never starts
        elapsed = self.clock() - deployment.started
        return "healthy" if elapsed >= self.healthy_after else "starting"

    async def _up(self, call: ComposeCall) -> ExecResult:
        opts = {
            "-d",
            "--detach",
            "--wait",
            "--remove-orphans",
            "--quiet-pull",
            "--no-recreate",
            "--force-recreate",
            "--no-build",
            "--no-deps",
        }
        valued = {"--pull", "--wait-timeout", "--timeout", "-t"}
        flags: set[str] = set()
        selected: list[str] = []
        i = 0
        while i < len(call.args):
            name = call.args[i].partition("=")[0]
            if name in valued:
                i += 1 if "=" in call.args[i] else 2
                continue
            if name in opts:
                flags.add(name)
            elif name.startswith("-"):
                return _fail(f"unknown flag: {name}")
            else:
                selected.append(name)
            i += 1
        if not flags & {"-d", "--detach"}:
            # Attached "up" streams container logs until interrupted; over a one-shot
            # exec that can only hang, so the stand-in refuses instead.
            return _fail(
                "devstack: 'docker compose up' without -d would attach to "
                "container logs forever; use -d"
            )

        compose_text = call.host_file.read_text(encoding="utf-8", errors="replace")
        services = compose_services(compose_text)
        if not services:
            return _fail("no service selected")
        for name in selected:
            if name not in services:
                return _fail(f"no such service: {name}")
        env_path = call.compose_path.rsplit("/", 1)[0] + "/mailu.env"
        env_file = self.host_path(env_path)
        if not env_file.is_file():
            return _fail(
                f"env file {env_path} not found: stat {env_path}: no such file or directory"
            )
        env_text = env_file.read_text(encoding="utf-8", errors="replace")
        digest = hashlib.sha256((compose_text + "\0" + env_text).encode()).hexdigest()

        network = f"{call.project}_default"
        progress: list[str] = []
        existing = self.deployments.get(call.project)
        if existing is not None and existing.config_digest == digest:
            progress += [
                f" Container {self._container(call.project, s)}  Running" for s in services
            ]
        else:
            verb = ("Recreate", "Recreated") if existing else ("Creating", "Created")
            if existing is None:
                progress += [f" Network {network}  Creating", f" Network {network}  Created"]
            for s in services:
                progress += [
                    f" Container {self._container(call.project, s)}  {verb[0]}",
                    f" Container {self._container(call.project, s)}  {verb[1]}",
                ]
            problems = mailu_env_problems(read_env_file(env_file)) if "admin" in services else []
            admin = self._container(call.project, "admin")
            if problems:
                self.deployments.pop(call.project, None)
                progress += [f" Container {admin}  Starting", f" Container {admin}  Error"]
                progress += [f"{admin}  | {p}" for p in problems]
                progress.append(f"dependency failed to start: container {admin} exited (1)")
                return ExecResult(1, "", "".join(f"{line}\n" for line in progress))
            publishers = {s: service_publishers(compose_text, s) for s in services}
            for s in services:
                container = self._container(call.project, s)
                progress.append(f" Container {container}  Starting")
                unbindable = self._unbindable(publishers[s])
                if unbindable is not None:
                    self.deployments.pop(call.project, None)
                    family = "tcp6" if ":" in unbindable.host_ip else "tcp4"
                    address = f"[{unbindable.host_ip}]" if family == "tcp6" else unbindable.host_ip
                    progress.append(
                        f"Error response from daemon: driver failed programming external "
                        f"connectivity on endpoint {container}: Error starting userland "
                        f"proxy: listen {family} {address}:{unbindable.published}: bind: "
                        "cannot assign requested address"
                    )
                    return ExecResult(1, "", "".join(f"{line}\n" for line in progress))
                progress.append(f" Container {container}  Started")
            now = self.clock()
            self.deployments[call.project] = Deployment(
                project=call.project,
                services=services,
                started=now,
                created_wall=time.time(),
                config_digest=digest,
                admin_dns_ok=admin_resolver_ok(compose_text),
                publishers=publishers,
                ipv6_clients_seen_as=ipv6_client_source(
                    [p for ps in publishers.values() for p in ps],
                    any(":" in a for a in self.addresses or []),
                    self._daemon_settings(),
                    network_has_ipv6(compose_text),
                ),
                container_ids={
                    s: hashlib.sha256(f"{call.project}/{s}/{now}".encode()).hexdigest()
                    for s in services
                },
            )
            if self.on_start is not None:
                await self.on_start(services)
        if "--wait" in flags:
            deployment = self.deployments[call.project]
            remaining = deployment.started + self.healthy_after - self.clock()
            if remaining > 0:
                await asyncio.sleep(remaining)
            progress += [
                f" Container {self._container(call.project, s)}  Healthy"
                for s in services
                if s in HEALTHCHECKED
            ]
        return ExecResult(0, "", "".join(f"{line}\n" for line in progress))

    def _unbindable(self, publishers: list[Publisher]) -> Publisher | None:
        """The first binding on an address this host does not have (Docker refuses it)."""
        if self.addresses is None:
            return None
        own = {ipaddress.ip_address(a) for a in self.addresses}
        for publisher in publishers:
            if publisher.host_ip and ipaddress.ip_address(publisher.host_ip) not in own:
                return publisher
        return None

    def _daemon_settings(self) -> dict[str, object]:
        """/etc/docker/daemon.json as dockerd reads it (missing: Docker's defaults).

        Read at each `up`: the stand-in does not model that a running dockerd only
        rereads it on restart.
        """
        path = self.host_path(DOCKER_DAEMON_JSON)
        if not path.is_file():
            return {}
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
        return settings if isinstance(settings, dict) else {}

    def _ps(self, call: ComposeCall) -> ExecResult:
        fmt = "table"
        quiet = False
        selected: list[str] = []
        i = 0
        while i < len(call.args):
            arg = call.args[i]
            name, eq, value = arg.partition("=")
            if name == "--format":
                if not eq:
                    i += 1
                    if i >= len(call.args):
                        return _fail("flag needs an argument: --format")
                    value = call.args[i]
                fmt = value
            elif name in ("-q", "--quiet"):
                quiet = True
            elif name in ("-a", "--all"):
                pass
            elif name.startswith("-"):
                return _fail(f"unknown flag: {name}")
            else:
                selected.append(arg)
            i += 1
        if fmt not in ("json", "table"):
            return _fail(f"devstack: ps --format {fmt!r} is not supported (json, table)")
        known = compose_services(call.host_file.read_text(encoding="utf-8", errors="replace"))
        for name in selected:
            if name not in known:
                return _fail(f"no such service: {name}")
        deployment = self.deployments.get(call.project)
        rows = []
        if deployment is not None:
            for service in sorted(selected or deployment.services):
                if service in deployment.services:
                    rows.append(self._ps_row(deployment, service))
        if quiet:
            return ExecResult(0, "".join(f"{r['ID']}\n" for r in rows))
        if fmt == "json":
            if _version_tuple(self.compose_version) < (2, 21, 0):
                # Up to v2.20 Compose printed one JSON array (v2.21.0 switched to NDJSON).
                return ExecResult(0, json.dumps(rows) + "\n")
            return ExecResult(0, "".join(json.dumps(r) + "\n" for r in rows))
        header = ("NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS")
        table = [header] + [
            (
                str(r["Name"]),
                str(r["Image"]),
                str(r["Command"]),
                str(r["Service"]),
                str(r["RunningFor"]),
                str(r["Status"]),
                "",
            )
            for r in rows
        ]
        widths = [max(len(row[c]) for row in table) for c in range(len(header))]
        lines = [
            "   ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip()
            for row in table
        ]
        return ExecResult(0, "".join(f"{line}\n" for line in lines))

    def _ps_row(self, deployment: Deployment, service: str) -> dict[str, object]:
        """One container as Compose v2 prints it with ``--format json`` (NDJSON)."""
        up_for = self.clock() - deployment.started
        health = self._health(deployment, service)
        status = f"Up {_ago(up_for)}"
        if health:
            status += " (health: starting)" if health == "starting" else " (healthy)"
        name = self._container(deployment.project, service)
        created = datetime.fromtimestamp(deployment.created_wall, UTC)
        return {
            "Command": '"/bin/sh -c /start.py"' if service == "admin" else '"/start.py"',
            "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
            "ExitCode": 0,
            "Health": health,
            "ID": deployment.container_ids[service],
            "Image": IMAGES.get(service, f"{service}:latest"),
            "Labels": f"com.docker.compose.project={deployment.project},"
            f"com.docker.compose.service={service}",
            "LocalVolumes": "0",
            "Mounts": "",
            "Name": name,
            "Names": name,
            "Networks": f"{deployment.project}_default",
            "Ports": "",
            "Project": deployment.project,
            "Publishers": [
                {
                    "URL": p.host_ip or "0.0.0.0",  # noqa: S104 (what ps prints)
                    "TargetPort": p.target,
                    "PublishedPort": p.published,
                    "Protocol": "tcp",
                }
                for p in deployment.publishers.get(service, [])
            ],
            "RunningFor": f"{_ago(up_for)} ago",
            "Service": service,
            "Size": "0B",
            "State": "running",
            "Status": status,
        }

    async def _exec(self, call: ComposeCall, read_stdin: StdinReader) -> ExecResult:
        flags = {"-T", "--no-TTY", "-i", "--interactive", "-d", "--detach", "--privileged"}
        valued = {"-u", "--user", "-w", "--workdir", "-e", "--env", "--index"}
        i = 0
        while i < len(call.args) and call.args[i].startswith("-"):
            name = call.args[i].partition("=")[0]
            if name in valued:
                i += 1 if "=" in call.args[i] else 2
                continue
            if name not in flags:
                return _fail(f"unknown flag: {name}")
            i += 1
        rest = call.args[i:]
        if len(rest) < 2:
            return _fail(
                '"docker compose exec" requires at least 2 arguments.\n'
                "See 'docker compose exec --help'."
            )
        service, container_argv = rest[0], rest[1:]
        known = compose_services(call.host_file.read_text(encoding="utf-8", errors="replace"))
        if service not in known:
            return _fail(f"no such service: {service}")
        deployment = self.deployments.get(call.project)
        if deployment is None or service not in deployment.services:
            return _fail(f'service "{service}" is not running')
        program = container_argv[0]
        if service == "admin" and program == "curl":
            if self._health(deployment, service) != "healthy":
                # gunicorn starts last in core/admin/start.py: nothing on 8080 yet.
                await read_stdin()
                return _fail(
                    f"curl: (7) Failed to connect to 127.0.0.1 port {ADMIN_PORT} after 0 ms: "
                    "Couldn't connect to server",
                    7,
                )
            env_file = self.host_path(call.compose_path.rsplit("/", 1)[0] + "/mailu.env")
            env = read_env_file(env_file) if env_file.is_file() else {}
            return await curl_in_admin(container_argv[1:], read_stdin, self.admin_http, env)
        if service != "admin" or program != "flask":
            return _fail(
                "OCI runtime exec failed: exec failed: unable to start container process: "
                f'exec: "{program}": executable file not found in $PATH: unknown',
                126,
            )
        if container_argv[1:2] != ["mailu"]:
            sub = container_argv[1] if len(container_argv) > 1 else ""
            return _fail(
                f"Usage: flask [OPTIONS] COMMAND [ARGS]...\n"
                f"Try 'flask --help' for help.\n\nError: No such command '{sub}'.",
                2,
            )
        if self._health(deployment, service) != "healthy":
            # The admin container migrates its database before turning healthy; a CLI
            # call in that window meets an empty schema, as on a real first boot.
            if "config-import" in container_argv:
                await read_stdin()
            return _fail(
                "Error: [OperationalError] (sqlite3.OperationalError) no such table: domain"
            )
        # The admin container's environment is mailu.env (HOSTNAMES, DOMAIN, DMARC_*).
        env_file = self.host_path(call.compose_path.rsplit("/", 1)[0] + "/mailu.env")
        env = read_env_file(env_file) if env_file.is_file() else {}
        return await self.mailu.run(container_argv[2:], read_stdin, env)
