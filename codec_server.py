"""Codec server: lets operators see decrypted payloads in the Web UI and the CLI.

Implements Temporal's remote codec protocol (POST /encode and /decode with
`{"payloads": [...]}` in protobuf JSON), so:

    temporal server start-dev --ui-codec-endpoint http://127.0.0.1:8081 ...
    temporal workflow show -w purchase-p-1 \\
        --codec-endpoint http://127.0.0.1:8081 --codec-auth "Bearer $(cat codec.token)"

Every /encode and /decode needs a credential; a missing or wrong one gets 401 with a
JSON message saying so. There are two, and no request is trusted for its headers alone
(an Origin header is not authentication: any program can send one):

- `Authorization: Bearer <token>` (MAILPROV_CODEC_SERVER_TOKEN or ..._FILE): the CLI,
  SDKs, curl.
- A browser session for the Web UI, which cannot send our token: the operator signs in
  once at `/login` with the token, and the server sets a cookie (HMAC of an expiry time
  under the token: 8 hours, no server state, void once the token changes). The Web UI
  sends it with its "Include cross-origin credentials" codec setting (temporalio/ui
  src/lib/services/data-encoder.ts: `credentials: 'include'`). The cookie is HttpOnly,
  SameSite=Strict (a page of another site cannot make the browser send it), scoped to
  /decode and /encode, and only accepted with the Origin of a configured Web UI, which a
  browser sets itself and a page cannot forge.

CORS is answered for the Web UI origin only (MAILPROV_CODEC_UI_ORIGIN, comma-separated
for several names); a loopback origin is accepted in each of its spellings (127.0.0.1,
localhost, [::1]) since a browser sends whichever the operator typed.

The server is reachable by whoever can open a connection, so it bounds what one can
cost: a body needs a valid Content-Length of at most MAX_BODY (no chunked bodies), every
read waits at most READ_TIMEOUT_SECONDS and a whole request REQUEST_DEADLINE_SECONDS,
and at most MAX_CONNECTIONS are served at once (one thread each; the rest get 503).

Standard library HTTP on purpose: this is a few dozen lines of protocol and
adding a web framework to the production dependencies would buy nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import io
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from runtime.codec import CodecKeyError, EncryptionCodec, KeyRing
from runtime.logs import configure_logging, get_logger

log = get_logger("codec_server")
MAX_BODY = 4 * 1024 * 1024
MAX_LOGIN_BODY = 4 * 1024
READ_TIMEOUT_SECONDS = 10.0
REQUEST_DEADLINE_SECONDS = 30.0
MAX_CONNECTIONS = 32
SESSION_SECONDS = 8 * 3600
SESSION_COOKIE = "mailprov_codec_session"
# Paths the session cookie is sent to: the browser keeps one cookie per path, so other
# services on the same host (cookies ignore ports) never receive it.
SESSION_PATHS = ("/decode", "/encode")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}
CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")
UNAUTHORIZED = (
    "codec server: missing or wrong bearer token; send 'Authorization: Bearer <token>' "
    "with the token of MAILPROV_CODEC_SERVER_TOKEN(_FILE), or sign the browser in at /login"
)
BUSY = b'{"error": "codec server: too many connections, try again"}'
TRUST_ORIGIN_REMOVED = (
    "MAILPROV_CODEC_TRUST_UI_ORIGIN is no longer supported: an Origin header is not "
    "authentication (any local program can send one). Unset it; sign the browser in at "
    "the codec server's /login with the token instead (docs/security.md)"
)


def normalize_origin(origin: str) -> str | None:
    """`scheme://host:port` in lowercase with the port spelled out, or None if not an origin."""
    try:
        parts = urlsplit(origin.strip().rstrip("/"))
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme.lower()}://{host.lower()}:{port}"


def allowed_origins(configured: str | None) -> frozenset[str]:
    """Every spelling a browser may send for the configured Web UI origin(s).

    A UI on the loopback interface is reached as 127.0.0.1, localhost or [::1] (and the
    dev server binds 127.0.0.1 while people type localhost), so each loopback origin
    stands for all three; other hosts are listed explicitly, comma-separated.
    """
    origins: set[str] = set()
    for entry in (configured or "").split(","):
        origin = normalize_origin(entry) if entry.strip() else None
        if origin is None:
            continue
        origins.add(origin)
        scheme, _, rest = origin.partition("://")
        host, _, port = rest.rpartition(":")
        if host in LOOPBACK_NAMES:
            origins.update(f"{scheme}://{name}:{port}" for name in LOOPBACK_NAMES)
    return frozenset(origins)


def session_value(token: str, expires: int) -> str:
    """The cookie for a browser signed in until `expires` (Unix time): `expires.mac`."""
    mac = hmac.new(token.encode(), f"codec-ui-session:{expires}".encode(), hashlib.sha256)
    return f"{expires}.{mac.hexdigest()}"


def session_valid(token: str, value: str, now: float) -> bool:
    expires, _, _ = value.partition(".")
    if not expires.isascii() or not expires.isdigit() or int(expires) <= now:
        return False
    return hmac.compare_digest(value.encode(), session_value(token, int(expires)).encode())


class _DeadlineReader(io.RawIOBase):
    """A socket reader that gives up once a request has taken `deadline` in total.

    The per-read timeout alone lets a client keep a thread by sending a byte every few
    seconds; this bounds the whole request. TimeoutError is what http.server's
    handle_one_request catches to drop the connection.
    """

    def __init__(self, sock: socket.socket, read_timeout: float, deadline: float) -> None:
        self._sock = sock
        self._read_timeout = read_timeout
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(min(self._read_timeout, remaining))
        return self._sock.recv_into(buffer)


class CodecServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        codec: EncryptionCodec,
        token: str,
        ui_origin: str | None,
        *,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        request_deadline: float = REQUEST_DEADLINE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(address, CodecHandler)
        self.codec = codec
        self.token = token
        self.ui_origins = allowed_origins(ui_origin)
        self.read_timeout = read_timeout
        self.request_deadline = request_deadline
        self.clock = clock
        self._slots = threading.BoundedSemaphore(max_connections)

    def is_ui_origin(self, origin: str | None) -> bool:
        return bool(origin) and normalize_origin(origin or "") in self.ui_origins

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most MAX_CONNECTIONS: the rest get 503 at once."""
        if not self._slots.acquire(blocking=False):
            log.warning("refused: too many connections", client=client_address[0])
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\n"
                    + f"Content-Length: {len(BUSY)}\r\n\r\n".encode()
                    + BUSY
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class CodecHandler(BaseHTTPRequestHandler):
    server: CodecServer

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + self.server.request_deadline
        self.rfile.close()  # the plain socket file; it would keep the socket open
        self.rfile = io.BufferedReader(
            _DeadlineReader(self.connection, self.server.read_timeout, deadline)
        )

    def do_OPTIONS(self) -> None:
        self._reply(204, b"")

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") != "/login":
            return self._error(404, "not found: POST /encode or /decode, or GET /login")
        self._page(200, "Sign in to decode payloads in the Temporal Web UI", _LOGIN_FORM)

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/login", "/logout"):
            return self._login() if path == "/login" else self._logout()
        operations: dict[str, Callable[[Sequence[Payload]], Coroutine[Any, Any, list[Payload]]]] = {
            "/encode": self.server.codec.encode,
            "/decode": self.server.codec.decode,
        }
        operation = operations.get(path)
        if operation is None:
            return self._error(404, "not found: use /encode or /decode")
        if not self._authorized():
            log.warning("refused: missing or wrong bearer token", path=self.path)
            return self._error(401, UNAUTHORIZED)
        body = self._read_body(MAX_BODY)
        if body is None:
            return
        try:
            payloads = json_format.Parse(body, Payloads())
        except json_format.ParseError:
            return self._error(400, 'body must be {"payloads": [...]} in protobuf JSON')
        try:
            result: list[Payload] = asyncio.run(operation(list(payloads.payloads)))
        except CodecKeyError as err:
            return self._error(422, str(err))
        body = json_format.MessageToJson(Payloads(payloads=result)).encode()
        self._reply(200, body, "application/json")

    # ------------------------------------------------------------------ credentials

    def _authorized(self) -> bool:
        supplied = self.headers.get("Authorization", "")
        if hmac.compare_digest(supplied.encode(), f"Bearer {self.server.token}".encode()):
            return True
        # A session counts only from the Web UI's page: browsers set Origin themselves.
        if not self.server.is_ui_origin(self.headers.get("Origin")):
            return False
        session = self._cookie(SESSION_COOKIE)
        return session is not None and session_valid(
            self.server.token, session, self.server.clock()
        )

    def _cookie(self, name: str) -> str | None:
        cookies: SimpleCookie = SimpleCookie()
        try:
            for header in self.headers.get_all("Cookie") or []:
                cookies.load(header)
        except CookieError:
            return None
        morsel = cookies.get(name)
        return morsel.value if morsel is not None else None

    def _login(self) -> None:
        body = self._read_body(MAX_LOGIN_BODY)
        if body is None:
            return
        supplied = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip()
        if not hmac.compare_digest(supplied.encode(), self.server.token.encode()):
            log.warning("refused: sign-in with a wrong token")
            return self._page(401, "Wrong token", "<p>That is not the codec server's token.</p>")
        expires = int(self.server.clock()) + SESSION_SECONDS
        value = session_value(self.server.token, expires)
        log.info("browser signed in", expires=expires)
        self._page(
            200,
            "Signed in",
            _SIGNED_IN.format(url=html.escape(self.server.url), hours=SESSION_SECONDS // 3600),
            [_set_cookie(value, SESSION_SECONDS, path) for path in SESSION_PATHS],
        )

    def _logout(self) -> None:
        cookies = [_set_cookie("", 0, path) for path in SESSION_PATHS]
        self._page(200, "Signed out", "<p>This browser no longer decodes payloads.</p>", cookies)

    # ------------------------------------------------------------------ bodies

    def _read_body(self, limit: int) -> bytes | None:
        """The request body, or None after answering why it is refused.

        Only a Content-Length of plain digits is accepted: int() would take "-1" (and
        rfile.read(-1) reads until the client stops) or fail on "abc" without an answer.
        """
        if self.headers.get("Transfer-Encoding") is not None:
            self._error(411, "send the body with Content-Length; Transfer-Encoding is refused")
            return None
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not lengths:
            self._error(411, "Content-Length is required")
            return None
        if len(lengths) > 1 or not CONTENT_LENGTH.fullmatch(next(iter(lengths))):
            self._error(400, "Content-Length must be one whole number of bytes")
            return None
        length = int(next(iter(lengths)))
        if length > limit:
            self._error(413, f"body larger than {limit} bytes")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self._error(400, f"body ended after {len(body)} of {length} bytes")
            return None
        return body

    # ------------------------------------------------------------------ replies

    def _error(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode(), "application/json")

    def _page(self, status: int, title: str, content: str, cookies: Sequence[str] = ()) -> None:
        body = _PAGE.format(title=html.escape(title), content=content).encode()
        self._reply(status, body, "text/html; charset=utf-8", cookies)

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str | None = None,
        cookies: Sequence[str] = (),
    ) -> None:
        # The last read may have left the socket with the request deadline's remainder as
        # its timeout; the answer gets a whole READ_TIMEOUT per write instead.
        self.connection.settimeout(self.server.read_timeout)
        self.send_response(status)
        origin = self.headers.get("Origin")
        if self.server.is_ui_origin(origin):
            self.send_header("Access-Control-Allow-Origin", str(origin))
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header(
                "Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization"
            )
            self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Vary", "Origin")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="codec-server"')
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        if content_type:
            self.send_header("Content-Type", content_type)
        # Decoded payloads and sign-in pages: never cached, never framed by another page.
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("request", line=format % args)


