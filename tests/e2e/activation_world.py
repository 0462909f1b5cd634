"""The outside world of an ActivateMailDomain run, for the end-to-end tests that drive one.

Knot DNS serves the customer's zone on loopback (empty at first, then the lines the
purchase handed out), pebble is the CA, Debian's certbot runs on the MailU front
stand-in (devstack/mailu_front.py, MailU 2024.06's letsencrypt flavour), and the worker
that runs the activation resolves through that Knot, trusts pebble's root and reaches
the stand-in's 443/993 on host ports (activities/mail_tls.py): `worker_env` is what an
in-process worker (tests/e2e/conftest.py in_process_worker) needs for that.
Shared by tests/e2e/test_activation.py (Python back end) and
tests/e2e/test_typescript_client.py (Node back end).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from activities.dns_check import RESOLVERS_ENV
from activities.mail_tls import CA_FILE_ENV, PORTS_ENV
from devstack.mailu_front import AcmeWorld
from devstack.processes import free_port
from devstack.stack import StackInfo
from starter import StarterError, activation_status
from tests.acme_server import AcmeServer, certbot_path, pebble_serving
from tests.dns_server import DnsServer, knot_serving
from tests.e2e.conftest import CloudControl
from workflows.activation_contracts import ActivationStatus

STATUS_POLLS = 600
# How long front's certbot may take for both certificates once it can reach the CA (a
# guard against a hang, reported with the front's logs; not a measured bound).
CERTIFICATE_WAIT_SECONDS = 180


@dataclass(frozen=True)
class ActivationWorld:
    dns: DnsServer  # where pebble and the worker resolve the customer's names
    acme: AcmeServer
    https: int  # the front stand-in's 443 and 993, as host ports
    imaps: int

    def worker_env(self, info: StackInfo) -> dict[str, str]:
        """The in-process worker's settings that point its checks at this world."""
        return {
            RESOLVERS_ENV: self.dns.resolver_setting,
            CA_FILE_ENV: str(self.acme.root),
            PORTS_ENV: f"443={self.https},465={info.smtp_port},993={self.imaps}",
        }

    @contextmanager
    def customer_zone(self, domain: str, lines: Sequence[str]) -> Iterator[DnsServer]:
        """The customer's zone as published: exactly `lines`, served while the block runs."""
        with knot_serving({domain: list(lines)}, port=self.dns.port) as served:
            yield served

    def let_front_reach_the_ca(self, state_dir: Path) -> None:
        """From now on the server's certbot can reach pebble (the stand-in's world file)."""
        AcmeWorld(
            self.acme.directory_url,
            str(self.acme.listener_ca),
            self.acme.http_port,
            self.dns.resolver_setting,
            self.https,
            self.imaps,
        ).write(state_dir)

    async def certificate_issued(self, state_dir: Path) -> None:
        """Until front's certbot holds both certificates (ECDSA last)."""
        live = state_dir / "root/mailu/certs/letsencrypt/live"
        deadline = asyncio.get_running_loop().time() + CERTIFICATE_WAIT_SECONDS
        while not (live / "mailu-ecdsa/fullchain.pem").is_file():
            assert asyncio.get_running_loop().time() < deadline, front_logs(state_dir)
            await asyncio.sleep(0.5)


@contextmanager
def activation_world() -> Iterator[ActivationWorld]:
    """pebble (resolving through the world's DNS port) and the ports the front stand-in
    will serve TLS on; the customer's zone is served per step (`customer_zone`)."""
    certbot_path()
    world_dns = DnsServer("127.0.0.1", free_port())
    https, imaps = free_port(), free_port()
    with pebble_serving(world_dns) as acme:
        yield ActivationWorld(world_dns, acme, https, imaps)


async def status_until(
    client: Client, tenant: str, done: Callable[[ActivationStatus], bool]
) -> ActivationStatus:
    """The activation's status once `done` holds (polled; each poll a query)."""
    status: ActivationStatus | None = None
    for _ in range(STATUS_POLLS):
        try:
            status = await activation_status(client, tenant)
        except StarterError:
            status = None
        if status is not None and done(status):
            return status
        await asyncio.sleep(0.5)
    raise AssertionError(f"activation of {tenant} never reached the expected state: {status}")


def server_state_dir(cloud: CloudControl, purchase_id: str) -> Path:
    [server] = cloud.servers_of(purchase_id)
    response = cloud.devstack.get(f"servers/{server['id']}")
    response.raise_for_status()
    return Path(response.json()["server"]["state_dir"])


def front_logs(state_dir: Path) -> str:
    """What the front stand-in and its certbot said (for a failure's message)."""
    logs = [state_dir / "vps.log", state_dir / "certbot" / "certbot.log"]
    return "\n".join(
        f"--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}" if log.is_file() else ""
        for log in logs
    )


def secret_texts(state_dir: Path) -> list[str]:
    """The server's secrets of the ACME stage: certbot's account key and the certificates'
    private keys, as the strings that would show if they leaked (PEM bodies, JWK fields)."""
    root = state_dir / "root/mailu/certs/letsencrypt"
    found: list[str] = []
    for key in root.glob("live/*/privkey.pem"):
        found += [line for line in key.read_text().splitlines() if not line.startswith("-----")]
    for account in root.glob("accounts/**/private_key.json"):
        jwk = json.loads(account.read_text())
        found += [str(jwk[name]) for name in ("d", "p", "q") if name in jwk]
    return [text for text in found if len(text) >= 16]
