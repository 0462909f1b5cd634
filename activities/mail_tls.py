"""Does mail.{domain} present a certificate a client trusts, on every port that takes TLS?

MailU 2024.06 with TLS_FLAVOR=letsencrypt (core/nginx/letsencrypt.py, config.py,
start.py at tag 2024.06.57; devstack/mailu_front.py models them): front's certbot
gets the certificate once the customer's DNS points at the server, nginx serves it on
443 after its reload, and dovecot (465, 993) only after front restarts once the first
certificate exists (Mailu/Mailu#3827). So the check is:

- what front's certbot holds: the public chain files
  (/mailu/certs/letsencrypt/live/{mailu,mailu-ecdsa}/fullchain.pem), read over SSH with
  `cat`. Only those: the private keys and certbot's ACME account key stay on the
  server, never read, never logged, never in a result;
- a real TLS handshake on 443, 465 and 993 (implicit TLS each) of the server's
  address, validating the chain against the worker's trust anchors
  (MAILPROV_TLS_CA_FILE, else the system's store) for the name mail.{domain}.

Ports: MAILPROV_TLS_CHECK_PORTS maps a service port to the port connected to
(`443=8443,993=9993`; unset, each is itself). Only the local stack needs it, where
the servers' 443 and 993 are unprivileged host ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC

from cryptography import x509
from cryptography.x509.oid import NameOID

from workflows.activation_contracts import CertificateFacts, PortCheck

TLS_PORTS = (443, 465, 993)
DOVECOT_PORTS = frozenset({465, 993})  # served by front's dovecot (Mailu/Mailu#3405)
LETSENCRYPT_LIVE = "/mailu/certs/letsencrypt/live"
# config.py args["TLS"] for letsencrypt: both certificates must exist for front's TLS.
CERT_NAMES = ("mailu", "mailu-ecdsa")
CA_FILE_ENV = "MAILPROV_TLS_CA_FILE"
PORTS_ENV = "MAILPROV_TLS_CHECK_PORTS"
HANDSHAKE_TIMEOUT = 10.0
MAX_PROBLEM = 200


def fullchain_path(cert_name: str) -> str:
    return f"{LETSENCRYPT_LIVE}/{cert_name}/fullchain.pem"


def port_map_from_setting(setting: str | None) -> dict[int, int]:
    """`443=8443,993=9993` -> {443: 8443, 993: 9993}; ValueError when malformed."""
    mapping: dict[int, int] = {}
    for item in (part.strip() for part in (setting or "").split(",")):
        if not item:
            continue
        service, separator, connect = item.partition("=")
        if not separator:
            raise ValueError(f"{PORTS_ENV}: {item!r} is not SERVICE_PORT=PORT")
        service_port, connect_port = int(service), int(connect)
        if service_port not in TLS_PORTS:
            raise ValueError(f"{PORTS_ENV}: {service_port} is not one of {TLS_PORTS}")
        if not 0 < connect_port < 65536:
            raise ValueError(f"{PORTS_ENV}: port {connect_port} out of range")
        mapping[service_port] = connect_port
    return mapping


@dataclass(frozen=True)
class TlsSettings:
    """The worker's trust anchors and port map for the handshakes."""

    ca_file: str | None = None
    ports: Mapping[int, int] = field(default_factory=dict)
    timeout: float = HANDSHAKE_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsSettings:
        return cls(
            env.get(CA_FILE_ENV, "").strip() or None, port_map_from_setting(env.get(PORTS_ENV))
        )

    def context(self) -> ssl.SSLContext:
        """A client context that verifies chain and name (what a mail client does)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def connect_port(self, port: int) -> int:
        return self.ports.get(port, port)


def certificate_facts(pem: str, hostname: str) -> CertificateFacts:
    """The leaf of a fullchain.pem: its names, issuer, validity; nothing secret is in it."""
    chain = x509.load_pem_x509_certificates(pem.encode("ascii"))
    leaf = chain[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = [str(n) for n in names.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns_names = []
    issuer = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateFacts(
        names=dns_names[:8],
        issuer=str(issuer[0].value) if issuer else leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc.astimezone(UTC).isoformat(timespec="seconds"),
        not_after=leaf.not_valid_after_utc.astimezone(UTC).isoformat(timespec="seconds"),
        names_host=hostname.lower() in (name.lower() for name in dns_names),
    )


async def handshake(
    address: str, port: int, hostname: str, context: ssl.SSLContext, timeout: float
) -> str | None:
    """None when a TLS handshake with address:port validated the chain for hostname,
    else what went wrong, in words an operator can act on."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, ssl=context, server_hostname=hostname),
            timeout,
        )
    except ssl.SSLCertVerificationError as err:
        return f"certificate not trusted for {hostname}: {err.verify_message}"[:MAX_PROBLEM]
    except ConnectionRefusedError:
        return "connection refused: nothing listens (front's TLS not up)"
    except TimeoutError:
        return f"no TLS handshake within {timeout:.0f} s"
    except (ssl.SSLError, OSError) as err:
        return f"{type(err).__name__}: {err}"[:MAX_PROBLEM]
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return None


async def check_ports(address: str, hostname: str, settings: TlsSettings) -> list[PortCheck]:
    """One handshake per port of TLS_PORTS, in order."""
    context = settings.context()
    checks = []
    for port in TLS_PORTS:
        problem = await handshake(
            address, settings.connect_port(port), hostname, context, settings.timeout
        )
        checks.append(PortCheck(port, problem))
    return checks
