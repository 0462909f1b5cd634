"""The places a purchase step lives in (docs/adding-a-step.md), checked for every step.

Read from the code itself: each `self.steps.run("name", Class.method, arg, POLICY)` in
workflows/provision.py is a step. For each one this test checks every place the recipe
names, and fails naming the place that is missing, so the recipe cannot drift from the
code and a half-added step cannot merge. The recipe's places, in its order:

1. the step in workflows/provision.py (with `self.undo.add` before it if it has an effect)
2. its timeout and retry options in workflows/policies.py
3. the activity, on its outside system's class in activities/ (reached through
   workflows/activity_refs.py)
4. its registration in worker.py `build_activities`
5. its name in workflows/contracts.py STEPS (forward steps; undo steps are named by
   their `self.undo.add`)
6. a scripted stand-in in tests/workflow/test_provision_workflow.py ScriptedWorld, and,
   on the happy path, a no-I/O double in bench (bench/run.py `our_activities`)
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import worker
from bench.fakes import BootingProvider
from bench.run import our_activities
from tests.workflow.test_provision_workflow import ScriptedWorld
from workflows import activity_refs, policies
from workflows.contracts import STEPS

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "docs" / "adding-a-step.md"


@dataclass(frozen=True)
class Step:
    name: str
    activity_class: str
    method: str
    policy: str


def provision_tree() -> ast.Module:
    return ast.parse((ROOT / "workflows" / "provision.py").read_text())


def steps_in_provision() -> list[Step]:
    found = []
    for node in ast.walk(provision_tree()):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run"
            and ast.unparse(node.func.value) == "self.steps"
        ):
            name, activity, _, options = node.args[:4]
            assert isinstance(name, ast.Constant) and isinstance(activity, ast.Attribute)
            found.append(
                Step(
                    str(name.value),
                    ast.unparse(activity.value),
                    activity.attr,
                    ast.unparse(options),
                )
            )
    return found


def undo_names() -> set[str]:
    return {
        str(node.args[0].value)
        for node in ast.walk(provision_tree())
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "self.undo.add"
        and isinstance(node.args[0], ast.Constant)
    }


def activity_name(fn: Any) -> str:
    # The SDK keeps an activity's definition on the function (temporalio.activity.defn).
    return str(fn.__temporal_activity_definition.name)


def registered_by_worker() -> set[str]:
    """Method names in build_activities' list (read from source: building it needs Vault)."""
    source = inspect.getsource(worker.build_activities)
    [listing] = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Yield)]
    return {n.attr for n in ast.walk(listing) if isinstance(n, ast.Attribute)}


STEP_LIST = steps_in_provision()
FORWARD = [s for s in STEP_LIST if s.name not in undo_names()]


def test_the_steps_are_found() -> None:
    assert {s.name for s in FORWARD} >= {"create_server", "store_credentials", "notify"}
    assert undo_names() >= {"delete_server", "remove_credentials", "release_claim"}


@pytest.mark.parametrize("step", STEP_LIST, ids=lambda s: f"{s.name}:{s.method}")
def test_each_step_has_every_place_of_the_recipe(step: Step) -> None:
    options = getattr(policies, step.policy, None)
    assert isinstance(options, dict), f"2. workflows/policies.py has no {step.policy}"
    assert "start_to_close_timeout" in options, f"2. {step.policy} needs a timeout"
    cls = getattr(activity_refs, step.activity_class, None)
    assert cls is not None, f"3. workflows/activity_refs.py does not export {step.activity_class}"
    name = activity_name(getattr(cls, step.method))
    assert step.method in registered_by_worker(), (
        f"4. worker.py build_activities does not register {step.activity_class}.{step.method}"
    )
    assert step.name in STEPS or step.name in undo_names(), (
        f"5. {step.name} is neither in workflows/contracts.py STEPS nor an undo step"
    )
    scripted = {activity_name(fn) for fn in ScriptedWorld().activities()}
    assert name in scripted, f"6. the workflow tests' ScriptedWorld has no {name!r}"
    if step in FORWARD:
        bench = {activity_name(fn) for fn in our_activities(BootingProvider(), heartbeat_poll=True)}
        assert name in bench, f"6. bench/run.py our_activities has no {name!r}"


def test_steps_lists_exactly_the_forward_steps() -> None:
    """STEPS is what the status query and the progress display show (their order is that
    of a happy run: test_status_query_lists_every_step_done)."""
    assert {"validate_input", *(s.name for s in FORWARD)} == set(STEPS)


def test_the_recipe_names_every_place_this_test_checks() -> None:
    recipe = RECIPE.read_text()
    for place in [
        "workflows/provision.py",
        "self.undo.add",
        "workflows/policies.py",
        "activities/",
        "workflows/activity_refs.py",
        "worker.py",
        "STEPS",
        "ScriptedWorld",
        "bench/run.py",
        "tests/workflow/test_step_recipe.py",
    ]:
        assert place in recipe, f"docs/adding-a-step.md does not mention {place}"
