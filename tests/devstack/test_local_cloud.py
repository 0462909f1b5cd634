"""The local cloud and its VPSes behave like the documented real things.

These tests drive the stand-ins only through their wire protocols (HTTP, SSH, SFTP,
SMTP), so a green run means a client written against Hetzner's and MailU's documents
will also work against the stand-ins, and vice versa for the failures they fake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import smtplib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.cloud_init import DOCKER_PACKAGES, docker_cloud_config, wait_for_cloud_init
from activities.ssh import run_remote_heartbeating
from devstack import ipv6
from devstack.cloud import LocalCloud, RateLimiter
from devstack.hetzner import parse_label_selector, selector_matches
from devstack.mail_login import certificate_after_dns
from devstack.processes import free_port
from devstack.stack import shared_tls
from devstack.vps import CLOUD_INIT_RELEASE, EXPIRED_LOGIN_NOTICE
from tests.helpers import unavailable

TOKEN = "devstack-test-token"
COMPOSE = "docker compose -p mailu -f /mailu/docker-compose.yml"
CONFIG_IMPORT = f"{COMPOSE} exec -T admin flask mailu config-import -u -"
MAILU_ENV = (
    "SECRET_KEY=0123456789abcdef0123\nDOMAIN=example.org\nHOSTNAMES=mail.example.org\n"
    "POSTMASTER=admin\nTLS_FLAVOR=letsencrypt\n"
)
# The smallest file MailU's admin starts from: test_DNS() needs the resolver as its DNS.
COMPOSE_FILE = (
    "services:\n  redis:\n    image: redis:alpine\n  resolver:\n"
    "    image: ghcr.io/mailu/unbound:2024.06\n    networks:\n      default:\n"
    "        ipv4_address: 192.168.203.254\n  front:\n    image: ghcr.io/mailu/nginx:2024.06\n"
    "  admin:\n    image: ghcr.io/mailu/admin:2024.06\n    env_file: mailu.env\n"
    "    dns:\n      - 192.168.203.254\n"
)


@dataclass
class Env:
    cloud: LocalCloud
    api: httpx.AsyncClient  # authenticated Hetzner API, base .../v1/
    dev: httpx.AsyncClient  # /_devstack/, no auth


@dataclass
class Keys:
    host: asyncssh.SSHKey
    client: asyncssh.SSHKey

    def user_data(self, **extra: Any) -> str:
        document = {
            "ssh_keys": {
                "ed25519_private": self.host.export_private_key("openssh").decode(),
                "ed25519_public": self.host.export_public_key("openssh").decode().strip(),
            },
            "ssh_authorized_keys": [self.client.export_public_key("openssh").decode().strip()],
            "package_update": False,
            **extra,
        }
        return "#cloud-config\n" + json.dumps(document)


def new_keys() -> Keys:
    return Keys(
        asyncssh.generate_private_key("ssh-ed25519"),
        asyncssh.generate_private_key("ssh-ed25519"),
    )


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for value in _env(tmp_path, cloud_init_seconds=0.5):
        yield value


@pytest_asyncio.fixture
async def held_env(tmp_path: Path) -> AsyncIterator[Env]:
    """Servers whose cloud-init runs until the test releases it (see release_cloud_init)."""
    async for value in _env(tmp_path, cloud_init_seconds=3600):
        yield value


async def _env(tmp_path: Path, cloud_init_seconds: float) -> AsyncIterator[Env]:
    ssh_port = free_port()
    smtp_port = free_port()
    cloud = LocalCloud(
        tmp_path / "cloud",
        TOKEN,
        ssh_port,
        smtp_port,
        boot_seconds=0.2,
        cloud_init_seconds=cloud_init_seconds,
    )
    base = await cloud.start()
    api = httpx.AsyncClient(
        base_url=base + "/",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=20,
        verify=shared_tls(),
    )
    dev = httpx.AsyncClient(
        base_url=base.removesuffix("/v1") + "/_devstack/", timeout=20, verify=shared_tls()
    )
    try:
        yield Env(cloud, api, dev)
    finally:
        await api.aclose()
        await dev.aclose()
        await cloud.stop()


async def create(
    env: Env,
    name: str,
    keys: Keys | None = None,
    cloud_config: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "server_type": "cx23", "image": "debian-12", **extra}
    if keys is not None:
        body["user_data"] = keys.user_data(**(cloud_config or {}))
        # As the product does: the login key as a Hetzner SSH key, so no expired password.
        if "ssh_keys" not in body:
            body["ssh_keys"] = [await login_key_id(env, f"{name}-login", keys.client)]
    response = await env.api.post("servers", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def register_key(env: Env, name: str, key: asyncssh.SSHKey, **labels: str) -> int:
    public = key.export_public_key("openssh").decode().strip()
    response = await env.api.post(
        "ssh_keys", json={"name": name, "public_key": public, "labels": labels}
    )
    assert response.status_code == 201, response.text
    return int(response.json()["ssh_key"]["id"])


async def login_key_id(env: Env, name: str, key: asyncssh.SSHKey) -> int:
    """The key's id, registering it unless it is already (fingerprints are unique)."""
    fingerprint = key.get_fingerprint("md5").removeprefix("MD5:")
    found = (await env.api.get("ssh_keys", params={"fingerprint": fingerprint})).json()
    if found["ssh_keys"]:
        return int(found["ssh_keys"][0]["id"])
    return await register_key(env, name, key)


async def wait_action(env: Env, action_id: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await env.api.get(f"actions/{action_id}")
        assert response.status_code == 200, response.text
        action = dict(response.json()["action"])
        assert 0 <= action["progress"] <= 100
        if action["status"] != "running":
            return action
        await asyncio.sleep(0.05)
    raise AssertionError(f"action {action_id} still running after {timeout}s")


async def boot(env: Env, name: str, keys: Keys, **extra: Any) -> dict[str, Any]:
    created = await create(env, name, keys, **extra)
    action = await wait_action(env, created["action"]["id"])
    assert action["status"] == "success", action
    response = await env.api.get(f"servers/{created['server']['id']}")
    return dict(response.json()["server"])


async def ssh(env: Env, server: dict[str, Any], keys: Keys) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        server["public_net"]["ipv4"]["ip"],
        port=env.cloud.ssh_port,
        username="root",
        client_keys=[keys.client],
        known_hosts=([keys.host.convert_to_public()], [], []),
    )


