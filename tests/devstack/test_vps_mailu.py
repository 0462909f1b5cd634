"""One local VPS in-process, driven by the product's own code: MailU's login check,
the ports MailU 2024.06 does not serve, and sshd with an expired root password.

Issue 19 items 1 (stand-in side) and 2.
"""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.cloud_init import docker_cloud_config
from activities.mailu import MailuHost, PublishAddresses, render_compose, render_mailu_env
from activities.smtp_proof import AUTH_CHECK, auth_request_headers, prove_smtp_login
from activities.ssh import SshIdentity, connect_pinned
from devstack.cloudinit import COMPOSE_PLUGIN, DOCKER_BIN, CloudInitRun
from devstack.compose import Shell
from devstack.mail_login import certificate_after_dns, publish_dns, submissions_login
from devstack.mailu import (
    HASH_ROUNDS_VARIABLE,
    MailuStore,
    hash_password,
    password_context,
    verify_and_update,
)
from devstack.mailu_auth import RATE_LIMITED, AdminAuthEndpoint
from devstack.mailu_front import REACH_POLL_SECONDS
from devstack.processes import free_port
from devstack.vps import EXPIRED_LOGIN_NOTICE, SMTP_AUTH_LOG, Machine

DOMAIN = "proof.example"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "Tr0ub4dor&3 %41+x/y"  # URL-encoding must survive '%', '+', '/', '&', ' '


@dataclass
class Vps:
    machine: Machine
    identity: SshIdentity
    host_public: str

    async def connect(self) -> asyncssh.SSHClientConnection:
        return await connect_pinned(
            self.machine.ip, [self.host_public], self.identity, port=self.machine.ssh_port
        )


async def boot(tmp_path: Path, **config: object) -> Vps:
    identity = SshIdentity.generate()
    user_data, host_public = identity.cloud_init_for(
        "mail-proof", docker_cloud_config("docker-ce", "preinstalled")
    )
    machine = Machine(
        {
            "ip": "127.0.0.1",
            "ssh_port": free_port(),
            "smtp_port": free_port(),
            "state_dir": str(tmp_path / "vps"),
            "user_data": user_data,
            "image": "docker-ce",  # Docker from the start: no cloud-init wait needed here
            "cloud_init_seconds": 0,
            **config,
        }
    )
    await machine.start()
    return Vps(machine, identity, host_public)


@pytest_asyncio.fixture
async def vps(tmp_path: Path) -> AsyncIterator[Vps]:
    server = await boot(tmp_path)
    try:
        yield server
    finally:
        await server.machine.stop()


async def running_mailu(conn: asyncssh.SSHClientConnection) -> MailuHost:
    mailu = MailuHost(conn)
    await mailu.write_config(DOMAIN, PublishAddresses.of("127.0.0.1", None))
    await mailu.compose_up()
    await ActivityEnvironment().run(mailu.wait_admin_healthy)
    await mailu.ensure_domain(DOMAIN)
    await mailu.set_admin(ADMIN, PASSWORD)
    return mailu


async def test_login_proof_asks_mailus_admin_and_keeps_the_password_off_argv(vps: Vps) -> None:
    async with await vps.connect() as conn:
        await running_mailu(conn)
        await prove_smtp_login(conn, ADMIN, PASSWORD)
        with pytest.raises(ApplicationError) as refused:
            await prove_smtp_login(conn, ADMIN, PASSWORD + "x")
        with pytest.raises(ApplicationError) as unknown:
            await prove_smtp_login(conn, f"nobody@{DOMAIN}", PASSWORD)
    for err in (refused.value, unknown.value):
        assert err.type == "AdminLoginProofFailed" and not err.non_retryable
        assert "Authentication credentials invalid" in err.message
        assert PASSWORD not in err.message
    state = vps.machine.state_dir
    commands = [json.loads(line) for line in (state / "commands.jsonl").read_text().splitlines()]
    checks = [c for c in commands if c["command"] == AUTH_CHECK]
    assert len(checks) == 3 and all(c["stdin"] for c in checks)
    assert PASSWORD not in (state / "commands.jsonl").read_text()
    attempts = [json.loads(line) for line in (state / SMTP_AUTH_LOG).read_text().splitlines()]
    assert [(a["login"], a["protocol"], a["port"], a["success"]) for a in attempts] == [
        (ADMIN, "submission", "465", True),
        (ADMIN, "submission", "465", False),
        (f"nobody@{DOMAIN}", "submission", "465", False),
    ]
    assert PASSWORD not in (state / SMTP_AUTH_LOG).read_text()


