"""bench/process_cpu.py: a command's CPU by kind of process, from /proc."""

from __future__ import annotations

import shlex
import sys

from bench.process_cpu import kind_of, report, run

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"


def test_a_grandchilds_cpu_is_found_and_named_by_its_command_line() -> None:
    # The burner is a grandchild (under sh), as a VPS under the local cloud is.
    burner = f"{shlex.quote(sys.executable)} -c {shlex.quote(BURN)} worker.py"
    status, seen, total = run(["sh", "-c", f"{burner}; exit 3"], interval=0.1)
    assert status == 3
    [(_, seconds)] = [entry for entry in seen.values() if "worker.py" in entry[0]]
    assert 0 < seconds <= total
    printed = report(seen, total)
    assert "worker.py" in printed.splitlines()[1]
    assert printed.endswith(f"s of the command's {total:.0f} s of CPU")


def test_kinds_follow_the_command_lines_of_make_test() -> None:
    assert kind_of("/v/bin/temporal server start-dev --ip 127.0.0.1") == "Temporal dev server"
    assert kind_of("/v/bin/python -m devstack.vps") == "VPS stand-in"
    assert kind_of("/v/bin/python /r/starter.py --address a check-world") == "starter.py"
    assert kind_of("something else") == "other"
