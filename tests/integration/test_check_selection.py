"""pytest itself, as `make check` runs it: the directory markers are applied before
`-m` selects (tests/conftest.py), and a selection of nothing fails."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import TESTS
from tests.unit.test_test_selection import FAST_DIRECTORIES, ROOT, check_marker_expression


def pytest_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        # The outer run's options (PYTEST_ADDOPTS="-v", say) would change what the
        # collection prints.
        env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
    )


def test_make_check_collects_every_module_that_needs_no_stack_and_no_other() -> None:
    collected = pytest_subprocess("--collect-only", "-q", "-m", check_marker_expression())
    assert collected.returncode == 0, collected.stdout + collected.stderr
    modules = {line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line}
    expected = {
        str(path.relative_to(ROOT))
        for directory in FAST_DIRECTORIES
        for path in (TESTS / directory).glob("test_*.py")
    }
    assert modules == expected


def test_an_empty_selection_fails() -> None:
    """pytest's exit status 5 survives the conftest's os._exit: `make check` cannot
    pass having run nothing."""
    result = pytest_subprocess("-q", "-m", "stack", "tests/unit/test_logs.py")
    assert result.returncode == 5, result.stdout + result.stderr