async def test_login_proof_before_admin_is_healthy_is_a_retryable_failure(vps: Vps) -> None:
    async with await vps.connect() as conn:
        mailu = MailuHost(conn)
        await mailu.write_config(DOMAIN, PublishAddresses.of("127.0.0.1", None))
        await mailu.compose_up()  # admin still migrating: gunicorn not on 8080 yet
        with pytest.raises(ApplicationError) as err:
            await prove_smtp_login(conn, ADMIN, PASSWORD)
    assert err.value.type == "AdminLoginProofFailed" and not err.value.non_retryable
    assert "exited 7" in err.value.message and PASSWORD not in err.value.message


async def test_mailu_serves_no_submission_port_587_even_over_ssh(vps: Vps) -> None:
    """MailU 2024.06's default PORTS leave 587 closed (socrate clean_env); the old
    proof's tunnel to 127.0.0.1:587 is refused once MailU runs."""
    async with await vps.connect() as conn:
        await running_mailu(conn)
        with pytest.raises(asyncssh.ChannelOpenError, match="Connection refused"):
            await conn.open_connection("127.0.0.1", 587)


async def test_expired_root_password_refuses_sessions_without_a_terminal(
    tmp_path: Path,
) -> None:
    server = await boot(tmp_path, root_password_expired=True)
    try:
        async with await server.connect() as conn:  # key login itself succeeds
            result = await conn.run("docker compose version", check=False)
            assert result.exit_status == 1
            assert result.stderr == EXPIRED_LOGIN_NOTICE
            assert result.stdout == ""
            with pytest.raises((asyncssh.SFTPError, asyncssh.ChannelOpenError, OSError)):
                async with conn.start_sftp_client() as sftp:
                    await sftp.listdir("/")
        [entry] = [
            json.loads(line)
            for line in (server.machine.state_dir / "commands.jsonl").read_text().splitlines()
            if "docker" in (json.loads(line)["command"] or "")
        ]
        assert entry["exit_status"] == 1
    finally:
        await server.machine.stop()


async def test_metadata_public_keys_log_in_beside_the_cloud_config_keys(tmp_path: Path) -> None:
    other = SshIdentity.generate()
    server = await boot(tmp_path, metadata_public_keys=[other.public_key])
    try:
        for identity in (server.identity, other):
            async with await connect_pinned(
                server.machine.ip, [server.host_public], identity, port=server.machine.ssh_port
            ) as conn:
                assert (await conn.run("docker compose version", check=True)).exit_status == 0
    finally:
        await server.machine.stop()


# --- published ports and the IPv6 open relay (issue 19 item 3) -------------------------

HOST_V4, HOST_V6 = "203.0.113.5", "2001:db8:5::1"
COMPOSE = "docker compose -p mailu -f /mailu/docker-compose.yml"


async def no_stdin() -> str:
    return ""


def dual_stack_shell(tmp_path: Path, compose_text: str, daemon_json: str | None) -> Shell:
    shell = Shell(
        tmp_path / "root", MailuStore(tmp_path / "mailu.json"), addresses=[HOST_V4, HOST_V6]
    )
    bind = PublishAddresses.of(HOST_V4, HOST_V6)
    mailu = shell.host_path("/mailu")
    mailu.mkdir(parents=True)
    (mailu / "docker-compose.yml").write_text(compose_text)
    (mailu / "mailu.env").write_text(render_mailu_env("example.com", "0" * 32, bind))
    if daemon_json is not None:
        shell.host_path("/etc/docker").mkdir(parents=True)
        shell.host_path("/etc/docker/daemon.json").write_text(daemon_json)
    return shell


