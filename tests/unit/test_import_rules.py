"""The house's import rules (docs/ARCHITECTURE.md), checked on the source with ast.

Every Python module of the repository belongs to one room; a room may import only the
rooms below it. Production never reaches devstack, bench or tests, and workflow code
reaches the activities only through workflows/activity_refs.py, imported under
workflow.unsafe.imports_passed_through(). Imports inside functions and
importlib.import_module("...") calls count as well.
"""

from __future__ import annotations

import ast
import graphlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRECTORIES = (
    "workflows", "activities", "runtime", "deploy", "devstack", "bench", "tests",
)  # fmt: skip
PROGRAMS = ("worker", "starter", "codec_server")

# The rules the data shapes are checked by: on the contracts' floor with them.
CONTRACT_RULES = frozenset({"input_rules", "url_policy"})

# room -> the rooms it may import (besides itself), floor by floor from the bottom.
ALLOWED: dict[str, frozenset[str]] = {
    "contracts": frozenset(),
    "activities": frozenset({"contracts"}),
    "activity_refs": frozenset({"activities"}),
    "workflows": frozenset({"contracts", "activity_refs"}),
    "runtime": frozenset({"contracts", "workflows"}),
    "programs": frozenset({"contracts", "activities", "workflows", "runtime"}),
    "deploy": frozenset({"contracts", "activities", "runtime"}),
    "devstack": frozenset(
        {"contracts", "activities", "workflows", "runtime", "programs", "deploy"}
    ),
    "bench": frozenset(
        {"contracts", "activities", "workflows", "runtime", "programs", "deploy", "devstack"}
    ),
    "tests": frozenset(
        {
            "contracts", "activities", "activity_refs", "workflows", "runtime", "programs",
            "deploy", "devstack", "bench",
        }
    ),
}  # fmt: skip
PRODUCTION = frozenset(
    {"contracts", "activities", "activity_refs", "workflows", "runtime", "programs", "deploy"}
)


def room_of(module: str) -> str | None:
    """The room of a module of ours (dotted name), None for the stdlib and libraries."""
    top, _, rest = module.partition(".")
    first = rest.split(".")[0]
    if top == "workflows":
        if first.endswith("contracts") or first in CONTRACT_RULES:
            return "contracts"
        return "activity_refs" if first == "activity_refs" else "workflows"
    if top == "activities":
        return "activities"
    if top in PROGRAMS:
        return "programs"
    if top in ("runtime", "deploy", "devstack", "bench", "tests"):
        return top
    return None


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the dotted module imported
    passed_through: bool  # inside `with workflow.unsafe.imports_passed_through():`


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import a module makes, wherever it is written, with relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, passed_through: bool) -> None:
        if isinstance(node, ast.With | ast.AsyncWith):
            passed_through = passed_through or any(
                isinstance(item.context_expr, ast.Call)
                and isinstance(item.context_expr.func, ast.Attribute)
                and item.context_expr.func.attr == "imports_passed_through"
                for item in node.items
            )
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(node.lineno, alias.name, passed_through))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # `from pkg import submodule` imports the submodule.
                child = f"{base}.{alias.name}"
                target = child if is_module(child) else base
                found.append(Import(node.lineno, target, passed_through))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(node.lineno, node.args[0].value, passed_through))
        for child_node in ast.iter_child_nodes(node):
            visit(child_node, passed_through)

    visit(ast.parse(source), False)
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The rules a module's imports break, one line each."""
    room = room_of(module)
    if room is None:
        return [f"{module}: in no room (add it to room_of, tests/unit/test_import_rules.py)"]
    broken = []
    for imported in imports_of(source, module, is_package):
        target_room = room_of(imported.target)
        if target_room is None or target_room == room:
            continue
        where = f"{module}:{imported.line} imports {imported.target}"
        if target_room not in ALLOWED[room]:
            broken.append(f"{where}: {room} may not import {target_room}")
        elif room == "workflows" and target_room == "activity_refs" and not imported.passed_through:
            # Only workflow code runs in the sandbox; tests may reach the references freely.
            broken.append(f"{where}: outside workflow.unsafe.imports_passed_through()")
    return broken


