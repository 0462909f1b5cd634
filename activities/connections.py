"""How every process of the project reaches Temporal, Vault and PostgreSQL: one place.

Temporal: the SDK's own client configuration (temporalio.envconfig), the same the
`temporal` CLI reads: a profile from temporal.toml (TEMPORAL_CONFIG_FILE, default
~/.config/temporalio/temporal.toml; TEMPORAL_PROFILE, default "default") with the
standard variables on top (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
TEMPORAL_TLS, TEMPORAL_TLS_SERVER_CA_CERT_PATH/_DATA, TEMPORAL_TLS_CLIENT_CERT_PATH/_DATA,
TEMPORAL_TLS_CLIENT_KEY_PATH/_DATA, TEMPORAL_TLS_SERVER_NAME, TEMPORAL_GRPC_META_*).
worker.py and starter.py both connect through `load_temporal_connection` and
`connect_temporal`; the codec server makes no Temporal connection.

Vault: the variables the vault/bao CLI reads (VAULT_ADDR, VAULT_CACERT, VAULT_CAPATH,
VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_NAMESPACE), see `vault_transport`.

PostgreSQL (the audit sink): a libpq DSN; in production `sslmode=verify-full` with
`sslrootcert=`, see `check_postgres_dsn`.

Plaintext: MAILPROV_REQUIRE_TLS=true (the production configurations set it) refuses to
start when any of the three is reached without verified TLS on a host other than
loopback; unset, the process starts and logs a warning naming the setting; `false` is
the operator's explicit statement that the network is trusted (one host's private
bridge, as deploy/compose). Loopback is always allowed: the local stack, and sidecars
(a Vault agent, a database proxy) that terminate TLS beside the process. A bearer
credential (an API key) over plaintext to another host is refused whatever the policy:
it would hand the key to anyone on the path.

Start-up errors name the setting to fix: the SDK's, hvac's and psycopg's raw errors are
caught at start and re-raised as `ConnectionConfigError` with the setting's name.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile, DataSource
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"
DEFAULT_TEMPORAL_NAMESPACE = "default"
REQUIRE_TLS = "MAILPROV_REQUIRE_TLS"
# libpq's sslmode values that verify the server's certificate and its name.
VERIFIED_SSLMODE = "verify-full"


class ConnectionConfigError(Exception):
    """A connection setting is missing, malformed or refused; the message names it."""


# ---------------------------------------------------------------------- policy


@dataclass(frozen=True)
class TransportPolicy:
    """What to do with a plaintext connection to another host (MAILPROV_REQUIRE_TLS)."""

    require_tls: bool
    explicit: bool  # set either way: no warning for an accepted plaintext network

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TransportPolicy:
        raw = env.get(REQUIRE_TLS, "").strip().lower()
        if raw in ("", "true", "1", "yes", "on", "false", "0", "no", "off"):
            return cls(require_tls=raw in ("true", "1", "yes", "on"), explicit=bool(raw))
        raise ConnectionConfigError(f"{REQUIRE_TLS} must be true or false, got {raw!r}")

    def check(self, what: str, setting: str, host: str, verified: bool) -> str | None:
        """None when fine; a warning to log; ConnectionConfigError when refused."""
        if verified or is_loopback(host):
            return None
        message = (
            f"{what} is reached without verified TLS at {host} ({setting}); "
            "anyone on the network path can read or change the traffic"
        )
        if self.require_tls:
            raise ConnectionConfigError(f"{message}; refused because {REQUIRE_TLS}=true")
        return None if self.explicit else f"{message}; set {REQUIRE_TLS}=true to refuse it"


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 or a Unix socket directory: never leaves the machine."""
    host = host.strip().strip("[]")
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------- Temporal


