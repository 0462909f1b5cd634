"""MailU 2024.06's front container on the local VPS: nginx, dovecot's proxy, certbot.

What front does with TLS_FLAVOR=letsencrypt (Mailu/Mailu, tag 2024.06.57):

* core/nginx/start.py: starts letsencrypt.py, runs config.py once, then
  `os.system("dovecot -c /etc/dovecot/proxy.conf")` once, then nginx. Nothing restarts
  dovecot later.
* core/nginx/config.py: writes nginx-chain.pem from each fullchain.pem (the chain as
  verified against ISRG Root X1/X2, else the whole fullchain: a pebble chain never
  verifies, so it is the whole file); sets TLS_ERROR when any of the four files
  (live/mailu/nginx-chain.pem, privkey.pem and the same of live/mailu-ecdsa) is
  missing; ends with `killall -q -HUP nginx dovecot`.
* core/nginx/conf/nginx.conf: `{% if TLS_443 and not TLS_ERROR %} listen 443 ssl`: no
  HTTPS listener at all until the certificates exist; a reload (HUP) brings it up.
* core/nginx/dovecot/proxy.conf: `ssl_cert = <{{ TLS[0] }}` whatever TLS_ERROR says,
  so dovecot started without the files dies at once ("doveconf: Fatal: ... ssl_cert:
  Can't open file /certs/letsencrypt/live/mailu/nginx-chain.pem", Mailu/Mailu#3827,
  the same failure as #381); dovecot is what listens on 465 and 993 in front
  (Mailu/Mailu#3405: "there is nginx and dovecot process in front container and
  dovecot is listening on 993"). The HUP of config.py reaches no dovecot, so 465/993
  stay closed until front is restarted once the first certificate exists (#3827);
  Mailu/Mailu#430 (kaiyou): "we disable TLS completely ... and deny SMTP/IMAP access
  when the cert and key are not in place".
* core/nginx/letsencrypt.py: waits 5 s, then polls
  `http://HOSTNAMES[0]/.well-known/acme-challenge/testing` (nginx answers 204) until it
  reaches this front, i.e. until the customer's DNS points here; then runs certbot
  twice (`--cert-name mailu --key-type rsa`, `--cert-name mailu-ecdsa --key-type
  ecdsa`, `certonly --standalone --preferred-challenges http`, `--keep-until-expiring`,
  `--config-dir /certs/letsencrypt`, `--post-hook /config.py`) and sleeps a day.

The world outside the VPS (which ACME CA exists, which DNS it resolves through, which
host ports play 443 and 993) is a file a test writes into the server's state directory
(WORLD_FILE): with it, front runs Debian's real certbot against that CA (pebble in
the tests) and every rule above applies. Without it (the demo, the purchase tests) the
stand-in keeps its older shortcut: once the DNS_PUBLISHED marker exists it writes a
self-signed certificate and serves 465 at once, as if front had been restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.resolver

from devstack.tasks import cancel_and_wait

log = logging.getLogger("devstack.front")

WORLD_FILE = "acme-world.json"
# The customer's DNS points at this server, in the world without a CA (mail_login.py).
DNS_PUBLISHED = "dns-published"
MAILU_ENV = "/mailu/mailu.env"
LETSENCRYPT_DIR = "/mailu/certs/letsencrypt"  # front's /certs/letsencrypt
CERT_NAMES = (("mailu", "rsa"), ("mailu-ecdsa", "ecdsa"))  # letsencrypt.py command, command2
# letsencrypt.py's waits, compressed: 5 s for nginx, 5/15 s between reachability polls.
NGINX_START_WAIT = 0.2
REACH_POLL_SECONDS = 0.2
CERTBOT_TIMEOUT = 120.0
CERTBOT = "certbot"

ServeSubmissions = Callable[[ssl.SSLContext], Awaitable[asyncio.AbstractServer]]
EnvReader = Callable[[], dict[str, str]]


@dataclass(frozen=True)
class AcmeWorld:
    """The world outside the VPS, as a test sets it up (WORLD_FILE, JSON)."""

    directory_url: str  # the ACME CA (certbot --server; Let's Encrypt in production)
    ca_bundle: str  # what certbot trusts for the CA's own HTTPS (REQUESTS_CA_BUNDLE)
    http_port: int  # where the CA fetches HTTP-01 answers (port 80 on a real server)
    resolver: str  # "address:port" of the DNS the world resolves names through
    https_port: int  # the host port playing 443 on each of the server's addresses
    imaps_port: int  # ... and 993
    # letsencrypt.py sleeps 86400 s after each certbot run; compressed here.
    day_seconds: float = 5.0

    @classmethod
    def load(cls, state_dir: Path) -> AcmeWorld | None:
        path = state_dir / WORLD_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            str(raw["directory_url"]),
            str(raw["ca_bundle"]),
            int(raw["http_port"]),
            str(raw["resolver"]),
            int(raw["https_port"]),
            int(raw["imaps_port"]),
            float(raw.get("day_seconds", 5.0)),
        )

    def write(self, state_dir: Path) -> None:
        (state_dir / WORLD_FILE).write_text(json.dumps(self.__dict__), encoding="utf-8")


class Front:
    """One front container's life: start (start.py), reload (config.py), restart."""

    def __init__(
        self,
        *,
        letsencrypt_dir: Path,
        state_dir: Path,
        addresses: list[str],
        env: EnvReader,
        serve_submissions: ServeSubmissions,
        self_signed: Callable[[str], tuple[bytes, bytes]],
    ) -> None:
        self.letsencrypt_dir = letsencrypt_dir
        self.state_dir = state_dir
        self.addresses = addresses
        self._env = env
        self._serve_submissions = serve_submissions
        self._self_signed = self_signed
        self.running = False
        self.dovecot = False
        self.nginx_tls = False
        self._servers: dict[int, asyncio.AbstractServer] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._letsencrypt: asyncio.Task[None] | None = None
        self.restarts = 0

    # --- files -------------------------------------------------------------------------

    def live(self, cert_name: str) -> Path:
        return self.letsencrypt_dir / "live" / cert_name

    def _tls_files(self) -> list[Path]:
        """config.py args["TLS"] for letsencrypt: the four files dovecot and nginx load."""
        return [
            path
            for name, _ in CERT_NAMES
            for path in (self.live(name) / "nginx-chain.pem", self.live(name) / "privkey.pem")
        ]

    def _config(self) -> bool:
        """config.py: nginx-chain.pem from each fullchain.pem; True unless TLS_ERROR."""
        for name, _ in CERT_NAMES:
            fullchain = self.live(name) / "fullchain.pem"
            if fullchain.is_file():
                # format_for_nginx: a chain that does not verify against ISRG Root X1/X2
                # (any pebble chain) is written whole.
                (self.live(name) / "nginx-chain.pem").write_bytes(fullchain.read_bytes())
        return all(path.is_file() for path in self._tls_files())

    def _context(self) -> ssl.SSLContext:
        """TLS[0], TLS[1]: the RSA chain and key (the ECDSA pair is the alt cert)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        live = self.live("mailu")
        context.load_cert_chain(live / "nginx-chain.pem", live / "privkey.pem")
        return context

    # --- the container -------------------------------------------------------------------

    async def start(self) -> None:
        """start.py: letsencrypt.py, config.py, dovecot once, nginx."""
        self.running = True
        env = self._env()
        if env.get("TLS_FLAVOR") in ("letsencrypt", "mail-letsencrypt"):
            self._letsencrypt = asyncio.create_task(self._letsencrypt_loop())
        tls_ok = self._config()
        # os.system("dovecot -c /etc/dovecot/proxy.conf"): without the files doveconf is
        # fatal and dovecot never runs in this container (Mailu/Mailu#3827).
        if tls_ok:
            await self._start_dovecot()
        else:
            log.warning(
                "doveconf: Fatal: Error in configuration file /etc/dovecot/proxy.conf: "
                "ssl_cert: Can't open file /certs/letsencrypt/live/mailu/nginx-chain.pem"
            )
        await self._nginx(tls_ok)

    async def reload(self) -> None:
        """certbot's --post-hook /config.py: rewrite, then `killall -q -HUP nginx dovecot`."""
        if not self.running:
            return
        tls_ok = self._config()
        await self._nginx(tls_ok)
        if self.dovecot and tls_ok:
            self._reload_context("dovecot")

    async def restart(self) -> None:
        """`docker compose restart front`: the container's processes start over."""
        await self.stop()
        self.restarts += 1
        await self.start()

    async def stop(self) -> None:
        self.running = False
        if self._letsencrypt is not None:
            await cancel_and_wait([self._letsencrypt])
            self._letsencrypt = None
        for server in self._servers.values():
            server.close()
            await server.wait_closed()
        self._servers.clear()
        self._contexts.clear()
        self.dovecot = self.nginx_tls = False

    async def _start_dovecot(self) -> None:
        context = self._context()
        self._contexts["dovecot"] = context
        self._servers[465] = await self._serve_submissions(context)
        world = AcmeWorld.load(self.state_dir)
        if world is not None:
            self._servers[993] = await _greeting_server(
                context, self.addresses, world.imaps_port, b"* OK [CAPABILITY IMAP4rev1] ready\r\n"
            )
        self.dovecot = True
        # The cloud's /_devstack/servers/{id}/tls-cert serves what 465 presents.
        tls_dir = self.state_dir / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(
            tls_dir / "cert.pem", (self.live("mailu") / "nginx-chain.pem").read_bytes(), 0o644
        )

    async def _nginx(self, tls_ok: bool) -> None:
        """nginx.conf: `listen 443 ssl` only without TLS_ERROR; a reload re-reads the chain."""
        world = AcmeWorld.load(self.state_dir)
        if not tls_ok or world is None:
            return
        if self.nginx_tls:
            self._reload_context("nginx")
            return
        context = self._context()
        self._contexts["nginx"] = context
        self._servers[443] = await _greeting_server(
            context, self.addresses, world.https_port, b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        self.nginx_tls = True

    def _reload_context(self, which: str) -> None:
        live = self.live("mailu")
        self._contexts[which].load_cert_chain(live / "nginx-chain.pem", live / "privkey.pem")

    # --- letsencrypt.py --------------------------------------------------------------

    async def _letsencrypt_loop(self) -> None:
        await asyncio.sleep(NGINX_START_WAIT)
        while True:
            try:
                world, address = await self._wait_until_reachable()
            except Exception:  # letsencrypt.py logs a failed poll and polls again
                log.exception("letsencrypt: reachability poll failed")
                await asyncio.sleep(REACH_POLL_SECONDS)
                continue
            if world is None:
                self._self_signed_shortcut()
                await self.restart_soon()
                return
            for cert_name, key_type in CERT_NAMES:
                await self._certbot(world, address, cert_name, key_type)
                await self.reload()  # --post-hook /config.py
            await asyncio.sleep(world.day_seconds)

    async def restart_soon(self) -> None:
        """The world without a CA: front restarted once its certificate exists (see the
        module docstring), done from outside this task so the restart can cancel it."""
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.restart()))

    async def _wait_until_reachable(self) -> tuple[AcmeWorld | None, str]:
        """letsencrypt.py's first loop: until http://HOSTNAMES[0]/... reaches this nginx.

        With a world: HOSTNAMES[0] resolved through the world's DNS names one of this
        server's addresses. Without one: the DNS_PUBLISHED marker (the older shortcut).
        """
        while True:
            world = AcmeWorld.load(self.state_dir)
            if world is not None:
                address = await self._resolves_here(world)
                if address is not None:
                    return world, address
            elif (self.state_dir / DNS_PUBLISHED).is_file() and not self._has_certificate():
                return None, ""
            await asyncio.sleep(REACH_POLL_SECONDS)

    def _has_certificate(self) -> bool:
        return (self.live("mailu") / "fullchain.pem").is_file()

    async def _resolves_here(self, world: AcmeWorld) -> str | None:
        hostname = self._hostnames()[0]
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, _, port = world.resolver.rpartition(":")
        resolver.nameservers = [host.strip("[]")]
        resolver.nameserver_ports = {host.strip("[]"): int(port)}
        resolver.lifetime = 2.0
        found: list[str] = []
        # AAAA first: Let's Encrypt's validation prefers IPv6 when the name has an AAAA
        # record (letsencrypt.org/docs/ipv6-support), and pebble dials it (seen: "dial
        # tcp [fd14:...]:PORT: connection refused" when certbot listened on IPv4 only),
        # so certbot's standalone server listens where the CA will connect.
        for rdtype in ("AAAA", "A"):
            try:
                answer = await resolver.resolve(hostname, rdtype, raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.exception.Timeout):
                continue
            if answer.rrset is not None:
                found += [rdata.to_text() for rdata in answer]
        mine = {ipaddress.ip_address(address) for address in self.addresses}
        here = [address for address in found if ipaddress.ip_address(address) in mine]
        return here[0] if here else None

    def _hostnames(self) -> list[str]:
        raw = self._env().get("HOSTNAMES", "")
        return [host.strip() for host in raw.split(",") if host.strip()]

    async def _certbot(self, world: AcmeWorld, address: str, cert_name: str, key_type: str) -> int:
        """letsencrypt.py's certbot command, run for real against the world's CA.

        Differences, each forced by the VPS being a process on a shared host: the
        standalone HTTP-01 server binds this server's address and the port the CA
        fetches from (front binds 8008 behind nginx's port 80 proxy_pass), certbot's
        work and log directories live in the state directory, and `--server` names the
        world's CA instead of Let's Encrypt's default.
        """
        env = self._env()
        work = self.state_dir / "certbot"
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        command = [
            CERTBOT,
            "-n", "--agree-tos",
            "-d", ",".join(dict.fromkeys(self._hostnames())), "--expand",
            "--allow-subset-of-names",
            "-m", f"{env.get('POSTMASTER', 'admin')}@{env.get('DOMAIN', '')}",
            "certonly", "--standalone",
            "--cert-name", cert_name,
            "--preferred-challenges", "http",
            "--http-01-port", str(world.http_port),
            "--http-01-address", address,
            "--keep-until-expiring",
            "--key-type", key_type,
            "--renew-with-new-domains",
            "--config-dir", str(self.letsencrypt_dir),
            "--work-dir", str(work / "work"),
            "--logs-dir", str(work / "logs"),
            "--server", world.directory_url,
        ]  # fmt: skip
        log_file = work / "certbot.log"
        with log_file.open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdout=output,
                stderr=output,
                env={**os.environ, "REQUESTS_CA_BUNDLE": world.ca_bundle},
            )
            try:
                status = await asyncio.wait_for(process.wait(), CERTBOT_TIMEOUT)
            except TimeoutError:
                process.kill()
                status = await process.wait()
            except asyncio.CancelledError:
                process.kill()
                await process.wait()
                raise
        log.info("certbot %s exited %s", cert_name, status)
        return status

    def _self_signed_shortcut(self) -> None:
        """The world without a CA: a certificate for HOSTNAMES[0] and this server's
        addresses, in both places certbot would put it."""
        hostnames = self._hostnames() or [self.addresses[0]]
        cert, key = self._self_signed(hostnames[0])
        for name, _ in CERT_NAMES:
            live = self.live(name)
            live.mkdir(parents=True, exist_ok=True)
            write_atomically(live / "privkey.pem", key, 0o600)
            write_atomically(live / "fullchain.pem", cert, 0o644)


async def _greeting_server(
    context: ssl.SSLContext, addresses: list[str], port: int, greeting: bytes
) -> asyncio.AbstractServer:
    """A TLS listener that greets and hangs up: what a handshake check needs of 443/993."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            writer.write(greeting)
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()

    return await asyncio.start_server(
        greet, host=addresses, port=port, ssl=context, reuse_address=True
    )


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Create or replace ``path`` in one rename, never more open than ``mode``.

    Why: readers poll these files (the tests' certificate reader, certbot's lineage);
    a truncate-then-write lets them read an empty file in between (a CI run's SMTP
    check once loaded an empty CA file: NO_CERTIFICATE_OR_CRL_FOUND).
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