async def test_our_files_keep_an_ipv6_clients_address(tmp_path: Path) -> None:
    [daemon] = docker_cloud_config("debian-12", "docker-apt")["write_files"][1:]
    shell = dual_stack_shell(
        tmp_path, render_compose(PublishAddresses.of(HOST_V4, HOST_V6)), daemon["content"]
    )
    assert (await shell.run(f"{COMPOSE} up -d", no_stdin)).exit_status == 0
    assert shell.deployments["mailu"].ipv6_clients_seen_as == "client"
    ps = json.loads((await shell.run(f"{COMPOSE} ps --format json front", no_stdin)).stdout)
    assert {(p["URL"], p["PublishedPort"]) for p in ps["Publishers"]} == {
        (ip, port) for ip in (HOST_V4, HOST_V6) for port in (25, 80, 443, 465, 993, 995, 4190)
    }


async def test_ports_on_every_address_without_mailus_daemon_settings_relay_for_ipv6(
    tmp_path: Path,
) -> None:
    """What the product rendered before: "25:25" on a dual-stack host, IPv4-only network,
    the daemon's default userland proxy: IPv6 clients arrive as the bridge gateway."""
    ours = render_compose(PublishAddresses.of(HOST_V4, HOST_V6))
    everywhere = re.sub(r'"(?:\[[0-9a-f:]+\]|[0-9.]+):(\d+):(\d+)"', r'"\1:\2"', ours)
    everywhere = everywhere.replace("    enable_ipv6: true\n", "")
    shell = dual_stack_shell(tmp_path, everywhere, None)
    assert (await shell.run(f"{COMPOSE} up -d", no_stdin)).exit_status == 0
    assert shell.deployments["mailu"].ipv6_clients_seen_as == "gateway"


async def test_a_port_bound_to_an_address_the_host_lacks_fails_compose_up(tmp_path: Path) -> None:
    shell = dual_stack_shell(
        tmp_path, render_compose(PublishAddresses.of("198.51.100.7", None)), None
    )
    result = await shell.run(f"{COMPOSE} up -d", no_stdin)
    assert result.exit_status == 1
    assert "listen tcp4 198.51.100.7:80: bind: cannot assign requested address" in result.stderr
    assert "mailu" not in shell.deployments


# --- Docker's apt key on an image without gpg (issue 19 item 4) ----------------------


def finished_run(tmp_path: Path, document: dict[str, object]) -> CloudInitRun:
    return CloudInitRun(tmp_path / "root", document, image="debian-12", duration=0)


def test_docker_key_as_a_keyring_file_installs_docker_without_gpg(tmp_path: Path) -> None:
    run = finished_run(tmp_path, docker_cloud_config("debian-12", "docker-apt"))
    assert run.has(DOCKER_BIN) and run.has(COMPOSE_PLUGIN)
    assert run.details()["errors"] == []
    assert (tmp_path / "root/etc/docker/daemon.json").is_file()


def test_docker_key_through_cloud_inits_gpg_fails_apt_on_the_fresh_image(tmp_path: Path) -> None:
    """What the product sent before: `key` inline, `signed-by=$KEY_FILE` (needs gpg)."""
    config = docker_cloud_config("debian-12", "docker-apt")
    key = config.pop("write_files")[0]["content"]
    config["apt"]["sources"]["docker.list"] = {
        "source": "deb [signed-by=$KEY_FILE] https://download.docker.com/linux/debian "
        "bookworm stable",
        "key": key,
    }
    run = finished_run(tmp_path, config)
    assert not run.has(DOCKER_BIN)
    [error] = run.details()["errors"]
    assert "NO_PUBKEY" in error


