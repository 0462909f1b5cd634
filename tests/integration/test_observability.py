"""The alert rules and the dashboard in deploy/observability/, checked for real.

* `promtool check rules` (Debian's prometheus package) accepts the rules, and
  `promtool test rules` proves each alert fires on the series meant to trigger it
  and stays silent otherwise (deploy/observability/alerts.test.yml);
* the dashboard is Grafana dashboard JSON whose every query names a metric the
  worker exports: ours (runtime/metrics.py, workflows/metrics.py) or the SDK's.
  tests/e2e/test_metrics.py checks the same names against a real scrape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from runtime import metrics as activity_metrics
from tests.integration.test_real_validators import run, tool
from workflows import metrics as workflow_metrics

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
METRIC_NAME = re.compile(r"\b((?:mailprov|temporal)_[a-z_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# The SDK metrics our alerts and panels use (temporalio's Core: num_pollers).
SDK_METRICS = {"temporal_num_pollers"}


def dashboard() -> dict[str, object]:
    loaded = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def dashboard_queries() -> list[str]:
    panels = dashboard()["panels"]
    assert isinstance(panels, list)
    return [target["expr"] for panel in panels for target in panel["targets"]]


def referenced_metric_names() -> set[str]:
    """Every metric the alerts and the dashboard query, histogram suffixes removed."""
    text = (OBSERVABILITY / "alerts.yml").read_text() + "\n".join(dashboard_queries())
    names = set()
    for name in METRIC_NAME.findall(text):
        for suffix in HISTOGRAM_SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


def exported_metric_names() -> set[str]:
    ours = {
        value
        for module in (activity_metrics, workflow_metrics)
        for value in vars(module).values()
        if isinstance(value, str) and value.startswith("mailprov_")
    }
    return ours | SDK_METRICS


def test_promtool_accepts_the_alert_rules() -> None:
    result = run(tool("promtool", "prometheus"), "check", "rules", "alerts.yml", cwd=OBSERVABILITY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_unit_tests_fire_each_alert_on_its_series() -> None:
    result = run(
        tool("promtool", "prometheus"), "test", "rules", "alerts.test.yml", cwd=OBSERVABILITY
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (OBSERVABILITY / "alerts.test.yml").read_text()))
    defined = set(re.findall(r"- alert: (\w+)", (OBSERVABILITY / "alerts.yml").read_text()))
    assert tested == defined


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule that never fires fails them."""
    original = (OBSERVABILITY / "alerts.yml").read_text()
    never_fires = original.replace("> 187 * 86400", "> 1e12")
    assert never_fires != original
    (tmp_path / "alerts.yml").write_text(never_fires)
    (tmp_path / "alerts.test.yml").write_text((OBSERVABILITY / "alerts.test.yml").read_text())
    result = run(tool("promtool", "prometheus"), "test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MailProvisioningRotationOverdue" in result.stdout + result.stderr


def test_dashboard_queries_only_metrics_the_worker_exports() -> None:
    board = dashboard()
    assert board["uid"] == "mail-provisioning"
    assert isinstance(board["schemaVersion"], int)
    referenced = referenced_metric_names()
    assert referenced, "no metric found in the alerts or the dashboard"
    assert referenced <= exported_metric_names(), referenced - exported_metric_names()
    # Every metric we export is on the dashboard.
    ours = {n for n in exported_metric_names() if n.startswith("mailprov_")}
    assert ours <= referenced, ours - referenced
