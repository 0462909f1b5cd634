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
same response headers and status codes MailU gives, MailU's login rate limits
(:class:`AuthLimiter`), and curl's own exit codes (7 no connection, 22 ``--fail`` on
HTTP >= 400). Not modelled: app tokens, AUTH_REQUIRE_TOKENS, INBOUND_TLS_ENFORCE,
AUTH_RATELIMIT_EXEMPTION networks, device cookies.

Each attempt is logged (who, protocol, port, outcome; never the password), as MailU's
admin logs "Login attempt for: user/protocol/port from: ip/port: success|failed".
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import time
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


RATE_LIMITED = "Temporary authentication failure (rate-limit)"
# internal/nginx.py STATUSES["ratelimit"]
RATE_LIMIT_CODES = {
    "imap": "LIMIT",
    "smtp": "451 4.3.2",
    "submission": "451 4.3.2",
    "lmtp": "451 4.3.2",
    "pop3": "-ERR [LOGIN-DELAY] Retry later",
    "sieve": "AuthFailed",
}
_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "month": 2592000}


def _rate_limited(protocol: str) -> dict[str, str]:
    return {"Auth-Status": RATE_LIMITED, "Auth-Error-Code": RATE_LIMIT_CODES[protocol]}


def parse_limit(text: str) -> tuple[int, float]:
    """limits.parse for the forms MailU documents: "5/hour", "50 per day"."""
    amount, _, unit = text.replace(" per ", "/").partition("/")
    return int(amount), float(_PERIODS[unit.strip().rstrip("s")])


