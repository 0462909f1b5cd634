"""SSH trust for new servers: pinned host keys delivered through cloud-init.

A freshly created VPS has no host key anyone could know in advance, so trust on
first use would accept a man in the middle. Instead the worker makes the server's
ed25519 host key itself, hands it to the server in cloud-init `user_data`, and
pins the public half for every later connection: a host key is never left unchecked.

The host key is derived (HKDF) from the worker's SSH identity and the server
name, not drawn at random: a create call retried after a crash must present the
same key the first attempt gave the server it may already have made, and the
private key must not pass through workflow history to get there.

Because the provider keeps user_data, the first trusted session replaces that key
with a second derived one the provider never sees (`rotate_host_key`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncssh
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.contracts import MailuTarget

HOST_KEY_INFO = b"mail-provisioning/host-key/v1:"
PROVIDER_KEY_INFO = b"mail-provisioning/provider-key/v1:"
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"
# Exit 126/127: the shell could not run the program (say, no docker on this image);
# a retry meets the same server. Any other failure (containers starting) may pass.
FINAL_EXIT_STATUSES = frozenset({126, 127})


class HostKeyMismatch(Exception):
    """The server did not present the pinned host key: possible interception."""


@dataclass(frozen=True)
class SshIdentity:
    """The worker's login key (ed25519), authorised on every server it creates."""

    private_key: Ed25519PrivateKey

    @classmethod
    def from_file(cls, path: Path) -> SshIdentity:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: the worker's SSH key must be ed25519")
        return cls(key)

    @classmethod
    def generate(cls) -> SshIdentity:
        return cls(Ed25519PrivateKey.generate())

    def write(self, path: Path) -> None:
        """Write the private key (0600) and `<path>.pub`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_bytes(_openssh_private(self.private_key))
        path.with_suffix(path.suffix + ".pub").write_text(self.public_key + "\n")

    @property
    def public_key(self) -> str:
        return _openssh_public(self.private_key, comment="mail-provisioning-worker")

    def asyncssh_key(self) -> asyncssh.SSHKey:
        return asyncssh.import_private_key(_openssh_private(self.private_key))

    def host_key_for(self, server_name: str, generation: int = 1) -> Ed25519PrivateKey:
        """The host key a server of this name gets; same inputs, same key.

        Generation 1 goes into cloud-init user_data (which the provider keeps);
        generation 2 replaces it over the first trusted SSH session and is never
        given to the provider.
        """
        return self._derive(HOST_KEY_INFO + f"{server_name}#{generation}".encode())

    def provider_key_for(self, server_name: str) -> str:
        """The public key registered at the provider for this server; same input, same key.

        Hetzner refuses a second SSH key resource with the same fingerprint
        (uniqueness_error, hetznercloud/terraform-provider-hcloud#12), so every purchase
        registers its own derived key; passing it at create is what stops Hetzner from
        generating an expired root password (activities/vps_provider.py).
        """
        return _openssh_public(self._derive(PROVIDER_KEY_INFO + server_name.encode()))

    def _derive(self, info: bytes) -> Ed25519PrivateKey:
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)
        return Ed25519PrivateKey.from_private_bytes(derived)

    def cloud_init_for(
        self, server_name: str, extra: Mapping[str, Any] | None = None
    ) -> tuple[str, str]:
        """Cloud-init user_data for a new server, and the host public key to pin.

        Emitted as JSON, which is valid YAML and so a valid `#cloud-config` body,
        without a YAML dependency. `ssh_keys` and `ssh_authorized_keys` are the
        documented cloud-init keys for preset host keys and login keys; `extra`
        adds further top-level keys (the Docker install, activities/cloud_init.py).
        No `ssh_genkeytypes`: cloud-init ignores it when `ssh_keys` is given, and
        cloud-init 22.4.2's schema refuses the empty list (`[] is too short`).
        """
        host_key = self.host_key_for(server_name)
        host_public = _openssh_public(host_key)
        config = {
            "ssh_keys": {
                "ed25519_private": _openssh_private(host_key).decode(),
                "ed25519_public": host_public,
            },
            "ssh_deletekeys": True,
            "ssh_authorized_keys": [self.public_key],
            "disable_root": False,
            **(extra or {}),
        }
        return "#cloud-config\n" + json.dumps(config, indent=1) + "\n", host_public


def host_key_files(key: Ed25519PrivateKey) -> tuple[bytes, str]:
    """The OpenSSH private key file and public key line of a host key."""
    return _openssh_private(key), _openssh_public(key)


async def connect_pinned(
    host: str,
    host_public_keys: Sequence[str],
    identity: SshIdentity,
    *,
    port: int = 22,
    username: str = "root",
    connect_timeout: float = 20.0,
) -> asyncssh.SSHClientConnection:
    """Open an SSH connection that only succeeds if the host key is a pinned one."""
    pinned = [asyncssh.import_public_key(key) for key in host_public_keys]
    try:
        return await asyncssh.connect(
            host,
            port=port,
            username=username,
            client_keys=[identity.asyncssh_key()],
            known_hosts=(pinned, [], []),
            connect_timeout=connect_timeout,
            agent_path=None,
            config=None,
        )
    except asyncssh.HostKeyNotVerifiable as err:
        raise HostKeyMismatch(
            f"{host}:{port} presented a host key other than the one pinned for it"
        ) from err


class RemoteCommandError(Exception):
    """A command on the server exited non-zero. Carries no stdin, so no secret."""

    def __init__(
        self, command: str, exit_status: int | None, stderr: str, stdout: str = ""
    ) -> None:
        super().__init__(f"`{command}` exited {exit_status}: {stderr.strip()[:500]}")
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout


def command_failure(err: RemoteCommandError) -> ApplicationError:
    final = err.exit_status in FINAL_EXIT_STATUSES
    return ApplicationError(
        str(err),
        type="RemoteCommandNotFound" if final else "RemoteCommandFailed",
        non_retryable=final,
    )


async def run_remote(
    conn: asyncssh.SSHClientConnection,
    command: str,
    stdin: str | None = None,
    timeout: float = 300.0,
) -> str:
    """Run one command; secrets go in `stdin`, never in `command` (argv is public)."""
    try:
        result = await conn.run(command, input=stdin, check=False, timeout=timeout)
    except asyncssh.TimeoutError as err:
        raise RemoteCommandError(command, None, f"no answer within {timeout:.0f}s") from err
    if result.exit_status != 0:
        raise RemoteCommandError(
            command, result.exit_status, str(result.stderr or ""), str(result.stdout or "")
        )
    return str(result.stdout or "")


HEARTBEAT_EVERY = 20.0


async def run_remote_heartbeating(
    conn: asyncssh.SSHClientConnection,
    command: str,
    stdin: str | None = None,
    *,
    timeout: float,
    what: str,
    every: float = HEARTBEAT_EVERY,
) -> str:
    """`run_remote` for commands that take minutes (image pulls, cloud-init's installs).

    The activity heartbeats while the command runs, so Temporal's heartbeat timeout
    notices a dead worker without cutting off a slow but healthy command.
    """
    task = asyncio.create_task(run_remote(conn, command, stdin, timeout))
    waited = 0.0
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            waited += every
            if activity.in_activity():
                activity.heartbeat(f"{what}: still running after {waited:.0f}s")
    finally:
        if not task.done():
            task.cancel()


async def sftp_write(sftp: asyncssh.SFTPClient, path: str, content: str, mode: int) -> None:
    # Open with the final mode so the file is never readable by others, not even briefly.
    attrs = asyncssh.SFTPAttrs(permissions=mode)
    async with sftp.open(path, "w", attrs) as handle:
        await handle.write(content)
    await sftp.chmod(path, mode)


class ServerAccess:
    """Trusted SSH sessions to the servers we provision, as Temporal errors on failure."""

    def __init__(self, identity: SshIdentity, port: int = 22, username: str = "root") -> None:
        self.identity = identity
        self.port = port
        self.username = username

    async def open(
        self, target: MailuTarget, also_trust: Sequence[str] = ()
    ) -> asyncssh.SSHClientConnection:
        try:
            return await connect_pinned(
                target.address,
                [target.host_public_key, *also_trust],
                self.identity,
                port=self.port,
                username=self.username,
            )
        except HostKeyMismatch as err:
            raise ApplicationError(str(err), type="HostKeyMismatch", non_retryable=True) from None
        except (OSError, asyncssh.Error) as err:
            raise ApplicationError(
                f"ssh to {_host_port(target.address, self.port)} failed: {err}",
                type="SshUnavailable",
            ) from None


class SshTrustActivities:
    def __init__(self, access: ServerAccess) -> None:
        self._access = access

    @activity.defn(name="rotate_host_key")
    async def rotate_host_key(self, target: MailuTarget) -> str:
        """Replace the host key the provider saw in user_data; return the new one to pin.

        The new key is derived (generation 2), so a retry after a crash mid-rotation
        trusts either key, finds the rotation done or redoes it, and returns the same
        answer. It reaches the server only over the channel authenticated by the
        generation-1 key, and the provider never stores it.
        """
        identity = self._access.identity
        new_key, new_public = host_key_files(identity.host_key_for(target.server_name, 2))
        async with await self._access.open(target, also_trust=[new_public]) as conn:
            presented = conn.get_server_host_key()
            if presented is not None and _same_key(presented, new_public):
                return new_public
            try:
                async with conn.start_sftp_client() as sftp:
                    await sftp_write(sftp, HOST_KEY_PATH + ".new", new_key.decode(), 0o600)
                    await sftp_write(sftp, HOST_KEY_PATH + ".pub.new", new_public + "\n", 0o644)
                    await sftp.posix_rename(HOST_KEY_PATH + ".new", HOST_KEY_PATH)
                    await sftp.posix_rename(HOST_KEY_PATH + ".pub.new", HOST_KEY_PATH + ".pub")
                # sshd reads host keys per new connection after a reload; this session stays.
                await run_remote(conn, "systemctl reload ssh")
            except (RemoteCommandError, asyncssh.SFTPError) as err:
                raise ApplicationError(
                    f"host key rotation failed: {err}", type="HostKeyRotation"
                ) from None
        # Prove the server now presents the new key before anything relies on it.
        check = await self._access.open(replace(target, host_public_key=new_public))
        check.close()
        activity.logger.info("host key rotated and re-pinned")
        return new_public


def _same_key(presented: asyncssh.SSHKey, public_line: str) -> bool:
    return bool(presented.public_data == asyncssh.import_public_key(public_line).public_data)


def _openssh_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _openssh_public(key: Ed25519PrivateKey, comment: str = "") -> str:
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} {comment}".strip()


def _host_port(address: str, port: int) -> str:
    """host:port, with an IPv6 address in brackets as in a URL (RFC 3986)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
