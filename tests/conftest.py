"""Shared fixtures: the Temporal time-skipping test server (one per session)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from devstack.stack import tool


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=tool("temporal-test-server")
    )
    try:
        yield env
    finally:
        await env.shutdown()


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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
