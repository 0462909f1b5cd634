"""Shared fixtures: the Temporal time-skipping test server (one per session)."""

from __future__ import annotations

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
