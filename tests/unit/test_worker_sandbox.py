"""The sandbox's price: only workflow modules are re-executed per run, and compiled."""

from __future__ import annotations

import ast
import importlib
import os
import py_compile
import sys
from pathlib import Path

import pytest

from worker import (
    DISPATCHED,
    PASSED_THROUGH,
    PASSED_THROUGH_LIBRARIES,
    PASSED_THROUGH_STORIES,
    WORKFLOWS,
    stale_workflow_bytecode,
)
from workflows.dispatch import ProvisionMailTenant

ROOT = Path(__file__).resolve().parents[2]


def _module_path(name: str) -> Path:
    return ROOT / (name.replace(".", "/") + ".py")


def _sandboxed_imports(tree: ast.Module) -> set[str]:
    """Modules of ours imported at the top level, so outside imports_passed_through blocks."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in {"workflows", "activities"}}


@pytest.mark.parametrize("cls", [*WORKFLOWS, *DISPATCHED], ids=lambda cls: cls.__name__)
def test_a_workflow_module_imports_only_passed_through_modules_of_ours(cls: type) -> None:
    tree = ast.parse(_module_path(cls.__module__).read_text())
    not_shared = _sandboxed_imports(tree) - set(PASSED_THROUGH)
    assert not not_shared, (
        f"{cls.__module__} imports {sorted(not_shared)} outside imports_passed_through: "
        "the sandbox would re-execute them for every run; add them to worker.PASSED_THROUGH "
        "if they are deterministic, or import them passed through"
    )


@pytest.mark.parametrize("name", PASSED_THROUGH)
def test_a_passed_through_module_is_plain_data_and_stdlib(name: str) -> None:
    """Shared between runs, so it must hold no workflow code and reach nothing but the
    standard library, other shared modules and the SDK (workflows.policies needs its
    RetryPolicy, workflows.steps its workflow API)."""
    tree = ast.parse(_module_path(name).read_text())
    assert "workflow.defn" not in ast.unparse(tree), f"{name} defines a workflow"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            module = node.module
        elif isinstance(node, ast.Import):
            module = node.names[0].name
        else:
            continue
        top = module.split(".")[0]
        allowed = (
            top in sys.stdlib_module_names
            or top in PASSED_THROUGH_LIBRARIES
            # The SDK: the sandbox passes temporalio through always
            # (passthrough_modules_default).
            or top == "temporalio"
        )
        assert allowed or module in PASSED_THROUGH, (
            f"{name} imports {module}: a shared module may import only the standard "
            "library, temporalio, other shared modules and worker.PASSED_THROUGH_LIBRARIES"
        )


# What a passed-through story may import from the standard library: pure helpers, no
# clock, randomness, I/O or process state (the sandbox restricts those, but not in a
# passed-through module).
STORY_STDLIB = {"__future__", "asyncio", "collections.abc", "dataclasses", "typing"}
# Builtins a passed-through story must not call: I/O and code loading.
STORY_FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__"}


def _in_passed_through_block(tree: ast.Module) -> set[ast.AST]:
    """Import statements inside `with workflow.unsafe.imports_passed_through():`."""
    inside: set[ast.AST] = set()
    for node in tree.body:
        if isinstance(node, ast.With) and any(
            "imports_passed_through" in ast.unparse(item.context_expr) for item in node.items
        ):
            inside.update(node.body)
    return inside


def _in_functions(tree: ast.Module) -> set[ast.AST]:
    """Every node inside a function body: code that runs in a run, not at import."""
    inside: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(ast.walk(node))
    return inside


# The stories the task queue's workflow class imports inside a run (workflows/dispatch.py):
# such an import goes through the sandbox's importer, which executes the story afresh
# under its runtime restrictions unless it is passed through itself.
DISPATCHED_MODULES = {cls.__module__ for cls in DISPATCHED}


@pytest.mark.parametrize("name", PASSED_THROUGH_STORIES)
def test_a_passed_through_story_keeps_the_sandbox_rules_statically(name: str) -> None:
    """A passed-through story runs outside the sandbox's runtime restrictions, so it is
    held to static ones: no import that could reach a clock, randomness or I/O (the
    activities only by name, through activity_refs; another story only inside a run),
    no I/O builtin, no module state a run could change for the next one."""
    tree = ast.parse(_module_path(name).read_text())
    passed_through_block = _in_passed_through_block(tree)
    in_functions = _in_functions(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
        elif isinstance(node, ast.Import):
            module = node.names[0].name
        else:
            continue
        allowed = (
            module in STORY_STDLIB
            or module.split(".")[0] == "temporalio"
            or module in PASSED_THROUGH
            or (module == "workflows.activity_refs" and node in passed_through_block)
            or (module in DISPATCHED_MODULES and node in in_functions)
        )
        assert allowed, f"{name} imports {module}, which a passed-through story may not"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in STORY_FORBIDDEN_CALLS, f"{name} calls {node.func.id}()"
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) and node.value:
            assert not isinstance(
                node.value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp
            ), f"{name} keeps mutable module state: {ast.unparse(node)}"
    assert not any(isinstance(node, ast.Global) for node in ast.walk(tree)), (
        f"{name} rebinds module state from a function"
    )


def test_stale_workflow_bytecode_names_a_module_without_current_pyc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "bytecode_probe_workflow.py"
    source.write_text("class Probe:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    probe = importlib.import_module("bytecode_probe_workflow").Probe
    try:
        assert stale_workflow_bytecode([probe]) == [str(source)]
        py_compile.compile(str(source), doraise=True)
        assert stale_workflow_bytecode([probe]) == []
        later = source.stat().st_mtime + 10
        os.utime(source, (later, later))
        assert stale_workflow_bytecode([probe]) == [str(source)]
    finally:
        sys.modules.pop("bytecode_probe_workflow", None)


@pytest.mark.parametrize("name", PASSED_THROUGH)
def test_shared_contracts_keep_evaluated_annotations(name: str) -> None:
    """Every payload converted to a dataclass calls typing.get_type_hints on it; with
    `from __future__ import annotations` that evaluates each annotation string again
    each time (4-8x slower per call, measured in docs/PERFORMANCE.md)."""
    tree = ast.parse(_module_path(name).read_text())
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert not future, f"{name} postpones its annotations"


def test_the_purchase_workflow_class_holds_only_its_entry_points() -> None:
    """The SDK's default sandbox re-runs workflow.defn for every run (the worker's passes
    the class through, docs/PERFORMANCE.md change 10), which checks every member of the
    class against a runtime protocol: the steps live on workflows.provision.Purchase.
    Entry points: the run, the `status` query, ActivateMailDomain's `dns_published`
    signal (a signal handler must be on the workflow class)."""
    own = {name for name in vars(ProvisionMailTenant) if not name.startswith("__")}
    assert own == {"status", "run", "dns_published"}
