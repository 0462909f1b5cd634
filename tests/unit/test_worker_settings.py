"""Worker configuration: every missing or malformed setting is named in the error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from activities.ssh import SshIdentity
from devstack.processes import free_port
from devstack.stack import ROOT
from worker import ConfigError, Settings, build_activities

COMPLETE = {
    "HCLOUD_TOKEN": "t",
    "MAILPROV_SSH_KEY_FILE": "/etc/mailprov/id_ed25519",
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": "v",
    "MAILPROV_CODEC_KEYS_FILE": "/etc/mailprov/codec-keys.json",
}


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env(COMPLETE)
    assert settings.task_queue == "mail-provisioning"
    assert (settings.temporal.address, settings.temporal.namespace) == ("localhost:7233", "default")
    assert settings.temporal.tls is None and settings.temporal.api_key is None
    assert settings.provider == "hetzner"
    assert settings.provider_settings["api_url"] == "https://api.hetzner.cloud/v1"
    assert settings.ssh_port == 22
    assert settings.vault.kv_mount == "smtp"
    assert settings.audit.location == "audit.db"
    assert settings.audit.chain == "mail-provisioning"


@pytest.mark.parametrize("missing", sorted(COMPLETE))
def test_each_required_setting_is_named_when_missing(missing: str) -> None:
    env = {k: v for k, v in COMPLETE.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        Settings.from_env(env)


def test_malformed_and_file_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MAILPROV_SSH_PORT must be a whole number"):
        Settings.from_env({**COMPLETE, "MAILPROV_SSH_PORT": "twenty-two"})
    with pytest.raises(ConfigError, match="MAILPROV_SSH_PORT must be a whole number"):
        Settings.from_env({**COMPLETE, "MAILPROV_SSH_PORT": "2²"})
    with pytest.raises(ConfigError, match=r"VAULT_TOKEN_FILE=.*No such file"):
        Settings.from_env({**COMPLETE, "VAULT_TOKEN_FILE": str(tmp_path / "absent")})
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert Settings.from_env({**COMPLETE, "VAULT_TOKEN_FILE": str(token)}).vault.token == (
        "from-file"
    )
    dsn = "postgresql://audit@db/audit"
    assert Settings.from_env({**COMPLETE, "MAILPROV_AUDIT_DSN": dsn}).audit.location == dsn


def test_plans_file_and_ssh_networks_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(COMPLETE)
    assert sorted(settings.plans) == ["business", "enterprise", "starter"]
    assert settings.ssh_source_networks == ("0.0.0.0/0", "::/0")
    networks = "203.0.113.0/24, 2001:db8:42::/48"
    chosen = Settings.from_env({**COMPLETE, "MAILPROV_SSH_SOURCE_NETWORKS": networks})
    assert chosen.ssh_source_networks == ("203.0.113.0/24", "2001:db8:42::/48")
    with pytest.raises(ConfigError, match=r"MAILPROV_SSH_SOURCE_NETWORKS: '203\.0\.113\.7/24'"):
        Settings.from_env({**COMPLETE, "MAILPROV_SSH_SOURCE_NETWORKS": "203.0.113.7/24"})
    # The shipped catalog promises enterprise a final snapshot, kept 30 days by default.
    assert settings.final_snapshots.retention_seconds == {"enterprise": 30 * 86400}
    short = {**COMPLETE, "MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS": "120"}
    assert Settings.from_env(short).final_snapshots.retention_seconds == {"enterprise": 120}
    with pytest.raises(ConfigError, match="MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS"):
        Settings.from_env({**COMPLETE, "MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS": "0"})
    yaml = tmp_path / "plans.yaml"
    yaml.write_text("plans: {}\n")
    with pytest.raises(ConfigError, match=r"MAILPROV_PLANS_FILE=.*must end in \.json or \.toml"):
        Settings.from_env({**COMPLETE, "MAILPROV_PLANS_FILE": str(yaml)})


def test_worker_exits_2_with_the_variable_named() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "HCLOUD_TOKEN or HCLOUD_TOKEN_FILE is required" in result.stderr


def test_activity_slots_are_sized_for_async_waits() -> None:
    # A booting server holds a slot while wait_for_server sleeps; 100 (the SDK default)
    # made 300 purchases with a 20 s boot take 85 s instead of 49 s (issue 12).
    assert Settings.from_env(COMPLETE).max_concurrent_activities == 1000
    slots = {**COMPLETE, "MAILPROV_MAX_CONCURRENT_ACTIVITIES": "250"}
    assert Settings.from_env(slots).max_concurrent_activities == 250
    with pytest.raises(ConfigError, match="MAILPROV_MAX_CONCURRENT_ACTIVITIES"):
        Settings.from_env({**COMPLETE, "MAILPROV_MAX_CONCURRENT_ACTIVITIES": "many"})


async def test_a_worker_started_while_vault_is_down_says_so_not_run_the_bootstrap(
    tmp_path: Path,
) -> None:
    # Before: "... cannot reach vault: ConnectionError; run deploy/vault_bootstrap.py".
    key = tmp_path / "id_ed25519"
    SshIdentity.generate().write(key)
    down = f"http://127.0.0.1:{free_port()}"
    env = {**COMPLETE, "MAILPROV_SSH_KEY_FILE": str(key), "VAULT_ADDR": down}
    with pytest.raises(ConfigError) as err:
        async with build_activities(Settings.from_env(env)):
            pass
    assert str(err.value).startswith(f"Vault unreachable at {down}: [Errno 111] Connection refused")
    assert "vault_bootstrap" not in str(err.value)


def test_the_audit_chain_name_is_one_path_segment() -> None:
    """It names the chain's Vault records (audit-chain/head/<name>): no path tricks."""
    assert Settings.from_env({**COMPLETE, "MAILPROV_AUDIT_CHAIN": "eu-1"}).audit.chain == "eu-1"
    with pytest.raises(ConfigError, match="MAILPROV_AUDIT_CHAIN"):
        Settings.from_env({**COMPLETE, "MAILPROV_AUDIT_CHAIN": "../smtp/acme"})


