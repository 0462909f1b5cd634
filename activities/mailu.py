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
import json
import secrets
import shlex
from dataclasses import dataclass
from string import Template

import asyncssh
from temporalio import activity

from activities.ssh import (
    RemoteCommandError,
    ServerAccess,
    command_failure,
    run_remote,
    sftp_write,
)
from workflows.contracts import MailuTarget

MAILU_VERSION = "2024.06"
MAILU_DIR = "/mailu"
COMPOSE = f"docker compose -p mailu -f {MAILU_DIR}/docker-compose.yml"
CONFIG_IMPORT = f"{COMPOSE} exec -T admin flask mailu config-import -u -"


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

    async def write_config(self, domain: str) -> None:
        """Upload mailu.env (0600: it holds SECRET_KEY) and docker-compose.yml."""
        async with self._conn.start_sftp_client() as sftp:
            if not await sftp.exists(MAILU_DIR):
                await sftp.mkdir(MAILU_DIR, asyncssh.SFTPAttrs(permissions=0o700))
            env_path = f"{MAILU_DIR}/mailu.env"
            secret_key = None
            if await sftp.exists(env_path):
                async with sftp.open(env_path, "r") as existing:
                    secret_key = _env_value(str(await existing.read()), "SECRET_KEY")
            env = render_mailu_env(domain, secret_key or secrets.token_hex(16))
            await sftp_write(sftp, env_path, env, 0o600)
            await sftp_write(sftp, f"{MAILU_DIR}/docker-compose.yml", render_compose(), 0o644)

    async def compose_up(self) -> None:
        await self.run(f"{COMPOSE} up -d")

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

    async def run(self, command: str, stdin: str | None = None) -> str:
        return await run_remote(self._conn, command, stdin)


class MailuActivities:
    def __init__(self, access: ServerAccess, settings: MailuSettings | None = None) -> None:
        self._access = access
        self._settings = settings or MailuSettings()

    @activity.defn(name="configure_mailu")
    async def configure_mailu(self, target: MailuTarget) -> None:
        """Install MailU's configuration, start it, wait for it, create the domain."""
        async with await self._access.open(target) as conn:
            mailu = MailuHost(conn, self._settings)
            try:
                await mailu.write_config(target.domain)
                await mailu.compose_up()
                await mailu.wait_admin_healthy()
                await mailu.ensure_domain(target.domain)
            except RemoteCommandError as err:
                raise command_failure(err) from None


def _env_value(env: str, key: str) -> str | None:
    for line in env.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key and value.strip():
            return value.strip()
    return None


def _admin_health(ps_output: str) -> str:
    """Read `docker compose ps --format json`: one JSON object per line (Compose v2)."""
    for line in ps_output.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            container = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(container, dict) and container.get("Service") == "admin":
            if container.get("State") != "running":
                return str(container.get("State") or "absent")
            return str(container.get("Health") or "running")
    return "absent"


# MailU's setup utility output for a compose install (setup/flavors/compose/*),
# reduced to the settings this product chooses; see the MailU 2024.06 docs.
MAILU_ENV = Template(
    """\
# Generated by mail-provisioning for MailU $version. SECRET_KEY is this server's own.
SECRET_KEY=$secret_key
SUBNET=192.168.203.0/24
DOMAIN=$domain
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
RECIPIENT_DELIMITER=+
DMARC_RUA=admin
DMARC_RUF=admin
WELCOME=false
WEB_ADMIN=/admin
WEB_WEBMAIL=/webmail
SITENAME=$domain mail
WEBSITE=https://$domain
COMPOSE_PROJECT_NAME=mailu
CREDENTIAL_ROUNDS=12
REAL_IP_HEADER=
REAL_IP_FROM=
REJECT_UNLISTED_RECIPIENT=
LOG_LEVEL=WARNING
TZ=Etc/UTC
"""
)

COMPOSE_FILE = Template(
    """\
# Generated by mail-provisioning for MailU $version (compose flavor).
services:
  redis:
    image: redis:alpine
    restart: always
    volumes: ["/mailu/redis:/data"]
  front:
    image: ghcr.io/mailu/nginx:$version
    restart: always
    env_file: mailu.env
    ports: ["80:80", "443:443", "25:25", "465:465", "587:587", "993:993"]
    volumes: ["/mailu/certs:/certs", "/mailu/overrides/nginx:/overrides:ro"]
    depends_on: [resolver]
  resolver:
    image: ghcr.io/mailu/unbound:$version
    env_file: mailu.env
    restart: always
    networks: {default: {ipv4_address: 192.168.203.254}}
  admin:
    image: ghcr.io/mailu/admin:$version
    restart: always
    env_file: mailu.env
    volumes: ["/mailu/data:/data", "/mailu/dkim:/dkim"]
    depends_on: [redis, resolver]
  imap:
    image: ghcr.io/mailu/dovecot:$version
    restart: always
    env_file: mailu.env
    volumes: ["/mailu/mail:/mail", "/mailu/overrides/dovecot:/overrides:ro"]
    depends_on: [front, resolver]
  smtp:
    image: ghcr.io/mailu/postfix:$version
    restart: always
    env_file: mailu.env
    volumes: ["/mailu/mailqueue:/queue", "/mailu/overrides/postfix:/overrides:ro"]
    depends_on: [front, resolver]
  antispam:
    image: ghcr.io/mailu/rspamd:$version
    hostname: antispam
    restart: always
    env_file: mailu.env
    volumes: ["/mailu/filter:/var/lib/rspamd", "/mailu/overrides/rspamd:/overrides:ro"]
    depends_on: [front, redis, resolver]
  webmail:
    image: ghcr.io/mailu/webmail:$version
    restart: always
    env_file: mailu.env
    volumes: ["/mailu/webmail:/data", "/mailu/overrides/roundcube:/overrides:ro"]
    depends_on: [front]
networks:
  default:
    driver: bridge
    ipam: {driver: default, config: [{subnet: 192.168.203.0/24}]}
"""
)


def render_mailu_env(domain: str, secret_key: str) -> str:
    return MAILU_ENV.substitute(version=MAILU_VERSION, domain=domain, secret_key=secret_key)


def render_compose() -> str:
    return COMPOSE_FILE.substitute(version=MAILU_VERSION)