def smtp_login(host: str, port: int, cafile: Path, user: str, password: str) -> int:
    """AUTH LOGIN on MailU's submissions port (465: implicit TLS)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with smtplib.SMTP_SSL(host, port, timeout=10, context=context) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = user, password
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        return code


@pytest.mark.asyncio
async def test_server_boots_and_runs_mailu_over_ssh_and_smtp(env: Env, tmp_path: Path) -> None:
    keys = new_keys()
    created = await create(env, "mail-t1", keys, labels={"tenant": "t1"}, image="docker-ce")
    assert created["server"]["status"] == "initializing"
    assert created["action"]["command"] == "create_server"
    assert [a["command"] for a in created["next_actions"]] == ["start_server"]
    assert created["root_password"] is None
    action = await wait_action(env, created["action"]["id"])
    assert action["status"] == "success" and action["progress"] == 100
    assert action["resources"] == [{"id": created["server"]["id"], "type": "server"}]

    server = (await env.api.get(f"servers/{created['server']['id']}")).json()["server"]
    assert server["status"] == "running"
    ip = server["public_net"]["ipv4"]["ip"]
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert server["public_net"]["ipv4"]["dns_ptr"].endswith(".clients.your-server.de")
    assert server["server_type"]["name"] == "cx23"
    assert server["datacenter"]["location"]["name"] == "fsn1"
    server_id = server["id"]
    state_dir = Path((await env.dev.get(f"servers/{server_id}")).json()["server"]["state_dir"])

    password = "S3cret-" + os.urandom(8).hex()
    async with await ssh(env, server, keys) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.mkdir("/mailu")
            async with sftp.open(
                "/mailu/mailu.env", "w", asyncssh.SFTPAttrs(permissions=0o600)
            ) as handle:
                await handle.write(MAILU_ENV)
            async with sftp.open("/mailu/docker-compose.yml", "w") as handle:
                await handle.write(COMPOSE_FILE)
        assert (state_dir / "root/mailu/mailu.env").stat().st_mode & 0o777 == 0o600

        waited = await conn.run("cloud-init status --wait", check=True)
        assert str(waited.stdout).rstrip().endswith("status: done")

        pub = await conn.run("cat /etc/ssh/ssh_host_ed25519_key.pub", check=True)
        assert str(pub.stdout).strip() == keys.host.export_public_key("openssh").decode().strip()

        not_up = await conn.run(f"{CONFIG_IMPORT}", input="{}")
        assert not_up.exit_status == 1
        assert 'service "admin" is not running' in str(not_up.stderr)

        up = await conn.run(f"{COMPOSE} up -d")
        assert up.exit_status == 0, up.stderr
        assert "Container mailu-admin-1  Started" in str(up.stderr)
        again = await conn.run(f"{COMPOSE} up -d")
        assert again.exit_status == 0 and "Running" in str(again.stderr)

        healths = []
        for _ in range(100):
            ps = await conn.run(f"{COMPOSE} ps --format json admin", check=True)
            row = json.loads(str(ps.stdout).splitlines()[0])
            assert row["Service"] == "admin" and row["Project"] == "mailu"
            healths.append(row["Health"])
            if row["Health"] == "healthy":
                break
            await asyncio.sleep(0.1)
        # "starting" first unless this machine is slow enough to miss the ~1 s window.
        assert set(healths) <= {"starting", "healthy"} and healths[-1] == "healthy"

        document: dict[str, list[dict[str, Any]]] = {
            "domain": [{"name": "example.org"}],
            "user": [
                {
                    "email": "admin@example.org",
                    "password": password,
                    "hash_password": True,
                    "global_admin": True,
                }
            ],
        }
        imported = await conn.run(CONFIG_IMPORT, input=json.dumps(document))
        assert imported.exit_status == 0, imported.stderr
        assert "Created: domain(1) user(1)" in str(imported.stdout)
        assert password not in str(imported.stdout) + str(imported.stderr)
        repeat = await conn.run(CONFIG_IMPORT, input=json.dumps(document))
        assert str(repeat.stdout) == "Committing changes. No changes.\n"

        # MailU's Logger counts no update without -v: a new password also says
        # "No changes.", yet the hash changed (the old password stops working below).
        old_password, password = password, "S3cret-" + os.urandom(8).hex()
        document["user"] = [{**document["user"][0], "password": password}]
        changed = await conn.run(CONFIG_IMPORT, input=json.dumps(document))
        assert str(changed.stdout) == "Committing changes. No changes.\n"
        verbose = await conn.run(
            CONFIG_IMPORT.replace(" -u ", " -v -u "), input=json.dumps(document)
        )
        assert "No changes." in str(verbose.stdout)  # same plaintext again: hash kept

        # config-import creates a user whose domain does not exist (no domain check).
        domainless = await conn.run(
            CONFIG_IMPORT,
            input=json.dumps(
                {"user": [{"email": "x@nowhere.test", "password": "p", "hash_password": True}]}
            ),
        )
        assert domainless.exit_status == 0, domainless.stderr
        assert str(domainless.stdout) == "Committing changes. Created: user(1)\n"

        unknown = await conn.run("rm -rf /mailu")
        assert unknown.exit_status == 127
        assert str(unknown.stderr) == "bash: line 1: rm: command not found\n"

    summary = (await env.dev.get(f"servers/{server_id}/mailu")).json()
    assert summary == {
        "domains": ["example.org"],
        "users": [
            {"email": "admin@example.org", "global_admin": True},
            {"email": "x@nowhere.test", "global_admin": False},
        ],
    }
    assert '"$bcrypt-sha256$v=2,t=2b,r=12$' in (state_dir / "mailu.json").read_text()
    assert (state_dir / "mailu.json").stat().st_mode & 0o777 == 0o600
    assert password not in (state_dir / "mailu.json").read_text()

    # MailU's front gets its certificate (and opens 465) once DNS points at the server.
    cafile = tmp_path / "vps.pem"
    cafile.write_text(await asyncio.to_thread(certificate_after_dns, state_dir))
    smtp_port = env.cloud.smtp_port
    code = await asyncio.to_thread(smtp_login, ip, smtp_port, cafile, "admin@example.org", password)
    assert code == 235
    with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
        await asyncio.to_thread(
            smtp_login, ip, smtp_port, cafile, "admin@example.org", password + "x"
        )
    assert wrong.value.smtp_code == 535
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(
            smtp_login, ip, smtp_port, cafile, "admin@example.org", old_password
        )

    commands = (await env.dev.get(f"servers/{server_id}/commands")).json()["commands"]
    assert {"command": CONFIG_IMPORT, "stdin": True} in [
        {"command": c["command"], "stdin": c["stdin"]} for c in commands
    ]
    assert any(c["command"] == "rm -rf /mailu" and c["exit_status"] == 127 for c in commands)
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
            assert old_password.encode() not in path.read_bytes(), path


@pytest.mark.asyncio
async def test_delete_removes_server_and_its_process(env: Env) -> None:
    keys = new_keys()
    server = await boot(env, "doomed", keys)
    pid = (await env.dev.get(f"servers/{server['id']}")).json()["server"]["pid"]
    os.kill(pid, 0)  # alive

    deleted = await env.api.delete(f"servers/{server['id']}")
    assert deleted.status_code == 200
    assert deleted.json()["action"]["command"] == "delete_server"
    assert (await wait_action(env, deleted.json()["action"]["id"]))["status"] == "success"

    gone = await env.api.get(f"servers/{server['id']}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        await ssh(env, server, keys)
    # The name is free again once the server is gone.
    await create(env, "doomed")


@pytest.mark.asyncio
async def test_wrong_pinned_host_key_is_rejected(env: Env) -> None:
    keys = new_keys()
    server = await boot(env, "pinned", keys)
    impostor = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(
            server["public_net"]["ipv4"]["ip"],
            port=env.cloud.ssh_port,
            username="root",
            client_keys=[keys.client],
            known_hosts=([impostor], [], []),
        )
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            server["public_net"]["ipv4"]["ip"],
            port=env.cloud.ssh_port,
            username="root",
            client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            known_hosts=([keys.host.convert_to_public()], [], []),
        )


@pytest.mark.asyncio
async def test_duplicate_name_is_a_uniqueness_error(env: Env) -> None:
    await create(env, "twin")
    response = await env.api.post(
        "servers", json={"name": "twin", "server_type": "cx23", "image": "debian-12"}
    )
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "uniqueness_error",
            "message": "server name is already used",
            "details": {"fields": [{"name": "name"}]},
        }
    }


@pytest.mark.asyncio
async def test_invalid_input_names_every_bad_field(env: Env) -> None:
    response = await env.api.post(
        "servers",
        json={
            "name": "not_a_hostname",
            "server_type": "cx99",
            "image": "debian-12",
            "location": "mars1",
        },
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert {f["name"] for f in error["details"]["fields"]} == {"name", "server_type", "location"}
    bad_json = await env.api.post("servers", content=b"{nope")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "json_error"


@pytest.mark.asyncio
async def test_name_and_label_selector_filters_and_pagination(env: Env) -> None:
    await create(env, "a1", labels={"tenant": "a", "env": "prod"})
    await create(env, "a2", labels={"tenant": "a", "env": "dev"})
    await create(env, "b1", labels={"tenant": "b"})

    async def names(**params: str) -> list[str]:
        response = await env.api.get("servers", params=params)
        assert response.status_code == 200, response.text
        return [s["name"] for s in response.json()["servers"]]

    assert await names(name="a2") == ["a2"]
    assert await names(name="a") == []
    assert await names(label_selector="tenant=a") == ["a1", "a2"]
    assert await names(label_selector="tenant==a,env!=prod") == ["a2"]
    assert await names(label_selector="env") == ["a1", "a2"]
    assert await names(label_selector="!env") == ["b1"]
    assert await names(label_selector="env in (dev,test)") == ["a2"]
    bad = await env.api.get("servers", params={"label_selector": "tenant=a=b"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"

    page = (await env.api.get("servers", params={"per_page": "2", "page": "2"})).json()
    assert [s["name"] for s in page["servers"]] == ["b1"]
    assert page["meta"]["pagination"] == {
        "page": 2,
        "per_page": 2,
        "previous_page": 1,
        "next_page": None,
        "last_page": 2,
        "total_entries": 3,
    }


def test_label_selector_grammar() -> None:
    labels = {"tenant": "t1", "example.com/role": "mail"}
    assert selector_matches(parse_label_selector("tenant=t1,example.com/role==mail"), labels)
    assert selector_matches(parse_label_selector("tier!=db, !tier"), labels)
    assert not selector_matches(parse_label_selector("tenant notin (t1,t2)"), labels)


@pytest.mark.asyncio
async def test_bad_token_is_unauthorized_and_rate_headers_are_always_sent(env: Env) -> None:
    # Each response's reset is compared with the clock before it was asked for: a check
    # against the clock after all three requests fails when a second ticks in between.
    asked_at = int(time.time())
    response = await env.api.get("servers", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "unauthorized", "message": "unable to authenticate", "details": {}}
    }
    missing = await env.api.get("servers", headers={"Authorization": ""})
    assert missing.status_code == 401
    for r in (response, await env.api.get("servers"), await env.api.get("nothing/here")):
        assert r.headers["RateLimit-Limit"] == "3600"
        assert int(r.headers["RateLimit-Remaining"]) <= 3600
        assert int(r.headers["RateLimit-Reset"]) >= asked_at
    unknown = await env.api.get("nothing/here")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_the_bucket_counts_what_it_served_and_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A frozen clock: no refill between the calls, so the fourth request of a 3-request
    # bucket is refused whatever the machine's speed.
    monkeypatch.setattr("devstack.cloud.time.monotonic", lambda: 1000.0)
    bucket = RateLimiter(limit=3)
    assert [bucket.consume() for _ in range(4)] == [True, True, True, False]
    assert bucket.usage() == {
        "limit": 3,
        "remaining": 0,
        "served": 3,
        "refused": 1,
        "served_by_route": {"": 3},
    }
    # One request more every second (Hetzner's refill).
    monkeypatch.setattr("devstack.cloud.time.monotonic", lambda: 1001.0)
    assert bucket.consume("GET /v1/servers") and not bucket.consume("GET /v1/servers")
    assert bucket.usage() == {
        "limit": 3,
        "remaining": 0,
        "served": 4,
        "refused": 2,
        "served_by_route": {"": 3, "GET /v1/servers": 1},
    }


@pytest.mark.asyncio
async def test_rate_limit_usage_counts_api_requests_and_not_its_own(env: Env) -> None:
    before = (await env.dev.get("rate-limit")).json()
    assert (await env.api.get("servers")).status_code == 200
    assert (await env.api.get("servers/12345")).status_code == 404
    after = (await env.dev.get("rate-limit")).json()
    # The API requests drew on the bucket, counted by route; the /_devstack look-ups
    # did not.
    assert after["served"] == before["served"] + 2
    routes = after["served_by_route"]
    assert routes["GET /v1/servers"] == before["served_by_route"].get("GET /v1/servers", 0) + 1
    assert routes["GET /v1/servers/{id}"] == 1
    assert after["refused"] == before["refused"] == 0
    assert after["limit"] == 3600 and 0 <= after["remaining"] <= 3600


@pytest.mark.asyncio
async def test_injected_rate_limit_hits_only_the_next_matching_request(env: Env) -> None:
    armed = await env.dev.post(
        "faults",
        json={
            "method": "POST",
            "path": "/v1/servers",
            "status": 429,
            "code": "rate_limit_exceeded",
            "message": "limit of 3600 requests per hour reached",
            "times": 1,
        },
    )
    assert armed.status_code == 201
    assert (await env.api.get("servers")).status_code == 200  # GET does not match
    body = {"name": "limited", "server_type": "cx23", "image": "debian-12"}
    limited = await env.api.post("servers", json=body)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["RateLimit-Remaining"] == "0"
    # Hetzner's RateLimit-Reset: when the bucket is full again, at one request per second
    # an hour after it ran empty; the next request may still pass a second later.
    assert int(limited.headers["RateLimit-Reset"]) >= int(time.time()) + 3600 - 2
    assert (await env.api.get("servers", params={"name": "limited"})).json()["servers"] == []
    assert (await env.api.post("servers", json=body)).status_code == 201


@pytest.mark.asyncio
async def test_after_effect_fault_loses_the_response_not_the_request(env: Env) -> None:
    await env.dev.post(
        "faults",
        json={
            "method": "POST",
            "path": "/v1/servers*",
            "status": 503,
            "code": "unavailable",
            "message": "service unavailable",
            "after_effect": True,
        },
    )
    body = {"name": "ghost", "server_type": "cx23", "image": "debian-12"}
    lost = await env.api.post("servers", json=body)
    assert lost.status_code == 503 and lost.json()["error"]["code"] == "unavailable"
    retry = await env.api.post("servers", json=body)
    assert retry.status_code == 409 and retry.json()["error"]["code"] == "uniqueness_error"
    found = (await env.api.get("servers", params={"name": "ghost"})).json()["servers"]
    assert len(found) == 1

    await env.dev.post(
        "faults", json={"path": "/v1/*", "status": 500, "code": "server_error", "times": 2}
    )
    assert (await env.dev.delete("faults")).status_code == 200
    assert (await env.api.get("servers")).status_code == 200


@pytest.mark.asyncio
async def test_a_held_image_stays_creating_and_every_snapshot_is_remembered(env: Env) -> None:
    """/_devstack/servers/{id}/image-hold (for tests that act while a client waits for a
    snapshot): the create_image action keeps running, the image `creating` and the
    server locked however often they are asked, until released. /_devstack/images lists
    every snapshot ever made, by label, with when and how it went: one lost in a
    create's lost answer counts as much as one the client saw."""
    env.cloud.image_seconds = 0.0
    server_id = (await create(env, "snap-src"))["server"]["id"]
    assert (await env.dev.post(f"servers/{server_id}/image-hold")).status_code == 201
    await env.dev.post(
        "faults",
        json={
            "method": "POST",
            "path": f"/v1/servers/{server_id}/actions/create_image",
            "status": 504,
            "code": "timeout",
            "after_effect": True,
        },
    )
    body = {"type": "snapshot", "labels": {"purchase": "p1"}}
    lost = await env.api.post(f"servers/{server_id}/actions/create_image", json=body)
    assert lost.status_code == 504
    [made] = (await env.dev.get("images", params={"label_selector": "purchase=p1"})).json()[
        "images"
    ]
    assert (made["status"], made["gone"]) == ("creating", None)
    # Each look is a round trip through the cloud's event loop: a create not held
    # (zero seconds here) would have ended at the first.
    for _ in range(20):
        image = (await env.api.get(f"images/{made['id']}")).json()["image"]
        assert image["status"] == "creating"
        server = (await env.api.get(f"servers/{server_id}")).json()["server"]
        assert server["locked"] is True
    assert (await env.dev.delete(f"servers/{server_id}/image-hold")).status_code == 200
    while (await env.api.get(f"images/{made['id']}")).json()["image"]["status"] == "creating":
        await asyncio.sleep(0.05)
    deleting = time.time()
    assert (await env.api.delete(f"images/{made['id']}")).status_code == 204
    assert (await env.api.get(f"images/{made['id']}")).status_code == 404
    [gone] = (await env.dev.get("images", params={"label_selector": "purchase=p1"})).json()[
        "images"
    ]
    assert (gone["id"], gone["status"], gone["gone"]["how"]) == (made["id"], "available", "deleted")
    assert gone["gone"]["at"] >= deleting
    assert (await env.dev.get("images", params={"label_selector": "purchase=p2"})).json() == {
        "images": []
    }
    bad = await env.dev.get("images", params={"label_selector": "purchase in ("})
    assert bad.json()["error"]["code"] == "invalid_input"