def _set_cookie(value: str, max_age: int, path: str) -> str:
    return f"{SESSION_COOKIE}={value}; Max-Age={max_age}; Path={path}; HttpOnly; SameSite=Strict"


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1>{content}</body></html>
"""
_LOGIN_FORM = """<form method="post" action="/login">
<p><label>Codec server token <input type="password" name="token" autocomplete="off"
 autofocus></label> <button type="submit">Sign in</button></p></form>
<form method="post" action="/logout"><p><button type="submit">Sign out</button></p></form>
"""
_SIGNED_IN = """<p>This browser decodes payloads for {hours} hours.</p>
<p>In the Temporal Web UI open the codec server settings, set the endpoint to
<code>{url}</code> (choose "Use my browser setting" if the cluster sets one) and
turn on "Include cross-origin credentials". Open the Web UI under the same host name as
this page (127.0.0.1 or localhost): the browser sends the session only there.</p>
"""


def _secret(name: str) -> str:
    path = os.environ.get(f"{name}_FILE")
    value = Path(path).read_text().strip() if path else os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"error: {name} or {name}_FILE is required")
    return value


def main() -> int:
    configure_logging()
    if os.environ.get("MAILPROV_CODEC_TRUST_UI_ORIGIN", "").strip():
        print(f"error: {TRUST_ORIGIN_REMOVED}", file=sys.stderr)
        return 2
    keys_file = os.environ.get("MAILPROV_CODEC_KEYS_FILE")
    if not keys_file:
        print("error: MAILPROV_CODEC_KEYS_FILE is required", file=sys.stderr)
        return 2
    try:
        keyring = KeyRing.from_file(Path(keys_file))
    except CodecKeyError as err:
        print(f"error: MAILPROV_CODEC_KEYS_FILE: {err}", file=sys.stderr)
        return 2
    bind = os.environ.get("MAILPROV_CODEC_BIND", "127.0.0.1:8081")
    host, _, port = bind.rpartition(":")
    server = CodecServer(
        (host, int(port)),
        EncryptionCodec(keyring),
        token=_secret("MAILPROV_CODEC_SERVER_TOKEN"),
        ui_origin=os.environ.get("MAILPROV_CODEC_UI_ORIGIN"),
    )
    log.info("codec server ready", url=server.url, ui_origins=sorted(server.ui_origins))
    print(json.dumps({"url": server.url}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
