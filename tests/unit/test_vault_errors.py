"""How Vault errors become activity failures: a degraded Vault is retried, then final."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.vault import (
    Vault,
    VaultError,
    VaultNotReady,
    VaultSettings,
    VaultUnavailable,
    vault_failure,
)
from worker import ConfigError, Settings

BASE_ENV = {
    "HCLOUD_TOKEN": "h",
    "MAILPROV_SSH_KEY_FILE": "/k",
    "VAULT_ADDR": "http://v",
    "MAILPROV_CODEC_KEYS_FILE": "/c",
}


def failure_after(waited: timedelta, err: VaultError) -> ApplicationError:
    env = ActivityEnvironment()
    env.info = replace(env.info, scheduled_time=datetime.now(UTC) - waited)
    return env.run(vault_failure, err)


@pytest.mark.parametrize("kind", ["denied", "sealed"])
def test_a_degraded_vault_is_retried_within_the_limit(kind: str) -> None:
    err = VaultError("kv write: x", retryable=True, degraded=kind, retry_limit_seconds=600)
    failure = failure_after(timedelta(seconds=30), err)
    assert not failure.non_retryable
    assert failure.type == "VaultUnavailable"


@pytest.mark.parametrize("kind", ["denied", "sealed"])
def test_a_degraded_vault_is_final_after_the_limit(kind: str) -> None:
    err = VaultError("kv write: x", retryable=True, degraded=kind, retry_limit_seconds=600)
    failure = failure_after(timedelta(seconds=601), err)
    assert failure.non_retryable
    assert failure.type == "VaultError"


def test_the_degraded_vault_log_line_is_alertable(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    failure_after(
        timedelta(0), VaultError("transit datakey: denied", retryable=True, degraded="denied")
    )
    # Through stdlib logging once the worker configured it, else structlog's own output.
    out = capsys.readouterr().out + caplog.text
    assert "vault_access_degraded" in out and "denied" in out


def test_other_errors_keep_their_retryability() -> None:
    assert failure_after(timedelta(0), VaultError("bad", retryable=False)).non_retryable
    assert not failure_after(timedelta(0), VaultError("503", retryable=True)).non_retryable


def test_approle_settings_from_files(tmp_path: Path) -> None:
    directory = tmp_path
    (directory / "role").write_text("role-1\n")
    (directory / "secret").write_text("secret-1\n")
    settings = Settings.from_env(
        {
            **BASE_ENV,
            "VAULT_ROLE_ID_FILE": str(directory / "role"),
            "VAULT_SECRET_ID_FILE": str(directory / "secret"),
            "MAILPROV_VAULT_DENIED_RETRY_SECONDS": "120",
        }
    )
    assert settings.vault.uses_approle and settings.vault.token == ""
    assert (settings.vault.role_id, settings.vault.secret_id) == ("role-1", "secret-1")
    assert settings.vault.denied_retry_seconds == 120
    assert "secret-1" not in repr(settings)


def test_approle_needs_its_secret_id() -> None:
    with pytest.raises(ConfigError, match="VAULT_SECRET_ID or VAULT_SECRET_ID_FILE"):
        Settings.from_env({**BASE_ENV, "VAULT_ROLE_ID": "r"})


@pytest.mark.parametrize("failing", ["transit", "kv"])
@pytest.mark.parametrize("kind", ["denied", "sealed"])
def test_the_start_up_check_tells_a_set_up_gap_from_an_outage(
    monkeypatch: pytest.MonkeyPatch, failing: str, kind: str
) -> None:
    """Denied: the bootstrap's policies are missing (VaultNotReady, run the bootstrap);
    sealed or failing: an outage (VaultUnavailable), whichever check met it."""
    vault = Vault(VaultSettings(url="http://vault.invalid", token="t"))
    refused = VaultError("permission denied", retryable=True, degraded=kind)

    def data_key(*_: object) -> object:
        if failing == "transit":
            raise refused
        return None

    def call(*_: object, **__: object) -> object:
        raise refused

    monkeypatch.setattr(vault, "_check_available", lambda: None)
    monkeypatch.setattr(vault, "_data_key", data_key)
    monkeypatch.setattr(vault, "_call", call)
    with pytest.raises(VaultNotReady) as err:
        vault.check_ready()
    if kind == "sealed":
        assert isinstance(err.value, VaultUnavailable)
        assert str(err.value) == "Vault at http://vault.invalid failed: permission denied"
    else:
        assert not isinstance(err.value, VaultUnavailable)
        transit = f"Transit keys {vault.tenant_key('*')!r}"
        what = transit if failing == "transit" else f"KV mount {vault.settings.kv_mount!r}"
        assert str(err.value) == (
            f"{what} is not usable: permission denied; run deploy/vault_bootstrap.py"
        )
