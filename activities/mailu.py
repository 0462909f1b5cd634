"""MailU 2024.06 on the customer's VPS, driven over the pinned SSH channel.

The steps follow MailU's documented compose setup (https://mailu.io/2024.06/compose/setup.html):
`mailu.env` and `docker-compose.yml` in /mailu, `docker compose -p mailu up -d`,
then the admin container's CLI (`flask mailu config-import`, core/admin/mailu/manage.py).
Passwords go to MailU on the command's stdin as config-import input, never in argv,
because argv is visible to every process on the host (and to shell history).

MailU's own SECRET_KEY is generated on first configuration and kept only in
/mailu/mailu.env (0600) on the server; a retry reuses it, and rotating it means
editing that file and re-running `up -d`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import shlex
from dataclasses import dataclass
from string import Template
from typing import Any

import asyncssh
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.cloud_init import wait_for_cloud_init
from activities.dns_records import (
    DnsExportError,
    address_records,
    domain_records,
    has_dkim_key,
)
from activities.ssh import (
    RemoteCommandError,
    ServerAccess,
    command_failure,
    run_remote,
    run_remote_heartbeating,
    sftp_write,
)
from workflows.contracts import DnsRecord, DnsRecordsRequest, MailuTarget

# An exact MailU release, never the moving "2024.06" tag: MailU's CI pushes every image
# as X.Y (moving) and X.Y.Z (pinned, "not updated", docs/releases.rst "Versioning",
# .github/workflows/build_test_deploy.yml `--tag ...:$pinned_mailu_version`), and
# 2024.06.57 (tag 2024.06.57, 2026-07-26) is the newest 2024.06 patch release in
# github.com/Mailu/Mailu. Moving to a newer one is a reviewed change of this line.
MAILU_VERSION = "2024.06.57"
COMPOSE_UP_TIMEOUT = 15 * 60.0
MAILU_DIR = "/mailu"
COMPOSE = f"docker compose -p mailu -f {MAILU_DIR}/docker-compose.yml"
CONFIG_IMPORT = f"{COMPOSE} exec -T admin flask mailu config-import -u -"
# The DKIM key import runs quiet: its output is not needed (and MailU hides the key).
DKIM_IMPORT = f"{COMPOSE} exec -T admin flask mailu config-import -q -u -"
# The domains' DNS records as MailU computes them; no --secrets, so the private DKIM
# key is exported as "<hidden>" (schemas.py DomainSchema hide_by_context).
CONFIG_EXPORT_DNS = f"{COMPOSE} exec -T admin flask mailu config-export --dns --json domain"


@dataclass(frozen=True)
class PublishAddresses:
    """The server's own public addresses: the only ones front's ports are published on.

    Publishing on every address (`"25:25"`) lets Docker's userland proxy take IPv6
    clients and hand them to the IPv4-only container from the bridge gateway, an
    address inside SUBNET, which postfix trusts (core/postfix/conf/main.cf
    `mynetworks`, `smtpd_authorized_xclient_hosts`): an open relay. MailU's setup
    therefore publishes on the addresses it is given (setup/flavors/compose/
    docker-compose.yml `"{{ bind4 }}:{{ port }}:{{ port }}"`, `"[{{ bind6 }}]:..."`;
    setup/templates/steps/compose/03_expose.html "You must use specific addresses ...
    failing to do so will turn your Mailu installation into an open-relay"), and for
    IPv6 gives the network an IPv6 subnet (SUBNET6, `enable_ipv6`) with the daemon's
    userland proxy off (docs/faq.rst "How to make IPv6 work?", tag 2024.06.57), so
    Docker NATs IPv6 with ip6tables and the client's own address reaches front.
    """

    ipv4: str | None
    ipv6: str | None

    @classmethod
    def of(cls, ipv4: str | None, ipv6: str | None) -> PublishAddresses:
        if ipv4 is None and ipv6 is None:
            raise ValueError("front needs at least one address of the server to publish on")
        v4 = str(ipaddress.IPv4Address(ipv4)) if ipv4 is not None else None
        v6 = str(ipaddress.IPv6Address(ipv6)) if ipv6 is not None else None
        return cls(v4, v6)


@dataclass(frozen=True)
class MailuSettings:
    admin_health_timeout: float = 600.0
    poll_interval: float = 2.0


class MailuHost:
    """One MailU installation, reached over an already-trusted SSH connection."""

    def __init__(
        self, conn: asyncssh.SSHClientConnection, settings: MailuSettings | None = None
    ) -> None:
        self._conn = conn
        self._settings = settings or MailuSettings()

    async def write_config(self, domain: str, bind: PublishAddresses) -> None:
        """Upload mailu.env (0600: it holds SECRET_KEY) and docker-compose.yml.

        `bind` are the server's own public addresses, the only ones front publishes on.
        """
        async with self._conn.start_sftp_client() as sftp:
            if not await sftp.exists(MAILU_DIR):
                await sftp.mkdir(MAILU_DIR, asyncssh.SFTPAttrs(permissions=0o700))
            env_path = f"{MAILU_DIR}/mailu.env"
            secret_key = None
            if await sftp.exists(env_path):
                async with sftp.open(env_path, "r") as existing:
                    secret_key = _env_value(str(await existing.read()), "SECRET_KEY")
            env = render_mailu_env(domain, secret_key or secrets.token_hex(16), bind)
            await sftp_write(sftp, env_path, env, 0o600)
            compose = render_compose(bind)
            await sftp_write(sftp, f"{MAILU_DIR}/docker-compose.yml", compose, 0o644)

    async def check_compose(self) -> None:
        """`docker compose version` must answer before anything else runs.

        127 (no docker) is final via command_failure; Debian's `docker.io` without the
        Compose v2 plugin answers 125/unknown command, also a broken install.
        """
        try:
            await self.run("docker compose version")
        except RemoteCommandError as err:
            if err.exit_status in (125, 1):
                raise ApplicationError(
                    f"Docker Compose v2 is not installed on the server: {err}",
                    type="DockerComposeMissing",
                    non_retryable=True,
                ) from None
            raise

    async def compose_up(self) -> None:
        """`up -d` pulls every image on first run: minutes on a real server."""
        await run_remote_heartbeating(
            self._conn, f"{COMPOSE} up -d", timeout=COMPOSE_UP_TIMEOUT, what="compose up"
        )

    async def wait_admin_healthy(self) -> None:
        """Poll `docker compose ps` until the admin container reports healthy.

        Image pulls and MailU's first start take minutes on a real server: the
        activity heartbeats on every poll so Temporal sees it alive, and times out
        to a retry if the container never gets healthy.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.admin_health_timeout
        health = "absent"
        while loop.time() < deadline:
            output = await self.run(f"{COMPOSE} ps --format json admin")
            health = _admin_health(output)
            activity.heartbeat(f"mailu admin container: {health}")
            if health == "healthy":
                return
            await asyncio.sleep(self._settings.poll_interval)
        raise RemoteCommandError(f"{COMPOSE} ps", 0, f"admin container still {health!r}")

    async def ensure_domain(self, domain: str) -> None:
        """`flask mailu domain` creates the domain only if it is missing (manage.py)."""
        await self.run(f"{COMPOSE} exec -T admin flask mailu domain {shlex.quote(domain)}")

    async def set_admin(self, email: str, password: str) -> None:
        """Create or update the global admin; the password travels on stdin only."""
        document = {
            "user": [
                {
                    "email": email,
                    "password": password,
                    "hash_password": True,
                    "global_admin": True,
                }
            ]
        }
        await self.run(CONFIG_IMPORT, stdin=json.dumps(document))

    async def generate_dkim_key(self, domain: str) -> None:
        """MailU generates the domain's DKIM key itself (DkimKeyField: `-generate-`).

        The key stays on the server (/mailu/dkim); only its public half is exported.
        """
        document = {"domain": [{"name": domain, "dkim_key": "-generate-"}]}
        await self.run(DKIM_IMPORT, stdin=json.dumps(document))

    async def export_dns(self) -> str:
        return await self.run(CONFIG_EXPORT_DNS)

    async def run(self, command: str, stdin: str | None = None) -> str:
        return await run_remote(self._conn, command, stdin)


class MailuActivities:
    def __init__(self, access: ServerAccess, settings: MailuSettings | None = None) -> None:
        self._access = access
        self._settings = settings or MailuSettings()

    async def configure_mailu(self, target: MailuTarget) -> None:
        """Wait for cloud-init, install MailU's configuration, start it, create the domain."""
        # Only runs of the old sequence call this; their target names one address, so
        # front publishes on that one (never on every address: see PublishAddresses).
        bind = PublishAddresses.of(
            None if ":" in target.address else target.address,
            target.address if ":" in target.address else None,
        )
        async with await self._access.open(target) as conn:
            await self._configure(conn, target.domain, bind)

    async def mail_dns_records(self, request: DnsRecordsRequest) -> list[DnsRecord]:
        """The records the customer must publish: A/AAAA, MX, SPF, DKIM, DMARC."""
        async with await self._access.open(request.target) as conn:
            records = await self._dns_records(conn, request)
        return records

    @activity.defn(name="set_up_mailu")
    async def set_up_mailu(self, request: DnsRecordsRequest) -> list[DnsRecord]:
        """configure_mailu, then mail_dns_records, over one SSH connection.

        One activity instead of two is one billable action and one SSH handshake fewer
        per purchase (docs/PERFORMANCE.md). Both parts are idempotent, so a retry redoes
        the configuration harmlessly and keeps the DKIM key the first export showed.
        """
        bind = PublishAddresses.of(request.ipv4, request.ipv6)
        async with await self._access.open(request.target) as conn:
            await self._configure(conn, request.target.domain, bind)
            records = await self._dns_records(conn, request)
        return records

    async def _configure(
        self, conn: asyncssh.SSHClientConnection, domain: str, bind: PublishAddresses
    ) -> None:
        mailu = MailuHost(conn, self._settings)
        try:
            # SSH answers before cloud-init's final stage has installed Docker.
            await wait_for_cloud_init(conn)
            await mailu.check_compose()
            await mailu.write_config(domain, bind)
            await mailu.compose_up()
            await mailu.wait_admin_healthy()
            await mailu.ensure_domain(domain)
        except RemoteCommandError as err:
            raise command_failure(err) from None

    async def _dns_records(
        self, conn: asyncssh.SSHClientConnection, request: DnsRecordsRequest
    ) -> list[DnsRecord]:
        """Generates the domain's DKIM key once (a retry finds it in the export and
        keeps it, so records already shown to the customer stay valid)."""
        domain = request.target.domain
        mailu = MailuHost(conn, self._settings)
        try:
            export = await mailu.export_dns()
            if not has_dkim_key(export, domain):
                await mailu.generate_dkim_key(domain)
                export = await mailu.export_dns()
            records = domain_records(export, domain)
        except RemoteCommandError as err:
            raise command_failure(err) from None
        except DnsExportError as err:
            raise ApplicationError(str(err), type="MailuDnsExportFailed") from None
        return address_records(domain, request.ipv4, request.ipv6) + records


def _env_value(env: str, key: str) -> str | None:
    for line in env.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key and value.strip():
            return value.strip()
    return None


def ps_containers(ps_output: str) -> list[dict[str, Any]]:
    """Read `docker compose ps --format json` in both shapes Compose v2 has printed.

    Up to v2.20 it is one JSON array of containers; from v2.21 one JSON object per
    line (docker/compose v2.21.0 release notes, "ps --format json" as NDJSON).
    """
    text = ps_output.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return []
        return [c for c in parsed if isinstance(c, dict)] if isinstance(parsed, list) else []
    containers = []
    for line in text.splitlines():
        try:
            container = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(container, dict):
            containers.append(container)
    return containers


def _admin_health(ps_output: str) -> str:
    for container in ps_containers(ps_output):
        if container.get("Service") == "admin":
            if container.get("State") != "running":
                return str(container.get("State") or "absent")
            return str(container.get("Health") or "running")
    return "absent"


# MailU's setup utility output for a compose install, as setup/server.py renders
# setup/flavors/compose/mailu.env and docker-compose.yml (MailU branch 2024.06) for
# this product's choices. Every difference from those templates, and why, is listed
# in docs/providers.md ("MailU files"); comments below name the template setting.
RESOLVER_IP = "192.168.203.254"
WELCOME_BODY = (  # the template's default text (WELCOME is off, but setup writes it)
    "Welcome to your new email account, if you can read this, then it is configured properly!"
)  # server.py: dns = subnet[-2]
MAILU_ENV = Template(
    """\
# Generated by mail-provisioning for MailU $version (compose flavor, as MailU's setup
# renders setup/flavors/compose/mailu.env). SECRET_KEY is this server's own.
SECRET_KEY=$secret_key
SUBNET=192.168.203.0/24
${subnet6}DOMAIN=$domain
HOSTNAMES=mail.$domain
POSTMASTER=admin
TLS_FLAVOR=letsencrypt
AUTH_RATELIMIT_IP=5/hour
AUTH_RATELIMIT_USER=50/day
DISABLE_STATISTICS=True
ADMIN=true
WEBMAIL=roundcube
API=false
WEBDAV=none
ANTIVIRUS=none
SCAN_MACROS=true
MESSAGE_SIZE_LIMIT=50000000
MESSAGE_RATELIMIT=200/day
RELAYNETS=
RELAYHOST=
FETCHMAIL_ENABLED=False
FETCHMAIL_DELAY=600
RECIPIENT_DELIMITER=+
DMARC_RUA=admin
DMARC_RUF=admin
WELCOME=false
WELCOME_SUBJECT=Welcome to your new email account
WELCOME_BODY=$welcome_body
COMPRESSION=
COMPRESSION_LEVEL=
FULL_TEXT_SEARCH=en
WEBROOT_REDIRECT=/webmail
WEB_ADMIN=/admin
WEB_WEBMAIL=/webmail
WEB_API=/api
SITENAME=$domain mail
WEBSITE=https://$domain
COMPOSE_PROJECT_NAME=mailu
CREDENTIAL_ROUNDS=12
REAL_IP_HEADER=
REAL_IP_FROM=
REJECT_UNLISTED_RECIPIENT=
LOG_LEVEL=INFO
TZ=Etc/UTC
DEFAULT_SPAM_THRESHOLD=80
API_TOKEN=
FULL_TEXT_SEARCH_ATTACHMENTS=
"""
)

# Image references keep MailU's own interpolation (DOCKER_ORG, DOCKER_PREFIX,
# MAILU_VERSION with defaults), so an operator can switch registry or version in
# mailu.env's neighbour `.env` exactly as MailU documents it.
_IMAGE = "$${DOCKER_ORG:-ghcr.io/mailu}/$${DOCKER_PREFIX:-}"
COMPOSE_FILE = Template(
    f"""\
# Generated by mail-provisioning for MailU $version, as MailU's setup renders
# setup/flavors/compose/docker-compose.yml for the compose flavor with: root /mailu,
# resolver on, roundcube, oletools (macro scanning) on, no antivirus, webdav,
# fetchmail or tika; front publishes MailU's default PORTS on the server's own
# addresses ($bind_addresses) and, with IPv6, gives its network an IPv6 subnet
# (setup: ipv6_enabled, SUBNET6), so Docker NATs IPv6 clients with their own address.
services:

  redis:
    image: redis:alpine
    restart: always
    volumes:
      - "/mailu/redis:/data"
    depends_on:
      - resolver
    dns:
      - $resolver

  front:
    image: {_IMAGE}nginx:$${{MAILU_VERSION:-$version}}
    restart: always
    env_file: mailu.env
    logging:
      driver: journald
      options:
        tag: mailu-front
    ports:
$ports
    networks:
      - default
      - webmail
    volumes:
      - "/mailu/certs:/certs"
      - "/mailu/overrides/nginx:/overrides:ro"
    depends_on:
      - resolver
    dns:
      - $resolver

  resolver:
    image: {_IMAGE}unbound:$${{MAILU_VERSION:-$version}}
    env_file: mailu.env
    logging:
      driver: journald
      options:
        tag: mailu-resolver
    restart: always
    networks:
      default:
        ipv4_address: $resolver

  admin:
    image: {_IMAGE}admin:$${{MAILU_VERSION:-$version}}
    restart: always
    env_file: mailu.env
    logging:
      driver: journald
      options:
        tag: mailu-admin
    volumes:
      - "/mailu/data:/data"
      - "/mailu/dkim:/dkim"
    depends_on:
      - redis
      - resolver
    dns:
      - $resolver

  imap:
    image: {_IMAGE}dovecot:$${{MAILU_VERSION:-$version}}
    restart: always
    env_file: mailu.env
    logging:
      driver: journald
      options:
        tag: mailu-imap
    volumes:
      - "/mailu/mail:/mail"
      - "/mailu/overrides/dovecot:/overrides:ro"
    networks:
      - default
    depends_on:
      - front
      - resolver
    dns:
      - $resolver

  smtp:
    image: {_IMAGE}postfix:$${{MAILU_VERSION:-$version}}
    restart: always
    env_file: mailu.env
    logging:
      driver: journald
      options:
        tag: mailu-smtp
    volumes:
      - "/mailu/mailqueue:/queue"
      - "/mailu/overrides/postfix:/overrides:ro"
    depends_on:
      - front
      - resolver
    dns:
      - $resolver

  oletools:
    image: {_IMAGE}oletools:$${{MAILU_VERSION:-$version}}
    hostname: oletools
    logging:
      driver: journald
      options:
        tag: mailu-oletools
    restart: always
    networks:
      - oletools
    depends_on:
      - resolver
    dns:
      - $resolver

  antispam:
    image: {_IMAGE}rspamd:$${{MAILU_VERSION:-$version}}
    hostname: antispam
    restart: always
    env_file: mailu.env
    logging:
      driver: journald
      options:
        tag: mailu-antispam
    networks:
      - default
      - oletools
    volumes:
      - "/mailu/filter:/var/lib/rspamd"
      - "/mailu/overrides/rspamd:/overrides:ro"
    depends_on:
      - front
      - redis
      - oletools
      - resolver
    dns:
      - $resolver

  webmail:
    image: {_IMAGE}webmail:$${{MAILU_VERSION:-$version}}
    restart: always
    env_file: mailu.env
    logging:
      driver: journald
      options:
        tag: mailu-webmail
    volumes:
      - "/mailu/webmail:/data"
      - "/mailu/overrides/roundcube:/overrides:ro"
    networks:
      - webmail
    depends_on:
      - front

networks:
  default:
    driver: bridge$enable_ipv6
    ipam:
      driver: default
      config:
        - subnet: 192.168.203.0/24$ipam_subnet6
  webmail:
    driver: bridge
  oletools:
    driver: bridge
    internal: true
"""
)


# MailU's default PORTS (core/base/libs/socrate/socrate/system.py clean_env, tag
# 2024.06.57: 25,80,443,465,993,995,4190), in the setup template's order. Setup's
# template publishes 587, 110 and 143 too, but front does not listen there unless PORTS
# says so (core/nginx/dovecot/proxy.conf `port = 0`; release notes "STARTTLS ports
# disabled by default"), so publishing them would only advertise closed ports.
PUBLISHED_PORTS = (80, 443, 25, 465, 993, 995, 4190)
# The IPv6 subnet of MailU's network when the server has IPv6: setup draws a random ULA
# /64 (setup/server.py random_ipv6_subnet, RFC 4193); each server runs one MailU alone,
# so one fixed ULA serves every server and a retry renders the same file.
SUBNET6 = "fd4d:6169:6c75:beef::/64"


def render_mailu_env(domain: str, secret_key: str, bind: PublishAddresses) -> str:
    return MAILU_ENV.substitute(
        version=MAILU_VERSION,
        domain=domain,
        secret_key=secret_key,
        welcome_body=WELCOME_BODY,
        subnet6=f"SUBNET6={SUBNET6}\n" if bind.ipv6 else "",
    )


def render_compose(bind: PublishAddresses) -> str:
    bound = [a for a in (bind.ipv4, f"[{bind.ipv6}]" if bind.ipv6 else None) if a]
    ports = "\n".join(f'      - "{a}:{p}:{p}"' for p in PUBLISHED_PORTS for a in bound)
    return COMPOSE_FILE.substitute(
        version=MAILU_VERSION,
        resolver=RESOLVER_IP,
        bind_addresses=", ".join(bound),
        ports=ports,
        enable_ipv6="\n    enable_ipv6: true" if bind.ipv6 else "",
        ipam_subnet6=f"\n        - subnet: {SUBNET6}" if bind.ipv6 else "",
    )
