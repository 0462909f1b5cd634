"""The one connection configuration (activities/connections.py): Temporal's envconfig
profiles and TEMPORAL_* variables, the plaintext policy, Vault's and PostgreSQL's TLS
settings; each refusal names the setting. (Against real TLS servers:
tests/integration/test_tls_connections.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.connections import (
    ConnectionConfigError,
    TransportPolicy,
    check_postgres_dsn,
    is_loopback,
    load_temporal_connection,
    vault_transport,
)
from tests.tls_certs import LocalCa
from worker import ConfigError, Settings

WORKER_BASE = {
    "HCLOUD_TOKEN": "t",
    "MAILPROV_SSH_KEY_FILE": "/etc/mailprov/id_ed25519",
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": "v",
    "MAILPROV_CODEC_KEYS_FILE": "/etc/mailprov/codec-keys.json",
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    return LocalCa(tmp_path_factory.mktemp("pki"), "unit-ca")


def test_nothing_set_is_the_plaintext_local_default() -> None:
    connection = load_temporal_connection({})
    assert (connection.address, connection.namespace) == ("localhost:7233", "default")
    assert connection.tls is None and connection.api_key is None and connection.warnings == ()
    assert connection.connect_kwargs()["tls"] is False


def test_a_profile_from_temporal_toml_with_variables_on_top(ca: LocalCa, tmp_path: Path) -> None:
    client = ca.client("worker")
    config = tmp_path / "temporal.toml"
    config.write_text(
        '[profile.cloud]\naddress = "ns.acct.tmprl.cloud:7233"\nnamespace = "ns.acct"\n'
        "[profile.cloud.tls]\n"
        f'client_cert_path = "{client.cert}"\nclient_key_path = "{client.key}"\n'
    )
    env = {"TEMPORAL_CONFIG_FILE": str(config), "TEMPORAL_PROFILE": "cloud"}
    connection = load_temporal_connection(env)
    assert (connection.address, connection.namespace) == ("ns.acct.tmprl.cloud:7233", "ns.acct")
    assert connection.tls is not None
    assert connection.tls.client_cert == client.cert.read_bytes()
    # The standard variables win over the profile, as for the temporal CLI.
    overridden = load_temporal_connection({**env, "TEMPORAL_NAMESPACE": "other.acct"})
    assert overridden.namespace == "other.acct"
    # And the command line over both.
    assert load_temporal_connection(env, address="10.0.0.1:7233").address == "10.0.0.1:7233"


def test_an_api_key_alone_means_tls_with_the_system_roots() -> None:
    connection = load_temporal_connection(
        {"TEMPORAL_ADDRESS": "eu-west-1.aws.api.temporal.io:7233", "TEMPORAL_API_KEY": "k"}
    )
    assert connection.tls is not None and connection.tls.server_root_ca_cert is None
    assert connection.api_key == "k"
    assert "k" not in repr(connection)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TEMPORAL_CONFIG_FILE": "/nonexistent/temporal.toml"}, r"TEMPORAL_CONFIG_FILE=.*no such"),
        (
            {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/nonexistent/ca.pem"},
            r"TEMPORAL_TLS_SERVER_CA_CERT_PATH=/nonexistent/ca.pem: No such file",
        ),
        (
            {
                "TEMPORAL_ADDRESS": "temporal.example.com:7233",
                "TEMPORAL_API_KEY": "k",
                "TEMPORAL_TLS": "false",
            },
            r"TEMPORAL_API_KEY is set but TLS is off \(TEMPORAL_TLS\)",
        ),
        ({"MAILPROV_REQUIRE_TLS": "maybe"}, r"MAILPROV_REQUIRE_TLS must be true or false"),
        (
            {"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION": "true"},
            r"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is not supported: .*TEMPORAL_TLS_SERVER_NAME",
        ),
    ],
)
def test_temporal_settings_refused_with_their_name(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConnectionConfigError, match=expected):
        load_temporal_connection(env)


def test_a_client_certificate_is_checked_at_start(ca: LocalCa, tmp_path: Path) -> None:
    good, other, expired = ca.client("good"), ca.client("other"), ca.client("old", expired=True)
    pair = {"TEMPORAL_TLS_CLIENT_CERT_PATH": str(good.cert)}
    with pytest.raises(ConnectionConfigError, match="set TEMPORAL_TLS_CLIENT_KEY_PATH"):
        load_temporal_connection(pair)
    with pytest.raises(ConnectionConfigError, match="TEMPORAL_TLS_CLIENT_KEY_PATH is not the key"):
        load_temporal_connection({**pair, "TEMPORAL_TLS_CLIENT_KEY_PATH": str(other.key)})
    with pytest.raises(ConnectionConfigError, match=r"CERT_PATH: the client certificate expired"):
        load_temporal_connection(
            {
                "TEMPORAL_TLS_CLIENT_CERT_PATH": str(expired.cert),
                "TEMPORAL_TLS_CLIENT_KEY_PATH": str(expired.key),
            }
        )
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConnectionConfigError, match="SERVER_CA_CERT_PATH: not a PEM certificate"):
        load_temporal_connection({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(not_pem)})


def test_plaintext_to_another_host_warns_refuses_or_is_accepted_explicitly() -> None:
    remote = {"TEMPORAL_ADDRESS": "temporal.internal:7233"}
    [warning] = load_temporal_connection(remote).warnings
    assert "TEMPORAL_ADDRESS" in warning and "MAILPROV_REQUIRE_TLS=true" in warning
    with pytest.raises(ConnectionConfigError, match="refused because MAILPROV_REQUIRE_TLS=true"):
        load_temporal_connection({**remote, "MAILPROV_REQUIRE_TLS": "true"})
    assert load_temporal_connection({**remote, "MAILPROV_REQUIRE_TLS": "false"}).warnings == ()
    # Loopback never leaves the machine: the local stack, or a TLS sidecar.
    assert (
        load_temporal_connection(
            {"TEMPORAL_ADDRESS": "127.0.0.1:7233", "MAILPROV_REQUIRE_TLS": "true"}
        ).warnings
        == ()
    )
    assert TransportPolicy.from_env({}).check("x", "X", "[::1]", verified=False) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.5", True),
        ("::1", True),
        ("/var/run/postgresql", True),
        ("", True),
        ("10.0.0.1", False),
        ("db.internal", False),
        ("localhost.evil.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_vault_tls_settings(ca: LocalCa, tmp_path: Path) -> None:
    client = ca.client("vault-client")
    env = {
        "VAULT_CACERT": str(ca.cert),
        "VAULT_CLIENT_CERT": str(client.cert),
        "VAULT_CLIENT_KEY": str(client.key),
        "VAULT_NAMESPACE": "admin/mail",
    }
    transport, warning = vault_transport(env, "https://vault.example.com:8200")
    assert warning is None
    assert transport.verify == str(ca.cert)
    assert transport.cert == (str(client.cert), str(client.key))
    assert transport.namespace == "admin/mail"
    with pytest.raises(ConnectionConfigError, match="set VAULT_CLIENT_KEY"):
        vault_transport({"VAULT_CLIENT_CERT": str(client.cert)}, "https://v:8200")
    with pytest.raises(ConnectionConfigError, match=r"VAULT_CACERT=/nonexistent: no such file"):
        vault_transport({"VAULT_CACERT": "/nonexistent"}, "https://v:8200")
    with pytest.raises(ConnectionConfigError, match=r"is http:// but VAULT_CACERT is set"):
        vault_transport({"VAULT_CACERT": str(ca.cert)}, "http://vault.example.com:8200")
    with pytest.raises(ConnectionConfigError, match="refused because MAILPROV_REQUIRE_TLS"):
        vault_transport({"MAILPROV_REQUIRE_TLS": "true"}, "http://vault.example.com:8200")
    _, plaintext = vault_transport({}, "http://vault.example.com:8200")
    assert plaintext is not None and "VAULT_ADDR" in plaintext
    assert vault_transport({}, "https://vault.example.com")[0].verify is True


def test_postgres_dsn_transport(ca: LocalCa) -> None:
    verified = f"postgresql://audit@db.internal/audit?sslmode=verify-full&sslrootcert={ca.cert}"
    require = {"MAILPROV_REQUIRE_TLS": "true"}
    assert check_postgres_dsn(verified, require) is None
    for weak in ("disable", "prefer", "require", "verify-ca"):
        dsn = f"postgresql://audit@db.internal/audit?sslmode={weak}"
        with pytest.raises(ConnectionConfigError, match=rf"sslmode={weak}.*MAILPROV_AUDIT_DSN"):
            check_postgres_dsn(dsn, require)
        warning = check_postgres_dsn(dsn, {})
        assert warning is not None and "verify-full" in warning
    # libpq's own variables count, as they do when it connects.
    assert (
        check_postgres_dsn(
            "postgresql://audit@db.internal/audit", {"PGSSLMODE": "verify-full", **require}
        )
        is None
    )
    assert check_postgres_dsn("postgresql://audit@127.0.0.1/audit", require) is None
    missing = "postgresql://db.internal/audit?sslmode=verify-full&sslrootcert=/nonexistent/ca"
    with pytest.raises(ConnectionConfigError, match="sslrootcert=/nonexistent/ca: no such file"):
        check_postgres_dsn(missing, {})
    secret = "postgresql://audit:hunter2@db.internal/audit?sslmode=nonsense=1"
    with pytest.raises(ConnectionConfigError) as raised:
        check_postgres_dsn(secret + " bad", {})
    assert "hunter2" not in str(raised.value)


def test_the_worker_refuses_plaintext_in_production_and_names_each_setting() -> None:
    production = {**WORKER_BASE, "MAILPROV_REQUIRE_TLS": "true"}
    # The plaintext Vault of WORKER_BASE is on loopback: allowed.
    assert Settings.from_env(production).transport_warnings == ()
    for name, value in (
        ("TEMPORAL_ADDRESS", "temporal.internal:7233"),
        ("VAULT_ADDR", "http://vault.internal:8200"),
        ("MAILPROV_AUDIT_DSN", "postgresql://audit@db.internal/audit"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**production, name: value})
    warned = Settings.from_env({**WORKER_BASE, "VAULT_ADDR": "http://vault.internal:8200"})
    [warning] = warned.transport_warnings
    assert "VAULT_ADDR" in warning


def test_a_broken_temporal_toml_is_named_without_quoting_its_api_key(tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text('[profile.default]\napi_key = "sk-never-in-a-log\n')
    with pytest.raises(ConnectionConfigError, match=r"TEMPORAL_CONFIG_FILE=.*TOML") as raised:
        load_temporal_connection({"TEMPORAL_CONFIG_FILE": str(config)})
    assert "sk-never-in-a-log" not in str(raised.value)
