"""Proof that new admin credentials work: SMTP AUTH on the server's submission port.

"VPS ready" must mean the stored password logs in. The activity that holds the
plaintext checks it before it returns the envelope: it opens a TCP channel through
the already-pinned SSH connection to 127.0.0.1:587 on the server (MailU's front
publishes submission there, setup/flavors/compose/docker-compose.yml), then speaks
SMTP with Python's smtplib: EHLO, STARTTLS, EHLO, AUTH.

Why through SSH: the server's certificate cannot be checked yet (Let's Encrypt only
issues once the customer has published DNS), and the SSH channel is authenticated by
the pinned host key, so the password only ever reaches the server we created. TLS
inside the tunnel is still required, because MailU's front refuses AUTH without it.

The password stays in this process's memory: it never goes into argv (no `swaks`
on the server), history, logs or exception messages; smtplib's debug output is off.
"""

from __future__ import annotations

import asyncio
import functools
import smtplib
import ssl

import asyncssh
from temporalio.exceptions import ApplicationError

SUBMISSION_PORT = 587
PROOF_TIMEOUT = 30.0


class LoginProofFailed(Exception):
    """The server did not accept the credentials; the message never holds the password."""


@functools.cache
def _tunnel_tls_context() -> ssl.SSLContext:
    """TLS without certificate checks: the pinned SSH tunnel already authenticates.

    Made once and without loading the system's CA certificates, which it never uses.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _smtp_login(port: int, username: str, password: str, helo_name: str) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=helo_name, timeout=PROOF_TIMEOUT) as s:
            s.ehlo()
            if not s.has_extn("starttls"):
                raise LoginProofFailed("the submission port offers no STARTTLS")
            s.starttls(context=_tunnel_tls_context())
            s.ehlo()
            if "PLAIN" not in s.esmtp_features.get("auth", "").upper().split():
                raise LoginProofFailed("the submission port offers no AUTH PLAIN after STARTTLS")
            # One AUTH PLAIN, not login(): login() retries every offered mechanism, and
            # each failure counts against MailU's AUTH_RATELIMIT.
            s.user, s.password = username, password
            s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPAuthenticationError as err:
        raise LoginProofFailed(f"SMTP AUTH refused: {err.smtp_code}") from None
    except (smtplib.SMTPException, OSError) as err:
        # The class name and smtplib's reply code only: never the arguments of login().
        raise LoginProofFailed(f"SMTP submission failed: {type(err).__name__}") from None


async def prove_smtp_login(
    conn: asyncssh.SSHClientConnection, username: str, password: str
) -> None:
    """Log in as `username` over SMTP submission on the server; raise if refused.

    Raises a retryable `AdminLoginProofFailed`: MailU may still be settling (front
    reloading), and the next attempt sets a fresh password and proves it again; when
    retries run out, the workflow compensates.
    """
    try:
        listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", SUBMISSION_PORT)
    except (asyncssh.Error, OSError) as err:
        raise ApplicationError(
            f"cannot open an SSH tunnel to the submission port: {err}",
            type="AdminLoginProofFailed",
        ) from None
    try:
        await asyncio.to_thread(
            _smtp_login, listener.get_port(), username, password, "mail-provisioning"
        )
    except LoginProofFailed as err:
        raise ApplicationError(
            f"admin login proof failed for {username}: {err}", type="AdminLoginProofFailed"
        ) from None
    finally:
        listener.close()
        await listener.wait_closed()
