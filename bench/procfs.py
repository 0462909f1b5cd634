"""CPU time and parentage of processes, read from /proc (Linux), for the bench's tables."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def process_stat(pid: int | str) -> tuple[int, float]:
    """(parent pid, CPU seconds: user + system) of one process; OSError once it is gone."""
    # The command name, in parentheses, may hold spaces: split after its last ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def all_processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process still there."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = process_stat(entry.name)
            except OSError:
                continue
    return found


def descendants(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    """`root` and every process of `table` (all_processes()) whose parent chain reaches it."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def command_line(pid: int) -> str | None:
    """The process's command line, arguments joined by spaces; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
