"""Proof that new admin credentials work: MailU's own login check, asked on the server.

"VPS ready" must mean the stored password logs in. The activity that holds the
plaintext checks it before it returns the envelope, by asking the question MailU's
front asks for every mail login: `GET /internal/auth/email` on the admin container
(core/admin/mailu/internal/views/auth.py `nginx_authentication`, MailU tag 2024.06.57),
with the headers front's dovecot proxy sends for an SMTP submission login on port 465
(core/nginx/dovecot/login.lua: Auth-Method, Auth-Protocol `submission`, Auth-Port,
Auth-User and Auth-Pass URL-encoded, Client-Ip, Client-Port). MailU answers
`Auth-Status: OK` when the account exists, is enabled and the password matches
(internal/nginx.py `check_credentials`), exactly the decision a mail client's login meets.

Why not SMTP AUTH on a port: MailU 2024.06 does not listen on 587 (or 143/110) by
default (core/base/libs/socrate/socrate/system.py `clean_env`: PORTS defaults to
25,80,443,465,993,995,4190), port 25 refuses AUTH (`smtp_auth none`), and with
TLS_FLAVOR=letsencrypt the TLS ports have no certificate until the customer's DNS
points at the server (core/nginx/config.py "Missing cert or key file, disabling TLS";
letsencrypt.py waits for http://HOSTNAME/.well-known/...). This check needs neither.

The request runs inside the admin container (`docker compose exec -T admin curl`, the
curl MailU's admin image ships for its HEALTHCHECK) against gunicorn on 127.0.0.1:8080,
over the pinned SSH connection. The headers, password included, go to curl on stdin
(`-H @-`, curl >= 7.55), never in argv; curl prints only the response headers.
Client-Ip is 127.0.0.1: a failure counts against MailU's rate limit for 127.0.0.0/24
(AUTH_RATELIMIT_IP), never against a customer's address, and a success exempts it.
"""

from __future__ import annotations

import urllib.parse

import asyncssh
from temporalio.exceptions import ApplicationError

from activities.mailu import COMPOSE
from activities.ssh import RemoteCommandError, run_remote

# What front's dovecot proxy sends for AUTH PLAIN on submissions (465), login.lua.
AUTH_PORT = "465"
AUTH_PROTOCOL = "submission"
AUTH_EMAIL_URL = "http://127.0.0.1:8080/internal/auth/email"
PROOF_TIMEOUT = 30
AUTH_CHECK = (
    f"{COMPOSE} exec -T admin curl --silent --show-error --fail "
    f"--max-time {PROOF_TIMEOUT} --output /dev/null --dump-header - --header @- {AUTH_EMAIL_URL}"
)


def auth_request_headers(username: str, password: str) -> str:
    """The request headers, one per line, for curl's `--header @-` (stdin only).

    URL-encoded like login.lua's urlEncode, undone by MailU's urllib.parse.unquote.
    """
    quote = urllib.parse.quote
    return (
        "Auth-Method: plain\n"
        f"Auth-Protocol: {AUTH_PROTOCOL}\n"
        f"Auth-Port: {AUTH_PORT}\n"
        f"Auth-User: {quote(username, safe='')}\n"
        f"Auth-Pass: {quote(password, safe='')}\n"
        "Auth-SSL: on\n"
        "Client-Ip: 127.0.0.1\n"
        "Client-Port: 0\n"
    )


def auth_status(response_headers: str) -> str:
    """The `Auth-Status` header of the (last) response curl dumped; "" if none."""
    status = ""
    for line in response_headers.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "auth-status":
            status = value.strip()
    return status


async def prove_smtp_login(
    conn: asyncssh.SSHClientConnection, username: str, password: str
) -> None:
    """Ask MailU whether `username` logs in with `password`; raise if it says no.

    Raises a retryable `AdminLoginProofFailed`: MailU may still be settling, and the
    next attempt sets a fresh password and proves it again; when retries run out,
    the workflow compensates. Messages carry MailU's Auth-Status, never the password.
    """
    try:
        output = await run_remote(
            conn,
            AUTH_CHECK,
            stdin=auth_request_headers(username, password),
            timeout=PROOF_TIMEOUT + 30.0,
        )
    except RemoteCommandError as err:
        raise ApplicationError(
            f"admin login proof for {username} could not ask MailU: {err}",
            type="AdminLoginProofFailed",
        ) from None
    status = auth_status(output)
    if status != "OK":
        raise ApplicationError(
            f"admin login proof failed for {username}: MailU answered "
            f"Auth-Status {status or '(none)'!r}",
            type="AdminLoginProofFailed",
        )
