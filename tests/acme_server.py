"""pebble for tests (devstack/acme_server.py): skipped without it, failed under CI."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.acme_server import AcmeServer
from devstack.acme_server import pebble_serving as _pebble_serving
from devstack.dns_server import DnsServer
from devstack.test_tools import SEARCH_PATH
from tests.helpers import unavailable

__all__ = ["AcmeServer", "certbot_path", "pebble_serving"]

CERTBOT = "certbot"


def certbot_path() -> str:
    found = shutil.which(CERTBOT, path=SEARCH_PATH)
    if found is None:
        unavailable("certbot not installed (Debian package certbot; devstack/test_tools.py)")
    return found


@contextmanager
def pebble_serving(dns: DnsServer) -> Iterator[AcmeServer]:
    """pebble on 127.0.0.1:<free port>, resolving challenge names through `dns`."""
    with (
        tempfile.TemporaryDirectory(prefix="mailprov-pebble-") as tmp,
        _pebble_serving(dns, Path(tmp), unavailable) as pebble,
    ):
        yield pebble.server
