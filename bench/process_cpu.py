"""Where a command's CPU goes, by kind of process: `python -m bench.process_cpu -- make test`.

`make test` keeps both cores busy, so its length follows its CPU, spread over hundreds
of processes (stand-in servers, workers, CLI runs, Temporal dev servers). This runs the
command, reads every descendant's CPU from /proc each second, and prints the CPU per
kind of process (the first pattern of KINDS its command line matches), the count of
each, and how much of the command's whole CPU (getrusage) the samples saw: a process
that lives less than a second between two samples is missed.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from collections import Counter

from bench.procfs import all_processes, command_line, descendants

# (kind, pattern searched in the command line), first match wins.
KINDS: tuple[tuple[str, str], ...] = (
    ("Temporal dev server", r"temporal server start-dev"),
    ("time-skipping test server", r"temporal-test-server"),
    ("temporal CLI", r"(^|/)temporal "),
    ("pytest-xdist worker", r"python -u -c"),
    ("VPS stand-in", r"-m devstack\.vps"),
    ("local cloud", r"-m devstack\.cloud"),
    ("worker.py", r"worker\.py"),
    ("starter.py", r"starter\.py"),
    ("codec server", r"codec_server\.py"),
    ("OpenBao", r"(^|/)bao "),
    ("PostgreSQL", r"postgres"),
    ("certbot", r"certbot"),
    ("node (TypeScript client, tsc)", r"(^|/)node |npm"),
    ("Docker", r"docker|containerd"),
    ("pytest (controller, nested runs)", r"pytest"),
    ("install (pip, uv, apt)", r"pip|uv |apt|dpkg"),
)


def kind_of(command: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, command):
            return kind
    return "other"


def run(command: list[str], interval: float) -> tuple[int, dict[int, tuple[str, float]], float]:
    """Runs `command`; returns its exit status, pid -> (command line, last CPU seen) and
    the CPU of all its descendants as the kernel counted it."""
    seen: dict[int, tuple[str, float]] = {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(command)  # the operator's own command
    while child.poll() is None:
        table = all_processes()
        for pid in descendants(child.pid, table) - {child.pid}:
            known = seen.get(pid)
            line = known[0] if known else command_line(pid) or ""
            seen[pid] = (line, table[pid][1])
        time.sleep(interval)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return child.returncode, seen, total


def report(seen: dict[int, tuple[str, float]], total: float) -> str:
    cpu: dict[str, float] = {}
    count: Counter[str] = Counter()
    for line, seconds in seen.values():
        cpu[kind_of(line)] = cpu.get(kind_of(line), 0.0) + seconds
        count[kind_of(line)] += 1
    sampled = sum(cpu.values())
    lines = [f"{'CPU s':>8}  {'processes':>9}  kind"]
    lines += [
        f"{cpu[kind]:8.1f}  {count[kind]:9d}  {kind}"
        for kind in sorted(cpu, key=lambda kind: -cpu[kind])
    ]
    lines.append(f"sampled {sampled:.0f} s of the command's {total:.0f} s of CPU")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("command", nargs="+", help="the command, after --")
    args = parser.parse_args(argv)
    status, seen, total = run(args.command, args.interval)
    print(report(seen, total), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