@pytest.mark.asyncio
async def test_boot_failure_ends_the_action_in_error(env: Env) -> None:
    assert (await env.dev.post("boot-failures", json={"times": 1})).status_code == 200
    created = await create(env, "unlucky", new_keys())
    action = await wait_action(env, created["action"]["id"])
    assert action["status"] == "error"
    assert action["error"]["code"] == "action_failed"
    bad_user_data = await create(env, "bad-ud", user_data="#!/bin/sh\necho hi\n")
    action = await wait_action(env, bad_user_data["action"]["id"])
    assert action["status"] == "error" and "cloud-config" in action["error"]["message"]


@pytest.mark.asyncio
async def test_dns_ptr_can_be_changed(env: Env) -> None:
    server = (await create(env, "ptr"))["server"]
    ip = server["public_net"]["ipv4"]["ip"]
    changed = await env.api.post(
        f"servers/{server['id']}/actions/change_dns_ptr",
        json={"ip": ip, "dns_ptr": "mail.example.org"},
    )
    assert changed.status_code == 201
    assert changed.json()["action"]["command"] == "change_dns_ptr"
    assert (await wait_action(env, changed.json()["action"]["id"]))["status"] == "success"
    got = (await env.api.get(f"servers/{server['id']}")).json()["server"]
    assert got["public_net"]["ipv4"]["dns_ptr"] == "mail.example.org"
    wrong = await env.api.post(
        f"servers/{server['id']}/actions/change_dns_ptr",
        json={"ip": "not-an-ip", "dns_ptr": "x.example.org"},
    )
    assert field_names(wrong) == {"ip"}
    other_ip = await env.api.post(
        f"servers/{server['id']}/actions/change_dns_ptr",
        json={"ip": "192.0.2.1", "dns_ptr": "x.example.org"},
    )
    assert field_names(other_ip) == {"ip"}
    bad_name = await env.api.post(
        f"servers/{server['id']}/actions/change_dns_ptr",
        json={"ip": ip, "dns_ptr": "not a hostname"},
    )
    assert field_names(bad_name) == {"dns_ptr"}
    assert field_names(
        await env.api.post(f"servers/{server['id']}/actions/change_dns_ptr", json={"ip": ip})
    ) == {"dns_ptr"}
    unknown = await env.api.post(
        "servers/999/actions/change_dns_ptr", json={"ip": ip, "dns_ptr": "x.example.org"}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    # null resets the record to the provider's default name.
    reset = await env.api.post(
        f"servers/{server['id']}/actions/change_dns_ptr", json={"ip": ip, "dns_ptr": None}
    )
    assert reset.status_code == 201
    got = (await env.api.get(f"servers/{server['id']}")).json()["server"]
    assert got["public_net"]["ipv4"]["dns_ptr"] == server["public_net"]["ipv4"]["dns_ptr"]


@pytest.mark.asyncio
async def test_notification_sink_is_idempotent_and_can_fail_on_demand(env: Env) -> None:
    headers = {"Idempotency-Key": "purchase-42"}
    await env.dev.post(
        "faults",
        json={
            "method": "POST",
            "path": "/_devstack/notify/*",
            "status": 503,
            "code": "unavailable",
            "times": 1,
        },
    )
    assert (await env.dev.post("notify/demo", json={"n": 1}, headers=headers)).status_code == 503
    for _ in range(2):
        sent = await env.dev.post("notify/demo", json={"n": 1}, headers=headers)
        assert sent.status_code == 200
    listed = (await env.dev.get("notifications")).json()["notifications"]
    assert len(listed) == 1
    assert listed[0]["headers"]["Idempotency-Key"] == "purchase-42"
    assert listed[0]["body"] == {"n": 1}


async def state_dir_of(env: Env, server_id: int) -> Path:
    response = await env.dev.get(f"servers/{server_id}")
    return Path(response.json()["server"]["state_dir"])


async def connect_pinned(
    env: Env, server: dict[str, Any], client: asyncssh.SSHKey, host: asyncssh.SSHKey
) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        server["public_net"]["ipv4"]["ip"],
        port=env.cloud.ssh_port,
        username="root",
        client_keys=[client],
        known_hosts=([host.convert_to_public()], [], []),
        config=None,
        agent_path=None,
    )


