"""The worker process: hosts ProvisionMailTenant and its activities.

Configuration comes from the environment only (see Settings.from_env). SIGTERM or
SIGINT stops polling for new tasks and lets running activities finish for up to
MAILPROV_DRAIN_SECONDS before exiting, so a deploy never cuts an SSH session in
half; anything still running after that is retried by Temporal on another worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.activation import ActivationActivities
from activities.admission import AdmissionActivities
from activities.audit import (
    AuditActivities,
    AuditChainBroken,
    AuditLog,
    AuditStore,
    AuditStoreUnreachable,
)
from activities.audit_vault import DEFAULT_AUDIT_CHAIN, AuditSettings, open_audit_log
from activities.connections import (
    ConnectionConfigError,
    TemporalConnection,
    TransportPolicy,
    check_postgres_dsn,
    connect_temporal,
    load_temporal_connection,
    vault_transport,
)
from activities.credentials import CredentialsActivities
from activities.deprovision import DeprovisionActivities
from activities.dns_check import RESOLVERS_ENV, resolver_from_setting
from activities.final_snapshot import (
    DEFAULT_RETENTION_SECONDS,
    FinalSnapshotActivities,
    FinalSnapshotPolicy,
)
from activities.mail_tls import TlsSettings
from activities.mailu import MailuActivities
from activities.notify import NotifyActivities, NotifyPolicy
from activities.plan_change import PlanChangeActivities
from activities.plan_change_guard import TenantRuns
from activities.plans import CatalogError, load_backup_promises, load_catalog
from activities.provider_registry import DEFAULT_PROVIDER, UnknownProvider, provider_entry
from activities.rotation_schedule import RotationScheduleActivities
from activities.ssh import ServerAccess, SshIdentity, SshTrustActivities
from activities.temporal_runs import TemporalRunsActivities
from activities.tenant_claims import TenantClaimActivities
from activities.vault import (
    DEFAULT_DENIED_RETRY_SECONDS,
    Vault,
    VaultActivities,
    VaultError,
    VaultNotReady,
    VaultSettings,
    VaultUnavailable,
)
from activities.vps_provider import (
    ANYWHERE,
    FirewallPolicy,
    ProviderError,
    VpsActivities,
    VpsProvider,
)
from activities.world import WorldActivities, WorldRecords
from runtime.codec import (
    CodecKeyError,
    KeyRing,
    UnknownKeyGrace,
    data_converter,
    worker_identity,
)
from runtime.exit import exit_without_teardown
from runtime.interceptor import WorkerInterceptor
from runtime.logs import configure_logging, get_logger
from runtime.metrics import HISTOGRAM_BUCKETS
from runtime.worker_health import serve_health
from runtime.workflow_runner import ContextFreeSandboxRunner, context_free
from workflows.activation import Activation
from workflows.contracts import DEFAULT_TASK_QUEUE, Plan
from workflows.deprovision import Deprovision
from workflows.dispatch import ProvisionMailTenant
from workflows.final_snapshot_expiry import ExpireFinalSnapshot
from workflows.plan_change import PlanChange
from workflows.plan_change_lock import PlanChangeLock
from workflows.provision import Purchase
from workflows.reconcile import ReconcileOrphans
from workflows.rotation import Rotation
from workflows.tenant_claim import TenantClaim
from workflows.world_check import CheckWorld

log = get_logger("worker")
# Every workflow a worker of the task queue hosts: ProvisionMailTenant is the queue's
# dynamic workflow, so a type missing here would be answered as UnknownWorkflowType;
# it also runs RotateSmtpCredentials, ChangeMailPlan, DeprovisionMailTenant and
# ActivateMailDomain, whose arguments must arrive raw (workflows/dispatch.py).
WORKFLOWS = [
    ProvisionMailTenant,
    TenantClaim,
    PlanChangeLock,
    ReconcileOrphans,
    CheckWorld,
    ExpireFinalSnapshot,
]
# Workflow code the dynamic workflow runs for other types: re-executed per run like a
# workflow module, so held to the same sandbox rules and bytecode check.
DISPATCHED = [Purchase, Rotation, PlanChange, Deprovision, Activation]

# Every activity is a coroutine, so a slot is a sleeping task, not a thread: a server's
# boot is waited for inside one activity (wait_for_server), and the SDK default of 100
# slots let 100 booting servers stall every other purchase's steps (docs/PERFORMANCE.md).
DEFAULT_MAX_CONCURRENT_ACTIVITIES = 1000


class ConfigError(Exception):
    """A missing or malformed setting; the message names the variable."""


# Long enough to restart every worker with a new ring (runtime/codec.py UnknownKeyGrace).
DEFAULT_UNKNOWN_KEY_GRACE_SECONDS = 1800


@dataclass(frozen=True)
class Settings:
    # TEMPORAL_* variables and temporal.toml profiles, as the temporal CLI reads them
    temporal: TemporalConnection
    task_queue: str
    provider: str  # MAILPROV_PROVIDER, a name in activities/provider_registry.py
    provider_settings: dict[str, str] = field(repr=False)  # holds the provider's token
    ssh_key_file: Path
    ssh_port: int
    vault: VaultSettings
    audit: AuditSettings
    codec_keys_file: Path
    metrics_bind: str | None
    drain_seconds: float
    plans: dict[str, Plan]
    ssh_source_networks: tuple[str, ...]
    notify_policy: NotifyPolicy
    health_bind: str | None = None
    max_concurrent_activities: int = DEFAULT_MAX_CONCURRENT_ACTIVITIES
    # For debugging failed purchases on a dedicated worker: compensation keeps the server
    # (workflows/contracts.py Admission). Never a purchase's input.
    keep_failed_servers: bool = False
    # Plaintext connections to other hosts while MAILPROV_REQUIRE_TLS is unset: logged.
    transport_warnings: tuple[str, ...] = ()
    # A payload under a key id this worker's ring lacks fails its task (Temporal retries
    # it) this long before it is refused as undecodable: a key-ring rollout in progress.
    unknown_key_grace_seconds: float = DEFAULT_UNKNOWN_KEY_GRACE_SECONDS
    # Refuse payloads that are not binary/encrypted (a codec-less client's start):
    # on in deploy/, so the server holds ciphertext only; off by default (docs/security.md).
    require_encrypted_payloads: bool = False
    # The activation's DNS resolver (MAILPROV_DNS_RESOLVERS; "" = the system's) and its
    # TLS handshakes' trust anchors and port map (activities/mail_tls.py).
    dns_resolvers: str = ""
    tls_check: TlsSettings = field(default_factory=TlsSettings)
    # Plans that promise backups and how long their final snapshot is kept: the
    # catalog's `backups` / `final_snapshot_retention_days`, else
    # MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS (activities/final_snapshot.py).
    final_snapshots: FinalSnapshotPolicy = field(default_factory=FinalSnapshotPolicy)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        try:
            policy = TransportPolicy.from_env(env)
            temporal = load_temporal_connection(env)
        except ConnectionConfigError as err:
            raise ConfigError(str(err)) from None
        # In this order, so the first missing setting named is the documented one.
        provider = _provider(env)
        ssh_key_file = Path(_required(env, "MAILPROV_SSH_KEY_FILE"))
        ssh_port = _int(env, "MAILPROV_SSH_PORT", 22)
        vault, vault_warning = _vault(env, policy)
        audit, audit_warning = _audit(env, policy)
        warnings = (*temporal.warnings, vault_warning, audit_warning)
        return cls(
            temporal=temporal,
            task_queue=env.get("MAILPROV_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            **provider,
            ssh_key_file=ssh_key_file,
            ssh_port=ssh_port,
            vault=vault,
            audit=audit,
            codec_keys_file=Path(_required(env, "MAILPROV_CODEC_KEYS_FILE")),
            metrics_bind=env.get("MAILPROV_METRICS_BIND") or None,
            drain_seconds=float(_int(env, "MAILPROV_DRAIN_SECONDS", 60)),
            plans=(plans := _plans(env)),
            ssh_source_networks=_networks(env, "MAILPROV_SSH_SOURCE_NETWORKS", ANYWHERE),
            notify_policy=_notify_policy(env),
            health_bind=env.get("MAILPROV_HEALTH_BIND") or None,
            max_concurrent_activities=_int(
                env, "MAILPROV_MAX_CONCURRENT_ACTIVITIES", DEFAULT_MAX_CONCURRENT_ACTIVITIES
            ),
            keep_failed_servers=_bool(env, "MAILPROV_KEEP_FAILED_SERVERS"),
            transport_warnings=tuple(w for w in warnings if w),
            unknown_key_grace_seconds=float(
                _int(env, "MAILPROV_UNKNOWN_KEY_GRACE_SECONDS", DEFAULT_UNKNOWN_KEY_GRACE_SECONDS)
            ),
            require_encrypted_payloads=_bool(env, "MAILPROV_REQUIRE_ENCRYPTED_PAYLOADS"),
            dns_resolvers=env.get(RESOLVERS_ENV, "").strip(),
            tls_check=_tls_check(env),
            final_snapshots=_final_snapshots(env, plans),
        )


def _tls_check(env: Mapping[str, str]) -> TlsSettings:
    try:
        return TlsSettings.from_env(env)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _provider(env: Mapping[str, str]) -> dict[str, Any]:
    """MAILPROV_PROVIDER and the settings that provider reads (Hetzner: HCLOUD_TOKEN...)."""
    name = env.get("MAILPROV_PROVIDER", "").strip() or DEFAULT_PROVIDER
    try:
        entry = provider_entry(name)
    except UnknownProvider as err:
        raise ConfigError(str(err)) from None
    return {
        "provider": name,
        "provider_settings": entry.read_settings(env, lambda var: _secret(env, var)),
    }


def _vault(env: Mapping[str, str], policy: TransportPolicy) -> tuple[VaultSettings, str | None]:
    """Where Vault is, how to log in, and its TLS (VAULT_CACERT, VAULT_CLIENT_CERT...)."""
    url = _required(env, "VAULT_ADDR")
    try:
        transport, warning = vault_transport(env, url, policy)
    except ConnectionConfigError as err:
        raise ConfigError(str(err)) from None
    settings = VaultSettings(
        url=url,
        **_vault_login(env),
        transport=transport,
        kv_mount=env.get("MAILPROV_KV_MOUNT", "smtp"),
        transit_mount=env.get("MAILPROV_TRANSIT_MOUNT", "transit"),
        transit_key=env.get("MAILPROV_TRANSIT_KEY", "mail-credentials"),
        denied_retry_seconds=float(
            _int(env, "MAILPROV_VAULT_DENIED_RETRY_SECONDS", int(DEFAULT_DENIED_RETRY_SECONDS))
        ),
    )
    return settings, warning


def _vault_login(env: Mapping[str, str]) -> dict[str, str]:
    """AppRole (VAULT_ROLE_ID + VAULT_SECRET_ID, or their _FILE forms) if given, else a token."""
    if any(env.get(name, "").strip() for name in ("VAULT_ROLE_ID", "VAULT_ROLE_ID_FILE")):
        return {
            "role_id": _secret(env, "VAULT_ROLE_ID"),
            "secret_id": _secret(env, "VAULT_SECRET_ID"),
            "secret_id_file": env.get("VAULT_SECRET_ID_FILE", "").strip(),
        }
    return {"token": _secret(env, "VAULT_TOKEN")}


def _audit(env: Mapping[str, str], policy: TransportPolicy) -> tuple[AuditSettings, str | None]:
    """The audit rows' store and the name of their chain (its Vault anchor's path); a
    PostgreSQL DSN's TLS is checked (sslmode=verify-full, activities/connections.py)."""
    dsn = env.get("MAILPROV_AUDIT_DSN", "").strip()
    try:
        warning = check_postgres_dsn(dsn, env, policy) if dsn else None
    except ConnectionConfigError as err:
        raise ConfigError(str(err)) from None
    try:
        settings = AuditSettings(
            location=(dsn or env.get("MAILPROV_AUDIT_DB") or "audit.db"),
            chain=env.get("MAILPROV_AUDIT_CHAIN", "").strip() or DEFAULT_AUDIT_CHAIN,
        )
    except ValueError as err:
        raise ConfigError(f"MAILPROV_AUDIT_CHAIN: {err}") from None
    return settings, warning