def test_keeping_failed_servers_is_the_operators_setting_off_by_default() -> None:
    assert Settings.from_env(COMPLETE).keep_failed_servers is False
    for raw, expected in [("true", True), ("1", True), ("false", False), ("0", False)]:
        env = {**COMPLETE, "MAILPROV_KEEP_FAILED_SERVERS": raw}
        assert Settings.from_env(env).keep_failed_servers is expected
    with pytest.raises(ConfigError, match="MAILPROV_KEEP_FAILED_SERVERS must be true or false"):
        Settings.from_env({**COMPLETE, "MAILPROV_KEEP_FAILED_SERVERS": "sometimes"})


def worker_env_of_deploy_files() -> dict[str, dict[str, str]]:
    """The worker's environment as deploy/compose and deploy/kubernetes set it."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    documents = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "worker.yaml").read_text())
    [config_map] = [
        d
        for d in documents
        if d
        and d.get("kind") == "ConfigMap"
        and d["metadata"]["name"] == "mail-provisioning-worker"
    ]
    return {
        "compose": compose["services"]["worker"]["environment"],
        "kubernetes": config_map["data"],
    }


def test_unencrypted_payloads_are_refused_in_production_and_accepted_by_default() -> None:
    assert Settings.from_env(COMPLETE).require_encrypted_payloads is False
    for name, env in worker_env_of_deploy_files().items():
        setting = {k: v for k, v in env.items() if k == "MAILPROV_REQUIRE_ENCRYPTED_PAYLOADS"}
        assert Settings.from_env({**COMPLETE, **setting}).require_encrypted_payloads, name


def test_the_unknown_key_grace_is_half_an_hour_unless_set() -> None:
    assert Settings.from_env(COMPLETE).unknown_key_grace_seconds == 1800
    env = {**COMPLETE, "MAILPROV_UNKNOWN_KEY_GRACE_SECONDS": "0"}
    assert Settings.from_env(env).unknown_key_grace_seconds == 0


def test_the_activation_tls_settings_are_read_and_a_bad_port_map_refuses_the_start() -> None:
    settings = Settings.from_env(
        {
            **COMPLETE,
            "MAILPROV_TLS_CA_FILE": "/etc/mailprov/roots.pem",
            "MAILPROV_TLS_CHECK_PORTS": "443=8443,993=9993",
            "MAILPROV_DNS_RESOLVERS": "127.0.0.1:5353",
        }
    )
    assert settings.tls_check.ca_file == "/etc/mailprov/roots.pem"
    assert (settings.tls_check.connect_port(443), settings.tls_check.connect_port(465)) == (
        8443,
        465,
    )
    assert settings.dns_resolvers == "127.0.0.1:5353"
    assert Settings.from_env(COMPLETE).tls_check.ca_file is None
    with pytest.raises(ConfigError, match="MAILPROV_TLS_CHECK_PORTS: 25 is not one of"):
        Settings.from_env({**COMPLETE, "MAILPROV_TLS_CHECK_PORTS": "25=2525"})