@dataclass(frozen=True)
class TemporalConnection:
    """A loaded client profile: what `Client.connect` gets, and where each value came from."""

    address: str
    namespace: str
    api_key: str | None = field(repr=False)
    tls: TLSConfig | None = field(repr=False)
    rpc_metadata: Mapping[str, str] = field(repr=False)
    # setting name per item ("TEMPORAL_API_KEY" or "api_key of profile 'x' in FILE")
    names: Mapping[str, str] = field(repr=False)
    warnings: tuple[str, ...] = ()

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "target_host": self.address,
            "namespace": self.namespace,
            "tls": self.tls if self.tls is not None else False,
        }
        if self.api_key is not None:
            kwargs["api_key"] = self.api_key
        if self.rpc_metadata:
            kwargs["rpc_metadata"] = dict(self.rpc_metadata)
        return kwargs


# (item, environment variable, key in a profile of temporal.toml)
_TEMPORAL_SETTINGS = {
    "address": ("TEMPORAL_ADDRESS", "address"),
    "namespace": ("TEMPORAL_NAMESPACE", "namespace"),
    "api_key": ("TEMPORAL_API_KEY", "api_key"),
    "tls": ("TEMPORAL_TLS", "tls.disabled"),
    "server_ca": ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", "tls.server_ca_cert_path"),
    "client_cert": ("TEMPORAL_TLS_CLIENT_CERT_PATH", "tls.client_cert_path"),
    "client_key": ("TEMPORAL_TLS_CLIENT_KEY_PATH", "tls.client_key_path"),
    "server_name": ("TEMPORAL_TLS_SERVER_NAME", "tls.server_name"),
}


