"""The codec server over real HTTP: a credential always required, CORS only for the Web
UI origin, and bounded bodies, reads and connections."""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from codec_server import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    CodecServer,
    allowed_origins,
    session_value,
)
from runtime.codec import EncryptionCodec, KeyRing

UI = "http://127.0.0.1:8233"
TOKEN = "test-token-123"
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def serve(**options: Any) -> Iterator[CodecServer]:
    server = CodecServer(
        ("127.0.0.1", 0), EncryptionCodec(KeyRing.generate("k1")), TOKEN, UI, **options
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server() -> Iterator[CodecServer]:
    yield from serve()


def body(data: bytes) -> dict[str, object]:
    return {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(data).decode(),
            }
        ]
    }


def test_encode_then_decode_round_trips_with_the_token(server: CodecServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    encoded = httpx.post(f"{server.url}/encode", json=body(b'"hello"'), headers=auth)
    assert encoded.status_code == 200
    payload = encoded.json()["payloads"][0]
    assert base64.b64decode(payload["metadata"]["encoding"]) == b"binary/encrypted"
    assert b"hello" not in base64.b64decode(payload["data"])
    decoded = httpx.post(f"{server.url}/decode", json=encoded.json(), headers=auth)
    assert base64.b64decode(decoded.json()["payloads"][0]["data"]) == b'"hello"'


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        # An Origin header is not authentication: any program can send the UI's.
        {"Origin": UI},
        {"Origin": "http://localhost:8233"},
        {"Origin": UI, "Cookie": f"{SESSION_COOKIE}=1.forged"},
    ],
)
def test_requests_without_the_token_are_refused(
    server: CodecServer, headers: dict[str, str]
) -> None:
    response = httpx.post(f"{server.url}/decode", json=body(b"x"), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "missing or wrong bearer token" in response.json()["error"]


def test_cors_is_answered_for_the_web_ui_origin_only(server: CodecServer) -> None:
    ui = httpx.options(f"{server.url}/decode", headers={"Origin": UI})
    assert ui.headers["Access-Control-Allow-Origin"] == UI
    assert "X-Namespace" in ui.headers["Access-Control-Allow-Headers"]
    other = httpx.options(f"{server.url}/decode", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.parametrize(
    "spelling",
    [
        "http://127.0.0.1:8233",
        "http://localhost:8233",
        "http://LOCALHOST:8233/",
        "http://[::1]:8233",
    ],
)
def test_every_spelling_of_a_loopback_ui_origin_gets_cors(
    server: CodecServer, spelling: str
) -> None:
    response = httpx.options(f"{server.url}/decode", headers={"Origin": spelling})
    assert response.headers["Access-Control-Allow-Origin"] == spelling


@pytest.mark.parametrize(
    "stranger",
    ["http://localhost:8234", "https://localhost:8233", "http://127.0.0.2:8233", "null"],
)
def test_other_ports_schemes_and_hosts_get_no_cors(server: CodecServer, stranger: str) -> None:
    response = httpx.options(f"{server.url}/decode", headers={"Origin": stranger})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_configured_non_loopback_origins_are_listed_explicitly() -> None:
    origins = allowed_origins("https://Temporal.example.com, http://ui.internal:8080/")
    assert origins == {"https://temporal.example.com:443", "http://ui.internal:8080"}
    assert allowed_origins(None) == frozenset()


def test_bad_bodies_and_paths_get_clear_errors(server: CodecServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{server.url}/decode", content=b"{", headers=auth).status_code == 400
    assert httpx.post(f"{server.url}/other", json={}, headers=auth).status_code == 404
    foreign = {
        "payloads": [
            {
                "metadata": {
                    "encoding": base64.b64encode(b"binary/encrypted").decode(),
                    "encryption-key-id": base64.b64encode(b"nope").decode(),
                },
                "data": "",
            }
        ]
    }
    response = httpx.post(f"{server.url}/decode", json=foreign, headers=auth)
    assert response.status_code == 422
    assert "unknown key id 'nope'" in response.json()["error"]


def test_a_refused_token_is_not_logged(
    server: CodecServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    secretish = "Bearer wrong-token-that-must-not-be-logged"
    response = httpx.post(
        f"{server.url}/decode", json=body(b"x"), headers={"Authorization": secretish}
    )
    assert response.status_code == 401
    # Wherever logging is configured to go in this session: the stream or the log records.
    streams = capfd.readouterr()
    logged = streams.out + streams.err + caplog.text
    assert "missing or wrong bearer token" in logged
    assert "wrong-token-that-must-not-be-logged" not in logged
    assert TOKEN not in logged


# ---------------------------------------------------------------------- browser sessions


def sign_in(server: CodecServer, token: str = TOKEN) -> httpx.Response:
    return httpx.post(f"{server.url}/login", data={"token": token})


def test_the_login_page_is_a_form_without_secrets(server: CodecServer) -> None:
    page = httpx.get(f"{server.url}/login")
    assert page.status_code == 200
    assert '<form method="post" action="/login">' in page.text
    assert TOKEN not in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_a_wrong_token_signs_nobody_in(server: CodecServer) -> None:
    response = sign_in(server, "wrong")
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_sign_in_sets_a_strict_http_only_cookie_for_the_codec_paths_only(
    server: CodecServer,
) -> None:
    response = sign_in(server)
    assert response.status_code == 200
    cookies = response.headers.get_list("set-cookie")
    assert sorted(c.split("; Path=")[1].split(";")[0] for c in cookies) == ["/decode", "/encode"]
    for cookie in cookies:
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert f"Max-Age={SESSION_SECONDS}" in cookie
        assert TOKEN not in cookie
    assert server.url in response.text and "Include cross-origin credentials" in response.text


def session_cookie(response: httpx.Response) -> str:
    value = response.headers.get_list("set-cookie")[0].split(";")[0]
    return value


def test_a_signed_in_browser_decodes_from_the_web_ui_origin_only() -> None:
    clock = Clock()
    for server in serve(clock=clock):
        cookie = session_cookie(sign_in(server))
        url = f"{server.url}/decode"
        from_ui = {"Origin": "http://localhost:8233", "Cookie": cookie}
        response = httpx.post(url, json=body(b"1"), headers=from_ui)
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        # The same cookie without the UI's Origin (a script, another site) is refused.
        for origin in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
            assert (
                httpx.post(url, json=body(b"1"), headers={"Cookie": cookie, **origin}).status_code
                == 401
            )
        clock.now += SESSION_SECONDS
        assert httpx.post(url, json=body(b"1"), headers=from_ui).status_code == 401


def test_a_session_made_under_another_token_or_altered_is_refused() -> None:
    clock = Clock()
    for server in serve(clock=clock):
        expires = int(clock.now) + 60
        for value in (
            session_value("other-token", expires),
            session_value(TOKEN, expires).replace(str(expires), str(expires + 1), 1),
            f"{expires}.",
            "not-a-session",
        ):
            headers = {"Origin": UI, "Cookie": f"{SESSION_COOKIE}={value}"}
            response = httpx.post(f"{server.url}/decode", json=body(b"1"), headers=headers)
            assert response.status_code == 401, value
        good = {"Origin": UI, "Cookie": f"{SESSION_COOKIE}={session_value(TOKEN, expires)}"}
        assert httpx.post(f"{server.url}/decode", json=body(b"1"), headers=good).status_code == 200


def test_sign_out_clears_the_cookie(server: CodecServer) -> None:
    response = httpx.post(f"{server.url}/logout", content=b"", headers={"Content-Length": "0"})
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all(
        f"{SESSION_COOKIE}=;" in c and "Max-Age=0" in c for c in cookies
    )


def test_the_local_stack_configuration_requires_a_credential(tmp_path: Path) -> None:
    """The codec server as `make up` and `make demo` start it (devstack/stack.py)."""
    from devstack.stack import codec_server_env

    keys, token = tmp_path / "keys.json", tmp_path / "token"
    KeyRing.generate("k1").write(keys)
    token.write_text(TOKEN)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **codec_server_env(keys, token, port, ui_port=8233)}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "codec_server.py")], env=env, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and b'"url"' in process.stdout.readline()
        url = f"http://127.0.0.1:{port}/decode"
        for origin in (UI, "http://localhost:8233"):
            assert httpx.post(url, json=body(b"1"), headers={"Origin": origin}).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(url, json=body(b"1"), headers=auth).status_code == 200
    finally:
        process.terminate()
        process.wait()


def test_the_removed_trusted_origin_mode_refuses_to_start(tmp_path: Path) -> None:
    keys, token = tmp_path / "keys.json", tmp_path / "token"
    KeyRing.generate("k1").write(keys)
    token.write_text(TOKEN)
    env = {
        **os.environ,
        "MAILPROV_CODEC_KEYS_FILE": str(keys),
        "MAILPROV_CODEC_SERVER_TOKEN_FILE": str(token),
        "MAILPROV_CODEC_BIND": "127.0.0.1:0",
        "MAILPROV_CODEC_UI_ORIGIN": UI,
        "MAILPROV_CODEC_TRUST_UI_ORIGIN": "1",
    }
    # A safety net so that a server which starts anyway fails the test instead of hanging it.
    result = subprocess.run(
        [sys.executable, str(ROOT / "codec_server.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MAILPROV_CODEC_TRUST_UI_ORIGIN is no longer supported" in result.stderr


# ---------------------------------------------------------------------- hostile clients


def address(server: CodecServer) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return str(host), port


def raw_request(server: CodecServer, head: str, payload: bytes = b"") -> bytes:
    """Send bytes as they are (httpx would fix the headers), then read the whole answer."""
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(60)  # a safety net: a server that never answers fails the test
        sock.sendall(head.encode() + b"\r\n" + payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


AUTH = f"Authorization: Bearer {TOKEN}\r\n"


@pytest.mark.parametrize(
    ("length_headers", "status", "message"),
    [
        ("Content-Length: -1\r\n", b"400", b"one whole number"),
        ("Content-Length: abc\r\n", b"400", b"one whole number"),
        ("Content-Length: 1e3\r\n", b"400", b"one whole number"),
        ("Content-Length: 2\r\nContent-Length: 3\r\n", b"400", b"one whole number"),
        ("", b"411", b"Content-Length is required"),
        ("Transfer-Encoding: chunked\r\n", b"411", b"Transfer-Encoding is refused"),
        ("Content-Length: 999\r\n", b"400", b"body ended after"),
    ],
)
def test_a_bad_content_length_gets_an_answer_and_no_unbounded_read(
    server: CodecServer, length_headers: str, status: bytes, message: bytes
) -> None:
    head = f"POST /decode HTTP/1.1\r\nHost: x\r\n{AUTH}{length_headers}"
    answer = raw_request(server, head, b'{"payloads": []}')
    assert answer.split(b" ")[1] == status, answer
    assert message in answer


def test_a_negative_length_is_answered_without_reading_the_body(server: CodecServer) -> None:
    # Before: int("-1") made rfile.read(-1) read until the client stopped sending, past
    # MAX_BODY (300 MB streamed raised the server's memory from 69 to 375 MB). Now the
    # answer comes while the client still holds the body back.
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(60)  # safety net only
        sock.sendall(
            f"POST /decode HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: -1\r\n\r\n".encode()
        )
        sock.sendall(b'{"payloads": [' + b" " * 65536)
        assert sock.recv(65536).startswith(b"HTTP/1.0 400")


def test_an_idle_connection_is_closed() -> None:
    for server in serve(read_timeout=0.2):
        with socket.create_connection(address(server)) as sock:
            sock.settimeout(60)  # safety net only
            assert sock.recv(1) == b""


def test_a_request_that_never_completes_is_dropped_at_its_deadline() -> None:
    # Reads could wait 60 s each; the 0.3 s deadline for the whole request ends it.
    for server in serve(read_timeout=60, request_deadline=0.3):
        with socket.create_connection(address(server)) as sock:
            sock.settimeout(60)  # safety net only
            sock.sendall(b"POST /decode HTTP/1.1\r\nHost: x\r\n")
            assert sock.recv(1) == b""


def test_connections_beyond_the_limit_get_503_and_no_thread() -> None:
    for server in serve(read_timeout=60, max_connections=2):
        held = [socket.create_connection(address(server)) for _ in range(2)]

        def extra_connection(to: tuple[str, int] = address(server)) -> bytes:
            with socket.create_connection(to) as extra:
                extra.settimeout(60)  # safety net only
                answer = b""
                while chunk := extra.recv(65536):
                    answer += chunk
            return answer

        try:
            # Connections are accepted in order: once a third is refused, both held ones
            # have their threads, so the count taken now includes them.
            assert extra_connection().startswith(b"HTTP/1.0 503")
            threads_before = threading.active_count()
            for _ in range(20):
                answer = extra_connection()
                assert answer.startswith(b"HTTP/1.0 503"), answer
                assert b"too many connections" in answer
            assert threading.active_count() <= threads_before
        finally:
            for sock in held:
                sock.close()


def test_sign_in_logs_neither_the_token_nor_the_session(
    server: CodecServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Earlier tests in the session may leave the root logger at WARNING: the sign-in line
    # is INFO.
    caplog.set_level(logging.INFO)
    wrong = "wrong-sign-in-token-that-must-not-be-logged"
    assert sign_in(server, wrong).status_code == 401
    cookie = session_cookie(sign_in(server))
    session = cookie.split("=", 1)[1]
    headers = {"Origin": UI, "Cookie": cookie}
    assert httpx.post(f"{server.url}/decode", json=body(b"1"), headers=headers).status_code == 200
    streams = capfd.readouterr()
    logged = streams.out + streams.err + caplog.text
    assert "sign-in with a wrong token" in logged and "browser signed in" in logged
    for secret in (wrong, TOKEN, session):
        assert secret not in logged
