"""The worker's runner leaves out the sandbox's context question only for a converter
that converts the same under every serialization context (runtime/workflow_runner.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    ExternalStorage,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from runtime.codec import KeyRing, UnknownKeyGrace, data_converter
from runtime.workflow_runner import ContextFreeSandboxRunner, context_free
from worker import workflow_runner


class ContextCodec(PayloadCodec, WithSerializationContext):
    """A codec that keys its work on the context (as a per-workflow key would)."""

    def __init__(self, context: SerializationContext | None = None) -> None:
        self.context = context

    def with_context(self, context: SerializationContext) -> ContextCodec:
        return ContextCodec(context)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


@pytest.mark.parametrize(
    "converter",
    [
        data_converter(KeyRing.generate("k1")),
        # The worker's own settings.
        data_converter(
            KeyRing.generate("k1"),
            mark_undecodable=True,
            unknown_key_grace=UnknownKeyGrace(60),
            require_encrypted=True,
        ),
        DataConverter.default,
    ],
    ids=["ours", "the worker's", "SDK default"],
)
def test_our_converters_take_no_context_and_get_the_context_free_runner(
    converter: DataConverter,
) -> None:
    assert context_free(converter)
    runner = workflow_runner(converter)
    assert type(runner) is ContextFreeSandboxRunner
    # Otherwise the same sandbox: restrictions and passed-through modules.
    assert runner.restrictions == workflow_runner().restrictions


def test_a_converter_that_takes_a_context_keeps_the_sdk_sandbox() -> None:
    converter = dataclasses.replace(DataConverter.default, payload_codec=ContextCodec())
    assert not context_free(converter)
    assert type(workflow_runner(converter)) is SandboxedWorkflowRunner


def test_a_converter_with_external_storage_keeps_the_sdk_sandbox() -> None:
    storage = cast(ExternalStorage, cast(Any, object()))  # its target is asked for
    converter = dataclasses.replace(data_converter(KeyRing.generate("k1")))
    object.__setattr__(converter, "external_storage", storage)
    assert not context_free(converter)
    assert type(workflow_runner(converter)) is SandboxedWorkflowRunner


def test_without_a_converter_the_runner_is_the_sdk_sandbox() -> None:
    assert type(workflow_runner()) is SandboxedWorkflowRunner


def test_the_wrapped_instance_forwards_every_method_the_sdk_defines() -> None:
    """_ContextFreeInstance delegates by hand: a method a later SDK adds to
    WorkflowInstance (abstract or with a default) must be forwarded too, or the
    worker would silently get the default instead of the sandbox's answer. This
    fails on such an upgrade, naming the method."""
    from temporalio.worker import WorkflowInstance

    from runtime.workflow_runner import _ContextFreeInstance

    sdk_methods = {
        name
        for name, value in vars(WorkflowInstance).items()
        if callable(value) and not name.startswith("_")
    }
    forwarded = {name for name in vars(_ContextFreeInstance) if not name.startswith("_")}
    assert sdk_methods == forwarded, sorted(sdk_methods ^ forwarded)
