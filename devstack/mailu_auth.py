"""MailU's login check as front asks it, and the `curl` in the admin image that asks it.

Every mail login on a MailU 2024.06 server is decided by the admin container's
``GET /internal/auth/email`` (core/admin/mailu/internal/views/auth.py
``nginx_authentication`` and internal/nginx.py ``handle_authentication``, tag 2024.06.57):
front's nginx (port 25, core/nginx/conf/nginx.conf ``auth_http``) and front's dovecot
proxy (465/993/995/4190, core/nginx/dovecot/login.lua) send the login as request
headers (``Auth-User``/``Auth-Pass`` URL-encoded, ``Auth-Method``, ``Auth-Protocol``,
``Auth-Port``, ``Client-Ip``, ``Client-Port``) and act on the ``Auth-Status`` response
header. The admin app serves it with gunicorn on port 8080 inside the container
(core/admin/start.py ``-b 0.0.0.0:8080``), and the admin image ships curl
(core/base/Dockerfile ``apk add ... curl``; admin's HEALTHCHECK uses it).

This module answers ``curl ... http://127.0.0.1:8080/internal/auth/email`` run in the
admin container (``docker compose exec -T admin curl ...``) for the stand-in: the
flags the product uses, headers from a file or stdin (``-H @-``, curl >= 7.55), the
same response headers and status codes MailU gives, and curl's own exit codes
(7 no connection, 22 ``--fail`` on HTTP >= 400). Not modelled: MailU's rate limiter
(utils.limiter; AUTH_RATELIMIT_IP 5/hour per /24 after failures, 127.0.0.1 exempted for
a day after one success), app tokens, AUTH_REQUIRE_TOKENS, INBOUND_TLS_ENFORCE.

Each attempt is logged (who, protocol, port, outcome; never the password), as MailU's
admin logs "Login attempt for: user/protocol/port from: ip/port: success|failed".
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from devstack.mailu import ExecResult, MailuStore, StdinReader

ADMIN_PORT = 8080  # core/admin/start.py: gunicorn -b 0.0.0.0:8080
# internal/nginx.py STATUSES: the error codes per protocol.
AUTH_FAILED = "Authentication credentials invalid"
ERROR_CODES = {
    "imap": "AUTHENTICATIONFAILED",
    "smtp": "535 5.7.8",
    "submission": "535 5.7.8",
    "lmtp": "535 5.7.8",
    "pop3": "-ERR Authentication failed",
    "sieve": "AuthFailed",
}
# internal/nginx.py get_server: where an authenticated session is proxied to.
BACKEND_PORTS = {
    "imap": 143,
    "pop3": 110,
    "smtp": 10025,
    "submission": 10025,
    "lmtp": 2525,
    "sieve": 4190,
}
BACKEND_ADDRESS = "192.168.203.4"  # what get_server resolves IMAP/SMTP_ADDRESS to here
_FLAGS = {"-s", "--silent", "-S", "--show-error", "-f", "--fail"}
# Valued options by their long name.
_VALUED = {
    "-m": "--max-time",
    "--max-time": "--max-time",
    "-o": "--output",
    "--output": "--output",
    "-D": "--dump-header",
    "--dump-header": "--dump-header",
    "-H": "--header",
    "--header": "--header",
}


class _ServerError(Exception):
    """An uncaught exception in the Flask view: gunicorn answers 500."""


class AdminAuthEndpoint:
    """``/internal/auth/email`` over the stand-in's MailU database."""

    def __init__(self, store: MailuStore, log_path: Path | None = None) -> None:
        self.store = store
        self.log_path = log_path

    def authenticate(self, headers: dict[str, str]) -> dict[str, str]:
        """The response headers auth.py nginx_authentication sets (KeyError -> 500)."""
        try:
            client_ip = headers["client-ip"]
            port = headers["auth-port"]
            method = headers["auth-method"].lower()
            protocol = headers["auth-protocol"].lower()
        except KeyError as missing:
            raise _ServerError(f"KeyError: {missing}") from None
        if port == "25" and method != "none":
            return {"Auth-Status": "AUTH not supported", "Auth-Error-Code": "502 5.5.1"}
        if method in ("", "none") and protocol in ("smtp", "lmtp"):
            return {
                "Auth-Status": "OK",
                "Auth-Server": BACKEND_ADDRESS,
                "Auth-Port": str(25 if protocol == "smtp" else BACKEND_PORTS[protocol]),
            }
        if method not in ("plain", "login"):
            raise _ServerError(f"SHOULD NOT HAPPEN {protocol} {method}")
        if protocol not in ERROR_CODES:
            raise _ServerError(f"KeyError: {protocol!r}")
        user = urllib.parse.unquote(headers.get("auth-user", "invalid"))
        password = urllib.parse.unquote(headers.get("auth-pass", "invalid"))
        if "client-port" not in headers:
            raise _ServerError("KeyError: 'Client-Port'")
        exists = "@" in user and user.strip().lower() in self.store.load()["user"]
        ok = exists and self.store.check_login(user, password)
        self._log(user, protocol, port, client_ip, ok)
        if ok:
            return {
                "Auth-Status": "OK",
                "Auth-Server": BACKEND_ADDRESS,
                "Auth-User": user,
                "Auth-User-Exists": "True",
                "Auth-Port": str(BACKEND_PORTS[protocol]),
            }
        return {
            "Auth-Status": AUTH_FAILED,
            "Auth-Error-Code": ERROR_CODES[protocol],
            "Auth-User": user,
            "Auth-User-Exists": str(exists),
            "Auth-Wait": "0",
        }

    def _log(self, login: str, protocol: str, port: str, client_ip: str, success: bool) -> None:
        if self.log_path is None:
            return
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "login": login,
            "mechanism": "PLAIN",
            "protocol": protocol,
            "port": port,
            "client_ip": client_ip,
            "success": success,
        }
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        """One request to the admin app: (HTTP status, response headers)."""
        if path == "/ping":
            return 200, {}
        if path != "/internal/auth/email":
            return 404, {}
        try:
            return 200, self.authenticate(headers)
        except _ServerError:
            return 500, {}


