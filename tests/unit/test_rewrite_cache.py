"""tests/rewrite_cache.py: the controller's warmed cache is one pytest itself reads.

If pytest changes the internals the warmer uses, this fails (the warmer itself only
says "not warmed" and the suite runs slower)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.assertion.rewrite import _read_pyc

from tests.rewrite_cache import cached_pyc, modules_to_rewrite, warm

MODULE = "def test_one():\n    x = 1\n    assert x == 2, 'rewritten'\n"


def test_warming_writes_what_pytest_reads_and_redoes_only_stale_modules(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    (tmp_path / "sub").mkdir()
    first, second = tmp_path / "test_first.py", tmp_path / "sub" / "conftest.py"
    first.write_text(MODULE)
    second.write_text("X = 1\n")
    (tmp_path / "helpers.py").write_text("Y = 2\n")  # not a test module: imported as is
    assert modules_to_rewrite(tmp_path) == [tmp_path / "sub" / "conftest.py", first]

    assert warm(pytestconfig, tmp_path, processes=1) == 2
    code = _read_pyc(first, cached_pyc(first))
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code, namespace)  # noqa: S102 - our own module, compiled by pytest's rewriter
    with pytest.raises(AssertionError, match=r"rewritten\nassert 1 == 2"):
        namespace["test_one"]()  # type: ignore[operator]
    assert not (tmp_path / "__pycache__" / "helpers.cpython-311.pyc").exists()

    assert warm(pytestconfig, tmp_path, processes=1) == 0  # nothing changed
    first.write_text(MODULE.replace("2", "3"))
    assert _read_pyc(first, cached_pyc(first)) is None  # stale by its source hash
    assert warm(pytestconfig, tmp_path, processes=1) == 1


def test_a_failing_warm_says_so_and_leaves_the_workers_to_rewrite(
    tmp_path: Path, pytestconfig: pytest.Config, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "test_broken.py").write_text("def test_(:\n")  # a syntax error
    assert warm(pytestconfig, tmp_path, processes=1) == 0
    assert "not warmed (SyntaxError" in capsys.readouterr().out