def _plans(env: Mapping[str, str]) -> dict[str, Plan]:
    path = env.get("MAILPROV_PLANS_FILE", "").strip()
    try:
        return load_catalog(Path(path) if path else None)
    except CatalogError as err:
        raise ConfigError(str(err)) from None


def _final_snapshots(env: Mapping[str, str], plans: dict[str, Plan]) -> FinalSnapshotPolicy:
    path = env.get("MAILPROV_PLANS_FILE", "").strip()
    default = _int(env, "MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS", DEFAULT_RETENTION_SECONDS)
    if default < 1:
        raise ConfigError("MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS: must be >= 1")
    try:
        promises = load_backup_promises(Path(path) if path else None)
    except CatalogError as err:
        raise ConfigError(str(err)) from None
    return FinalSnapshotPolicy.from_catalog(plans, promises, default)


def _networks(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated CIDRs (IPv4 and/or IPv6), e.g. "203.0.113.0/24,2001:db8::/32"."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError as err:
            raise ConfigError(f"{name}: {item!r} is not a network in CIDR form: {err}") from None
    return tuple(networks)


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
    if not (raw.isascii() and raw.isdigit()):  # isdigit() alone accepts "²"
        raise ConfigError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@asynccontextmanager
async def build_activities(
    settings: Settings, client: Client | None = None
) -> AsyncIterator[list[Any]]:
    """Every activity of the product, wired to its outside system.

    With a Temporal client, also the reconciler's look-up of purchase runs.
    """
    try:
        identity = SshIdentity.from_file(settings.ssh_key_file)
    except (OSError, ValueError) as err:
        raise ConfigError(f"MAILPROV_SSH_KEY_FILE={settings.ssh_key_file}: {err}") from None
    vault = Vault(settings.vault)
    try:
        # A Vault without our mounts or key would fail every purchase late: refuse to start.
        await asyncio.to_thread(vault.check_ready)
    except VaultUnavailable as err:
        # Down, unreachable or sealed: the message names the address; no bootstrap hint.
        raise ConfigError(str(err)) from None
    except VaultNotReady as err:
        raise ConfigError(f"VAULT_ADDR={settings.vault.url}: {err}") from None
    audit_log = await asyncio.to_thread(_open_audit_log, settings, vault)
    provider = provider_entry(settings.provider).build(settings.provider_settings)
    access = ServerAccess(identity, port=settings.ssh_port)
    mailu = MailuActivities(access)
    firewall = FirewallPolicy(settings.ssh_source_networks, settings.ssh_port)
    vps = VpsActivities(provider, identity, firewall)
    vault_activities = VaultActivities(vault)
    # A rotation writes nothing while another run's plan change has the server down.
    credentials = CredentialsActivities(vault, access, provider, TenantRuns())
    schedules = RotationScheduleActivities(vault)
    notify = NotifyActivities(settings.notify_policy)
    records = WorldRecords(vault, provider)
    claims = TenantClaimActivities(records)
    plan_change = PlanChangeActivities(provider, vault, access, settings.plans)
    deprovision = DeprovisionActivities(vault, provider, vps, records, settings.final_snapshots)
    try:
        # Set: checked now (a typo refuses the start); unset: the system's, at first use.
        resolver = resolver_from_setting(settings.dns_resolvers) if settings.dns_resolvers else None
    except ValueError as err:
        raise ConfigError(f"{RESOLVERS_ENV}: {err}") from None
    activation = ActivationActivities(vault, provider, access, resolver, tls=settings.tls_check)
    try:
        await _check_provider(settings.plans, provider)
        yield [
            AdmissionActivities(
                settings.plans,
                settings.notify_policy,
                keep_failed_servers=settings.keep_failed_servers,
                take_claim=claims.take,
            ).admit_purchase,
            vps.create_server,
            vps.bring_up_server,
            vps.delete_server,
            SshTrustActivities(access).rotate_host_key,
            mailu.set_up_mailu,
            credentials.create_admin_credentials,
            credentials.rotate_admin_credentials,
            schedules.ensure_rotation_schedule,
            schedules.remove_rotation_schedule,
            vault_activities.store_credentials,
            vault_activities.remove_credentials,
            AuditActivities(audit_log).record_audit_event,
            claims.release_tenant_claim,
            claims.check_claim_holder,
            notify.notify_customer,
            vps.delete_purchase_servers,
            vps.list_managed_servers,
            plan_change.plan_change_lock_holder,
            plan_change.check_plan_change,
            plan_change.stop_server,
            plan_change.change_server_type,
            plan_change.start_mail_server,
            plan_change.restore_server_type,
            plan_change.label_server_plan,
            *_temporal_readers(client, records, audit_log.store),
            deprovision.inspect_tenant,
            deprovision.delete_tenant_servers,
            deprovision.destroy_tenant_credentials,
            deprovision.release_deprovisioned_claim,
            deprovision.take_final_snapshot,
            FinalSnapshotActivities(provider).expire_final_snapshot,
            activation.check_mail_dns,
            activation.activation_contact,
            activation.check_mail_tls,
            activation.restart_mail_front,
        ]
    finally:
        await provider.aclose()


def _open_audit_log(settings: Settings, vault: Vault) -> AuditLog:
    """The keyed audit log; refuse to start if its key or anchor is not usable."""
    try:
        audit_log = open_audit_log(settings.audit, vault)
        problems = audit_log.check_ready()
    except AuditChainBroken as err:
        raise ConfigError(f"audit store: {err}") from None
    except AuditStoreUnreachable as err:
        raise ConfigError(str(err)) from None
    except VaultError as err:
        # Denied or unknown key: the bootstrap (its key, mount and policy) is missing.
        missing = err.degraded == "denied" or not err.retryable
        hint = "; run deploy/vault_bootstrap.py" if missing else ""
        raise ConfigError(
            f"VAULT_ADDR={settings.vault.url}: audit key or anchor not usable: {err}{hint}"
        ) from None
    if problems:
        # The same alertable line an append refused for this reason logs.
        log.error("audit_chain_broken", problems=problems, at="start-up")
    return audit_log


def _temporal_readers(
    client: Client | None, records: WorldRecords, audit_store: AuditStore
) -> list[Any]:
    """The reconciler's and check-world's look-ups, which need a Temporal client."""
    if client is None:
        return []
    world = WorldActivities(records, client, audit_store)
    return [
        TemporalRunsActivities(client).describe_purchase_runs,
        world.tenant_records,
        world.release_stale_claims,
        world.check_world,
    ]


def worker_interceptors() -> list[Interceptor]:
    """Log context on every activity line; heartbeats so a dead worker is seen in seconds;
    our own metrics (purchases, steps, compensations, rotations, errors by code): one
    interceptor, new for each worker (runtime/interceptor.py)."""
    return [WorkerInterceptor()]


async def _check_provider(plans: dict[str, Plan], provider: VpsProvider) -> None:
    """Stop at start when the token cannot write or a plan cannot be bought; warn about
    plans that work today but are deprecated or out of stock somewhere."""
    try:
        await provider.check_write_access()
    except ProviderError as err:
        raise ConfigError(
            f"provider token: it must be allowed to create and delete servers: {err}"
        ) from None
    try:
        warnings = await provider.check_catalog(plans)
    except CatalogError as err:
        raise ConfigError(f"plan catalog: {err}") from None
    except ProviderError as err:
        raise ConfigError(f"plan catalog: cannot read the provider's catalog: {err}") from None
    for warning in warnings:
        log.warning("plan catalog", warning=warning)
    log.info("plan catalog checked against the provider", plans=sorted(plans))


# Our deterministic modules (dataclasses, validation, constants; no I/O, no mutable module
# state). Every module a workflow module imports outside `imports_passed_through` is
# here (tests/unit/test_worker_sandbox.py), so the sandbox re-executes only the workflow
# module itself for each run.
PASSED_THROUGH = (
    "workflows.activation_contracts",
    "workflows.claim_contracts",
    "workflows.contracts",
    "workflows.deprovision_contracts",
    "workflows.failures",
    "workflows.final_snapshot_contracts",
    "workflows.input_rules",
    "workflows.plan_change_contracts",
    "workflows.policies",
    "workflows.reconcile_contracts",
    "workflows.rotation_contracts",
    "workflows.saga",
    "workflows.steps",
    "workflows.url_policy",
    "workflows.world_check_contracts",
)
# Third-party libraries those modules import: pure functions over static data, so they
# are deterministic too, and passed through rather than re-imported for every run.
PASSED_THROUGH_LIBRARIES = ("idna",)
# Workflow code run by every purchase, imported once per worker instead of once per run:
# the purchase story (its import in the sandbox cost ~4 ms of CPU per purchase, the
# largest single share of what our workflow costs more than a bare one;
# docs/PERFORMANCE.md, change 8) and the task queue's workflow class itself (the
# sandbox's per-run import of it, `workflow.defn` and the handlers' decorators included,
# cost ~1.3 ms of CPU per run warm, ~2 ms in the worker; change 10). The other stories
# are imported inside their runs, through the sandbox's importer, and stay sandboxed.
# Passed through, their code escapes the sandbox's runtime restrictions, so
# tests/unit/test_worker_sandbox.py holds them to static ones instead: each imports
# nothing but the SDK, a few pure standard-library modules and PASSED_THROUGH
# (activity_refs only inside imports_passed_through; the dispatched stories only inside
# the run, through the sandbox's importer), calls no I/O builtin, and keeps no mutable
# module state; and the workflow tests run them under the SDK's default sandbox, which
# does restrict them at run time.
PASSED_THROUGH_STORIES = ("workflows.dispatch", "workflows.provision")


def workflow_runner(converter: DataConverter | None = None) -> SandboxedWorkflowRunner:
    """The workflow sandbox, told that our contract modules, the task queue's workflow
    class and the purchase story are deterministic; given the worker's data converter,
    and that converter takes no serialization context, one that does not ask the
    sandbox for a context per payload sequence (runtime/workflow_runner.py).

    The sandbox re-executes every module that is not passed through for each run, and
    a dataclass costs a code generation each time; shared modules cut that out. The
    sandbox itself stays on: the other workflows' modules and the other stories still
    run under its runtime restrictions; the workflow class and the purchase story are
    held to static ones (PASSED_THROUGH_STORIES) and run under the SDK's default
    sandbox in the workflow tests.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        *PASSED_THROUGH, *PASSED_THROUGH_LIBRARIES, *PASSED_THROUGH_STORIES
    )
    if converter is not None and context_free(converter):
        return ContextFreeSandboxRunner(restrictions=restrictions)
    return SandboxedWorkflowRunner(restrictions=restrictions)


def stale_workflow_bytecode(
    workflows: Sequence[type] = (*WORKFLOWS, *DISPATCHED),
) -> list[str]:
    """Workflow modules whose compiled bytecode is missing or older than the source.

    The sandbox executes each workflow's module afresh for every run. Without a current
    `.pyc` beside it (PYTHONDONTWRITEBYTECODE, a read-only tree) that means compiling
    workflows/provision.py from source for every purchase: the largest share of the
    sandbox's price (docs/PERFORMANCE.md). `python -m compileall` at build time fixes it.
    """
    stale = []
    for path in sorted({Path(str(sys.modules[cls.__module__].__file__)) for cls in workflows}):
        compiled = Path(importlib.util.cache_from_source(str(path)))
        if not compiled.exists() or compiled.stat().st_mtime < path.stat().st_mtime:
            stale.append(str(path))
    return stale


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    runtime = None
    if settings.metrics_bind:
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=settings.metrics_bind,
                    histogram_bucket_overrides=HISTOGRAM_BUCKETS,
                )
            )
        )
    try:
        keyring = KeyRing.from_file(settings.codec_keys_file)
    except CodecKeyError as err:
        raise ConfigError(f"MAILPROV_CODEC_KEYS_FILE: {err}") from None
    for warning in settings.transport_warnings:
        log.warning("plaintext_connection", warning=warning)
    try:
        client = await connect_temporal(
            settings.temporal,
            runtime=runtime,
            # Marked, not raised: an undecodable start then fails fast (runtime/codec.py);
            # an unknown key id only after the grace, since it may be a rollout under way.
            data_converter=data_converter(
                keyring,
                mark_undecodable=True,
                unknown_key_grace=UnknownKeyGrace(settings.unknown_key_grace_seconds),
                require_encrypted=settings.require_encrypted_payloads,
            ),
        )
    except ConnectionConfigError as err:
        raise ConfigError(str(err)) from None
    # Names the ring's key ids, which `starter.py switch-codec-key` checks; /readyz looks
    # for this identity (not the client's) among the task queue's pollers.
    identity = worker_identity(f"{os.getpid()}@{socket.gethostname()}", keyring)
    async with build_activities(settings, client) as activities:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=WORKFLOWS,
            activities=activities,
            interceptors=worker_interceptors(),
            workflow_runner=workflow_runner(client.data_converter),
            max_concurrent_activities=settings.max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=settings.drain_seconds),
            identity=identity,
        )
        # /readyz answers 503 from the moment `stop` is set: no new traffic while draining.
        health = await serve_health(
            settings.health_bind, client, settings.task_queue, identity, stop
        )
        if stale := stale_workflow_bytecode():
            log.warning(
                "workflow_bytecode_stale: every run compiles these from source",
                modules=stale,
                fix="python -m compileall -q workflows",
            )
        async with worker:
            log.info(
                "worker ready",
                task_queue=settings.task_queue,
                temporal=settings.temporal.address,
                namespace=settings.temporal.namespace,
                metrics=settings.metrics_bind,
            )
            await stop.wait()
            log.info(
                "draining: no new tasks, finishing running activities",
                drain_seconds=settings.drain_seconds,
            )
    if health is not None:
        await health.stop()
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
    # A drained worker must not turn its exit code into SIGABRT (runtime/exit.py).
    exit_without_teardown(main())
