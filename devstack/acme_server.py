"""Let's Encrypt's ACME test server for tests and `make faults`: pebble (Debian package
`pebble`, 2.4.0) on loopback, stoppable and startable again on the same ports.

Pebble validates HTTP-01 challenges for real: it resolves the name through the DNS
server it is given (`-dnsserver`, a Knot DNS from devstack/dns_server.py) and fetches
`http://<that address>:<httpPort>/.well-known/acme-challenge/<token>`, so a certificate
is issued only when the customer's DNS points at the server that answers
(github.com/letsencrypt/pebble README "Testing at full speed", "Default validation
ports", `-dnsserver`). Its root and intermediate are made fresh at each start and
served by the management interface (`/roots/0`): they are the trust anchor a check of
issued chains needs, so `root` is rewritten at each start.

Faults `make faults` injects with it (devstack/faults_activation_tls.py): the CA down
(`stop`: connections refused, as during a Let's Encrypt outage) and the CA refusing
every request with `badNonce` (`start(nonce_reject=100)`: PEBBLE_WFE_NONCEREJECT is the
percentage of good nonces pebble rejects as invalid, README "Invalid Anti-Replay Nonce
Errors", /usr/share/doc/pebble/README.md.gz in Debian's pebble 2.4.0; certbot's acme
client retries a badNonce once, then the run fails).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx

from devstack.dns_server import DnsServer
from devstack.processes import free_port
from devstack.test_tools import SEARCH_PATH
from devstack.vps import make_tls_certificate

PEBBLE = "pebble"
PEBBLE_MISSING = "pebble not installed (Debian package pebble; devstack/test_tools.py)"
STARTUP_WAIT_SECONDS = 30.0


class PebbleMissing(RuntimeError):
    """pebble is not on this machine."""


@dataclass(frozen=True)
class AcmeServer:
    directory_url: str  # the ACME directory certbot is pointed at (--server)
    listener_ca: Path  # pebble's own HTTPS listener certificate: certbot's REQUESTS_CA_BUNDLE
    root: Path  # pebble's issuing root (PEM): the trust anchor for issued chains
    http_port: int  # where pebble fetches HTTP-01 answers, on the name's address


class Pebble:
    """One pebble CA in `directory`, on ports fixed at construction: a start after a
    stop serves the same directory URL (a CA back after an outage), with a new root."""

    def __init__(self, directory: Path, dns: DnsServer) -> None:
        self.directory = directory
        self.dns = dns
        directory.mkdir(parents=True, exist_ok=True)
        # A self-signed listener certificate is its own trust anchor (certbot's bundle).
        self.listener_cert, self.listener_key = make_tls_certificate(
            "localhost", ["127.0.0.1"], directory / "listener"
        )
        self.port, self.management, self.http_port = free_port(), free_port(), free_port()
        self.tls_port = free_port()
        self.root = directory / "pebble-root.pem"
        self.log = directory / "pebble.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> AcmeServer:
        return AcmeServer(
            f"https://127.0.0.1:{self.port}/dir", self.listener_cert, self.root, self.http_port
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(
        self, nonce_reject: int = 0, missing: Callable[[str], NoReturn] | None = None
    ) -> None:
        """Start serving (returns once the directory answers); `nonce_reject`: the
        percentage of good nonces refused as badNonce (0: none, deterministic runs)."""
        pebble = shutil.which(PEBBLE, path=SEARCH_PATH)
        if pebble is None:
            if missing is not None:
                missing(PEBBLE_MISSING)
            raise PebbleMissing(PEBBLE_MISSING)
        config = self.directory / "pebble-config.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management}",
                        "certificate": str(self.listener_cert),
                        "privateKey": str(self.listener_key),
                        "httpPort": self.http_port,
                        "tlsPort": self.tls_port,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        env = {
            **os.environ,
            # No random 0-15 s sleep before each validation (README "Testing at full
            # speed"), and no random refusal of 5 % of nonces unless asked for.
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
        }
        with self.log.open("a") as output:
            self._process = subprocess.Popen(
                [pebble, "-config", str(config), "-dnsserver", self.dns.resolver_setting],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
            )
        try:
            context = ssl.create_default_context(cafile=str(self.listener_cert))
            root = self._fetch(f"https://127.0.0.1:{self.management}/roots/0", context)
            self._fetch(self.server.directory_url, context)
        except BaseException:
            self.stop()
            raise
        tmp = self.root.with_name(self.root.name + ".tmp")
        tmp.write_text(root)
        tmp.replace(self.root)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None

    def _fetch(self, url: str, context: ssl.SSLContext) -> str:
        deadline = time.monotonic() + STARTUP_WAIT_SECONDS
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"pebble exited: {self.log.read_text()[-2000:]}")
            try:
                response = httpx.get(url, verify=context, timeout=2)
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if response.is_success:
                return response.text
            time.sleep(0.1)
        raise RuntimeError(f"pebble did not answer {url}: {self.log.read_text()[-2000:]}")


@contextmanager
def pebble_serving(
    dns: DnsServer, directory: Path, missing: Callable[[str], NoReturn] | None = None
) -> Iterator[Pebble]:
    """pebble on 127.0.0.1:<free ports>, resolving challenge names through `dns`, for
    the block; without pebble, `missing(reason)` (tests skip, or fail under CI) or
    PebbleMissing."""
    pebble = Pebble(directory, dns)
    pebble.start(missing=missing)
    try:
        yield pebble
    finally:
        pebble.stop()
