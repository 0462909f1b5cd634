"""The worker process: hosts ProvisionMailTenant and its activities.

Configuration comes from the environment only (see Settings.from_env). SIGTERM or
SIGINT stops polling for new tasks and lets running activities finish for up to
MAILPROV_DRAIN_SECONDS before exiting, so a deploy never cuts an SSH session in
half; anything still running after that is retried by Temporal on another worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.audit import AuditActivities, open_audit_store
from activities.codec import CodecKeyError, KeyRing, data_converter
from activities.credentials import CredentialsActivities
from activities.hetzner import DEFAULT_API_URL, HetznerClient
from activities.logs import LogContextInterceptor, configure_logging, get_logger
from activities.mailu import MailuActivities
from activities.notify import NotifyActivities, NotifyPolicy
from activities.ssh import ServerAccess, SshIdentity, SshTrustActivities
from activities.tenant_claims import TenantClaimActivities
from activities.vault import Vault, VaultActivities, VaultSettings
from activities.vps_provider import VpsActivities
from workflows.contracts import DEFAULT_TASK_QUEUE
from workflows.provision import WORKFLOWS

log = get_logger("worker")


class ConfigError(Exception):
    """A missing or malformed setting; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    temporal_address: str
    temporal_namespace: str
    task_queue: str
    hcloud_api_url: str
    hcloud_token: str
    ssh_key_file: Path
    ssh_port: int
    vault: VaultSettings
    audit_store: str
    codec_keys_file: Path
    metrics_bind: str | None
    drain_seconds: float
    notify_policy: NotifyPolicy

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            temporal_address=env.get("TEMPORAL_ADDRESS", "localhost:7233"),
            temporal_namespace=env.get("TEMPORAL_NAMESPACE", "default"),
            task_queue=env.get("MAILPROV_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            hcloud_api_url=env.get("HCLOUD_API_URL", DEFAULT_API_URL),
            hcloud_token=_secret(env, "HCLOUD_TOKEN"),
            ssh_key_file=Path(_required(env, "MAILPROV_SSH_KEY_FILE")),
            ssh_port=_int(env, "MAILPROV_SSH_PORT", 22),
            vault=VaultSettings(
                url=_required(env, "VAULT_ADDR"),
                token=_secret(env, "VAULT_TOKEN"),
                kv_mount=env.get("MAILPROV_KV_MOUNT", "smtp"),
                transit_mount=env.get("MAILPROV_TRANSIT_MOUNT", "transit"),
                transit_key=env.get("MAILPROV_TRANSIT_KEY", "mail-credentials"),
            ),
            audit_store=(
                env.get("MAILPROV_AUDIT_DSN") or env.get("MAILPROV_AUDIT_DB") or "audit.db"
            ),
            codec_keys_file=Path(_required(env, "MAILPROV_CODEC_KEYS_FILE")),
            metrics_bind=env.get("MAILPROV_METRICS_BIND") or None,
            drain_seconds=float(_int(env, "MAILPROV_DRAIN_SECONDS", 60)),
            notify_policy=_notify_policy(env),
        )


def _notify_policy(env: Mapping[str, str]) -> NotifyPolicy:
    """Outbound webhook rules (activities/notify.py); every variable is optional."""
    try:
        return NotifyPolicy.from_settings(
            allowed=env.get("MAILPROV_NOTIFY_ALLOWED_HOSTS", ""),
            http=env.get("MAILPROV_NOTIFY_HTTP_HOSTS", ""),
            sinks=env.get("MAILPROV_NOTIFY_OPERATOR_SINKS", ""),
        )
    except ValueError as err:
        raise ConfigError(f"MAILPROV_NOTIFY_OPERATOR_SINKS: {err}") from None


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required but not set")
    return value


def _secret(env: Mapping[str, str], name: str) -> str:
    """A secret from NAME, or from the file named by NAME_FILE (preferred: not in `ps e`)."""
    path = env.get(f"{name}_FILE", "").strip()
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as err:
            raise ConfigError(f"{name}_FILE={path}: {err.strerror}") from None
        if not value:
            raise ConfigError(f"{name}_FILE={path} is empty")
        return value
    if env.get(name, "").strip():
        return env[name].strip()
    raise ConfigError(f"{name} or {name}_FILE is required but not set")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


@asynccontextmanager
async def build_activities(settings: Settings) -> AsyncIterator[list[Any]]:
    """Every activity of the product, wired to its outside system."""
    try:
        identity = SshIdentity.from_file(settings.ssh_key_file)
    except (OSError, ValueError) as err:
        raise ConfigError(f"MAILPROV_SSH_KEY_FILE={settings.ssh_key_file}: {err}") from None
    hetzner = HetznerClient(settings.hcloud_token, settings.hcloud_api_url)
    vault = Vault(settings.vault)
    access = ServerAccess(identity, port=settings.ssh_port)
    mailu = MailuActivities(access)
    vps = VpsActivities(hetzner, identity)
    vault_activities = VaultActivities(vault)
    notify = NotifyActivities(settings.notify_policy)
    claims = TenantClaimActivities()
    try:
        yield [
            vps.create_server,
            vps.wait_for_server,
            vps.set_reverse_dns,
            vps.delete_server,
            SshTrustActivities(access).rotate_host_key,
            mailu.configure_mailu,
            CredentialsActivities(vault, access).create_admin_credentials,
            vault_activities.store_credentials,
            vault_activities.remove_credentials,
            AuditActivities(open_audit_store(settings.audit_store)).record_audit_event,
            notify.check_notify_url,
            claims.claim_tenant,
            claims.confirm_tenant_claim,
            claims.release_tenant_claim,
            notify.notify_customer,
        ]
    finally:
        await hetzner.aclose()


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    runtime = None
    if settings.metrics_bind:
        runtime = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=settings.metrics_bind))
        )
    try:
        keyring = KeyRing.from_file(settings.codec_keys_file)
    except CodecKeyError as err:
        raise ConfigError(f"MAILPROV_CODEC_KEYS_FILE: {err}") from None
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        runtime=runtime,
        # Marked, not raised: an undecodable start then fails fast (activities/codec.py).
        data_converter=data_converter(keyring, mark_undecodable=True),
    )
    async with build_activities(settings) as activities:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=list(WORKFLOWS),
            activities=activities,
            interceptors=[LogContextInterceptor()],
            graceful_shutdown_timeout=timedelta(seconds=settings.drain_seconds),
        )
        async with worker:
            log.info(
                "worker ready",
                task_queue=settings.task_queue,
                temporal=settings.temporal_address,
                metrics=settings.metrics_bind,
            )
            await stop.wait()
            log.info(
                "draining: no new tasks, finishing running activities",
                drain_seconds=settings.drain_seconds,
            )
    log.info("worker stopped")


def main() -> int:
    configure_logging()
    try:
        settings = Settings.from_env()
    except ConfigError as err:
        log.error("configuration error", error=str(err))
        return 2
    stop = asyncio.Event()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    try:
        asyncio.run(serve())
    except ConfigError as err:
        log.error("configuration error", error=str(err))
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the Temporal client's Rust threads can abort a process
    # while it finalizes (temporalio/sdk-python#300), turning a clean drain into SIGABRT.
    os._exit(code)
