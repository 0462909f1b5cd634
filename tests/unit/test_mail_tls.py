"""The activation's TLS check (activities/mail_tls.py) against real TLS listeners on
loopback, with certificates made by the test's own CA: a validated chain for the name,
and each way a client refuses one, named."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from activities.mail_tls import (
    TlsSettings,
    certificate_facts,
    check_ports,
    handshake,
    port_map_from_setting,
)
from devstack.processes import free_port
from tests.tls_certs import LocalCa

HOST = "mail.acme.example"


@pytest_asyncio.fixture
async def listener(tmp_path: Path) -> AsyncIterator[tuple[LocalCa, int]]:
    ca = LocalCa(tmp_path / "ca", "test-ca")
    issued = ca.server("mail", (HOST, "127.0.0.1"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)

    async def greet(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    port = free_port()
    server = await asyncio.start_server(greet, "127.0.0.1", port, ssl=context)
    try:
        yield ca, port
    finally:
        server.close()
        await server.wait_closed()


async def test_a_chain_from_the_trusted_ca_for_the_name_validates(
    listener: tuple[LocalCa, int],
) -> None:
    ca, port = listener
    context = TlsSettings(str(ca.cert)).context()
    assert await handshake("127.0.0.1", port, HOST, context, 5) is None


async def test_another_name_or_another_ca_or_no_listener_is_named(
    listener: tuple[LocalCa, int], tmp_path: Path
) -> None:
    ca, port = listener
    trusted = TlsSettings(str(ca.cert)).context()
    wrong_name = await handshake("127.0.0.1", port, "mail.other.example", trusted, 5)
    assert wrong_name is not None and "certificate not trusted for mail.other.example" in wrong_name
    other = LocalCa(tmp_path / "other", "other-ca")
    foreign = await handshake("127.0.0.1", port, HOST, TlsSettings(str(other.cert)).context(), 5)
    assert foreign is not None and "certificate not trusted" in foreign
    refused = await handshake("127.0.0.1", free_port(), HOST, trusted, 5)
    assert refused is not None and refused.startswith("connection refused")


async def test_every_service_port_is_checked_through_the_port_map(
    listener: tuple[LocalCa, int],
) -> None:
    ca, port = listener
    settings = TlsSettings(str(ca.cert), {443: port, 465: port, 993: free_port()})
    checks = await check_ports("127.0.0.1", HOST, settings)
    assert [(c.port, c.problem is None) for c in checks] == [(443, True), (465, True), (993, False)]


def test_the_port_map_setting_is_checked() -> None:
    assert port_map_from_setting("443=8443, 993=9993") == {443: 8443, 993: 9993}
    assert port_map_from_setting("") == {}
    for bad in ("443", "25=2525", "443=0", "443=x"):
        with pytest.raises(ValueError):
            port_map_from_setting(bad)


def test_certificate_facts_name_the_leaf_only(
    listener: tuple[LocalCa, int], tmp_path: Path
) -> None:
    ca, _ = listener
    issued = ca.server("leaf", (HOST,))
    facts = certificate_facts(issued.cert.read_text() + ca.cert.read_text(), HOST)
    assert facts.names == [HOST] and facts.names_host and facts.issuer == "test-ca"
    assert not certificate_facts(issued.cert.read_text(), "mail.other.example").names_host
