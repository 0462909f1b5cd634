"""Knot DNS for tests (devstack/dns_server.py): skipped without knotd, failed under CI."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from devstack.dns_server import DnsServer, zone_text
from devstack.dns_server import knot_serving as _knot_serving
from tests.helpers import unavailable

__all__ = ["DnsServer", "knot_serving", "zone_text"]


@contextmanager
def knot_serving(zones: Mapping[str, Sequence[str]], port: int = 0) -> Iterator[DnsServer]:
    with _knot_serving(zones, missing=unavailable, port=port) as server:
        yield server
