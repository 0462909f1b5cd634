"""A real authoritative DNS server for tests and `make faults`: Knot DNS (Debian package
`knot`) serving zones on a loopback port. The zones are written from the zone lines we
hand customers (workflows/contracts.DnsRecord.zone_line), as a customer would paste them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import dns.exception
import dns.message
import dns.query
import dns.rcode

from devstack.processes import free_port
from devstack.test_tools import SEARCH_PATH

KNOTD = "knotd"
KNOT_MISSING = "knotd not installed"
STARTUP_WAIT_SECONDS = 30.0


class KnotMissing(RuntimeError):
    """knotd is not on this machine."""


@dataclass(frozen=True)
class DnsServer:
    address: str
    port: int

    @property
    def resolver_setting(self) -> str:
        """The MAILPROV_DNS_RESOLVERS value that points at this server."""
        return f"{self.address}:{self.port}"


def zone_text(origin: str, lines: Sequence[str]) -> str:
    """A zone with the SOA and NS every zone needs (RFC 1035), then `lines`."""
    return "\n".join(
        [
            f"$ORIGIN {origin}.",
            f"@ 600 IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
            f"@ 600 IN NS ns1.{origin}.",
            "ns1 600 IN A 127.0.0.1",
            *lines,
            "",
        ]
    )


@contextmanager
def knot_serving(
    zones: Mapping[str, Sequence[str]],
    missing: Callable[[str], NoReturn] | None = None,
    port: int = 0,
) -> Iterator[DnsServer]:
    """knotd authoritative for each `origin -> record lines` on 127.0.0.1:<port> (a free
    one unless given: a test that changes the zones serves them again on the same port,
    as a customer's DNS provider answers at the same address after an edit).

    Without knotd, `missing(reason)` (tests skip, or fail under CI) or KnotMissing.
    """
    knotd = shutil.which(KNOTD, path=SEARCH_PATH)
    if knotd is None:
        reason = f"{KNOT_MISSING} (Debian package knot; devstack/test_tools.py)"
        if missing is not None:
            missing(reason)
        raise KnotMissing(reason)
    with tempfile.TemporaryDirectory(prefix="mailprov-knot-") as tmp:
        directory = Path(tmp)
        port = port or free_port()
        zone_config = []
        for origin, lines in zones.items():
            (directory / f"{origin}.zone").write_text(zone_text(origin, lines))
            zone_config += [f"  - domain: {origin}", f"    file: {directory}/{origin}.zone"]
        config = directory / "knot.conf"
        config.write_text(
            "\n".join(
                [
                    "server:",
                    f"    rundir: {directory}",
                    f"    listen: 127.0.0.1@{port}",
                    "database:",
                    f"    storage: {directory}",
                    "control:",
                    f"    listen: {directory}/knot.sock",
                    "template:",
                    "  - id: default",
                    f"    storage: {directory}",
                    "    zonefile-sync: -1",
                    "    journal-content: none",
                    "zone:",
                    *zone_config,
                    "",
                ]
            )
        )
        process = subprocess.Popen(
            [knotd, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "knotd.log").open("w"),
        )
        try:
            server = DnsServer("127.0.0.1", port)
            _wait_until_serving(server, next(iter(zones)), process, directory / "knotd.log")
            yield server
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_until_serving(
    server: DnsServer, origin: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Until the server answers the zone's SOA authoritatively."""
    deadline = time.monotonic() + STARTUP_WAIT_SECONDS
    query = dns.message.make_query(f"{origin}.", "SOA")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"knotd exited: {log.read_text()[-2000:]}")
        try:
            answer = dns.query.udp(query, server.address, port=server.port, timeout=1)
        except (dns.exception.Timeout, OSError):
            time.sleep(0.1)
            continue
        if answer.rcode() == dns.rcode.NOERROR and answer.answer:
            return
        time.sleep(0.1)
    raise RuntimeError(f"knotd did not serve {origin}: {log.read_text()[-2000:]}")
