"""One local "server": ``python -m devstack.vps``, started by the local cloud.

It plays the machine a Hetzner server would be once cloud-init has run:

* ``<state_dir>/root`` plays the VPS's ``/``; on first boot cloud-init's work is done
  there: the ``ssh_keys`` of the cloud-config ``user_data`` become
  ``/etc/ssh/ssh_host_ed25519_key`` (0600) and ``.pub`` (0644), once per instance, so
  a rotated key survives a reboot as it would on a real server;
* an SSH server (asyncssh) on the server's own loopback address, presenting the host
  key sshd loaded from ``/etc/ssh/ssh_host_ed25519_key`` and admitting ``root`` with
  the ``ssh_authorized_keys`` of the cloud-config, public-key auth only.
  ``systemctl reload ssh`` re-reads the key file as OpenSSH's reload does: new
  connections present the new key, existing sessions carry on, and a missing or
  unusable key fails the reload and keeps the old one;
* SFTP confined to that root (``posix-rename@openssh.com`` included);
* exec requests answered by :class:`devstack.compose.Shell` (Docker Compose + MailU),
  each one logged to ``<state_dir>/commands.jsonl`` as the exact command line plus
  whether stdin carried anything, never the stdin itself;
* faults armed by the cloud in ``<state_dir>/faults.json`` (see
  :class:`devstack.faults.VpsFaults`): exec requests that fail without running, and
  TCP connections to the SSH port cut off at accept;
* MailU's front (:mod:`devstack.mailu_front`): no certificate until the customer's
  DNS points here, then certbot's (real certbot against the world's ACME CA, or the
  stand-in's own without one); dovecot's ports need front restarted once the first
  certificate exists (Mailu/Mailu#3827). Its submissions port (aiosmtpd, implicit TLS,
  the cloud's ``smtp_port`` playing 465) checks AUTH
  PLAIN/LOGIN checked against the MailU users (each attempt's
  login and outcome, never the password, in ``<state_dir>/smtp-auth.jsonl``, where
  MailU's own login check, ``/internal/auth/email`` in the admin container, logs too);
  SSH TCP forwarding to ``127.0.0.1:587`` is refused: MailU 2024.06 does not listen
  on 587 (socrate ``clean_env`` PORTS default 25,80,443,465,993,995,4190);
* cloud-init's run (:mod:`devstack.cloudinit`): no Docker until its install directives
  have run, ``cloud-init status`` as cloud-init 22.4.2 answers it.
* a reboot (poweron after a shutdown) restarts the compose projects that were up, as
  dockerd does for ``restart: always`` services, their health starting over
  (:meth:`devstack.compose.Shell.restart_at_boot`).

The configuration arrives as JSON on stdin, never in argv (visible to every local
user through ``ps``) or in a file (it carries the private host key). ``READY`` on
stdout tells the cloud the server has booted; ``FAILED <reason>`` that it will not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import stat
import struct
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack.cloudinit import CloudInitRun
from devstack.compose import COMPOSE_VERSION, Shell, read_env_file
from devstack.faults import CommandFault, VpsFaults
from devstack.mailu import ExecResult, MailuStore
from devstack.mailu_front import LETSENCRYPT_DIR, MAILU_ENV, Front, write_atomically
from devstack.tasks import cancel_and_wait

log = logging.getLogger("devstack.vps")

HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"
HOST_KEY_PUB_PATH = HOST_KEY_PATH + ".pub"
# cloud-init's per-instance semaphore for its ssh module: present = keys already written.
CLOUD_INIT_SSH_SEM = "/var/lib/cloud/instance/sem/config_ssh"
STDIN_GRACE_SECONDS = 0.1
INJECTED_STDIN_TIMEOUT = 5.0  # how long an injected failure waits for the client's EOF
SSH_UNIT_NAMES = ("ssh", "sshd")  # Debian's ssh.service and its alias
DEFAULT_CLOUD_INIT_SECONDS = 2.0
CLOUD_INIT_RELEASE = "cloud-init.release"  # created by a test: the installs end now
SMTP_AUTH_LOG = "smtp-auth.jsonl"  # one line per AUTH attempt: login, mechanism, success
EXPIRED_LOGIN_NOTICE = (
    "WARNING: Your password has expired.\nPassword change required but no TTY available.\n"
)


class BootError(Exception):
    """The server cannot boot; the message is safe to show (it never quotes secrets)."""


@dataclass
class CloudConfig:
    """The parts of a cloud-config document this machine acts on."""

    host_key: asyncssh.SSHKey
    host_public_line: str
    authorized_keys: list[str]
    document: dict[str, Any]


def parse_user_data(user_data: str | None) -> CloudConfig:
    """Read cloud-init user data: ``#cloud-config`` then a document, here JSON.

    JSON is valid YAML, and it is what the product emits; anything that is not a JSON
    object after the header is refused with a reason rather than half-understood.
    Without user data the server still boots, with a fresh host key and no way in,
    as a real one without SSH keys would.
    """
    if not user_data:
        key = asyncssh.generate_private_key("ssh-ed25519")
        return CloudConfig(key, _public_line(key), [], {})
    header, _, body = user_data.partition("\n")
    if header.strip() != "#cloud-config":
        raise BootError(
            "user_data: first line must be '#cloud-config' (other cloud-init "
            "formats are not supported by the local VPS)"
        )
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BootError(
            f"user_data: cloud-config body is not JSON (line {exc.lineno}, "
            f"column {exc.colno}); the local VPS parses YAML's JSON subset "
            "only"
        ) from None
    if not isinstance(document, dict):
        raise BootError("user_data: cloud-config body must be a mapping")

    ssh_keys = document.get("ssh_keys", {})
    if not isinstance(ssh_keys, dict):
        raise BootError("user_data: ssh_keys must be a mapping")
    private = ssh_keys.get("ed25519_private")
    if private is None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        public_line = _public_line(key)
    else:
        if not isinstance(private, str):
            raise BootError("user_data: ssh_keys.ed25519_private must be a string")
        try:
            key = asyncssh.import_private_key(private)
        except (asyncssh.KeyImportError, ValueError):
            raise BootError(
                "user_data: ssh_keys.ed25519_private is not a valid unencrypted OpenSSH private key"
            ) from None
        if key.algorithm != b"ssh-ed25519":
            raise BootError("user_data: ssh_keys.ed25519_private is not an ed25519 key")
        given_public = ssh_keys.get("ed25519_public")
        # cloud-init writes the given public half verbatim next to the private one.
        public_line = given_public.strip() if isinstance(given_public, str) else _public_line(key)

    authorized = document.get("ssh_authorized_keys", [])
    if not isinstance(authorized, list) or not all(isinstance(k, str) for k in authorized):
        raise BootError("user_data: ssh_authorized_keys must be a list of strings")
    for line in authorized:
        try:
            asyncssh.import_authorized_keys(line)
        except (asyncssh.KeyImportError, ValueError):
            raise BootError(
                "user_data: an ssh_authorized_keys entry is not an OpenSSH public key line"
            ) from None
    return CloudConfig(key, public_line, list(authorized), document)


def _public_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode("ascii").strip()


class HostKeyError(Exception):
    """sshd cannot use the host key file; the message is sshd's log line for it."""


