"""The codec server over real HTTP: token required, CORS only for the Web UI origin."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import httpx
import pytest

from activities.codec import EncryptionCodec, KeyRing
from codec_server import CodecServer, allowed_origins

UI = "http://127.0.0.1:8233"
TOKEN = "test-token-123"


def serve(trust_ui_origin: bool = False) -> Iterator[CodecServer]:
    server = CodecServer(
        ("127.0.0.1", 0), EncryptionCodec(KeyRing.generate("k1")), TOKEN, UI, trust_ui_origin
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Origin": UI}])
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


def test_dev_mode_trusts_the_ui_origin_but_nothing_else() -> None:
    for server in serve(trust_ui_origin=True):
        for spelling in (UI, "http://localhost:8233"):
            response = httpx.post(
                f"{server.url}/encode", json=body(b"1"), headers={"Origin": spelling}
            )
            assert response.status_code == 200
        assert (
            httpx.post(
                f"{server.url}/encode", json=body(b"1"), headers={"Origin": "https://evil.example"}
            ).status_code
            == 401
        )


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
