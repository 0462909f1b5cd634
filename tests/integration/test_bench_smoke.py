"""`make bench` in miniature (one tiny trial of each part), so the script cannot rot.

No timing is asserted: the machine is shared. What is asserted is structural and
holds at any speed: every part reports, and waiting costs no history action.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import NoReturn

import pytest
from temporalio.testing import ActivityEnvironment

from bench.fakes import BootingProvider, purchase
from bench.run import main, our_activities
from workflows.contracts import AdmissionRequest


async def test_bench_smoke_prints_the_table_and_counts_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert await main(["--smoke", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    throughput, cpu = printed.strip().splitlines()[-2:]
    # Each the median of the paired per-trial ratios; the smoke's two trials are too few
    # for a 95% interval (bench/stats.py), and the line says so.
    assert throughput.startswith("overhead ratio: ")
    assert cpu.startswith("worker CPU ratio: ")
    for line in (throughput, cpu):
        assert math.isfinite(float(line.split(": ", 1)[1].split()[0]))
        assert line.endswith("(no 95% interval: 2 paired trials, it needs 6)")
    report = json.loads(out.read_text())
    rows = {row["metric"]: row for row in report["rows"]}
    # The summary lines are those of the table's paired ratios, one per trial.
    paired = rows["ours: throughput ratio vs bare"]["samples"]
    assert report["overhead"]["throughput"]["samples"] == paired
    assert len(paired) == len(report["overhead"]["cpu"]["samples"]) == 2
    assert {row["section"] for row in report["rows"]} == {"overhead", "cost", "scale"}
    # The heartbeating poll waits inside one attempt: a boot adds no history action.
    instant = rows["boot 0s: heartbeat poll, actions (history)"]["median"]
    booting = rows["boot 3s: heartbeat poll, actions (history)"]["median"]
    assert instant == booting
    # The dev server's own counter: the retry design paid a retry per look; the heartbeating
    # poll, for a boot shorter than half its heartbeat timeout, not even one heartbeat.
    assert report["cost_metric_by_type"]["3s retry"].get("activity_retry", 0) >= 1
    assert "grpc_RecordActivityTaskHeartbeat" not in report["cost_metric_by_type"]["3s heartbeat"]
    assert "activity_retry" not in report["cost_metric_by_type"]["3s heartbeat"]


async def test_bench_admission_asks_no_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overhead figures are the workflow's, not this machine's DNS: the bench's
    admit_purchase checks the notify URL against public_dns, never the resolver."""

    def no_dns(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(f"the bench resolved {args[0]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    admit = our_activities(BootingProvider(), heartbeat_poll=False)[0]
    request = AdmissionRequest("t-p1", "starter", purchase("p1")["notify_url"], "purchase-p1")
    admitted = await ActivityEnvironment().run(admit, request)
    assert admitted.claim_run_id == "bench-claim-run"


async def test_simultaneous_counts_both_sides_over_the_same_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The part for a loaded machine: two processes, each its own dev server, one
    workflow each, counted over the same windows; each window with purchases on both
    sides gives one ratio, and no activity was retried on either side."""
    out = tmp_path / "bench.json"
    assert await main(["--smoke", "--parts", "simultaneous", "--json", str(out)]) == 0
    throughput, cpu = capsys.readouterr().out.strip().splitlines()[-2:]
    assert throughput.startswith("simultaneous overhead ratio: ")
    assert cpu.startswith("simultaneous worker CPU ratio: ")
    report = json.loads(out.read_text())
    assert {row["section"] for row in report["rows"]} == {"simultaneous"}
    sides = report["simultaneous"]["sides"]
    for side in ("bare", "ours"):
        assert len(sides[side]["steps"]) == len(sides[side]["worker_cpu"]) == 2
        assert sum(sides[side]["steps"]) > 0
        assert sides[side]["retries"] == 0
        # Throughput is counted in activities: both workflows run ten per purchase.
        assert sides[side]["steps_per_purchase"] == 10
    # The yardstick is ours' shape: as many history events per purchase (the server's
    # work), ours' only larger in bytes (encrypted, typed payloads).
    assert sides["bare"]["history_events"] == sides["ours"]["history_events"]
    assert sides["bare"]["history_bytes"] < sides["ours"]["history_bytes"]
    ours, bare = sides["ours"]["steps"], sides["bare"]["steps"]
    both = [o / b for o, b in zip(ours, bare, strict=True) if o and b]
    assert report["simultaneous"]["throughput"]["samples"] == pytest.approx(both)
    assert throughput.endswith(f"(no 95% interval: {len(both)} windows, it needs 6)")
