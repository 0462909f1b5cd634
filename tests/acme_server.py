"""Let's Encrypt's ACME test server for tests: pebble (Debian package `pebble`) on loopback.

Pebble validates HTTP-01 challenges for real: it resolves the name through the DNS
server it is given (`-dnsserver`, here the test's Knot DNS, tests/dns_server.py) and
fetches `http://<that address>:<httpPort>/.well-known/acme-challenge/<token>`, so a
certificate is issued only when the customer's DNS points at the server that answers
(github.com/letsencrypt/pebble README "Testing at full speed", "Default validation
ports", `-dnsserver`). Its root and intermediate are made fresh at each start and
served by the management interface (`/roots/0`, `/intermediates/0`): they are the
trust anchor a test checks issued chains against.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.processes import free_port
from devstack.test_tools import SEARCH_PATH
from tests.dns_server import DnsServer
from tests.helpers import unavailable
from tests.tls_certs import LocalCa

PEBBLE = "pebble"
CERTBOT = "certbot"
STARTUP_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class AcmeServer:
    directory_url: str  # the ACME directory certbot is pointed at (--server)
    listener_ca: Path  # signs pebble's own HTTPS listener: certbot's REQUESTS_CA_BUNDLE
    root: Path  # pebble's issuing root (PEM): the trust anchor for issued chains
    http_port: int  # where pebble fetches HTTP-01 answers, on the name's address


def certbot_path() -> str:
    found = shutil.which(CERTBOT, path=SEARCH_PATH)
    if found is None:
        unavailable("certbot not installed (Debian package certbot; devstack/test_tools.py)")
    return found


@contextmanager
def pebble_serving(dns: DnsServer) -> Iterator[AcmeServer]:
    """pebble on 127.0.0.1:<free port>, resolving challenge names through `dns`."""
    pebble = shutil.which(PEBBLE, path=SEARCH_PATH)
    if pebble is None:
        unavailable("pebble not installed (Debian package pebble; devstack/test_tools.py)")
    with tempfile.TemporaryDirectory(prefix="mailprov-pebble-") as tmp:
        directory = Path(tmp)
        ca = LocalCa(directory / "listener-ca", "pebble-listener-ca")
        listener = ca.server("pebble", ("localhost", "127.0.0.1"))
        port, management, http_port = free_port(), free_port(), free_port()
        config = directory / "pebble-config.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{port}",
                        "managementListenAddress": f"127.0.0.1:{management}",
                        "certificate": str(listener.cert),
                        "privateKey": str(listener.key),
                        "httpPort": http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        env = {
            **os.environ,
            # No random 0-15 s sleep before each validation, and no random refusal of
            # 5 % of nonces (pebble README "Testing at full speed", "Invalid Anti-Replay
            # Nonce Errors"): the tests' ACME runs stay deterministic.
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        log = directory / "pebble.log"
        process = subprocess.Popen(
            [pebble, "-config", str(config), "-dnsserver", dns.resolver_setting],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=directory,
        )
        try:
            root = directory / "pebble-root.pem"
            context = ssl.create_default_context(cafile=str(ca.cert))
            root.write_text(
                _fetch(f"https://127.0.0.1:{management}/roots/0", context, process, log)
            )
            _fetch(f"https://127.0.0.1:{port}/dir", context, process, log)
            yield AcmeServer(f"https://127.0.0.1:{port}/dir", ca.cert, root, http_port)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _fetch(url: str, context: ssl.SSLContext, process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + STARTUP_WAIT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pebble exited: {log.read_text()[-2000:]}")
        try:
            response = httpx.get(url, verify=context, timeout=2)
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        if response.is_success:
            return response.text
        time.sleep(0.1)
    raise RuntimeError(f"pebble did not answer {url}: {log.read_text()[-2000:]}")
