"""Shared fixtures (the Temporal time-skipping test server, one per session) and the
markers every test gets from the directory it lives in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from devstack.stack import tool
from runtime.exit import exit_without_teardown
from tests.rewrite_cache import warm
from tests.scheduling import SLOW_DIRECTORIES, LongModulesApart

TESTS = Path(__file__).parent

# What each test directory needs beyond this process. `make check` runs the tests that
# need nothing (`-m "not stack and not integration"`); the marker comes from the
# directory, so a new test module is classified by where it is put and cannot forget
# it, and a new directory must be added here before any test in it runs.
MARKERS_BY_DIRECTORY: dict[str, tuple[str, ...]] = {
    "unit": (),
    "workflow": (),  # the time-skipping test server, started in this process's session
    "replay": (),
    "integration": ("integration",),  # real PostgreSQL, OpenBao, Compose, cloud-init, ...
    "devstack": ("stack",),  # the local cloud and its SSH/SMTP servers
    "e2e": ("stack",),  # the whole local stack
}


def markers_for(path: Path) -> tuple[str, ...]:
    """The markers of a test module, from the directory under tests/ that holds it."""
    parts = path.relative_to(TESTS).parts
    if len(parts) < 2 or parts[0] not in MARKERS_BY_DIRECTORY:
        raise pytest.UsageError(
            f"{path}: tests live in one of tests/{{{','.join(MARKERS_BY_DIRECTORY)}}}/ "
            "(a new directory needs its entry in MARKERS_BY_DIRECTORY, tests/conftest.py)"
        )
    return MARKERS_BY_DIRECTORY[parts[0]]


# `make test` runs modules on parallel workers (pytest-xdist, --dist loadfile), handing
# them out in collection order, the longest first, so that no worker starts one of them
# when the others are done (tests/scheduling.py keeps two long ones off one worker).
# Only the order changes (each module stays whole, on one worker, its tests in file
# order). The longest, by their time on a worker in a fresh-clone `make test -v` (the
# first of each worker's includes its stack's start), 220 s down to 75 s; then the other
# directories that need a stack or outside programs; the rest (unit, workflow, replay)
# are many short modules that fill the gaps.
LONGEST_MODULES = (
    "e2e/test_typescript_client.py",
    "e2e/test_purchase_end_to_end.py",
    "e2e/test_faults_small.py",
    "e2e/test_faults_rotation_activation.py",
    "e2e/test_key_rotation.py",
    "e2e/test_activation.py",
    "e2e/test_plan_change.py",
    "e2e/test_rotation.py",
    "e2e/test_hostile_starts.py",
    "integration/test_docker_relay.py",
    "e2e/test_reconciler.py",
    "e2e/test_deprovision.py",
)


def _run_order(item: pytest.Item) -> tuple[int, int]:
    relative = item.path.relative_to(TESTS).as_posix()
    if relative in LONGEST_MODULES:
        return (0, LONGEST_MODULES.index(relative))
    directory = relative.split("/", 1)[0]
    if directory in SLOW_DIRECTORIES:
        return (1, SLOW_DIRECTORIES.index(directory))
    return (2, 0)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LongModulesApart | None:
    if config.getoption("dist") == "loadfile":
        return LongModulesApart(config, log)
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in markers_for(item.path):
            item.add_marker(name)
    items.sort(key=_run_order)  # stable: modules and their tests keep their own order


@asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A test server of the test's own (0.13 s to start here), not one per session.

    The Java test server counts locks on time skipping, and a lock that is never given
    back stops its clock for every later test: the server takes one for each workflow
    task and activity task it schedules (TestWorkflowMutableStateImpl's
    `ctx.lockTimer(...)`, temporalio/sdk-java temporal-test-server), and the SDK gives
    one up for each `handle.result()` and takes it back after (temporalio 1.35,
    temporalio/testing/_workflow.py, `time_skipping_unlocked`). On a shared server,
    first the plan change module's cancel tests left it locked (its later modules'
    timers ran in real time), then a `make test` beside the bench hung for 15 minutes
    in test_starter_activate_dns_published_starts_over_after_giving_up with no task
    pending anywhere on the server: one lock too many, left by an earlier test; a
    single UnlockTimeSkipping call set it going again. A server per test keeps what
    one test leaves behind out of every other test.
    """
    async with time_skipping_server() as env:
        yield env


def pytest_configure(config: pytest.Config) -> None:
    """In pytest-xdist's controller, before its workers start and each collects every
    module: their assertion-rewritten bytecode, written once (tests/rewrite_cache.py)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        warm(config, Path(__file__).parent)


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter teardown, keeping pytest's exit status.

    The Temporal client's Rust threads can abort the interpreter while it finalizes
    (temporalio/sdk-python#300): a green run would then exit with SIGABRT. Every
    fixture has stopped its processes by now, and the report is written.
    """
    exit_without_teardown(_exit_status)
