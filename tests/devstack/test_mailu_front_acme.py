"""MailU 2024.06's front on the local VPS against the real outside world: Knot DNS serving
the customer's zone, pebble (Let's Encrypt's ACME test server) as the CA and Debian's
certbot as front's ACME client (devstack/mailu_front.py cites what each rule models).

What a customer's server does after the purchase: no certificate while the name points
elsewhere; once it points here, certbot's certificates, nginx's 443 after its reload,
and dovecot's 465/993 only after front restarts (Mailu/Mailu#3827). Every port is
checked with the product's own validating handshake (activities/mail_tls.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from activities.mail_tls import TlsSettings, certificate_facts, check_ports
from activities.mailu import COMPOSE
from activities.ssh import run_remote
from devstack.mailu_front import REACH_POLL_SECONDS, AcmeWorld
from devstack.processes import free_port
from tests.acme_server import AcmeServer, certbot_path, pebble_serving
from tests.devstack.test_vps_mailu import DOMAIN, boot, running_mailu
from tests.dns_server import DnsServer, knot_serving
from tests.tls_certs import LocalCa

HOST = f"mail.{DOMAIN}"
ISSUE_WAIT_SECONDS = 120.0


def world(acme: AcmeServer, dns: DnsServer, https: int, imaps: int) -> AcmeWorld:
    return AcmeWorld(
        acme.directory_url,
        str(acme.listener_ca),
        acme.http_port,
        dns.resolver_setting,
        https,
        imaps,
    )


async def wait_for(path: Path) -> None:
    deadline = time.monotonic() + ISSUE_WAIT_SECONDS
    while not path.is_file():
        assert time.monotonic() < deadline, f"{path} not issued; see the certbot log"
        await asyncio.sleep(0.2)


async def test_front_gets_its_certificate_once_dns_points_here_and_dovecot_needs_a_restart(
    tmp_path: Path,
) -> None:
    certbot_path()
    server = await boot(tmp_path)
    machine = server.machine
    https, imaps = free_port(), free_port()
    live = machine.state_dir / "root/mailu/certs/letsencrypt/live"
    try:
        async with await server.connect() as conn:
            await running_mailu(conn)
            # The customer's name still points at their old provider.
            with (
                knot_serving({DOMAIN: [f"{HOST}. 600 IN A 198.51.100.7"]}) as elsewhere,
                pebble_serving(elsewhere) as acme,
            ):
                world(acme, elsewhere, https, imaps).write(machine.state_dir)
                settings = TlsSettings(
                    str(acme.root), {443: https, 465: machine.smtp_port, 993: imaps}
                )
                for _ in range(10):  # letsencrypt.py's reachability polls
                    await asyncio.sleep(REACH_POLL_SECONDS)
                assert not live.exists()  # certbot never ran
                before = await check_ports(machine.ip, HOST, settings)
                assert [p.port for p in before] == [443, 465, 993]
                assert all("refused" in (p.problem or "") for p in before)
            # Published: front's certbot gets both certificates from the CA.
            with (
                knot_serving({DOMAIN: [f"{HOST}. 600 IN A {machine.ip}"]}) as right,
                pebble_serving(right) as acme,
            ):
                world(acme, right, https, imaps).write(machine.state_dir)
                settings = TlsSettings(
                    str(acme.root), {443: https, 465: machine.smtp_port, 993: imaps}
                )
                await wait_for(live / "mailu-ecdsa" / "fullchain.pem")
                facts = certificate_facts((live / "mailu/fullchain.pem").read_text(), HOST)
                assert facts.names == [HOST] and facts.names_host
                assert facts.issuer.startswith("Pebble Intermediate CA")
                assert (live / "mailu/privkey.pem").stat().st_mode & 0o077 == 0
                deadline = time.monotonic() + ISSUE_WAIT_SECONDS
                while (await check_ports(machine.ip, HOST, settings))[0].problem is not None:
                    assert time.monotonic() < deadline, "nginx never served 443"
                    await asyncio.sleep(0.2)
                # nginx reloaded onto the certificate; dovecot died at front's start.
                reloaded = {
                    p.port: p.problem for p in await check_ports(machine.ip, HOST, settings)
                }
                assert reloaded[443] is None
                assert "refused" in (reloaded[465] or "") and "refused" in (reloaded[993] or "")
                # A client trusting another CA refuses every port's chain.
                other = LocalCa(tmp_path / "other-ca", "other-ca")
                foreign = TlsSettings(str(other.cert), settings.ports)
                [https_check, *_] = await check_ports(machine.ip, HOST, foreign)
                assert "certificate not trusted" in (https_check.problem or "")
                # `docker compose restart front`: dovecot starts with the files in place.
                await run_remote(conn, f"{COMPOSE} restart front")
                after = await check_ports(machine.ip, HOST, settings)
                assert [(p.port, p.problem) for p in after] == [
                    (443, None),
                    (465, None),
                    (993, None),
                ]
    finally:
        await machine.stop()