class AuthLimiter:
    """MailU's login rate limits (core/admin/mailu/limiter.py, utils.py, tag 2024.06.57).

    Failures count per client network (/24 for IPv4, /48 for IPv6: configuration.py
    AUTH_RATELIMIT_IP_V4_MASK/V6_MASK) in a moving window of AUTH_RATELIMIT_IP, once
    per (network, username) per window ("dedup-"); per user in AUTH_RATELIMIT_USER,
    once per (user, password) ("dedup2-"). A successful login exempts its IP from both
    for AUTH_RATELIMIT_EXEMPTION_LENGTH (86400 s). MailU keeps this in redis, so it
    outlives an admin restart; here it lives as long as the VPS process.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.hits: dict[tuple[str, str], list[float]] = {}
        self.marks: dict[str, float] = {}  # key -> expiry (dedup, dedup2, exempt)
        self.ip_limit = parse_limit("5/hour")
        self.user_limit = parse_limit("50/day")
        self.exemption = 86400.0

    def configured(self, env: dict[str, str]) -> AuthLimiter:
        self.ip_limit = parse_limit(env.get("AUTH_RATELIMIT_IP") or "5/hour")
        self.user_limit = parse_limit(env.get("AUTH_RATELIMIT_USER") or "50/day")
        self.exemption = float(env.get("AUTH_RATELIMIT_EXEMPTION_LENGTH") or 86400)
        return self

    def _marked(self, key: str) -> bool:
        return self.marks.get(key, 0.0) > self.clock()

    def _mark(self, key: str, seconds: float) -> None:
        self.marks[key] = self.clock() + seconds

    def _under(self, kind: str, item: str, limit: tuple[int, float]) -> bool:
        now = self.clock()
        window = [t for t in self.hits.get((kind, item), []) if t > now - limit[1]]
        self.hits[(kind, item)] = window
        return len(window) < limit[0]

    def _hit(self, kind: str, item: str) -> None:
        self.hits.setdefault((kind, item), []).append(self.clock())

    def subject(self, ip: str) -> bool:
        return not self._marked(f"exempt-{ip}")

    def exempt(self, ip: str) -> None:
        self._mark(f"exempt-{ip}", self.exemption)

    @staticmethod
    def network(ip: str) -> str:
        address = ipaddress.ip_address(ip)
        prefix = 24 if address.version == 4 else 48
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)

    def should_rate_limit_ip(self, ip: str) -> bool:
        return self.subject(ip) and not self._under("auth-ip", self.network(ip), self.ip_limit)

    def rate_limit_ip(self, ip: str, username: str | None = None) -> None:
        if not self.subject(ip):
            return
        network = self.network(ip)
        if username and self._marked(f"dedup-{network}-{username}"):
            return
        self._mark(f"dedup-{network}-{username}", self.ip_limit[1])
        self._hit("auth-ip", network)

    def should_rate_limit_user(self, username: str, ip: str) -> bool:
        return self.subject(ip) and not self._under("auth-user", username, self.user_limit)

    def rate_limit_user(self, username: str, ip: str, password: str) -> None:
        if not self.subject(ip):
            return
        digest = hmac.new(username.encode(), password.encode(), "sha256").hexdigest()[-6:]
        if password and self._marked(f"dedup2-{username}-{digest}"):
            return
        self._mark(f"dedup2-{username}-{digest}", self.user_limit[1])
        self._hit("auth-user", username)
        self.rate_limit_ip(ip, username)


class _ServerError(Exception):
    """An uncaught exception in the Flask view: gunicorn answers 500."""


class AdminAuthEndpoint:
    """``/internal/auth/email`` over the stand-in's MailU database."""

    def __init__(
        self,
        store: MailuStore,
        log_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.log_path = log_path
        self.limiter = AuthLimiter(clock)

    def authenticate(
        self, headers: dict[str, str], env: dict[str, str] | None = None
    ) -> dict[str, str]:
        """The response headers auth.py nginx_authentication sets (KeyError -> 500).

        `env` is the admin container's environment (mailu.env): the rate limits.
        """
        limiter = self.limiter.configured(env or {})
        try:
            client_ip = headers["client-ip"]
            port = headers["auth-port"]
            method = headers["auth-method"].lower()
            protocol = headers["auth-protocol"].lower()
        except KeyError as missing:
            raise _ServerError(f"KeyError: {missing}") from None
        if port == "25" and method != "none":
            limiter.rate_limit_ip(client_ip)
            return {"Auth-Status": "AUTH not supported", "Auth-Error-Code": "502 5.5.1"}
        from_webmail = port in ("10143", "10025")
        checked = protocol in ERROR_CODES and not from_webmail and port != "25"
        if checked and limiter.should_rate_limit_ip(client_ip):
            return _rate_limited(protocol)
        response = self._handle(headers, client_ip, port, method, protocol)
        user = response.get("Auth-User", "")
        valid_user = response.get("Auth-User-Exists") == "True"
        if valid_user and not from_webmail and limiter.should_rate_limit_user(user, client_ip):
            return _rate_limited(protocol)
        if response.get("Auth-Status") == "OK":
            if port != "25":
                limiter.exempt(client_ip)
        elif valid_user:
            password = urllib.parse.unquote(headers.get("auth-pass", ""))
            limiter.rate_limit_user(user, client_ip, password)
        elif not from_webmail:
            limiter.rate_limit_ip(client_ip, user)
        return response

    def _handle(
        self, headers: dict[str, str], client_ip: str, port: str, method: str, protocol: str
    ) -> dict[str, str]:
        """internal/nginx.py handle_authentication."""
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

    def get(
        self, path: str, headers: dict[str, str], env: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str]]:
        """One request to the admin app: (HTTP status, response headers)."""
        if path == "/ping":
            return 200, {}
        if path != "/internal/auth/email":
            return 404, {}
        try:
            return 200, self.authenticate(headers, env)
        except _ServerError:
            return 500, {}


_REASONS = {200: "OK", 404: "NOT FOUND", 500: "INTERNAL SERVER ERROR"}


def _curl_fail(status: int, message: str) -> ExecResult:
    return ExecResult(status, "", f"curl: {message}\n")


async def curl_in_admin(
    argv: list[str],
    read_stdin: StdinReader,
    endpoint: AdminAuthEndpoint,
    env: dict[str, str] | None = None,
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
    status, response = endpoint.get(url.path, headers, env)
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
