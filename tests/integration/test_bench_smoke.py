"""`make bench` in miniature (one tiny trial of each part), so the script cannot rot.

No timing is asserted: the machine is shared. What is asserted is structural and
holds at any speed: every part reports, and waiting costs no history action.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.run import main


async def test_bench_smoke_prints_the_table_and_counts_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert await main(["--smoke", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    assert last.startswith("overhead ratio: ")
    assert math.isfinite(float(last.split(": ")[1]))
    report = json.loads(out.read_text())
    rows = {row["metric"]: row for row in report["rows"]}
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
