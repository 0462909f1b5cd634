"""Each tenant's own Transit key: named in the envelope, created with the first data
key, the only key that may open the tenant's envelopes, deleted by deprovisioning.

Transit is replaced by a fake that answers as OpenBao 2.7.2 does (the messages were
taken from a real server: "encryption key not found", "no existing key named ... could
be found", "could not delete key; not found"); tests/e2e/test_vault_access.py and
tests/e2e/test_vault_lifecycle.py run the same against the real one.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import hvac.exceptions
import pytest

from activities.crypto import EnvelopeError
from activities.vault import TenantKeyDestroyed, Vault, VaultSettings
from workflows.input_rules import TENANT_ID_RULE


class FakeTransit:
    """Keys by name; a key's data keys are 'wrapped' as `vault:v1:<name>:<hex>`."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def create_key(self, name: str, **options: Any) -> None:
        self.calls.append(("create", name))
        self.keys.setdefault(name, {"options": options, "deletion_allowed": False, "data": {}})

    def generate_data_key(self, name: str, **_: Any) -> dict[str, Any]:
        self.calls.append(("datakey", name))
        if name not in self.keys:
            raise hvac.exceptions.InvalidRequest("encryption key not found")
        plaintext = secrets.token_bytes(32)
        wrapped = f"vault:v1:{name}:{plaintext.hex()}"
        self.keys[name]["data"][wrapped] = plaintext
        return {"data": {"plaintext": base64.b64encode(plaintext).decode(), "ciphertext": wrapped}}

    def decrypt_data(self, name: str, ciphertext: str, **_: Any) -> dict[str, Any]:
        self.calls.append(("decrypt", name))
        if name not in self.keys:
            raise hvac.exceptions.InvalidRequest("encryption key not found")
        if ciphertext not in self.keys[name]["data"]:
            raise hvac.exceptions.InvalidRequest("cipher: message authentication failed")
        return {"data": {"plaintext": base64.b64encode(self.keys[name]["data"][ciphertext])}}

    def update_key_configuration(self, name: str, deletion_allowed: bool, **_: Any) -> None:
        self.calls.append(("config", name))
        if name not in self.keys:
            raise hvac.exceptions.InvalidRequest(f"no existing key named {name} could be found")
        self.keys[name]["deletion_allowed"] = deletion_allowed

    def delete_key(self, name: str, **_: Any) -> None:
        self.calls.append(("delete", name))
        if name not in self.keys:
            raise hvac.exceptions.InvalidRequest(
                f"error deleting policy {name}: could not delete key; not found"
            )
        if not self.keys[name]["deletion_allowed"]:
            raise hvac.exceptions.InvalidRequest("deletion is not allowed for this key")
        del self.keys[name]


@pytest.fixture
def transit() -> FakeTransit:
    return FakeTransit()


@pytest.fixture
def vault(transit: FakeTransit, monkeypatch: pytest.MonkeyPatch) -> Vault:
    vault = Vault(VaultSettings(url="http://127.0.0.1:9", token="t"))
    monkeypatch.setattr(vault, "_ensure_token", lambda: None)
    for name in (
        "create_key",
        "generate_data_key",
        "decrypt_data",
        "update_key_configuration",
        "delete_key",
    ):
        monkeypatch.setattr(vault._client.secrets.transit, name, getattr(transit, name))
    return vault


def test_the_first_data_key_creates_the_tenants_own_key(vault: Vault, transit: FakeTransit) -> None:
    key = vault.generate_data_key("acme")
    assert key.kek == "transit/mail-credentials-acme"
    assert transit.calls == [
        ("datakey", "mail-credentials-acme"),
        ("create", "mail-credentials-acme"),
        ("datakey", "mail-credentials-acme"),
    ]
    options = transit.keys["mail-credentials-acme"]["options"]
    assert options["exportable"] is False and options["allow_plaintext_backup"] is False
    transit.calls.clear()
    vault.generate_data_key("acme")
    assert transit.calls == [("datakey", "mail-credentials-acme")]


def test_only_the_tenants_own_key_opens_its_data_key(vault: Vault, transit: FakeTransit) -> None:
    acme = vault.generate_data_key("acme")
    evil = vault.generate_data_key("evil")
    assert vault.unwrap_data_key("acme", acme.kek, acme.wrapped) == acme.plaintext
    transit.calls.clear()
    # An envelope naming another tenant's key is refused before Vault is asked.
    with pytest.raises(EnvelopeError, match="not tenant 'acme'"):
        vault.unwrap_data_key("acme", evil.kek, evil.wrapped)
    assert transit.calls == []
    # Another tenant's wrapped key relabelled with acme's key name: acme's key refuses it.
    with pytest.raises(EnvelopeError, match="does not unwrap"):
        vault.unwrap_data_key("acme", acme.kek, evil.wrapped)


def test_deprovisioning_destroys_the_key_and_its_envelopes_stay_closed(
    vault: Vault, transit: FakeTransit
) -> None:
    old = vault.generate_data_key("acme")
    assert vault.destroy_tenant_key("acme") is True
    assert "mail-credentials-acme" not in transit.keys
    with pytest.raises(TenantKeyDestroyed, match="deprovisioned"):
        vault.unwrap_data_key("acme", old.kek, old.wrapped)
    # A repeat finds nothing and succeeds; a purchase afterwards gets a fresh key.
    assert vault.destroy_tenant_key("acme") is False
    fresh = vault.generate_data_key("acme")
    assert fresh.kek == old.kek
    with pytest.raises(EnvelopeError):
        vault.unwrap_data_key("acme", old.kek, old.wrapped)
    assert vault.unwrap_data_key("acme", fresh.kek, fresh.wrapped) == fresh.plaintext


def test_a_delete_whose_answer_was_lost_counts_as_done(
    vault: Vault, transit: FakeTransit, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.generate_data_key("acme")
    transit.keys["mail-credentials-acme"]["deletion_allowed"] = True
    real_delete = transit.delete_key

    def delete_twice(name: str, **options: Any) -> None:
        real_delete(name, **options)
        real_delete(name, **options)  # the retry after a lost answer

    monkeypatch.setattr(vault._client.secrets.transit, "delete_key", delete_twice)
    assert vault.destroy_tenant_key("acme") is True
    assert "mail-credentials-acme" not in transit.keys


def test_the_startup_check_key_is_no_tenants(vault: Vault) -> None:
    suffix = vault.startup_check_key.removeprefix("mail-credentials-")
    assert TENANT_ID_RULE.fullmatch(suffix) is None
