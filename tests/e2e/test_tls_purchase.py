"""A purchase with every connection over TLS, as production runs it: worker.py,
starter.py and the TypeScript client's CLI reach the stack's Temporal dev server through
nginx (TLS, a client certificate verified, an API-key header required), the worker's
Vault is an OpenBao whose own TLS listener requires client certificates, and its audit
log is a PostgreSQL with ssl=on that refuses plaintext (sslmode=verify-full).
MAILPROV_REQUIRE_TLS=true, as in the production configurations. Certificates are made by
the test (tests/tls_certs.py).

The worker runs on its own namespace and task queue, so the stack's plaintext worker
takes no task of this purchase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from devstack.processes import die_with_parent
from devstack.stack import ROOT, StackInfo, tool
from tests.e2e.conftest import CloudControl
from tests.e2e.test_typescript_client import ts_client_cli  # noqa: F401 - the fixture
from tests.tls_certs import LocalCa
from tests.tls_servers import create_database, nginx_grpc_proxy, tls_openbao, tls_postgres

API_KEY = "tls-e2e-" + uuid.uuid4().hex


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def create_namespace(info: StackInfo, name: str) -> str:
    """Registered on the dev server, then used once it answers (the frontend's namespace
    cache learns of it after registration)."""
    temporal = [tool("temporal"), "--address", info.temporal_address, "--namespace", name]
    subprocess.run(
        [
            tool("temporal"),
            "operator",
            "namespace",
            "create",
            "--namespace",
            name,
            "--address",
            info.temporal_address,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    while run(
        [*temporal[:1], "workflow", "list", "--limit", "1", *temporal[1:]], {**os.environ}
    ).returncode:
        time.sleep(0.5)
    return name


def wait_until_ready(worker: subprocess.Popen[bytes], log: Path) -> None:
    """Until the worker logs "worker ready"; its exit fails the test with its log."""
    while "worker ready" not in log.read_text():
        assert worker.poll() is None, f"TLS worker exited:\n{log.read_text()}"
        time.sleep(0.2)


def test_a_purchase_with_temporal_vault_and_postgres_over_tls(
    info: StackInfo,
    cloud: CloudControl,
    purchase: dict[str, Any],
    tmp_path: Path,
    ts_client_cli: Path,  # noqa: F811 - the fixture imported above
) -> None:
    ca = LocalCa(tmp_path / "pki", "e2e-ca")
    server = ca.server("server", ("localhost", "127.0.0.1"))
    worker_cert = ca.client("mail-provisioning-worker")
    operator_cert = ca.client("operator")
    task_queue = f"mail-provisioning-tls-{uuid.uuid4().hex[:6]}"
    # A deployment of its own: its namespace, Vault and audit store are not the stack's,
    # so the stack's check-world never sees its runs, and its server goes at the end.
    namespace = create_namespace(info, f"tls-{uuid.uuid4().hex[:8]}")
    temporal_tls = {
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_API_KEY": API_KEY,
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(ca.cert),
        "MAILPROV_TASK_QUEUE": task_queue,
        "MAILPROV_REQUIRE_TLS": "true",
    }
    with (
        nginx_grpc_proxy(tmp_path / "nginx", info.temporal_address, ca, server, API_KEY) as proxy,
        tls_openbao(tmp_path / "openbao", ca, server, worker_cert) as bao,
        tls_postgres(ca, server) as postgres,
    ):
        dsn = create_database(postgres, f"audit_{uuid.uuid4().hex[:12]}")
        (tmp_path / "role-id").write_text(bao.tokens.worker_role_id)
        (tmp_path / "secret-id").write_text(bao.tokens.worker_secret_id)
        worker_env = {
            **info.worker_env,
            **temporal_tls,
            "TEMPORAL_ADDRESS": proxy,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(worker_cert.cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(worker_cert.key),
            "VAULT_ADDR": bao.addr,
            "VAULT_CACERT": str(ca.cert),
            "VAULT_CLIENT_CERT": str(worker_cert.cert),
            "VAULT_CLIENT_KEY": str(worker_cert.key),
            "VAULT_ROLE_ID_FILE": str(tmp_path / "role-id"),
            "VAULT_SECRET_ID_FILE": str(tmp_path / "secret-id"),
            "MAILPROV_AUDIT_DSN": dsn,
        }
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, str(ROOT / "worker.py")],
                cwd=ROOT,
                env={**_base_env(), **worker_env},
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        try:
            wait_until_ready(worker, log)
            operator_env = {
                **_base_env(),
                **temporal_tls,
                "TEMPORAL_ADDRESS": proxy,
                "TEMPORAL_TLS_CLIENT_CERT_PATH": str(operator_cert.cert),
                "TEMPORAL_TLS_CLIENT_KEY_PATH": str(operator_cert.key),
                "MAILPROV_CODEC_KEYS_FILE": str(info.codec_keys_file),
                "VAULT_ADDR": bao.addr,
                "VAULT_CACERT": str(ca.cert),
                "VAULT_CLIENT_CERT": str(operator_cert.cert),
                "VAULT_CLIENT_KEY": str(operator_cert.key),
            }
            starter = [sys.executable, str(ROOT / "starter.py")]
            flags = [f"--{name.replace('_', '-')}={value}" for name, value in purchase.items()]
            started = run([*starter, "start", *flags, "--wait"], operator_env)
            assert started.returncode == 0, started.stderr + log.read_text()[-3000:]
            result = json.loads(started.stdout)
            assert result["tenant_id"] == purchase["tenant_id"]
            assert len(cloud.servers_of(purchase["purchase_id"])) == 1

            # The TypeScript client reads the same configuration (@temporalio/envconfig).
            node = ["node", str(ts_client_cli), "status", purchase["purchase_id"]]
            status = run(node, operator_env)
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["state"] == "completed"
            refused = run(node, {**operator_env, "TEMPORAL_API_KEY": "wrong-key"})
            assert refused.returncode != 0 and "wrong-key" not in refused.stderr

            # The reader role reads the record back from the TLS Vault.
            reader_env = {**operator_env, "VAULT_TOKEN": bao.tokens.reader}
            credentials = run([*starter, "credentials", purchase["tenant_id"]], reader_env)
            assert credentials.returncode == 0, credentials.stderr
            assert json.loads(credentials.stdout)["username"] == f"admin@{purchase['domain']}"

            # The audit row went to PostgreSQL over TLS; the auditor verifies it there.
            auditor_env = {
                **operator_env,
                "VAULT_TOKEN": bao.tokens.auditor,
                "MAILPROV_AUDIT_DSN": dsn,
            }
            verified = run([*starter, "audit-verify"], auditor_env)
            assert verified.returncode == 0, verified.stdout + verified.stderr
        finally:
            worker.terminate()
            worker.wait(timeout=120)
            for leftover in cloud.servers_of(purchase["purchase_id"]):
                cloud.api.delete(f"servers/{leftover['id']}").raise_for_status()
    # Both processes' calls went through the TLS proxy (nginx's access log, gRPC paths).
    access = (tmp_path / "nginx" / "access.log").read_text()
    for call in ("StartWorkflowExecution", "PollWorkflowTaskQueue", "PollActivityTaskQueue"):
        assert f"/temporal.api.workflowservice.v1.WorkflowService/{call}" in access
    # Nothing secret in what the worker logged while connecting over TLS.
    text = log.read_text()
    assert API_KEY not in text and bao.tokens.worker_secret_id not in text


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "VAULT_"))}
