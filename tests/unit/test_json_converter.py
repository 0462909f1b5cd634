"""runtime/json_converter.py writes and reads exactly what the SDK's default converter
does, for every dataclass of our contracts, only with the per-class work done once.

Each contract type is filled from its type hints (every optional field both set and
None), then encoded by both converters (the payloads must be byte-identical) and decoded
by both (the values must be equal, repr for repr, so 1 and 1.0 differ); the same for
payloads the SDK rejects or converts (a wrong scalar type, a float for an int, a
missing field, a list for an object): same value or same exception, message and cause.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import ipaddress
import json
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import temporalio.converter
from temporalio.api.common.v1 import Payload

import runtime.json_converter as json_converter
from runtime.codec import KeyRing, data_converter
from worker import PASSED_THROUGH

SDK = temporalio.converter.default().payload_converter
OURS = data_converter(KeyRing.generate("k1")).payload_converter
SDK_CONVERTERS = temporalio.converter.DefaultPayloadConverter()


def contract_types() -> list[type]:
    """Every dataclass defined in the modules the worker shares with its workflows."""
    found = []
    for name in PASSED_THROUGH:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == name
            ):
                found.append(value)
    return found


CONTRACTS = contract_types()


def sample(hint: Any, salt: str, none: bool) -> Any:
    """A value of `hint`; with `none`, every optional part None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return f"{salt}-é\u2028\"'"  # non-ASCII and characters JSON escapes
    if hint is bool:
        return True
    if hint is int:
        return 7
    if hint is float:
        return 2.5
    if hint is Any:
        return {"k": [1, 2.5, "x", None, True]}
    if hint in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        return ipaddress.ip_address("192.0.2.1" if hint is ipaddress.IPv4Address else "2001:db8::1")
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        if none and type(None) in args:
            return None
        return sample(options[0], salt, none)
    if origin is list:
        return [sample(args[0], f"{salt}{i}", none) for i in range(2)]
    if origin is dict:
        return {sample(args[0], f"{salt}k", none): sample(args[1], f"{salt}v", none)}
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        values = {f.name: sample(hints[f.name], f.name, none) for f in dataclasses.fields(hint)}
        return cast(Any, hint)(**values)
    raise AssertionError(f"no sample for {hint!r}: teach sample() this type")


def outcome(call: Callable[[], Any]) -> tuple[str, str]:
    """A call's value as repr, or its exception as type, message and causes."""
    try:
        return ("value", repr(call()))
    except Exception as err:
        chain, cause = [], err.__cause__
        while cause is not None:
            chain.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__
        return (type(err).__name__, f"{err} <- {' <- '.join(chain)}")


def decoded(converter: Any, payload: Payload, cls: type) -> tuple[str, str]:
    return outcome(lambda: converter.from_payloads([payload], [cls]))


def json_payload(data: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(data).encode())


def wrong_values(value: Any) -> list[tuple[str, Any]]:
    """JSON values of the wrong type for a place holding `value`, or of a type the SDK
    converts (a float for an int, a bool for an int)."""
    wrong: list[tuple[str, Any]] = [("null", None), ("a list", [value]), ("an object", {})]
    if isinstance(value, str):
        wrong.append(("a number", 5))
    if isinstance(value, bool):
        wrong.append(("a number", 1))
    elif isinstance(value, int):
        wrong += [("a float", 3.0), ("a bool", True), ("a string", "7")]
    if isinstance(value, float):
        wrong += [("an int", 3), ("a bool", False)]
    return wrong