def load_host_key(path: Path, shown: str = HOST_KEY_PATH) -> asyncssh.SSHKey:
    """Load a host key the way sshd does, with its refusals, for ed25519 keys only.

    sshd ignores a private key that group or others can read (OpenSSH's
    ``sshkey_perm_ok``), and this machine's sshd has no other key type to fall back on.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise HostKeyError(f'Unable to load host key "{shown}": {exc.strerror}') from None
    if not stat.S_ISREG(mode):
        raise HostKeyError(f'Unable to load host key "{shown}": not a regular file')
    if mode & 0o077:
        raise HostKeyError(
            f"Permissions 0{stat.S_IMODE(mode):o} for '{shown}' are too open.\n"
            "It is required that your private key files are NOT accessible by others.\n"
            "This private key will be ignored.\n"
            f'Unable to load host key "{shown}": bad permissions'
        )
    if not data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        raise HostKeyError(f'Unable to load host key "{shown}": invalid format')
    try:
        key = asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError):
        raise HostKeyError(f'Unable to load host key "{shown}": invalid format') from None
    if key.algorithm != b"ssh-ed25519":
        raise HostKeyError(
            f'Unable to load host key "{shown}": {key.algorithm.decode()} is not an '
            "ed25519 key (the devstack sshd serves ed25519 only)"
        )
    return key


def make_tls_certificate(server_name: str, ips: list[str], tls_dir: Path) -> tuple[Path, Path]:
    """Self-signed certificate for the server's name and address, made at each boot.

    Clients pin it (the cloud serves it under ``/_devstack``), so it only needs to be
    verifiable by hostname/IP, the way MailU's ``TLS_FLAVOR=cert`` would present one.
    The key file is 0600 because ``ssl`` can only load keys from files.
    """
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(server_name),
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = tls_dir / "cert.pem"
    key_path = tls_dir / "key.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomically(key_path, key_pem, 0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


# --- SSH ------------------------------------------------------------------------------


class CommandLog:
    """Append-only record of exec requests: what ran, never what was fed to it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(
        self, command: str | None, stdin_supplied: bool, exit_status: int, injected: bool = False
    ) -> None:
        """``command`` is None for an interactive shell request, which is refused.

        ``injected`` marks a request answered by an armed fault instead of being run.
        """
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "command": command,
            "stdin": stdin_supplied,
            "exit_status": exit_status,
            "injected": injected,
        }
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