def test_a_keyring_file_without_dockers_key_fails_apt(tmp_path: Path) -> None:
    config = docker_cloud_config("debian-12", "docker-apt")
    config["write_files"][0]["content"] = "not a key\n"
    run = finished_run(tmp_path, config)
    assert not run.has(DOCKER_BIN)
    assert "NO_PUBKEY" in run.details()["errors"][0]


# --- front's submissions port: closed until DNS gives MailU a certificate ------------


async def test_submissions_is_closed_until_dns_brings_a_certificate(
    vps: Vps, tmp_path: Path
) -> None:
    host, port = vps.machine.ip, vps.machine.smtp_port
    state = vps.machine.state_dir
    publish_dns(state)  # DNS alone does nothing before MailU runs
    async with await vps.connect() as conn:
        for _ in range(3):  # several of the stand-in's certbot polls
            await asyncio.sleep(REACH_POLL_SECONDS)
        assert not (state / "tls" / "cert.pem").exists()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
        await running_mailu(conn)
        cafile = tmp_path / "front.pem"
        cafile.write_text(await asyncio.to_thread(certificate_after_dns, state))
    assert (state / "root/mailu/certs/letsencrypt/live/mailu/fullchain.pem").is_file()
    login = await asyncio.to_thread(submissions_login, host, port, cafile, ADMIN, PASSWORD)
    assert login.startswith("235 ")
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        await asyncio.to_thread(submissions_login, host, port, cafile, ADMIN, "wrong")
    assert refused.value.smtp_code == 535


# --- MailU's login rate limits, as the proof meets them -------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def login_headers(user: str, password: str, client_ip: str = "127.0.0.1") -> dict[str, str]:
    lines = auth_request_headers(user, password).replace("127.0.0.1", client_ip).splitlines()
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def store_with_admin(tmp_path: Path) -> MailuStore:
    """The admin's hash at bcrypt's fewest rounds: the rate-limit tests below verify 50-60
    wrong passwords, each a whole bcrypt at the stored hash's cost (12 rounds: ~0.3 s on
    a loaded 2-core machine). The scheme and the limiter are MailU's as before (a right
    password rewrites the hash at 12 rounds, as MailU's passlib context would)."""
    store = MailuStore(tmp_path / "mailu.json")
    user = {ADMIN: {"password": password_context(rounds=4).hash(PASSWORD)}}
    store.save({"domain": {}, "user": user, "alias": {}, "relay": {}})
    return store


ENV = {"AUTH_RATELIMIT_IP": "5/hour", "AUTH_RATELIMIT_USER": "50/day"}  # our mailu.env


def test_fifty_refused_proofs_in_a_day_lock_the_admin_out_even_with_the_right_password(
    tmp_path: Path,
) -> None:
    """Each proof attempt sets a fresh password, so each refusal is a new one and counts
    (limiter.py rate_limit_user: once per user and password) against AUTH_RATELIMIT_USER."""
    clock = Clock()
    endpoint = AdminAuthEndpoint(store_with_admin(tmp_path), clock=clock)
    for attempt in range(50):
        answer = endpoint.authenticate(login_headers(ADMIN, f"wrong-{attempt}"), ENV)
        assert answer["Auth-Status"] == "Authentication credentials invalid"
    limited = endpoint.authenticate(login_headers(ADMIN, PASSWORD), ENV)
    assert limited == {"Auth-Status": RATE_LIMITED, "Auth-Error-Code": "451 4.3.2"}
    clock.now += 86401
    assert endpoint.authenticate(login_headers(ADMIN, PASSWORD), ENV)["Auth-Status"] == "OK"