def mangled(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Payload bodies the SDK rejects or converts, one change at a time: each field, the
    first item of each list and each object's values (nested dataclasses too)."""
    yield "empty object", {}
    yield "a list for the object", [document]
    yield "an unknown field", {**document, "unknown_field": 1}
    for name, value in document.items():
        for label, replacement in wrong_values(value):
            yield f"{name} as {label}", {**document, name: replacement}
        if isinstance(value, list) and value:
            for label, replacement in wrong_values(value[0]):
                yield f"{name}[0] as {label}", {**document, name: [replacement, *value[1:]]}
        if isinstance(value, dict):
            for key, item in value.items():
                for label, replacement in wrong_values(item):
                    yield (
                        f"{name}.{key} as {label}",
                        {**document, name: {**value, key: replacement}},
                    )
            for change, inner in mangled(value) if value else ():
                yield f"{name}: {change}", {**document, name: inner}


@pytest.mark.parametrize("none", [False, True], ids=["set", "optional-none"])
@pytest.mark.parametrize("cls", CONTRACTS, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_same_bytes_and_values_as_the_sdk(cls: type, none: bool) -> None:
    value = sample(cls, cls.__name__, none)
    sdk_out = outcome(lambda: SDK.to_payloads([value]))
    assert outcome(lambda: OURS.to_payloads([value])) == sdk_out
    if sdk_out[0] != "value":
        return  # not JSON-encodable (an address object): both refused it alike, above
    [payload] = SDK.to_payloads([value])
    assert outcome(lambda: OURS.from_payloads([payload], [cls])) == outcome(
        lambda: SDK.from_payloads([payload], [cls])
    )
    assert OURS.from_payloads([payload], [cls]) == [value]


@pytest.mark.parametrize("cls", CONTRACTS, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_same_answer_as_the_sdk_for_payloads_it_rejects_or_converts(cls: type) -> None:
    try:
        document = json.loads(json_converter.dumps(sample(cls, cls.__name__, False)))
    except TypeError:  # an address object JSON cannot hold (url_policy.NotifyTarget)
        document = json.loads(json_converter.dumps(sample(cls, cls.__name__, True)))
    for change, body in mangled(document):
        assert decoded(OURS, json_payload(body), cls) == decoded(SDK, json_payload(body), cls), (
            change
        )


def test_every_contract_type_is_covered() -> None:
    """The contracts the purchase passes between workflow and activities are all here
    (a new contracts module must be in worker.PASSED_THROUGH to be found)."""
    names = {cls.__name__ for cls in CONTRACTS}
    assert {"PurchaseRequest", "ServerSpec", "ProvisionResult", "Notification"} <= names
    assert len(CONTRACTS) >= 70


def test_type_hints_and_fields_are_read_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the converter: the SDK calls typing.get_type_hints and
    dataclasses.fields for every value it decodes and deep-copies with asdict for every
    value it encodes; here a class's hints are read once, and asdict is never used."""
    from workflows.contracts import DnsRecord, ProvisionResult

    json_converter._ENCODINGS.clear()
    json_converter._DECODINGS.clear()
    hints_read: list[Any] = []
    get_type_hints = typing.get_type_hints

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        hints_read.append(obj)
        return get_type_hints(obj, *args, **kwargs)

    def no_asdict(obj: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dataclasses.asdict called")

    monkeypatch.setattr(typing, "get_type_hints", counting)
    monkeypatch.setattr(dataclasses, "asdict", no_asdict)
    record = DnsRecord("mail", "A", 300, "192.0.2.1", "mail 300 IN A 192.0.2.1")
    result = ProvisionResult("p", "t", 1, "n", None, None, "u", "v", 1, False, [record] * 3)
    for _ in range(3):
        [payload] = OURS.to_payloads([result])
        assert OURS.from_payloads([payload], [ProvisionResult]) == [result]
    assert sorted(cls.__name__ for cls in hints_read) == ["DnsRecord", "ProvisionResult"]


def test_a_class_made_per_run_is_not_kept() -> None:
    """The sandbox re-creates the dataclasses of modules it does not pass through for
    every run: the per-class cache must let them go."""

    @dataclasses.dataclass
    class PerRun:
        name: str

    [payload] = OURS.to_payloads([PerRun("x")])
    assert OURS.from_payloads([payload], [PerRun]) == [PerRun("x")]
    assert PerRun in json_converter._ENCODINGS
    assert PerRun in json_converter._DECODINGS
    del PerRun
    gc.collect()
    for plans in (json_converter._ENCODINGS, json_converter._DECODINGS):
        assert not [cls for cls in plans.classes() if cls.__name__ == "PerRun"]
        assert not [key for key, (ref, _) in plans._plans.items() if ref() is None]


def test_a_serialization_context_costs_no_copy() -> None:
    """The SDK asks for a copy per serialization context for every payload sequence of
    every workflow task; none of our converters takes a context, so it is this one, and
    every instance shares the one set of converters."""
    context = temporalio.converter.WorkflowSerializationContext(namespace="n", workflow_id="w")
    first, second = (
        json_converter.ContractPayloadConverter(),
        json_converter.ContractPayloadConverter(),
    )
    assert first.with_context(context) is first
    assert first.converters is second.converters
    assert list(first.converters) == list(SDK_CONVERTERS.converters)


def test_the_converters_are_the_sdks_but_for_json() -> None:
    ours = json_converter.ContractPayloadConverter().converters
    for encoding, converter in SDK_CONVERTERS.converters.items():
        if encoding == b"json/plain":
            assert type(ours[encoding]) is type(converter)
            assert ours[encoding] is not converter
        else:
            assert ours[encoding] is converter
