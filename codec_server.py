"""Codec server: lets operators see decrypted payloads in the Web UI and the CLI.

Implements Temporal's remote codec protocol (POST /encode and /decode with
`{"payloads": [...]}` in protobuf JSON), so:

    temporal server start-dev --ui-codec-endpoint http://127.0.0.1:8081 ...
    temporal workflow show -w purchase-p-1 \\
        --codec-endpoint http://127.0.0.1:8081 --codec-auth "Bearer $(cat codec.token)"

Every request needs `Authorization: Bearer <token>` (MAILPROV_CODEC_SERVER_TOKEN or
..._FILE); a missing or wrong one gets 401 with a JSON message saying so. CORS is
answered for the Web UI origin only (MAILPROV_CODEC_UI_ORIGIN, comma-separated for
several names); a loopback origin is accepted in each of its spellings (127.0.0.1,
localhost, [::1]) since a browser sends whichever the operator typed.
A Web UI without login cannot send a token; for the local demo only,
MAILPROV_CODEC_TRUST_UI_ORIGIN=1 accepts browser requests from that origin
without one. In production, put the Web UI behind SSO and enable its
"pass access token" codec setting instead.

Standard library HTTP on purpose: this is a few dozen lines of protocol and
adding a web framework to the production dependencies would buy nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from activities.codec import CodecKeyError, EncryptionCodec, KeyRing
from activities.logs import configure_logging, get_logger

log = get_logger("codec_server")
MAX_BODY = 4 * 1024 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}
UNAUTHORIZED = (
    "codec server: missing or wrong bearer token; send 'Authorization: Bearer <token>' "
    "with the token of MAILPROV_CODEC_SERVER_TOKEN(_FILE)"
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


class CodecServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        codec: EncryptionCodec,
        token: str,
        ui_origin: str | None,
        trust_ui_origin: bool = False,
    ) -> None:
        super().__init__(address, CodecHandler)
        self.codec = codec
        self.token = token
        self.ui_origins = allowed_origins(ui_origin)
        self.trust_ui_origin = trust_ui_origin

    def is_ui_origin(self, origin: str | None) -> bool:
        return bool(origin) and normalize_origin(origin or "") in self.ui_origins

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class CodecHandler(BaseHTTPRequestHandler):
    server: CodecServer

    def do_OPTIONS(self) -> None:
        self._reply(204, b"")

    def do_POST(self) -> None:
        operations: dict[str, Callable[[Sequence[Payload]], Coroutine[Any, Any, list[Payload]]]] = {
            "/encode": self.server.codec.encode,
            "/decode": self.server.codec.decode,
        }
        operation = operations.get(self.path.split("?")[0].rstrip("/"))
        if operation is None:
            return self._error(404, "not found: use /encode or /decode")
        if not self._authorized():
            log.warning("refused: missing or wrong bearer token", path=self.path)
            return self._error(401, UNAUTHORIZED)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._error(413, f"body larger than {MAX_BODY} bytes")
        try:
            payloads = json_format.Parse(self.rfile.read(length), Payloads())
        except json_format.ParseError:
            return self._error(400, 'body must be {"payloads": [...]} in protobuf JSON')
        try:
            result: list[Payload] = asyncio.run(operation(list(payloads.payloads)))
        except CodecKeyError as err:
            return self._error(422, str(err))
        body = json_format.MessageToJson(Payloads(payloads=result)).encode()
        self._reply(200, body, "application/json")

    def _authorized(self) -> bool:
        supplied = self.headers.get("Authorization", "")
        if hmac.compare_digest(supplied.encode(), f"Bearer {self.server.token}".encode()):
            return True
        return self.server.trust_ui_origin and self.server.is_ui_origin(self.headers.get("Origin"))

    def _error(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str | None = None) -> None:
        self.send_response(status)
        origin = self.headers.get("Origin")
        if self.server.is_ui_origin(origin):
            self.send_header("Access-Control-Allow-Origin", str(origin))
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header(
                "Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization"
            )
            self.send_header("Vary", "Origin")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="codec-server"')
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("request", line=format % args)


def _secret(name: str) -> str:
    path = os.environ.get(f"{name}_FILE")
    value = Path(path).read_text().strip() if path else os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"error: {name} or {name}_FILE is required")
    return value


def main() -> int:
    configure_logging()
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
        trust_ui_origin=os.environ.get("MAILPROV_CODEC_TRUST_UI_ORIGIN") == "1",
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
