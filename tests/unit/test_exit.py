"""runtime/exit.py: a program's exit code and its buffered output survive skipping teardown."""

from __future__ import annotations

import os
import subprocess
import sys

from devstack.stack import ROOT


def test_exit_without_teardown_keeps_the_code_and_flushes_piped_output() -> None:
    program = (
        "import sys; from runtime.exit import exit_without_teardown; "
        "print('result on stdout', end=''); print('progress', end='', file=sys.stderr); "
        "exit_without_teardown(3)"
    )
    # Buffered as in production (a pipe, no PYTHONUNBUFFERED): unflushed output would be lost.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "result on stdout", "progress")