def load_temporal_connection(
    env: Mapping[str, str] = os.environ,
    *,
    address: str | None = None,
    namespace: str | None = None,
    profile: str | None = None,
) -> TemporalConnection:
    """The client configuration every process uses; command-line values win over it.

    Files named by the configuration are read here, so a missing or expired
    certificate is reported at start with the setting that names it.
    """
    config_file = env.get("TEMPORAL_CONFIG_FILE", "").strip()
    if config_file and not Path(config_file).is_file():
        raise ConnectionConfigError(f"TEMPORAL_CONFIG_FILE={config_file}: no such file")
    if env.get("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "").strip().lower() in ("true", "1"):
        # The temporal CLI reads it; the Python SDK's envconfig drops it (temporalio 1.35):
        # refuse rather than let an operator believe verification is off, or on.
        raise ConnectionConfigError(
            "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is not supported: the server's name is "
            "always verified; set TEMPORAL_TLS_SERVER_NAME to the name in its certificate"
        )
    profile_name = profile or env.get("TEMPORAL_PROFILE", "").strip() or None
    try:
        loaded = ClientConfigProfile.load(profile=profile_name, override_env_vars=dict(env))
    except Exception as err:  # the SDK raises its bridge's ConfigError
        where = f"TEMPORAL_CONFIG_FILE={config_file}" if config_file else "temporal.toml"
        chosen = f" (TEMPORAL_PROFILE={profile_name})" if profile_name else ""
        # First line only: a TOML parse error quotes the file's line, which may hold api_key.
        raise ConnectionConfigError(
            f"Temporal client profile{chosen}, {where}: {_first_line(str(err))}"
        ) from None
    names = _setting_names(env, profile_name or "default", config_file)
    tls = _tls_config(loaded, names)
    connection = TemporalConnection(
        address=address or loaded.address or DEFAULT_TEMPORAL_ADDRESS,
        namespace=namespace or loaded.namespace or DEFAULT_TEMPORAL_NAMESPACE,
        api_key=loaded.api_key or None,
        tls=tls,
        rpc_metadata=dict(loaded.grpc_meta),
        names={**names, **({"address": "--address"} if address else {})},
    )
    return _checked(connection, TransportPolicy.from_env(env))


def _setting_names(env: Mapping[str, str], profile: str, config_file: str) -> dict[str, str]:
    file = config_file or "~/.config/temporalio/temporal.toml"
    names = {}
    for item, (variable, key) in _TEMPORAL_SETTINGS.items():
        data_variable = variable.replace("_PATH", "_DATA")
        if env.get(variable, "").strip():
            names[item] = variable
        elif variable != data_variable and env.get(data_variable, "").strip():
            names[item] = data_variable
        else:
            names[item] = f"{variable} (or {key} of profile {profile!r} in {file})"
    return names


def _tls_config(loaded: ClientConfigProfile, names: Mapping[str, str]) -> TLSConfig | None:
    """TLS as the profile says (an API key alone means TLS with the system's CAs)."""
    tls = loaded.tls
    if tls is None:
        return TLSConfig() if loaded.api_key else None
    if tls.disabled is True:
        return None
    has_cert, has_key = tls.client_cert is not None, tls.client_private_key is not None
    if has_cert != has_key:
        missing = names["client_key"] if has_cert else names["client_cert"]
        raise ConnectionConfigError(
            f"a client certificate needs its key and vice versa: set {missing}"
        )
    server_ca = _read_pem(tls.server_root_ca_cert, names["server_ca"])
    client_cert = _read_pem(tls.client_cert, names["client_cert"])
    client_key = _read_pem(tls.client_private_key, names["client_key"])
    if server_ca is not None:
        _certificates(server_ca, names["server_ca"])
    if client_cert is not None and client_key is not None:
        _check_client_pair(client_cert, client_key, names["client_cert"], names["client_key"])
    return TLSConfig(
        server_root_ca_cert=server_ca,
        domain=tls.server_name,
        client_cert=client_cert,
        client_private_key=client_key,
    )


def _read_pem(source: DataSource | None, name: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, Path):
        try:
            return source.read_bytes()
        except OSError as err:
            raise ConnectionConfigError(f"{name}={source}: {err.strerror}") from None
    return source.encode() if isinstance(source, str) else source


def _certificates(pem: bytes, name: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConnectionConfigError(f"{name}: not a PEM certificate") from None


def _check_client_pair(cert_pem: bytes, key_pem: bytes, cert_name: str, key_name: str) -> None:
    """An expired certificate or a key of another certificate fails at the server with an
    unhelpful answer; both are known here."""
    cert = _certificates(cert_pem, cert_name)[0]
    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        raise ConnectionConfigError(
            f"{cert_name}: the client certificate expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; install a renewed one"
        )
    if cert.not_valid_before_utc > now:
        raise ConnectionConfigError(
            f"{cert_name}: the client certificate is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConnectionConfigError(f"{key_name}: not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, public):
        raise ConnectionConfigError(f"{key_name} is not the key of the certificate in {cert_name}")


def _checked(connection: TemporalConnection, policy: TransportPolicy) -> TemporalConnection:
    host = _host_of(connection.address)
    verified = connection.tls is not None
    if connection.api_key is not None and not verified and not is_loopback(host):
        raise ConnectionConfigError(
            f"{connection.names['api_key']} is set but TLS is off ({connection.names['tls']}): "
            f"the API key would cross the network to {host} in plaintext"
        )
    warning = policy.check("Temporal", connection.names["address"], host, verified)
    if warning is None:
        return connection
    return TemporalConnection(**{**connection.__dict__, "warnings": (warning,)})


def _host_of(address: str) -> str:
    """The host of `host:port`, `[v6]:port` or a URL-ish `scheme://host:port`."""
    if "://" in address:
        return urlsplit(address).hostname or ""
    if address.startswith("["):
        return address[1 : address.find("]")]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


async def connect_temporal(connection: TemporalConnection, **client_options: Any) -> Client:
    """Client.connect with the loaded configuration; a failure says what to fix."""
    try:
        return await Client.connect(**connection.connect_kwargs(), **client_options)
    except (RuntimeError, RPCError) as err:
        raise ConnectionConfigError(explain_temporal_error(connection, err)) from None


# The SDK's connect errors are text from its Rust core (tonic/rustls); these are the
# parts that say what went wrong, matched in temporalio 1.35's messages.
_SERVER_CERT = re.compile(r"invalid peer certificate|UnknownIssuer|BadSignature|certificate verify")
_SERVER_NAME = re.compile(r"NotValidForName")
_CLIENT_CERT = re.compile(
    r"CertificateRequired|certificate required|BadCertificate|CertificateExpired"
    r"|UnknownCA|status: 400 Bad Request|status: 49[56]"
)
_UNAUTHENTICATED = re.compile(r"code: Unauthenticated|status: 401 Unauthorized")
_PERMISSION = re.compile(r"code: PermissionDenied|status: 403 Forbidden")
# A TLS listener answers plaintext HTTP/2 with a TLS alert (GOAWAY/FRAME_SIZE_ERROR as h2
# reads it) or closes the connection, depending on timing: both seen from nginx here.
_PLAINTEXT_TO_TLS = re.compile(
    r"h2 protocol error|GoAway|frame with invalid size|FRAME_SIZE|connection closed"
    r"|Connection reset|broken pipe"
)
# rustls reading a plaintext server's answer as a TLS record.
_TLS_TO_PLAINTEXT = re.compile(r"InvalidContentType|CorruptMessage|InvalidMessage")
_REFUSED = re.compile(r"Connection refused|dns error|failed to lookup address")


def explain_temporal_error(connection: TemporalConnection, err: BaseException) -> str:
    """The setting to fix for a failed connect, by what the SDK reported."""
    text = str(err)
    if isinstance(err, RPCError):
        text = f"code: {_status_name(err.status)} {text}"
    names = connection.names
    where = f"Temporal at {connection.address} ({names['address']})"
    has_client_cert = connection.tls is not None and connection.tls.client_cert is not None
    if _SERVER_NAME.search(text):
        return (
            f"{where}: its certificate is not valid for that name; fix {names['address']} "
            f"or set {names['server_name']}"
        )
    if _SERVER_CERT.search(text):
        return (
            f"{where}: its certificate is not signed by a trusted CA; set {names['server_ca']} "
            "to the CA that issued the server's certificate"
        )
    if _CLIENT_CERT.search(text):
        if not has_client_cert:
            return (
                f"{where} requires a client certificate and none is configured: set "
                f"{names['client_cert']} and {names['client_key']}"
            )
        return (
            f"{where} refused the client certificate in {names['client_cert']}: not issued "
            "by a CA the server trusts, expired or revoked; install the namespace's client "
            "certificate"
        )
    if _UNAUTHENTICATED.search(text):
        if connection.api_key is None:
            return (
                f"{where} requires authentication: set {names['api_key']} (or a client "
                f"certificate: {names['client_cert']})"
            )
        return (
            f"{where} refused the API key in {names['api_key']}: wrong, expired or revoked; "
            "create a new key for the namespace"
        )
    if _PERMISSION.search(text):
        return (
            f"{where}: the credentials have no access to namespace {connection.namespace!r} "
            f"({names['namespace']}); check the namespace and the key's or certificate's grants"
        )
    if _PLAINTEXT_TO_TLS.search(text) and connection.tls is None:
        return (
            f"{where} did not answer plaintext gRPC (it probably expects TLS): set "
            f"{names['tls']}=true and {names['server_ca']}"
        )
    if _TLS_TO_PLAINTEXT.search(text) and connection.tls is not None:
        return (
            f"{where} does not answer TLS there (a plaintext server?): point "
            f"{names['address']} at its TLS endpoint, or set {names['tls']}=false for a "
            "plaintext cluster on a trusted network"
        )
    if _REFUSED.search(text):
        return f"{where} is not reachable: start it or fix {names['address']} ({_first_line(text)})"
    return f"{where}: cannot connect: {_first_line(text)}"


def _status_name(status: RPCStatusCode) -> str:
    return "".join(part.capitalize() for part in status.name.split("_"))


def _first_line(text: str) -> str:
    return text.splitlines()[0][:300] if text else "no detail"


# ---------------------------------------------------------------------- Vault


@dataclass(frozen=True)
class VaultTransport:
    """How to reach Vault over TLS, in the vault CLI's variable names."""

    ca_cert: str = ""  # VAULT_CACERT (a file) or VAULT_CAPATH (a directory)
    client_cert: str = ""  # VAULT_CLIENT_CERT
    client_key: str = ""  # VAULT_CLIENT_KEY
    namespace: str = ""  # VAULT_NAMESPACE (Vault Enterprise / HCP Vault; OpenBao namespaces)

    @property
    def verify(self) -> bool | str:
        """requests' `verify`: our CA bundle, else the system's."""
        return self.ca_cert or True

    @property
    def cert(self) -> tuple[str, str] | None:
        return (self.client_cert, self.client_key) if self.client_cert else None


def vault_transport(
    env: Mapping[str, str], url: str, policy: TransportPolicy | None = None
) -> tuple[VaultTransport, str | None]:
    """VAULT_CACERT / VAULT_CAPATH / VAULT_CLIENT_CERT / VAULT_CLIENT_KEY / VAULT_NAMESPACE,
    checked; and the plaintext warning, if any (None when refused: it raises)."""
    ca = env.get("VAULT_CACERT", "").strip()
    ca_setting = "VAULT_CACERT"
    if not ca and env.get("VAULT_CAPATH", "").strip():
        ca, ca_setting = env["VAULT_CAPATH"].strip(), "VAULT_CAPATH"
    cert = env.get("VAULT_CLIENT_CERT", "").strip()
    key = env.get("VAULT_CLIENT_KEY", "").strip()
    if bool(cert) != bool(key):
        missing = "VAULT_CLIENT_KEY" if cert else "VAULT_CLIENT_CERT"
        raise ConnectionConfigError(f"a Vault client certificate needs its key: set {missing}")
    for name, path in ((ca_setting, ca), ("VAULT_CLIENT_CERT", cert), ("VAULT_CLIENT_KEY", key)):
        if path and not Path(path).exists():
            raise ConnectionConfigError(f"{name}={path}: no such file or directory")
    if cert:
        _check_client_pair(
            Path(cert).read_bytes(), Path(key).read_bytes(), "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionConfigError(f"VAULT_ADDR={url}: expected http(s)://host:port")
    if parts.scheme == "http" and (ca or cert):
        raise ConnectionConfigError(
            f"VAULT_ADDR={url} is http:// but {ca_setting if ca else 'VAULT_CLIENT_CERT'} is "
            "set: use https:// (the certificates would not be used)"
        )
    checked = policy or TransportPolicy.from_env(env)
    warning = checked.check("Vault", "VAULT_ADDR", parts.hostname, parts.scheme == "https")
    transport = VaultTransport(ca, cert, key, env.get("VAULT_NAMESPACE", "").strip())
    return transport, warning


def explain_vault_tls_error(url: str, transport: VaultTransport, err: BaseException) -> str | None:
    """The setting to fix for a TLS failure reaching Vault (requests/urllib3/ssl text);
    None when the error is not about TLS."""
    text = repr(err)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        if re.search(r"Hostname mismatch|IP address mismatch|doesn.t match", text):
            return f"Vault at {url}: its certificate is not valid for that name; fix VAULT_ADDR"
        fix = "set VAULT_CACERT to the CA that issued Vault's certificate"
        if transport.ca_cert:
            fix = f"VAULT_CACERT={transport.ca_cert} did not issue it; {fix}"
        return f"Vault at {url}: its certificate is not trusted: {fix}"
    if re.search(r"CERTIFICATE_REQUIRED|alert certificate required", text) or (
        not transport.cert and re.search(r"ALERT_HANDSHAKE_FAILURE|handshake failure", text)
    ):
        return (
            f"Vault at {url} requires a client certificate: set VAULT_CLIENT_CERT "
            "and VAULT_CLIENT_KEY"
        )
    if re.search(
        r"ALERT_(UNKNOWN_CA|CERTIFICATE_EXPIRED|BAD_CERTIFICATE|CERTIFICATE_REVOKED)", text
    ):
        return (
            f"Vault at {url} refused the client certificate VAULT_CLIENT_CERT="
            f"{transport.client_cert}: not issued by a CA it trusts, expired or revoked"
        )
    if re.search(r"WRONG_VERSION_NUMBER|wrong version number", text):
        return f"Vault at {url} does not speak TLS there: fix VAULT_ADDR (http:// or the port)"
    if "SSLError" in text or "SSL" in type(err).__name__:
        return f"Vault at {url}: TLS failed ({_first_line(str(err))}); check VAULT_CACERT"
    return None


# ---------------------------------------------------------------------- PostgreSQL


def check_postgres_dsn(
    dsn: str, env: Mapping[str, str], policy: TransportPolicy | None = None
) -> str | None:
    """The audit DSN's transport: verify-full (with its sslrootcert) or loopback, or warn /
    refuse per MAILPROV_REQUIRE_TLS. libpq's own defaults count (PGHOST, PGSSLMODE,
    PGSSLROOTCERT), as they would when connecting."""
    from psycopg import conninfo  # only deployments that use PostgreSQL need the driver

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError; its text may quote the password
        raise ConnectionConfigError("MAILPROV_AUDIT_DSN is not a valid libpq DSN/URI") from None
    host = str(params.get("host") or env.get("PGHOST", "") or "")
    sslmode = str(params.get("sslmode") or env.get("PGSSLMODE", "") or "prefer")
    rootcert = str(params.get("sslrootcert") or env.get("PGSSLROOTCERT", "") or "")
    if rootcert not in ("", "system") and not Path(rootcert).is_file():
        raise ConnectionConfigError(f"MAILPROV_AUDIT_DSN sslrootcert={rootcert}: no such file")
    hosts = [h for h in host.split(",") if h] or [""]
    checked = policy or TransportPolicy.from_env(env)
    for one in hosts:
        warning = checked.check(
            f"PostgreSQL (sslmode={sslmode}, {VERIFIED_SSLMODE} verifies the server)",
            "MAILPROV_AUDIT_DSN",
            one,
            sslmode == VERIFIED_SSLMODE,
        )
        if warning:
            return warning
    return None


def explain_postgres_error(err: BaseException) -> str:
    """The DSN parameter to fix for a failed connection (psycopg's OperationalError text,
    which carries libpq's message; never the DSN itself, which may hold a password)."""
    text = str(err)
    if "certificate verify failed" in text:
        return (
            "PostgreSQL's certificate is not trusted: set sslrootcert= in MAILPROV_AUDIT_DSN "
            "to the CA that issued it"
        )
    if "does not match host name" in text or "server certificate for" in text:
        return (
            "PostgreSQL's certificate is not valid for the host in MAILPROV_AUDIT_DSN: "
            "connect by the name in its certificate"
        )
    if "root certificate file" in text:
        return "MAILPROV_AUDIT_DSN: the sslrootcert file cannot be read; set sslrootcert="
    if re.search(r"certificate required|alert bad certificate|certificate unknown", text):
        return (
            "PostgreSQL refused the client certificate: set sslcert= and sslkey= in "
            "MAILPROV_AUDIT_DSN to a certificate it trusts"
        )
    if "server does not support SSL" in text:
        return "PostgreSQL at MAILPROV_AUDIT_DSN does not offer TLS: enable ssl=on on the server"
    if "pg_hba.conf" in text and "no encryption" in text:
        return (
            "PostgreSQL refuses plaintext connections: "
            "set sslmode=verify-full in MAILPROV_AUDIT_DSN"
        )
    first = text.splitlines()[0] if text else type(err).__name__
    return f"PostgreSQL (MAILPROV_AUDIT_DSN): cannot connect: {first[:300]}"
