"""README.md's table of the tests that skip without root or a tool names every test
module that can reach tests/helpers.py `unavailable` (directly, through a helper such as
`knot_serving` or `tool`, or through a fixture), and no other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from devstack.stack import ROOT

TESTS = ROOT / "tests"
# The helper itself and its own test are not tests that skip.
NOT_SKIPPING = {TESTS / "helpers.py", TESTS / "unit" / "test_unavailable.py"}


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _names_used(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The names a function reads or calls, and its parameters (pytest fixtures)."""
    used = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
    arguments = function.args
    return used | {a.arg for a in [*arguments.args, *arguments.kwonlyargs]}


def _imported(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """local name -> (module, name) of each `from tests... import name`."""
    return {
        (alias.asname or alias.name): (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests")
        for alias in node.names
    }


def skipping_test_modules() -> set[Path]:
    """Test modules with a test that can reach `unavailable`: through a function of its
    own module (a helper or a fixture it takes) or one imported from another tests/
    module, followed to a fixed point."""
    trees = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): (path, ast.parse(path.read_text()))
        for path in TESTS.rglob("*.py")
        if path not in NOT_SKIPPING
    }
    # Each function once, as (its module.name, what it can reach by name): walking every
    # tree again on each round of the fixed point took seconds.
    functions = [
        (
            (module, function.name),
            {
                reached
                for name in _names_used(function)
                for reached in ((module, name), imported.get(name))
                if reached is not None
            },
        )
        for module, (_, tree) in trees.items()
        for imported in [_imported(tree)]
        for function in _functions(tree)
    ]
    skipping: set[tuple[str, str]] = {("tests.helpers", "unavailable")}
    while True:
        found = skipping | {key for key, reaches in functions if not reaches.isdisjoint(skipping)}
        if found == skipping:
            break
        skipping = found
    return {
        path
        for module, (path, _) in trees.items()
        if path.name.startswith("test_")
        and any(m == module and name.startswith("test_") for m, name in skipping)
    }


def readme_skip_table() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("tests skip, with their reason")
    return readme[start : readme.index("\n## ", start)]


def test_the_readme_names_every_module_whose_tests_can_skip_and_no_other() -> None:
    named = {
        name
        for where, name in re.findall(r"([\w/]*?)(test_\w+\.py)", readme_skip_table())
        # devstack/test_tools.py installs the tools; this module is named as the check.
        if not where.startswith("devstack") and name != Path(__file__).name
    }
    can_skip = {path.name for path in skipping_test_modules()}
    assert can_skip, "the scan found no skipping test: it would pass on anything"
    assert named == can_skip