def python_files() -> list[Path]:
    files = [ROOT / f"{name}.py" for name in PROGRAMS]
    for directory in SOURCE_DIRECTORIES:
        files += sorted((ROOT / directory).rglob("*.py"))
    return [path for path in files if "__pycache__" not in path.parts]


def test_the_rooms_have_floors() -> None:
    """The rules themselves have no cycle: every room sits above the rooms it imports."""
    floors = list(graphlib.TopologicalSorter(ALLOWED).static_order())
    assert set(floors) == set(ALLOWED)


def test_production_reaches_no_development_room() -> None:
    for room in PRODUCTION:
        assert not ALLOWED[room] & {"devstack", "bench", "tests"}, room


def test_every_module_keeps_the_import_rules() -> None:
    broken = [
        line
        for path in python_files()
        for line in violations(path.read_text(), module_name(path), path.name == "__init__.py")
    ]
    assert broken == []


def test_every_program_and_package_is_in_a_room() -> None:
    tops = {path.stem for path in ROOT.glob("*.py")} | {
        path.parent.name for path in ROOT.glob("*/__init__.py")
    }
    assert {top for top in tops if room_of(top) is None} == set()


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("worker", "import devstack.stack", "programs may not import devstack"),
        ("workflows.provision", "def f():\n    from bench import run", "may not import bench"),
        ("activities.vault", "import importlib\nimportlib.import_module('tests.helpers')", "tests"),
        ("deploy.vault_bootstrap", "from devstack.stack import Stack", "may not import devstack"),
        ("codec_server", "__import__('bench.run')", "programs may not import bench"),
        (
            "workflows.provision",
            "from activities.vault import VaultActivities",
            "workflows may not import activities",
        ),
        (
            "workflows.rotation",
            "from temporalio import workflow\n"
            "with workflow.unsafe.imports_passed_through():\n"
            "    from activities import mailu",
            "workflows may not import activities",
        ),
        (
            "workflows.provision",
            "from workflows.activity_refs import VaultActivities",
            "outside workflow.unsafe.imports_passed_through()",
        ),
        ("workflows.contracts", "from . import provision", "contracts may not import workflows"),
        ("activities.vault", "from ..workflows import provision", "may not import workflows"),
        ("activities.mailu", "from runtime.codec import KeyRing", "may not import runtime"),
    ],
)
def test_a_broken_rule_is_reported(module: str, source: str, expected: str) -> None:
    broken = violations(source, module)
    assert len(broken) == 1 and expected in broken[0], broken


def test_the_one_door_passes() -> None:
    source = (
        "from temporalio import workflow\n"
        "with workflow.unsafe.imports_passed_through():\n"
        "    from workflows.activity_refs import VaultActivities\n"
        "from workflows.contracts import AuditEvent\n"
    )
    assert violations(source, "workflows.provision") == []


def documented_rules() -> dict[str, frozenset[str]]:
    """The room table of docs/ARCHITECTURE.md, between its import-rules markers."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    found = re.search(r"<!-- import-rules:.*?-->(.*?)<!-- /import-rules -->", text, re.S)
    assert found, "docs/ARCHITECTURE.md lost its import-rules table"
    rules: dict[str, frozenset[str]] = {}
    for row in found.group(1).strip().splitlines()[2:]:
        room, _, may_import = (cell.strip() for cell in row.strip("|").split("|"))
        if may_import == "nothing of ours":
            rules[room] = frozenset()
        elif may_import == "every room":
            rules[room] = frozenset(ALLOWED) - {room}
        else:
            rules[room] = frozenset(name.strip() for name in may_import.split(","))
    return rules


def test_the_architecture_page_shows_these_rules() -> None:
    assert documented_rules() == ALLOWED