class _StdinPump:
    """Drains the channel's stdin from the start of the request.

    Reading eagerly lets the log say whether the client sent stdin even to a command
    that ignores it, and never lets a client block on a full window.
    """

    def __init__(self, reader: asyncssh.SSHReader[str]) -> None:
        self._reader = reader
        self._chunks: list[str] = []
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            chunk = await self._reader.read(65536)
            if not chunk:
                return
            self._chunks.append(chunk)

    async def read_all(self) -> str:
        await asyncio.shield(self._task)
        return "".join(self._chunks)

    @property
    def supplied(self) -> bool:
        return any(self._chunks)

    async def settle(self, started: float) -> None:
        """Give input already in flight a moment to arrive before the channel closes.

        A client that sends stdin right after opening the channel (asyncssh's
        ``run(input=...)`` does) would otherwise race a command that exits without
        reading it and get a broken pipe instead of the exit status, which on a real
        host only happens when the command is slower than the network.
        """
        remaining = started + STDIN_GRACE_SECONDS - asyncio.get_running_loop().time()
        if remaining > 0 and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), remaining)

    def close(self) -> None:
        self._task.cancel()


class _RootOnlyServer(asyncssh.SSHServer):
    """Only ``root`` has keys; every other user fails public-key auth.

    TCP forwarding (Debian's sshd default ``AllowTcpForwarding yes``) reaches what the
    host itself listens on; here that is the submission port MailU's front publishes,
    once a compose project runs it, mapped to this VPS's SMTP server.
    """

    def __init__(
        self,
        authorized: asyncssh.SSHAuthorizedKeys | None,
        local_ports: Callable[[], dict[int, tuple[str, int]]] | None = None,
    ) -> None:
        self._authorized = authorized
        self._local_ports = local_ports
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        ports = self._local_ports() if self._local_ports else {}
        target = ports.get(dest_port)
        if dest_host not in ("127.0.0.1", "localhost") or target is None or self._conn is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused")
        return self._conn.forward_connection(*target)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        if username == "root" and self._authorized is not None and self._conn is not None:
            self._conn.set_authorized_keys(self._authorized)
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False


