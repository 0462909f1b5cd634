"""The production connections against real TLS endpoints, with certificates made here:
the Temporal dev server behind nginx (TLS, client certificates verified, an API-key
header required), OpenBao's own TLS listener requiring client certificates, and
PostgreSQL with ssl=on refusing plaintext. The worker's and starter.py's own
configuration code connects; each misconfiguration ends in an error naming the setting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import hvac
import pytest
from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import starter
from activities.audit import AuditStoreUnreachable
from activities.audit_vault import open_audit_log, verify_audit_log
from activities.connections import (
    ConnectionConfigError,
    connect_temporal,
    load_temporal_connection,
    vault_transport,
)
from activities.vault import Vault, VaultNotReady, VaultSettings, VaultUnavailable
from deploy.vault_bootstrap import bootstrap
from devstack.stack import ROOT, tool
from runtime.codec import KeyRing, data_converter
from tests.tls_certs import Issued, LocalCa
from tests.tls_servers import (
    TlsOpenBao,
    TlsPostgres,
    create_database,
    nginx_binary,
    nginx_grpc_proxy,
    tls_openbao,
    tls_postgres,
)
from worker import ConfigError, Settings
from workflows.contracts import AuditEvent

API_KEY = "test-api-key-" + uuid.uuid4().hex
# Everything worker.Settings.from_env needs besides the connections (none is contacted).
WORKER_BASE = {
    "HCLOUD_TOKEN": "t",
    "MAILPROV_SSH_KEY_FILE": "/nonexistent/id_ed25519",
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": "v",
    "MAILPROV_CODEC_KEYS_FILE": "/nonexistent/codec-keys.json",
}


@dataclass(frozen=True)
class Pki:
    ca: LocalCa
    other_ca: LocalCa  # signs nothing the servers trust
    server: Issued
    client: Issued
    expired_client: Issued
    foreign_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = LocalCa(directory, "test-ca"), LocalCa(directory, "other-ca")
    return Pki(
        ca,
        other,
        ca.server("server", ("localhost", "127.0.0.1")),
        ca.client("mail-provisioning-worker"),
        ca.client("expired-worker", expired=True),
        other.client("stranger"),
    )


@pytest.fixture(scope="module")
async def temporal_dev() -> AsyncIterator[WorkflowEnvironment]:
    nginx_binary()  # skip (or fail under CI) before starting anything
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=tool("temporal"))
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="module")
def proxy(
    temporal_dev: WorkflowEnvironment, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    upstream = temporal_dev.client.service_client.config.target_host
    with nginx_grpc_proxy(
        tmp_path_factory.mktemp("nginx"), upstream, pki.ca, pki.server, API_KEY
    ) as address:
        yield address


def changed(env: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """`env` with each change applied: a value sets the variable, None removes it."""
    kept = {name: value for name, value in env.items() if name not in changes}
    return kept | {name: value for name, value in changes.items() if value is not None}


def temporal_env(proxy: str, pki: Pki, **changes: str | None) -> dict[str, str]:
    """The TEMPORAL_* variables a production worker gets; None removes one."""
    env = {
        "TEMPORAL_ADDRESS": proxy,
        "TEMPORAL_NAMESPACE": "default",
        "TEMPORAL_API_KEY": API_KEY,
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca.cert),
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client.cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client.key),
        "MAILPROV_REQUIRE_TLS": "true",
    }
    return changed(env, changes)


# Unsandboxed: this test module imports the worker and drivers the sandbox would re-import.
@workflow.defn(name="TlsConnectionCheck", sandboxed=False)
class TlsConnectionCheck:
    @workflow.run
    async def run(self, name: str) -> str:
        return f"hello {name} over mTLS"


async def test_worker_and_starter_run_a_workflow_through_tls_client_certs_and_api_key(
    proxy: str, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = temporal_env(proxy, pki)
    settings = Settings.from_env({**WORKER_BASE, **env, "MAILPROV_REQUIRE_TLS": "false"})
    assert settings.temporal.tls is not None and settings.temporal.api_key == API_KEY
    keys = tmp_path / "keys.json"
    KeyRing.generate("tls-test").write(keys)
    # As run_worker connects: the same settings, the same payload codec.
    worker_client = await connect_temporal(
        settings.temporal, data_converter=data_converter(KeyRing.from_file(keys))
    )
    # starter.py's own connection code, reading the same variables.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = starter.build_parser().parse_args(["--codec-keys-file", str(keys), "status", "x"])
    starter_client = await starter._connect(args)
    task_queue = f"tls-{uuid.uuid4().hex[:8]}"
    async with Worker(worker_client, task_queue=task_queue, workflows=[TlsConnectionCheck]):
        result = await starter_client.execute_workflow(
            TlsConnectionCheck.run,
            "mail",
            id=f"tls-{uuid.uuid4().hex}",
            task_queue=task_queue,
            execution_timeout=timedelta(seconds=60),
        )
    assert result == "hello mail over mTLS"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "wrong_ca",
            r"not signed by a trusted CA; set TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        ),
        ("expired_client_cert", r"TEMPORAL_TLS_CLIENT_CERT_PATH: the client certificate expired"),
        (
            "missing_client_cert",
            r"requires a client certificate and none is configured: set "
            r"TEMPORAL_TLS_CLIENT_CERT_PATH .*and TEMPORAL_TLS_CLIENT_KEY_PATH",
        ),
        (
            "foreign_client_cert",
            r"refused the client certificate in TEMPORAL_TLS_CLIENT_CERT_PATH",
        ),
        ("wrong_api_key", r"refused the API key in TEMPORAL_API_KEY: wrong, expired or revoked"),
        ("missing_api_key", r"requires authentication: set TEMPORAL_API_KEY"),
        ("wrong_server_name", r"not valid for that name; .*TEMPORAL_TLS_SERVER_NAME"),
        ("tls_off", r"did not answer plaintext gRPC \(it probably expects TLS\): set TEMPORAL_TLS"),
    ],
)
async def test_temporal_misconfiguration_names_the_setting(
    proxy: str, pki: Pki, case: str, expected: str
) -> None:
    cases: dict[str, dict[str, str | None]] = {
        "wrong_ca": {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.other_ca.cert)},
        "expired_client_cert": {
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.expired_client.cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.expired_client.key),
        },
        "missing_client_cert": {
            "TEMPORAL_TLS_CLIENT_CERT_PATH": None,
            "TEMPORAL_TLS_CLIENT_KEY_PATH": None,
        },
        "foreign_client_cert": {
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.foreign_client.cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.foreign_client.key),
        },
        "wrong_api_key": {"TEMPORAL_API_KEY": "not-" + API_KEY},
        "missing_api_key": {"TEMPORAL_API_KEY": None},
        "wrong_server_name": {"TEMPORAL_TLS_SERVER_NAME": "temporal.example.com"},
        "tls_off": {"TEMPORAL_TLS": "false", "TEMPORAL_API_KEY": None},
    }
    changes = cases[case]
    env = temporal_env(proxy, pki, **changes)
    with pytest.raises(ConnectionConfigError, match=expected) as raised:
        await connect_temporal(load_temporal_connection(env))
    assert API_KEY not in str(raised.value)


async def test_tls_to_a_plaintext_server_names_the_setting(
    temporal_dev: WorkflowEnvironment, pki: Pki
) -> None:
    """The dev server itself has no TLS: a TLS client there is told which setting is off."""
    upstream = temporal_dev.client.service_client.config.target_host
    env = {"TEMPORAL_ADDRESS": upstream, "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca.cert)}
    with pytest.raises(
        ConnectionConfigError, match=r"does not answer TLS there .*TEMPORAL_ADDRESS.*TEMPORAL_TLS"
    ):
        await connect_temporal(load_temporal_connection(env))


def test_worker_and_starter_processes_exit_2_naming_the_setting(
    proxy: str, pki: Pki, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    KeyRing.generate("tls-test").write(keys)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    expired = temporal_env(
        proxy,
        pki,
        TEMPORAL_TLS_CLIENT_CERT_PATH=str(pki.expired_client.cert),
        TEMPORAL_TLS_CLIENT_KEY_PATH=str(pki.expired_client.key),
    )
    worker = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={**base, **WORKER_BASE, **expired, "MAILPROV_REQUIRE_TLS": "false"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert worker.returncode == 2, worker.stderr
    assert "TEMPORAL_TLS_CLIENT_CERT_PATH: the client certificate expired" in (
        worker.stdout + worker.stderr
    )
    wrong_key = temporal_env(proxy, pki, TEMPORAL_API_KEY="wrong-key")
    status = subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), "--codec-keys-file", str(keys), "status", "p"],
        env={**base, **wrong_key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 2, status.stderr
    assert "refused the API key in TEMPORAL_API_KEY" in status.stderr
    assert "wrong-key" not in status.stderr + status.stdout


# ---------------------------------------------------------------------- Vault


@pytest.fixture(scope="module")
def openbao(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsOpenBao]:
    with tls_openbao(tmp_path_factory.mktemp("openbao"), pki.ca, pki.server, pki.client) as bao:
        yield bao


def vault_env(bao: TlsOpenBao, pki: Pki, **changes: str | None) -> dict[str, str]:
    env = {
        "VAULT_ADDR": bao.addr,
        "VAULT_CACERT": str(pki.ca.cert),
        "VAULT_CLIENT_CERT": str(pki.client.cert),
        "VAULT_CLIENT_KEY": str(pki.client.key),
        "MAILPROV_REQUIRE_TLS": "true",
    }
    return changed(env, changes)


def vault_from_env(env: dict[str, str], token: str) -> Vault:
    """As worker.py builds it: VAULT_ADDR plus the TLS variables, checked."""
    transport, warning = vault_transport(env, env["VAULT_ADDR"])
    assert warning is None
    return Vault(VaultSettings(url=env["VAULT_ADDR"], token=token, transport=transport))


def test_the_worker_uses_vault_over_tls_with_its_client_certificate(
    openbao: TlsOpenBao, pki: Pki
) -> None:
    env = vault_env(openbao, pki)
    settings = Settings.from_env({**WORKER_BASE, **env, "VAULT_TOKEN": openbao.tokens.worker})
    assert settings.vault.transport.cert == (str(pki.client.cert), str(pki.client.key))
    vault = Vault(settings.vault)
    vault.check_ready()  # mounts, Transit key, the worker's permissions: over mTLS
    key = vault.generate_data_key("tls-tenant")
    reader = Vault(replace(settings.vault, token=openbao.tokens.reader))
    assert reader.unwrap_data_key("tls-tenant", key.kek, key.wrapped) == key.plaintext


def test_vault_namespace_selects_where_the_worker_works(openbao: TlsOpenBao, pki: Pki) -> None:
    """VAULT_NAMESPACE (Vault Enterprise/HCP; OpenBao has namespaces too) is sent with
    every request: a record bootstrapped inside a namespace is reachable with it only."""
    namespace = f"mail-{uuid.uuid4().hex[:8]}"
    root = hvac.Client(
        url=openbao.addr,
        token=openbao.root_token,
        verify=str(pki.ca.cert),
        cert=(str(pki.client.cert), str(pki.client.key)),
    )
    root.adapter.post(f"/v1/sys/namespaces/{namespace}")
    inside = hvac.Client(
        url=openbao.addr,
        token=openbao.root_token,
        verify=str(pki.ca.cert),
        cert=(str(pki.client.cert), str(pki.client.key)),
        namespace=namespace,
    )
    tokens = bootstrap(inside)
    env = {**WORKER_BASE, **vault_env(openbao, pki), "VAULT_TOKEN": tokens.worker}
    Vault(Settings.from_env({**env, "VAULT_NAMESPACE": namespace}).vault).check_ready()
    with pytest.raises(VaultNotReady):
        Vault(Settings.from_env(env).vault).check_ready()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_ca", r"certificate is not trusted: VAULT_CACERT=.* did not issue it"),
        ("missing_client_cert", r"requires a client certificate: set VAULT_CLIENT_CERT"),
        ("foreign_client_cert", r"refused the client certificate VAULT_CLIENT_CERT="),
    ],
)
def test_vault_misconfiguration_names_the_setting(
    openbao: TlsOpenBao, pki: Pki, case: str, expected: str
) -> None:
    cases: dict[str, dict[str, str | None]] = {
        "wrong_ca": {"VAULT_CACERT": str(pki.other_ca.cert)},
        "missing_client_cert": {"VAULT_CLIENT_CERT": None, "VAULT_CLIENT_KEY": None},
        "foreign_client_cert": {
            "VAULT_CLIENT_CERT": str(pki.foreign_client.cert),
            "VAULT_CLIENT_KEY": str(pki.foreign_client.key),
        },
    }
    changes = cases[case]
    vault = vault_from_env(vault_env(openbao, pki, **changes), openbao.tokens.worker)
    with pytest.raises(VaultUnavailable, match=expected):
        vault.check_ready()


def test_an_expired_vault_client_certificate_is_refused_at_start(
    openbao: TlsOpenBao, pki: Pki
) -> None:
    env = vault_env(
        openbao,
        pki,
        VAULT_CLIENT_CERT=str(pki.expired_client.cert),
        VAULT_CLIENT_KEY=str(pki.expired_client.key),
    )
    with pytest.raises(ConfigError, match="VAULT_CLIENT_CERT: the client certificate expired"):
        Settings.from_env({**WORKER_BASE, **env})


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def postgres(pki: Pki) -> Iterator[TlsPostgres]:
    with tls_postgres(pki.ca, pki.server) as server:
        yield server


def test_the_audit_log_is_written_over_postgres_tls(
    postgres: TlsPostgres, openbao: TlsOpenBao, pki: Pki
) -> None:
    dsn = create_database(postgres, f"audit_{uuid.uuid4().hex[:12]}")
    assert "sslmode=verify-full" in dsn
    env = {**WORKER_BASE, **vault_env(openbao, pki), "VAULT_TOKEN": openbao.tokens.worker}
    settings = Settings.from_env({**env, "MAILPROV_AUDIT_DSN": dsn})
    assert settings.audit.location == dsn and settings.transport_warnings == ()
    log = open_audit_log(settings.audit, Vault(settings.vault))
    event = AuditEvent(
        "purchase-tls/run/smtp_credentials_stored",
        "smtp_credentials_stored",
        "tls-tenant",
        {"username": "admin@tls.example", "webmail_url": "https://mail.tls.example"},
    )
    assert log.append(event, "t")
    auditor = replace(settings.vault, token=openbao.tokens.auditor)
    report = verify_audit_log(settings.audit, Vault(auditor))
    assert report.problems == [] and report.head is not None and report.head.seq == 1


def test_postgres_misconfiguration_names_the_dsn_parameter(postgres: TlsPostgres, pki: Pki) -> None:
    wrong_ca = postgres.dsn(sslmode="verify-full", sslrootcert=str(pki.other_ca.cert))
    with pytest.raises(AuditStoreUnreachable, match=r"not trusted: set sslrootcert="):
        open_audit_store_at(wrong_ca)
    plaintext = postgres.dsn(sslmode="disable")
    with pytest.raises(AuditStoreUnreachable, match=r"refuses plaintext.*sslmode=verify-full"):
        open_audit_store_at(plaintext)


def open_audit_store_at(dsn: str) -> None:
    from activities.audit import open_audit_store

    open_audit_store(dsn)


def test_one_temporal_toml_profile_serves_starter_and_the_temporal_cli(
    proxy: str, pki: Pki, tmp_path: Path
) -> None:
    """The operator's shell needs one configuration: a temporal.toml profile (or the same
    TEMPORAL_* variables) is read by starter.py and by the `temporal` CLI alike."""
    config = tmp_path / "temporal.toml"
    config.write_text(
        f'[profile.prod]\naddress = "{proxy}"\nnamespace = "default"\napi_key = "{API_KEY}"\n'
        "[profile.prod.tls]\n"
        f'server_ca_cert_path = "{pki.ca.cert}"\n'
        f'client_cert_path = "{pki.client.cert}"\nclient_key_path = "{pki.client.key}"\n'
    )
    keys = tmp_path / "keys.json"
    KeyRing.generate("tls-test").write(keys)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TEMPORAL_CONFIG_FILE": str(config),
        "TEMPORAL_PROFILE": "prod",
        "MAILPROV_REQUIRE_TLS": "true",
    }
    status = subprocess.run(
        [
            sys.executable,
            str(ROOT / "starter.py"),
            "--codec-keys-file",
            str(keys),
            "status",
            "none",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Connected through the proxy and asked: the purchase does not exist (exit 3).
    assert status.returncode == 3, status.stderr
    assert "no purchase 'none'" in status.stderr
    listed = subprocess.run(
        [tool("temporal"), "workflow", "count"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("Total: ")
    # The CLI really went through the proxy with the profile: a wrong key is refused.
    config.write_text(config.read_text().replace(API_KEY, "wrong-key"))
    refused = subprocess.run(
        [tool("temporal"), "workflow", "count"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr.lower()