def public_line(key: asyncssh.SSHKey, comment: str = "") -> str:
    if comment:
        key.set_comment(comment)
    return key.export_public_key("openssh").decode().strip()


async def sftp_write(sftp: asyncssh.SFTPClient, path: str, data: str, mode: int) -> None:
    """As the product writes key files: created with the final mode, then chmod'ed."""
    async with sftp.open(path, "w", asyncssh.SFTPAttrs(permissions=mode)) as handle:
        await handle.write(data)
    await sftp.chmod(path, mode)


def field_names(response: httpx.Response) -> set[str]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    return {f["name"] for f in error["details"]["fields"]}


KEY = "/etc/ssh/ssh_host_ed25519_key"


@pytest.mark.asyncio
async def test_host_key_is_written_by_cloud_init_and_rotates_on_reload(env: Env) -> None:
    keys = new_keys()
    server = await boot(env, "rotate", keys)
    root = (await state_dir_of(env, server["id"])) / "root"
    key_a = keys.host
    key_b = asyncssh.generate_private_key("ssh-ed25519", comment="root@rotate")

    # cloud-init wrote the user_data key pair where sshd reads it.
    private_file, public_file = root / KEY.lstrip("/"), root / (KEY + ".pub").lstrip("/")
    assert private_file.stat().st_mode & 0o777 == 0o600
    assert public_file.stat().st_mode & 0o777 == 0o644
    assert private_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    on_disk = asyncssh.import_private_key(private_file.read_bytes())
    assert on_disk.public_data == key_a.public_data
    assert public_file.read_text() == public_line(key_a) + "\n"

    old = await connect_pinned(env, server, keys.client, key_a)
    async with old.start_sftp_client() as sftp:
        await sftp.mkdir("/etc/ssh/sshd_config.d")  # mkdir under /etc/ssh works
        assert await sftp.isdir("/etc/ssh/sshd_config.d")
        await sftp_write(sftp, KEY + ".new", key_b.export_private_key().decode(), 0o600)
        await sftp_write(sftp, KEY + ".pub.new", public_line(key_b) + "\n", 0o644)
        await sftp.posix_rename(KEY + ".new", KEY)  # overwrites the existing key
        await sftp.posix_rename(KEY + ".pub.new", KEY + ".pub")
        assert not await sftp.exists(KEY + ".new")
    assert private_file.stat().st_mode & 0o777 == 0o600
    assert asyncssh.import_private_key(private_file.read_bytes()).public_data == key_b.public_data

    # sshd has not re-read its keys yet: still key A for new connections.
    async with await connect_pinned(env, server, keys.client, key_a):
        pass
    reload = await old.run("systemctl reload ssh")
    assert (reload.exit_status, reload.stdout, reload.stderr) == (0, "", "")

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect_pinned(env, server, keys.client, key_a)
    async with await connect_pinned(env, server, keys.client, key_b) as new:
        pub = await new.run(f"cat {KEY}.pub", check=True)
        assert pub.stdout == public_line(key_b) + "\n"
    # The session opened under key A carries on.
    still = await old.run(f"cat {KEY}.pub", check=True)
    assert still.stdout == public_line(key_b) + "\n"

    # A reload that cannot load the key fails as on Debian and keeps serving key B.
    key_c = asyncssh.generate_private_key("ssh-ed25519")
    async with old.start_sftp_client() as sftp:
        await sftp_write(sftp, KEY, key_c.export_private_key().decode(), 0o644)
        too_open = await old.run("systemctl reload sshd")
        assert too_open.exit_status == 1
        assert "Permissions 0644 for '/etc/ssh/ssh_host_ed25519_key' are too open." in str(
            too_open.stderr
        )
        await sftp_write(sftp, KEY, "not a key\n", 0o600)
        garbage = await old.run("systemctl reload ssh.service")
        assert garbage.exit_status == 1
        assert "sshd: no hostkeys available -- exiting." in str(garbage.stderr)
        assert "Job for ssh.service failed" in str(garbage.stderr)
        await sftp.remove(KEY)
        missing = await old.run("systemctl reload ssh")
        assert missing.exit_status == 1
        assert "No such file or directory" in str(missing.stderr)
    async with await connect_pinned(env, server, keys.client, key_b):
        pass
    unknown = await old.run("systemctl reload nginx")
    assert unknown.exit_status == 5
    assert unknown.stderr == "Failed to reload nginx.service: Unit nginx.service not found.\n"
    restart = await old.run("systemctl restart ssh")
    assert restart.exit_status == 1 and "not supported" in str(restart.stderr)

    # cloud-init writes keys once per instance: after a reboot sshd loads what is on
    # disk (here key B again), not the user_data key.
    async with old.start_sftp_client() as sftp:
        await sftp_write(sftp, KEY, key_b.export_private_key().decode(), 0o600)
    old.close()
    pid = (await env.dev.get(f"servers/{server['id']}")).json()["server"]["pid"]
    os.kill(pid, 15)
    for _ in range(200):
        if (await env.api.get(f"servers/{server['id']}")).json()["server"]["status"] == "off":
            break
        await asyncio.sleep(0.02)
    poweron = await env.api.post(f"servers/{server['id']}/actions/poweron")
    assert (await wait_action(env, poweron.json()["action"]["id"]))["status"] == "success"
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect_pinned(env, server, keys.client, key_a)
    async with await connect_pinned(env, server, keys.client, key_b):
        pass