class Machine:
    """Everything one server runs, wired together and shut down together."""

    def __init__(self, config: dict[str, Any]) -> None:
        # Every public address of the server (IPv4 and/or IPv6, see devstack/ipv6.py);
        # sshd and the SMTP front listen on all of them, as on a real server.
        self.addresses: list[str] = [a for a in config.get("addresses") or [config["ip"]] if a]
        self.ip: str = self.addresses[0]
        self.ssh_port: int = int(config["ssh_port"])
        self.smtp_port: int = int(config["smtp_port"])
        self.state_dir = Path(config["state_dir"])
        self.server_name: str = config.get("server_name") or self.ip
        self.cloud = parse_user_data(config.get("user_data"))
        # Hetzner hands the SSH key resources named at create to cloud-init as instance
        # metadata (`public-keys`), which it adds to root's authorized_keys beside the
        # cloud-config's ssh_authorized_keys (cloudinit/config/cc_ssh.py, 22.4.2).
        metadata_keys = config.get("metadata_public_keys") or []
        if not isinstance(metadata_keys, list) or not all(
            isinstance(k, str) for k in metadata_keys
        ):
            raise BootError("metadata_public_keys must be a list of OpenSSH public key lines")
        self.metadata_keys: list[str] = list(metadata_keys)
        # A server created without ssh_keys gets a generated root password that is
        # created expired (Hetzner API "Create a Server": "If you do not specify any
        # ssh_keys we will generate a root password for you"; expired:
        # kubermatic/machine-controller#191, hetznercloud/hcloud-python#121,
        # HamedMP/matrix-os#1049). OpenSSH then refuses every session without a terminal,
        # even after key login (session.c/auth-pam.c: "Password change required but no
        # TTY available", as reported in Gamocosm/Gamocosm#121, pingcap/tidb#37836). This
        # machine never grants a pty, so it refuses them all.
        self.root_password_expired = bool(config.get("root_password_expired", False))
        self.root = self.state_dir / "root"
        self.store = MailuStore(self.state_dir / "mailu.json")
        # SSH is up at once; cloud-init's final stage (Docker's install) takes a while.
        self.cloud_init = CloudInitRun(
            self.root,
            self.cloud.document,
            image=str(config.get("image") or "debian-12"),
            duration=float(config.get("cloud_init_seconds", DEFAULT_CLOUD_INIT_SECONDS)),
            release_file=self.state_dir / CLOUD_INIT_RELEASE,
        )
        self.shell = Shell(
            self.root,
            self.store,
            auth_log=self.state_dir / SMTP_AUTH_LOG,
            addresses=self.addresses,
            units=dict.fromkeys(SSH_UNIT_NAMES, self._reload_sshd),
            cloud_init=self.cloud_init,
            compose_version=str(config.get("compose_version") or COMPOSE_VERSION),
            on_start=self._front_started,
        )
        self.commands = CommandLog(self.state_dir / "commands.jsonl")
        self.faults = VpsFaults(self.state_dir)
        # Options for connections accepted from now on; replaced on "systemctl reload".
        self._ssh_options: asyncssh.SSHServerConnectionOptions | None = None
        self._ssh_listeners: list[socket.socket] = []
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._ssh_tasks: set[asyncio.Task[None]] = set()
        self._ssh_conns: set[asyncssh.SSHServerConnection] = set()
        self.front = Front(
            letsencrypt_dir=self.shell.host_path(LETSENCRYPT_DIR),
            state_dir=self.state_dir,
            addresses=self.addresses,
            env=lambda: read_env_file(self.shell.host_path(MAILU_ENV)),
            serve_submissions=self._serve_submissions,
            self_signed=self._self_signed,
        )

    def _prepare_root(self) -> None:
        """Do cloud-init's part of the first boot; later boots find it done."""
        self.root.mkdir(parents=True, exist_ok=True)
        sem = self.shell.host_path(CLOUD_INIT_SSH_SEM)
        if not sem.exists():
            key = self.shell.host_path(HOST_KEY_PATH)
            key.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(key, self.cloud.host_key.export_private_key("openssh"), 0o600)
            pub = self.shell.host_path(HOST_KEY_PUB_PATH)
            write_atomically(pub, (self.cloud.host_public_line + "\n").encode("ascii"), 0o644)
            sem.parent.mkdir(parents=True, exist_ok=True)
            sem.write_text(f"{dt.datetime.now(dt.UTC).isoformat()}\n", encoding="ascii")
        # Keep the accepted cloud-config for inspection minus the private host key.
        redacted = dict(self.cloud.document)
        if isinstance(redacted.get("ssh_keys"), dict):
            redacted["ssh_keys"] = {
                k: ("<redacted>" if "private" in k else v) for k, v in redacted["ssh_keys"].items()
            }
        (self.state_dir / "cloud-config.json").write_text(json.dumps(redacted, indent=2))

    async def start(self) -> None:
        os.umask(0o022)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        try:
            host_key = load_host_key(self.shell.host_path(HOST_KEY_PATH))
        except HostKeyError as exc:
            raise BootError(f"sshd: {exc}; sshd: no hostkeys available -- exiting.") from None
        keys = self.cloud.authorized_keys + self.metadata_keys
        try:
            authorized = asyncssh.import_authorized_keys("\n".join(keys)) if keys else None
        except (asyncssh.KeyImportError, ValueError):
            raise BootError("a metadata public key is not an OpenSSH public key line") from None
        root = str(self.root)
        self._ssh_options = asyncssh.SSHServerConnectionOptions(
            server_factory=lambda: _RootOnlyServer(authorized, self._published_ports),
            server_host_keys=[host_key],
            process_factory=self._handle_exec,
            # With the password expired, sftp is a session like any other and is
            # refused in _handle_exec (asyncssh hands subsystems to process_factory
            # when there is no sftp_factory).
            sftp_factory=None
            if self.root_password_expired
            else (lambda chan: asyncssh.SFTPServer(chan, chroot=root.encode())),
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
        )
        # Accepting by hand (rather than asyncssh.listen) lets armed faults cut a
        # connection off before any SSH byte is sent, and gives each connection the
        # options current when it was accepted, as sshd forks per connection.
        for address in self.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((address, self.ssh_port))
                listener.listen(128)
                listener.setblocking(False)
            except OSError:
                listener.close()
                raise
            self._ssh_listeners.append(listener)
            self._accept_tasks.append(asyncio.create_task(self._accept_ssh(listener)))

        # A reboot (poweron after shutdown, e.g. a plan change): dockerd restarts the
        # compose projects that were up, with their health starting over.
        await self.shell.restart_at_boot()

    # --- front: its certificate and its TLS ports (devstack/mailu_front.py) -------------

    async def _front_started(self, services: list[str]) -> None:
        """Compose (re)started these services' containers; front's processes start over."""
        if "front" in services:
            await self.front.restart()

    def _self_signed(self, hostname: str) -> tuple[bytes, bytes]:
        """The world without a CA: a certificate naming the mail host and, so that tests
        reaching the server by IP can check chain and name, its addresses too."""
        cert_path, key_path = make_tls_certificate(
            hostname, self.addresses, self.state_dir / "certbot"
        )
        return cert_path.read_bytes(), key_path.read_bytes()

    async def _serve_submissions(self, tls: ssl.SSLContext) -> asyncio.AbstractServer:
        """465 (implicit TLS), as front's dovecot serves it, with MailU's logins."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: SMTP(
                _AcceptingHandler(),
                hostname=self.server_name,
                # Implicit TLS (the whole connection), so no STARTTLS; AUTH is offered
                # at once, as dovecot's submission-login on 465 does.
                tls_context=None,
                auth_require_tls=False,
                authenticator=self._authenticate,
                loop=loop,
            ),
            host=self.addresses,
            port=self.smtp_port,
            reuse_address=True,
            ssl=tls,
        )

    def _published_ports(self) -> dict[int, tuple[str, int]]:
        """Host ports a forward to 127.0.0.1 reaches: none that takes a login.

        MailU 2024.06's front serves 25 (no AUTH, nginx.conf `smtp_auth none`) and, with
        a certificate only, 465/993/995; 587, 143 and 110 are closed by default
        (socrate clean_env PORTS). So a forward to 127.0.0.1:587 is refused, as sshd
        answers when nothing listens ("Connection refused").
        """
        return {}

    async def stop(self) -> None:
        await self.front.stop()
        await cancel_and_wait(self._accept_tasks)
        for listener in self._ssh_listeners:
            listener.close()
        for conn in list(self._ssh_conns):
            conn.close()
        await cancel_and_wait(list(self._ssh_tasks))

    # --- sshd ---------------------------------------------------------------------------

    async def _accept_ssh(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. EMFILE; sshd logs and keeps listening too
                log.warning("ssh accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                fault = self.faults.take_ssh_fault()
            except (OSError, ValueError):
                log.exception("cannot read armed faults; accepting the connection")
                fault = None
            if fault is not None:
                if fault.mode == "refuse":
                    # Linger 0: close() sends RST rather than FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                else:
                    self._track(self._close_gently(sock))
                continue
            assert self._ssh_options is not None
            self._track(self._serve_ssh(sock, self._ssh_options))

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._ssh_tasks.add(task)
        task.add_done_callback(self._ssh_tasks.discard)

    @staticmethod
    async def _close_gently(sock: socket.socket) -> None:
        """Send FIN before any banner, then wait for the client to hang up.

        Closing at once would turn into an RST whenever the client's version line has
        already arrived unread; the client must see "connection closed" every time.
        """
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        try:
            sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(5.0):
                while await loop.sock_recv(sock, 4096):
                    pass
        except (OSError, TimeoutError):
            pass
        finally:
            sock.close()

    async def _serve_ssh(
        self, sock: socket.socket, options: asyncssh.SSHServerConnectionOptions
    ) -> None:
        try:
            conn = await asyncssh.run_server(sock, options=options)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            # A client that distrusts the host key or fails auth; sshd only logs it.
            # The transport owns (and has closed) the socket by now.
            log.info("ssh connection not established: %s", exc)
            return
        except Exception:
            log.exception("ssh connection failed")
            return
        self._ssh_conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self._ssh_conns.discard(conn)

    async def _reload_sshd(self) -> ExecResult:
        """``systemctl reload ssh``: Debian's unit runs ``sshd -t``, then SIGHUPs sshd.

        systemctl itself only prints the "Job ... failed" lines; sshd's reasons would be
        in the journal, which this machine does not have, so they go to stderr first.
        """
        try:
            key = load_host_key(self.shell.host_path(HOST_KEY_PATH))
        except HostKeyError as exc:
            log.warning("ssh reload failed: %s", exc)
            return ExecResult(
                1,
                "",
                f"{exc}\n"
                "sshd: no hostkeys available -- exiting.\n"
                "Job for ssh.service failed because the control process exited with "
                "error code.\n"
                'See "systemctl status ssh.service" and "journalctl -xeu ssh.service" '
                "for details.\n",
            )
        assert self._ssh_options is not None
        self._ssh_options = asyncssh.SSHServerConnectionOptions(
            self._ssh_options, server_host_keys=[key]
        )
        log.info("ssh reloaded; new connections present %s", key.get_fingerprint())
        return ExecResult(0)

    # --- exec ---------------------------------------------------------------------------

    async def _handle_exec(self, process: asyncssh.SSHServerProcess[str]) -> None:
        if self.root_password_expired:
            # OpenSSH with an expired password and no pty: the message, exit 1, nothing run.
            process.stderr.write(EXPIRED_LOGIN_NOTICE)
            self.commands.record(process.command or process.subsystem, False, 1)
            process.exit(1)
            return
        command = process.command
        if command is None:
            # An interactive shell has nothing to talk to here; say so and close.
            process.stderr.write("This local VPS accepts exec requests only.\n")
            self.commands.record(None, False, 1)
            process.exit(1)
            return
        started = asyncio.get_running_loop().time()
        stdin = _StdinPump(process.stdin)
        try:
            fault = self.faults.take_command_fault(command)
            if fault is not None:
                result = await self._injected(fault, stdin, started)
            else:
                result = await self.shell.run(command, stdin.read_all)
                await stdin.settle(started)
        except Exception:
            log.exception("exec failed")  # the traceback names code, not stdin
            process.stderr.write("devstack VPS: internal error\n")
            self.commands.record(command, stdin.supplied, 255)
            process.exit(255)
            return
        finally:
            stdin.close()
        self.commands.record(
            command, stdin.supplied, result.exit_status, injected=fault is not None
        )
        if result.stdout:
            process.stdout.write(result.stdout)
        if result.stderr:
            process.stderr.write(result.stderr)
        process.exit(result.exit_status)

    @staticmethod
    async def _injected(fault: CommandFault, stdin: _StdinPump, started: float) -> ExecResult:
        """Answer as the armed fault says, after taking in whatever stdin the client sends.

        The command does not run; draining its input keeps a client that streams
        stdin from seeing a broken pipe instead of the injected exit status.
        """
        await stdin.settle(started)
        if stdin.supplied:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stdin.read_all(), INJECTED_STDIN_TIMEOUT)
        return ExecResult(fault.exit_status, fault.stdout, fault.stderr)

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", errors="replace")
        password = auth_data.password.decode("utf-8", errors="replace")
        success = self.store.check_login(login, password)
        # What MailU's front would log for an auth attempt: who and whether, never the secret.
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "login": login,
            "mechanism": mechanism,
            "success": success,
        }
        with (self.state_dir / SMTP_AUTH_LOG).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        return AuthResult(success=success, handled=False)


class _AcceptingHandler:
    """Accepts mail from authenticated senders and keeps only the envelope."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        return "250 2.0.0 Ok: queued"


async def _main() -> int:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        machine = Machine(json.loads(sys.stdin.read()))
        await machine.start()
    except (BootError, OSError, KeyError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, BootError) else f"{type(exc).__name__}: {exc}"
        print(f"FAILED {reason}", flush=True)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await machine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