def test_five_unknown_logins_from_a_network_block_it_for_an_hour_unless_exempted(
    tmp_path: Path,
) -> None:
    """AUTH_RATELIMIT_IP counts each username once per /24; a success exempts the IP."""
    clock = Clock()
    endpoint = AdminAuthEndpoint(store_with_admin(tmp_path), clock=clock)
    for n in range(5):
        answer = endpoint.authenticate(login_headers(f"nobody{n}@{DOMAIN}", "x", "10.9.9.1"), ENV)
        assert answer["Auth-Status"] == "Authentication credentials invalid"
    limited = endpoint.authenticate(login_headers(ADMIN, PASSWORD, "10.9.9.2"), ENV)
    assert limited["Auth-Status"] == RATE_LIMITED  # the same /24
    assert endpoint.authenticate(login_headers(ADMIN, PASSWORD), ENV)["Auth-Status"] == "OK"
    for n in range(10):  # 127.0.0.1 is now exempt for a day
        endpoint.authenticate(login_headers(f"nobody{n}@{DOMAIN}", "x"), ENV)
    assert endpoint.authenticate(login_headers(ADMIN, PASSWORD), ENV)["Auth-Status"] == "OK"
    clock.now += 3601
    answer = endpoint.authenticate(login_headers(ADMIN, PASSWORD, "10.9.9.2"), ENV)
    assert answer["Auth-Status"] == "OK"


def test_the_same_wrong_password_counts_once(tmp_path: Path) -> None:
    endpoint = AdminAuthEndpoint(store_with_admin(tmp_path), clock=Clock())
    for _ in range(60):
        endpoint.authenticate(login_headers(ADMIN, "same-wrong"), ENV)
    assert endpoint.authenticate(login_headers(ADMIN, PASSWORD), ENV)["Auth-Status"] == "OK"


async def test_a_reboot_restarts_the_compose_project_with_its_health_starting_over(
    tmp_path: Path,
) -> None:
    """restart: always (every service of our compose file): dockerd restarts the
    containers at boot; a fresh Shell over the same disk plays the rebooted machine."""
    [daemon] = docker_cloud_config("debian-12", "docker-apt")["write_files"][1:]
    compose = render_compose(PublishAddresses.of(HOST_V4, HOST_V6))
    before = dual_stack_shell(tmp_path, compose, daemon["content"])
    assert (await before.run(f"{COMPOSE} up -d", no_stdin)).exit_status == 0
    clock = [1000.0]
    rebooted = Shell(
        tmp_path / "root",
        MailuStore(tmp_path / "mailu.json"),
        addresses=[HOST_V4, HOST_V6],
        clock=lambda: clock[0],
    )
    ps = f"{COMPOSE} ps --format json admin"
    assert (await rebooted.run(ps, no_stdin)).stdout.strip() in ("", "[]")
    await rebooted.restart_at_boot()
    assert "starting" in json.loads((await rebooted.run(ps, no_stdin)).stdout)["Status"]
    clock[0] += rebooted.healthy_after
    assert "(healthy)" in json.loads((await rebooted.run(ps, no_stdin)).stdout)["Status"]


def test_a_test_stack_hashes_cheaper_and_everything_else_at_mailus_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MailU's cost (CREDENTIAL_ROUNDS 12) unless the stack asked for fewer. As in MailU
    (passlib's needs_update), a login whose hash has other rounds than the configured
    ones verifies and is rewritten at the configured cost."""
    monkeypatch.delenv(HASH_ROUNDS_VARIABLE, raising=False)
    expensive = hash_password(PASSWORD)
    assert expensive.startswith("$bcrypt-sha256$v=2,t=2b,r=12$")
    assert verify_and_update(PASSWORD, expensive) == (True, None)
    monkeypatch.setenv(HASH_ROUNDS_VARIABLE, "4")
    cheap = hash_password(PASSWORD)
    assert cheap.startswith("$bcrypt-sha256$v=2,t=2b,r=4$")
    assert verify_and_update(PASSWORD, cheap) == (True, None)
    ok, rewritten = verify_and_update(PASSWORD, expensive)
    assert ok and rewritten is not None and rewritten.startswith("$bcrypt-sha256$v=2,t=2b,r=4$")