@pytest.mark.asyncio
async def test_command_faults_fail_matching_exec_requests_without_running_them(
    env: Env,
) -> None:
    keys = new_keys()
    server = await boot(env, "cmd-faults", keys, image="docker-ce")
    url = f"servers/{server['id']}/command-faults"

    assert field_names(await env.dev.post(url, json={"exit_status": 1})) == {"match"}
    assert field_names(await env.dev.post(url, json={"match": ""})) == {"match"}
    assert field_names(await env.dev.post(url, json={"match": "x", "exit_status": "1"})) == {
        "exit_status"
    }
    assert field_names(await env.dev.post(url, json={"match": "x", "exit_status": 256})) == {
        "exit_status"
    }
    assert field_names(await env.dev.post(url, json={"match": "x", "stderr": 1})) == {"stderr"}
    assert field_names(await env.dev.post(url, json={"match": "x", "times": 0})) == {"times"}
    assert field_names(await env.dev.post(url, json={"match": "x", "server": "*"})) == {"server"}
    assert field_names(await env.dev.post(url, json=["match"])) == {"body"}
    bad_json = await env.dev.post(url, content=b"{nope")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "json_error"
    unknown = await env.dev.post("servers/1/command-faults", json={"match": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert (await env.dev.get(url)).json() == {"command_faults": []}

    armed = await env.dev.post(
        url,
        json={"match": "config-import", "exit_status": 1, "stderr": "injected boom\n", "times": 1},
    )
    assert armed.status_code == 201, armed.text
    rule = armed.json()["command_fault"]
    assert rule["match"] == "config-import" and rule["times"] == 1
    assert (await env.dev.get(url)).json()["command_faults"] == [rule]

    async with await ssh(env, server, keys) as conn:
        unrelated = await conn.run(f"cat {KEY}.pub")
        assert unrelated.exit_status == 0  # does not match, runs
        big_input = json.dumps({"domain": [{"name": "x" * 60}] * 20_000})  # ~1.5 MB
        failed = await conn.run(CONFIG_IMPORT, input=big_input)
        assert (failed.exit_status, failed.stdout, failed.stderr) == (1, "", "injected boom\n")
        await conn.run("cloud-init status --wait", check=True)  # Docker installed
        real = await conn.run(CONFIG_IMPORT, input="{}")  # ran: the real failure
        assert real.exit_status == 1
        assert "/mailu/docker-compose.yml: no such file" in str(real.stderr)
        assert (await env.dev.get(url)).json() == {"command_faults": []}

        await env.dev.post(
            url, json={"match": "compose", "exit_status": 255, "stderr": "x\n", "times": 2}
        )
        assert (await conn.run(f"{COMPOSE} version")).exit_status == 255
        cleared = await env.dev.delete(url)
        assert cleared.status_code == 200 and cleared.json() == {"command_faults": []}
        assert (await conn.run(f"{COMPOSE} version")).exit_status == 0

        await env.dev.post(url, json={"match": "compose"})
        assert (await env.dev.delete("faults")).status_code == 200  # clears servers' too
        assert (await env.dev.get(url)).json() == {"command_faults": []}
        assert (await conn.run(f"{COMPOSE} version")).exit_status == 0

    commands = (await env.dev.get(f"servers/{server['id']}/commands")).json()["commands"]
    imports = [c for c in commands if c["command"] == CONFIG_IMPORT]
    assert [(c["injected"], c["stdin"], c["exit_status"]) for c in imports] == [
        (True, True, 1),
        (False, True, 1),
    ]
    assert [c["injected"] for c in commands if c["command"] == f"{COMPOSE} version"] == [
        True,
        False,
        False,
    ]


@pytest.mark.asyncio
async def test_ssh_faults_cut_off_the_next_connections(env: Env) -> None:
    keys = new_keys()
    created = await create(env, "ssh-faults", keys)
    server = created["server"]
    url = f"servers/{server['id']}/ssh-faults"
    # Armed while the server is still booting, as for a host whose sshd is not up.
    armed = await env.dev.post(url, json={"times": 2, "mode": "refuse"})
    assert armed.status_code == 201, armed.text
    assert armed.json()["ssh_fault"] == {"id": 1, "mode": "refuse", "times": 2}
    assert (await wait_action(env, created["action"]["id"]))["status"] == "success"

    assert field_names(await env.dev.post(url, json={"mode": "explode"})) == {"mode"}
    assert field_names(await env.dev.post(url, json={"times": "2"})) == {"times"}
    assert field_names(await env.dev.post(url, json={"match": "x"})) == {"match"}
    missing = await env.dev.post("servers/1/ssh-faults", json={})
    assert missing.status_code == 404

    for _ in range(2):
        with pytest.raises(ConnectionError):  # reset, as ECONNREFUSED is for a closed port
            await ssh(env, server, keys)
    async with await ssh(env, server, keys) as conn:
        assert (await conn.run(f"cat {KEY}.pub")).exit_status == 0
        await env.dev.post(url, json={"mode": "close"})
        with pytest.raises(asyncssh.ConnectionLost):
            await ssh(env, server, keys)
        # Faults cut off new connections only.
        assert (await conn.run(f"cat {KEY}.pub")).exit_status == 0

    await env.dev.post(url, json={"times": 5})
    assert (await env.dev.get(url)).json()["ssh_faults"][0]["mode"] == "refuse"
    assert (await env.dev.delete(url)).json() == {"ssh_faults": []}
    async with await ssh(env, server, keys):
        pass


async def release_cloud_init(env: Env, server: dict[str, Any]) -> None:
    state = (await env.dev.get(f"servers/{server['id']}")).json()["server"]["state_dir"]
    (Path(state) / CLOUD_INIT_RELEASE).touch()


@pytest.mark.asyncio
async def test_fresh_image_has_docker_only_after_cloud_init_installed_it(held_env: Env) -> None:
    """debian-12 as Hetzner boots it: SSH first, Docker only once cloud-init is done."""
    env, keys = held_env, new_keys()
    docker = docker_cloud_config("debian-12", "docker-apt")
    server = await boot(env, "mail-fresh", keys, cloud_config=docker)
    async with await ssh(env, server, keys) as conn:
        early = await conn.run("docker compose version")
        assert early.exit_status == 127
        assert str(early.stderr) == "bash: line 1: docker: command not found\n"
        running = await conn.run("cloud-init status --format json")
        report = json.loads(str(running.stdout))
        assert running.exit_status == 0 and report["status"] == "running"
        assert report["detail"] == "Running in stage: modules-final" and report["errors"] == []
        assert (await conn.run("cloud-init status")).stdout == "status: running\n"

        # A long remote command heartbeats while it runs: release cloud-init only once
        # the first heartbeat has arrived, so the wait spans at least one beat.
        beats: list[object] = []
        released = asyncio.Event()

        def on_heartbeat(*details: object) -> None:
            beats.append(details)
            released.set()

        async def release_after_first_beat() -> None:
            await released.wait()
            await release_cloud_init(env, server)

        activity_env = ActivityEnvironment()
        activity_env.on_heartbeat = on_heartbeat
        releaser = asyncio.create_task(release_after_first_beat())
        output = await activity_env.run(
            run_remote_heartbeating,
            conn,
            "cloud-init status --wait",
            timeout=120.0,
            what="cloud-init",
            every=0.05,
        )
        await releaser
        assert output.rstrip().endswith("status: done")
        assert beats and "cloud-init: still running" in str(beats[0])
        waited = await conn.run("cloud-init status --wait --long", check=True)
        lines = str(waited.stdout).splitlines()
        assert set(lines[0]) <= {"."} and lines[1] == "status: done"
        assert "boot_status_code: enabled-by-generator" in lines
        assert lines[-2:] == ["detail:", "DataSourceHetzner"]
        version = await conn.run("docker compose version", check=True)
        assert str(version.stdout).startswith("Docker Compose version v2.")
        await wait_for_cloud_init(conn)  # the activity's wait: done, no error

    # Debian's own docker.io: a docker CLI without the Compose v2 plugin.
    debian = await boot(env, "mail-dockerio", keys, cloud_config={"packages": ["docker.io"]})
    await release_cloud_init(env, debian)
    async with await ssh(env, debian, keys) as conn:
        await conn.run("cloud-init status --wait", check=True)
        no_plugin = await conn.run(f"{COMPOSE} ps")
        assert no_plugin.exit_status == 125
        assert str(no_plugin.stderr).startswith("unknown shorthand flag: 'p' in -p")

    # Docker's repository without its key: apt refuses it and cloud-init ends in error.
    unsigned = {
        "apt": {
            "sources": {
                "docker.list": {"source": docker["apt"]["sources"]["docker.list"]["source"]}
            }
        },
        "packages": list(DOCKER_PACKAGES),
    }
    broken = await boot(env, "mail-unsigned", keys, cloud_config=unsigned)
    await release_cloud_init(env, broken)
    async with await ssh(env, broken, keys) as conn:
        failed = await conn.run("cloud-init status --wait --format json")
        assert failed.exit_status == 1
        report = json.loads(str(failed.stdout))
        assert report["status"] == "error" and "NO_PUBKEY" in report["errors"][0]
        with pytest.raises(ApplicationError) as classified:
            await wait_for_cloud_init(conn)
        assert classified.value.type == "CloudInitFailed" and classified.value.non_retryable
        assert "NO_PUBKEY" in classified.value.message
        assert (await conn.run("docker compose version")).exit_status == 127


# --- issue 11: catalog, public_net, IPv6 PTR, firewalls ---------------------------------


@pytest.mark.asyncio
async def test_catalog_endpoints_filter_by_name_as_hetzner(env: Env) -> None:
    for kind, known in (("server_types", "cx23"), ("images", "debian-12"), ("locations", "hel1")):
        found = (await env.api.get(kind, params={"name": known})).json()
        assert [entry["name"] for entry in found[kind]] == [known]
        assert found["meta"]["pagination"]["total_entries"] == 1
        assert (await env.api.get(kind, params={"name": "nope"})).json()[kind] == []
    everything = (await env.api.get("locations")).json()["locations"]
    assert {"fsn1", "nbg1", "hel1"} <= {entry["name"] for entry in everything}


@pytest.mark.asyncio
async def test_public_net_is_honoured_and_ipv6_ptr_is_per_address(env: Env) -> None:
    v6 = (await create(env, "v6", public_net={"enable_ipv4": False, "enable_ipv6": True}))["server"]
    assert v6["public_net"]["ipv4"] is None
    network = v6["public_net"]["ipv6"]["ip"]
    assert network.endswith("::/64") and network.startswith("fd")
    host = network.removesuffix("/64") + "1"
    changed = await env.api.post(
        f"servers/{v6['id']}/actions/change_dns_ptr",
        json={"ip": host, "dns_ptr": "mail.example.org"},
    )
    assert changed.status_code == 201, changed.text
    got = (await env.api.get(f"servers/{v6['id']}")).json()["server"]
    assert got["public_net"]["ipv6"]["dns_ptr"] == [{"ip": host, "dns_ptr": "mail.example.org"}]
    outside = await env.api.post(
        f"servers/{v6['id']}/actions/change_dns_ptr",
        json={"ip": "2001:db8::1", "dns_ptr": "mail.example.org"},
    )
    assert field_names(outside) == {"ip"}
    v4 = (await create(env, "v4", public_net={"enable_ipv4": True, "enable_ipv6": False}))["server"]
    assert v4["public_net"]["ipv6"] is None and v4["public_net"]["ipv4"]["ip"]
    neither = await env.api.post(
        "servers",
        json={
            "name": "none",
            "server_type": "cx23",
            "image": "debian-12",
            "public_net": {"enable_ipv4": False, "enable_ipv6": False},
        },
    )
    assert field_names(neither) == {"public_net"}


@pytest.mark.asyncio
async def test_firewall_life_cycle_and_its_errors(env: Env) -> None:
    rules = [{"direction": "in", "protocol": "tcp", "port": "25", "source_ips": ["0.0.0.0/0"]}]
    body = {"name": "mail", "labels": {"role": "mail"}, "rules": rules}
    created = await env.api.post("firewalls", json=body)
    assert created.status_code == 201, created.text
    firewall = created.json()["firewall"]
    again = await env.api.post("firewalls", json=body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "uniqueness_error"
    bad = await env.api.post(
        "firewalls",
        json={
            "name": "bad",
            "rules": [{"direction": "in", "protocol": "tcp", "source_ips": ["300.1.1.1/8"]}],
        },
    )
    assert field_names(bad) == {"rules"}
    assert "port" in json.dumps(bad.json()) and "CIDR" in json.dumps(bad.json())

    server = (await create(env, "fw", firewalls=[{"firewall": firewall["id"]}]))["server"]
    assert server["public_net"]["firewalls"] == [{"id": firewall["id"], "status": "applied"}]
    listed = (await env.api.get("firewalls", params={"label_selector": "role=mail"})).json()
    [applied] = listed["firewalls"]
    assert applied["applied_to"] == [{"type": "server", "server": {"id": server["id"]}}]
    in_use = await env.api.delete(f"firewalls/{firewall['id']}")
    assert in_use.status_code == 422 and in_use.json()["error"]["code"] == "resource_in_use"
    missing = await env.api.post(
        "servers",
        json={
            "name": "nofw",
            "server_type": "cx23",
            "image": "debian-12",
            "firewalls": [{"firewall": 1}],
        },
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    deleted = await env.api.delete(f"servers/{server['id']}")
    assert (await wait_action(env, deleted.json()["action"]["id"]))["status"] == "success"
    assert (await env.api.delete(f"firewalls/{firewall['id']}")).status_code == 204
    gone = await env.api.get(f"firewalls/{firewall['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


@pytest.mark.asyncio
async def test_ipv6_addresses_leave_lo_with_their_servers(tmp_path: Path) -> None:
    if not await ipv6.can_assign():
        unavailable("this machine cannot add IPv6 addresses to lo (needs CAP_NET_ADMIN)")
    keys = new_keys()
    environment = _env(tmp_path, cloud_init_seconds=0.5)
    env = await anext(environment)
    prefix = env.cloud.ipv6_prefix
    booted = await boot(env, "kept", keys)
    assert booted["public_net"]["ipv6"] is not None
    # Deleted while booting: the address add may be cut short by the cancel.
    doomed = (await create(env, "doomed", keys))["server"]
    await env.api.delete(f"servers/{doomed['id']}")
    assert any(ipaddress.ip_address(a) in prefix for a in lo_addresses())
    with pytest.raises(StopAsyncIteration):  # runs the fixture's teardown: stops the cloud
        await anext(environment)
    assert not any(ipaddress.ip_address(a) in prefix for a in lo_addresses())


def lo_addresses() -> list[str]:
    shown = subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[3].split("/")[0] for line in shown.splitlines()]


# --- issue 19: SSH keys and root passwords, server types per location, tokens, pages ----


@pytest.mark.asyncio
async def test_ssh_keys_are_unique_by_name_and_fingerprint_and_can_be_deleted(env: Env) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_id = await register_key(env, "k1", key, purchase="p1")
    got = (await env.api.get(f"ssh_keys/{key_id}")).json()["ssh_key"]
    # Hetzner shows the MD5 fingerprint in colon-separated hex, as ssh-keygen -E md5 does.
    assert got["fingerprint"] == key.get_fingerprint("md5").removeprefix("MD5:")
    assert got["labels"] == {"purchase": "p1"}
    public = key.export_public_key("openssh").decode().strip()
    for body, message in (
        (
            {"name": "k1", "public_key": public_line(asyncssh.generate_private_key("ssh-ed25519"))},
            "SSH key name is already used",
        ),
        ({"name": "k2", "public_key": public}, "SSH key with the same fingerprint already exists"),
    ):
        twin = await env.api.post("ssh_keys", json=body)
        assert twin.status_code == 409 and twin.json()["error"]["code"] == "uniqueness_error"
        assert twin.json()["error"]["message"] == message
    bad = await env.api.post("ssh_keys", json={"name": "k3", "public_key": "not a key"})
    assert bad.status_code == 400 and field_names(bad) == {"public_key"}
    listed = (await env.api.get("ssh_keys", params={"label_selector": "purchase=p1"})).json()
    assert [k["id"] for k in listed["ssh_keys"]] == [key_id]
    assert (await env.api.delete(f"ssh_keys/{key_id}")).status_code == 204
    gone = await env.api.delete(f"ssh_keys/{key_id}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


@pytest.mark.asyncio
async def test_a_server_without_ssh_keys_gets_an_expired_root_password(env: Env) -> None:
    keys = new_keys()
    bare = await create(env, "bare", keys, ssh_keys=[])
    assert isinstance(bare["root_password"], str) and len(bare["root_password"]) >= 12
    dev = (await env.dev.get(f"servers/{bare['server']['id']}")).json()["server"]
    assert dev["root_password_expired"] is True and dev["metadata_public_keys"] == []
    keyed = await create(env, "keyed", keys)
    assert keyed["root_password"] is None
    dev = (await env.dev.get(f"servers/{keyed['server']['id']}")).json()["server"]
    assert dev["root_password_expired"] is False
    assert dev["metadata_public_keys"] == [public_line(keys.client)]
    # The whole chain: cloud to VPS. Key login works on both; without ssh_keys every
    # session without a terminal is refused as OpenSSH does with an expired password.
    for name, expected in ((bare, 1), (keyed, 0)):
        await wait_action(env, name["action"]["id"])
        server = (await env.api.get(f"servers/{name['server']['id']}")).json()["server"]
        async with await ssh(env, server, keys) as conn:
            result = await conn.run("cloud-init status --wait", check=False)
            assert result.exit_status == expected
            assert (result.stderr == EXPIRED_LOGIN_NOTICE) is (expected == 1)
    unknown = await env.api.post(
        "servers",
        json={"name": "nokey", "server_type": "cx23", "image": "debian-12", "ssh_keys": [999]},
    )
    assert unknown.status_code == 400 and field_names(unknown) == {"ssh_keys"}


@pytest.mark.asyncio
async def test_server_types_are_sold_per_location_and_deprecated_ones_stay_listed(
    env: Env,
) -> None:
    old = (await env.api.get("server_types", params={"name": "cx22"})).json()["server_types"]
    assert old[0]["deprecation"]["unavailable_after"] == "2026-01-01T00:00:00+00:00"
    assert {entry["name"] for entry in old[0]["locations"]} == {"fsn1", "nbg1", "hel1"}
    assert all(entry["deprecation"] is not None for entry in old[0]["locations"])
    body = {"name": "old", "server_type": "cx22", "image": "debian-12", "location": "fsn1"}
    refused = await env.api.post("servers", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "unsupported location for server type"
    elsewhere = {**body, "server_type": "cx23", "location": "ash"}  # EU-only type
    refused = await env.api.post("servers", json=elsewhere)
    assert refused.json()["error"]["message"] == "unsupported location for server type"
    env.cloud.out_of_stock["cx23"] = {"fsn1"}
    current = (await env.api.get("server_types", params={"name": "cx23"})).json()
    fsn1 = [e for e in current["server_types"][0]["locations"] if e["name"] == "fsn1"]
    assert fsn1[0]["available"] is False and fsn1[0]["deprecation"] is None
    sold_out = await env.api.post("servers", json={**body, "server_type": "cx23"})
    assert sold_out.status_code == 422
    assert sold_out.json()["error"]["code"] == "resource_unavailable"


@pytest.mark.asyncio
async def test_a_read_only_token_may_only_get(tmp_path: Path) -> None:
    cloud = LocalCloud(
        tmp_path / "cloud", TOKEN, free_port(), free_port(), readonly_token="read-only"
    )
    base = await cloud.start()
    try:
        async with httpx.AsyncClient(
            base_url=base + "/", headers={"Authorization": "Bearer read-only"}
        ) as api:
            assert (await api.get("servers")).status_code == 200
            refused = await api.post("ssh_keys", json={})
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "token_readonly"
        async with httpx.AsyncClient(
            base_url=base + "/", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as api:
            # The same harmless write with a read-write token: refused body, nothing made.
            probe = await api.post("ssh_keys", json={})
            assert probe.status_code == 400 and probe.json()["error"]["code"] == "invalid_input"
            assert (await api.get("ssh_keys")).json()["ssh_keys"] == []
    finally:
        await cloud.stop()


@pytest.mark.asyncio
async def test_lists_page_at_most_50_and_say_where_the_next_page_is(env: Env) -> None:
    for n in range(55):
        await register_key(env, f"k{n}", asyncssh.generate_private_key("ssh-ed25519"))
    first = (await env.api.get("ssh_keys", params={"per_page": "100"})).json()
    assert len(first["ssh_keys"]) == 50 and first["meta"]["pagination"]["next_page"] == 2
    default = (await env.api.get("ssh_keys")).json()
    assert len(default["ssh_keys"]) == 25  # Hetzner's default page size
    second = (await env.api.get("ssh_keys", params={"page": "2", "per_page": "50"})).json()
    assert len(second["ssh_keys"]) == 5 and second["meta"]["pagination"]["next_page"] is None