_REASONS = {200: "OK", 404: "NOT FOUND", 500: "INTERNAL SERVER ERROR"}


def _curl_fail(status: int, message: str) -> ExecResult:
    return ExecResult(status, "", f"curl: {message}\n")


async def curl_in_admin(
    argv: list[str],
    read_stdin: StdinReader,
    endpoint: AdminAuthEndpoint,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> ExecResult:
    """``curl [OPTIONS] URL`` inside the admin container, for the options the product uses."""
    options: dict[str, str] = {}
    flags: set[str] = set()
    header_args: list[str] = []
    urls: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _FLAGS:
            flags.add(arg)
        elif arg in _VALUED:
            if i + 1 >= len(argv):
                return _curl_fail(2, f"option {arg}: requires parameter")
            i += 1
            if _VALUED[arg] == "--header":
                header_args.append(argv[i])
            else:
                options[_VALUED[arg]] = argv[i]
        elif arg.startswith("-"):
            return _curl_fail(2, f"option {arg}: is unknown (the devstack curl models few)")
        else:
            urls.append(arg)
        i += 1
    if len(urls) != 1:
        return _curl_fail(2, "no URL specified" if not urls else "one URL only (devstack)")
    headers: dict[str, str] = {}
    for value in header_args:
        if value == "@-":
            lines = (await read_stdin()).splitlines()
        elif value.startswith("@"):
            return _curl_fail(26, f"Failed to open {value[1:]}")
        else:
            lines = [value]
        for line in lines:
            name, sep, content = line.partition(":")
            if sep and name.strip():
                headers[name.strip().lower()] = content.strip()
    url = urllib.parse.urlsplit(urls[0])
    if (
        url.scheme != "http"
        or url.hostname not in ("127.0.0.1", "localhost")
        or ((url.port or 80) != ADMIN_PORT)
    ):
        host, port = url.hostname or "", url.port or 80
        return _curl_fail(
            7, f"(7) Failed to connect to {host} port {port} after 0 ms: Couldn't connect to server"
        )
    status, response = endpoint.get(url.path, headers)
    fail = {"-f", "--fail"} & flags
    if fail and status >= 400:
        return _curl_fail(22, f"(22) The requested URL returned error: {status}")
    date = clock().strftime("%a, %d %b %Y %H:%M:%S GMT")
    head = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Server: gunicorn",
        f"Date: {date}",
        "Connection: close",
        "Content-Type: text/html; charset=utf-8",
        "Content-Length: 0",
        *(f"{k}: {v}" for k, v in response.items()),
    ]
    dumped = "".join(f"{line}\r\n" for line in head) + "\r\n"
    stdout = dumped if options.get("--dump-header") == "-" else ""
    return ExecResult(0, stdout, "")
