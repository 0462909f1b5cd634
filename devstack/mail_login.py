"""A mail client's login on a local VPS, the way it works on a real MailU server.

MailU 2024.06 takes client logins on 465 (submissions, implicit TLS) and has a
certificate only once the customer's DNS points at the server (TLS_FLAVOR=letsencrypt;
see devstack/vps.py `_certbot`). So a login is: the customer publishes DNS
(`publish_dns`), MailU's certbot gets the certificate, the client connects with TLS,
checking the chain against that certificate, and sends AUTH.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from pathlib import Path

from devstack.mailu_front import DNS_PUBLISHED

PEM_END = "-----END CERTIFICATE-----"

CERT_WAIT_SECONDS = 30.0


def publish_dns(state_dir: Path) -> None:
    """The customer's records now point at this server (the stand-in's marker file)."""
    (state_dir / DNS_PUBLISHED).write_text("published\n", encoding="ascii")


def certificate_after_dns(state_dir: Path, wait: float = CERT_WAIT_SECONDS) -> str:
    """Publish DNS and return the certificate front then serves (PEM)."""
    publish_dns(state_dir)
    cert = state_dir / "tls" / "cert.pem"
    deadline = time.monotonic() + wait
    while True:
        # A whole PEM, never just a file: ssl refuses an empty CA file
        # (NO_CERTIFICATE_OR_CRL_FOUND), which is what a half-written one looks like.
        pem = cert.read_text(encoding="ascii") if cert.is_file() else ""
        if PEM_END in pem:
            return pem
        if time.monotonic() > deadline:
            raise TimeoutError(f"no certificate in {cert.parent} {wait:.0f} s after DNS")
        time.sleep(0.05)


def submissions_login(host: str, port: int, cafile: Path, username: str, password: str) -> str:
    """Implicit TLS (chain checked against `cafile`), one AUTH; "235 ..." on success.

    A refused login raises smtplib.SMTPAuthenticationError (code 535).
    """
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False  # reached by IP; the chain is still verified
    with smtplib.SMTP_SSL(host, port, timeout=15, context=context) as smtp:
        code, reply = smtp.login(username, password)
    return f"{code} {reply.decode(errors='replace')}"
