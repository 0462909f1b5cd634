"""`make check` selects the tests that need no stack by marker, and the markers come from
the directory a test lives in (tests/conftest.py), so the selection cannot silently
lose tests, gain stack tests, or be empty."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import MARKERS_BY_DIRECTORY, TESTS, markers_for

ROOT = TESTS.parent
FAST_DIRECTORIES = ("unit", "workflow", "replay")


def check_marker_expression() -> str:
    """The `-m` expression `make check` passes to pytest, read from the Makefile."""
    found = re.search(r"^CHECK_TESTS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "Makefile has no CHECK_TESTS line"
    return found.group(1).strip()


def pytest_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_every_test_directory_is_classified() -> None:
    directories = {
        path.name for path in TESTS.iterdir() if path.is_dir() and any(path.glob("test_*.py"))
    }
    assert directories == set(MARKERS_BY_DIRECTORY)


@pytest.mark.parametrize(
    ("relative", "markers"),
    [
        ("unit/test_x.py", ()),
        ("workflow/test_x.py", ()),
        ("replay/test_x.py", ()),
        ("integration/test_x.py", ("integration",)),
        ("devstack/test_x.py", ("stack",)),
        ("e2e/test_x.py", ("stack",)),
    ],
)
def test_markers_come_from_the_directory(relative: str, markers: tuple[str, ...]) -> None:
    assert markers_for(TESTS / relative) == markers


@pytest.mark.parametrize("relative", ["test_loose.py", "newplace/test_x.py"])
def test_a_test_outside_the_known_directories_stops_the_run(relative: str) -> None:
    with pytest.raises(pytest.UsageError, match="MARKERS_BY_DIRECTORY"):
        markers_for(TESTS / relative)


def test_make_check_selects_exactly_the_tests_that_need_no_stack() -> None:
    collected = pytest_subprocess("--collect-only", "-q", "-m", check_marker_expression())
    assert collected.returncode == 0, collected.stdout + collected.stderr
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    modules = {line.split("::")[0] for line in ids}
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
