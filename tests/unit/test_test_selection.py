"""`make check` selects the tests that need no stack by marker, and the markers come from
the directory a test lives in (tests/conftest.py), so the selection cannot silently
lose tests or gain stack tests. (pytest itself running that selection, and failing an
empty one: tests/integration/test_check_selection.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression  # how pytest evaluates `-m`

from tests.conftest import MARKERS_BY_DIRECTORY, TESTS, markers_for

ROOT = TESTS.parent
FAST_DIRECTORIES = ("unit", "workflow", "replay")


def check_marker_expression() -> str:
    """The `-m` expression `make check` passes to pytest, read from the Makefile."""
    found = re.search(r"^CHECK_TESTS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "Makefile has no CHECK_TESTS line"
    return found.group(1).strip()


def selected_by_check(path: Path) -> bool:
    markers = markers_for(path)

    def has_marker(name: str, /, **_: str | int | bool | None) -> bool:
        return name in markers

    return Expression.compile(check_marker_expression()).evaluate(has_marker)


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
    modules = sorted(TESTS.glob("*/test_*.py"))
    selected = {path.parent.name for path in modules if selected_by_check(path)}
    left_out = {path.parent.name for path in modules if not selected_by_check(path)}
    assert selected == set(FAST_DIRECTORIES)
    assert left_out == set(MARKERS_BY_DIRECTORY) - set(FAST_DIRECTORIES)
