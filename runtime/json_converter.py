"""The SDK's JSON payload converter with the dataclass work done once per class.

Every activity argument and result of ours is a dataclass, converted by the SDK's
`json/plain` converter: to JSON with `dataclasses.asdict` (a recursive deep copy) and
back with `value_to_type`, which calls `dataclasses.fields` and `typing.get_type_hints`
for every value and walks every field through its generic type dispatch. Inside the
workflow sandbox each `isinstance` of that code also runs the sandbox's Python wrapper
(it replaces the builtin while a workflow task runs). That conversion was the largest
share of what a purchase cost the worker more than a bare workflow of the same shape
(docs/PERFORMANCE.md, change 9).

This converter writes the same bytes and reads the same values, with per-class plans:

- encoding: a dataclass instance becomes the shallow dict of its fields; `json.dumps`
  (sorted keys, the SDK's separators) encodes the field values itself and calls back here
  for nested dataclasses, so the JSON is byte for byte the SDK's (asdict's deep copy
  changes nothing JSON can show). A list of dataclass values goes straight to the JSON
  converter: the binary and protobuf converters before it would each have declined them.
- decoding: a dataclass hint's fields and type hints come from its plan; a field takes a
  short cut where the SDK's answer is known without its dispatch (a `str`/`int`/`float`/
  `bool` value of exactly that type is returned as is; lists and `dict[str, ...]` of such
  values are copied; nested dataclasses use their own plan; `X | None` takes None);
  any other value, and any error, goes to the SDK's own `value_to_type`, so edge cases
  and error messages are the SDK's.

tests/unit/test_json_converter.py checks both directions against the SDK's default
converter for every dataclass of our contracts, and for payloads it rejects or converts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Self, TypeVar, cast

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.converter import (
    AdvancedJSONEncoder,
    CompositePayloadConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
    SerializationContext,
    WithSerializationContext,
    value_to_type,
)

Convert = Callable[[Any], Any]
_SCALARS = (str, int, float, bool)
_Unhandled = JSONTypeConverter.Unhandled


@dataclasses.dataclass(frozen=True)
class _Encoding:
    """How one dataclass is written: its field names (what asdict emits) and whether
    to_payloads may hand it straight to JSON (not bytes, a protobuf message or a
    RawValue, the only values the converters before JSON take)."""

    names: tuple[str, ...]
    direct_json: bool


@dataclasses.dataclass(frozen=True)
class _Decoding:
    """How one dataclass is read: (name, init, convert) per field, where convert(value)
    is value_to_type(the field's hint, value); None for a Mapping (the SDK tries the
    mapping branch before the dataclass one)."""

    fields: tuple[tuple[str, bool, Convert], ...] | None


P = TypeVar("P")


class _PerClass(Generic[P]):
    """A plan per class that does not keep the class alive: a dataclass defined in a
    module the sandbox re-imports for every run is a new class each run. Keyed by id,
    with the weak reference checked on lookup (an id may be reused once its class is
    gone) and the entry dropped when the class goes; a WeakKeyDictionary would make a
    weak reference for every lookup."""

    def __init__(self) -> None:
        self._plans: dict[int, tuple[weakref.ref[type], P]] = {}

    def get(self, cls: type) -> P | None:
        entry = self._plans.get(id(cls))
        if entry is None or entry[0]() is not cls:
            return None
        return entry[1]

    def put(self, cls: type, plan: P) -> None:
        key, plans = id(cls), self._plans

        def forget(ref: weakref.ref[type]) -> None:
            if plans.get(key, (None,))[0] is ref:
                del plans[key]

        plans[key] = (weakref.ref(cls, forget), plan)

    def __contains__(self, cls: type) -> bool:
        return self.get(cls) is not None

    def clear(self) -> None:
        self._plans.clear()

    def classes(self) -> list[type]:
        return [cls for ref, _ in list(self._plans.values()) if (cls := ref()) is not None]


_ENCODINGS: _PerClass[_Encoding] = _PerClass()
_DECODINGS: _PerClass[_Decoding] = _PerClass()


def _is_dataclass_class(cls: Any) -> bool:
    """What dataclasses.is_dataclass looks for, for a class, without `isinstance` (a
    generic alias, a union or an instance is not a `type`)."""
    return getattr(cls, "__dataclass_fields__", None) is not None and type(cls) is type


def _encoding(cls: type) -> _Encoding | None:
    if not _is_dataclass_class(cls):
        return None
    plan = _ENCODINGS.get(cls)
    if plan is None:
        plan = _Encoding(
            names=tuple(f.name for f in dataclasses.fields(cast(Any, cls))),
            direct_json=not issubclass(cls, (bytes, Message, RawValue)),
        )
        _ENCODINGS.put(cls, plan)
    return plan


def _decoding(cls: type) -> _Decoding | None:
    if not _is_dataclass_class(cls):
        return None
    plan = _DECODINGS.get(cls)
    if plan is None:
        if issubclass(cls, Mapping):
            plan = _Decoding(None)
        else:
            hints = typing.get_type_hints(cls)  # raises as the SDK's own call would
            plan = _Decoding(
                tuple(
                    (f.name, f.init, _field_converter(hints[f.name]))
                    for f in dataclasses.fields(cast(Any, cls))
                )
            )
        _DECODINGS.put(cls, plan)
    return plan


class _NotShortCut(Exception):
    """A short cut does not know this value; the SDK converts it."""


def _field_converter(hint: Any) -> Convert:
    """value_to_type(hint, value), through a short cut where there is one."""
    converters = [_CONTRACTS]
    fast = _short_cut(hint)

    def by_the_sdk(value: Any) -> Any:
        return value_to_type(hint, value, converters)

    if fast is None:
        return by_the_sdk
    short_cut: Convert = fast

    def short_cut_first(value: Any) -> Any:
        try:
            result = short_cut(value)
        except Exception:  # _NotShortCut, or an error the SDK raises its own way below
            result = _NotShortCut
        if result is _NotShortCut:
            # Outside the except block, so the SDK's error has no short cut in its context.
            return by_the_sdk(value)
        return result

    return short_cut_first


def _short_cut(hint: Any) -> Convert | None:
    """A converter that returns what value_to_type(hint, value) returns, for the values it
    knows, and raises for any other; None when `hint` has no short cut."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return lambda value: _exact(value, hint)
    if origin in (typing.Union, types.UnionType):
        others = [arg for arg in args if arg is not type(None)]
        # Only `X | None`: the SDK tries a union's types in order and may convert
        # (`int | float` turns 2.5 into 2), so other unions go the SDK's way.
        inner = _short_cut(others[0]) if len(args) == 2 and len(others) == 1 else None
        return None if inner is None else _or_none(inner)
    if origin is list and len(args) == 1:
        item = _short_cut(args[0])
        return None if item is None else _list_of(item)
    if origin is dict and len(args) == 2 and args[0] is str:
        # The SDK leaves Any values as they are.
        item = (lambda value: value) if args[1] is Any else _short_cut(args[1])
        return None if item is None else _str_dict_of(item)
    if _is_dataclass_class(hint):
        return lambda value: _nested(hint, value)
    return None


def _or_none(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


def _list_of(item: Convert) -> Convert:
    return lambda value: [item(v) for v in _exact(value, list)]


def _str_dict_of(item: Convert) -> Convert:
    return lambda value: {_exact(k, str): item(v) for k, v in _exact(value, dict).items()}


def _exact(value: Any, kind: type) -> Any:
    """`value` if it is exactly of `kind`: value_to_type returns such a value as it is."""
    if type(value) is not kind:
        raise _NotShortCut
    return value


def _nested(hint: type, value: Any) -> Any:
    """value_to_type calls the custom converters first, so for a dataclass hint its
    answer is ours."""
    result = _CONTRACTS.to_typed_value(hint, value)
    if result is _Unhandled:
        raise _NotShortCut
    return result


class ContractTypeConverter(JSONTypeConverter):
    """Dataclass hints: value_to_type's dataclass branch, with the class's plan."""

    def to_typed_value(self, hint: type, value: Any) -> Any:
        plan = _decoding(hint)
        if plan is None or plan.fields is None:
            return _Unhandled
        if type(value) is not dict:
            return value_to_type(hint, value)  # the SDK's own error (or dict subclass)
        init_values: dict[str, Any] = {}
        other_values: dict[str, Any] = {}
        for name, init, convert in plan.fields:
            if name in value:
                try:
                    converted = convert(value[name])
                except Exception as err:
                    raise TypeError(f"Failed converting field {name} on dataclass {hint}") from err
                (init_values if init else other_values)[name] = converted
        obj = hint(**init_values)
        # init=False fields are set after __init__, as the SDK does.
        for name, converted in other_values.items():
            object.__setattr__(obj, name, converted)
        return obj


_CONTRACTS = ContractTypeConverter()


class ContractJSONEncoder(AdvancedJSONEncoder):
    """A dataclass instance as the shallow dict of its fields; the rest as the SDK does."""

    def default(self, o: Any) -> Any:
        # type(o) is a dataclass class only for a dataclass instance, the one case where
        # the SDK calls asdict (a dataclass class itself has type `type`).
        plan = _encoding(type(o))
        if plan is not None:
            return {name: getattr(o, name) for name in plan.names}
        return super().default(o)


_JSON = JSONPlainPayloadConverter(encoder=ContractJSONEncoder, custom_type_converters=[_CONTRACTS])
_CONVERTERS: tuple[EncodingPayloadConverter, ...] = tuple(
    _JSON if isinstance(converter, JSONPlainPayloadConverter) else converter
    for converter in DefaultPayloadConverter.default_encoding_payload_converters
)


# None of these takes a serialization context (the SDK's own do not); checked here once.
_TAKES_CONTEXT = any(isinstance(c, WithSerializationContext) for c in _CONVERTERS)
_BY_ENCODING: Mapping[bytes, EncodingPayloadConverter] = types.MappingProxyType(
    {converter.encoding.encode(): converter for converter in _CONVERTERS}
)


class ContractPayloadConverter(CompositePayloadConverter):
    """The SDK's default converters, its `json/plain` one with the classes above.

    The SDK makes a new instance for every workflow task's data converter and asks it
    for a copy per serialization context (for each payload sequence it visits), so the
    converters are made once, above, and shared, and with no converter taking a
    context the copy is this instance (as CompositePayloadConverter would find out,
    with an isinstance per converter on every new instance)."""

    def __init__(self) -> None:
        self.converters = _BY_ENCODING

    def with_context(self, context: SerializationContext) -> Self:
        if _TAKES_CONTEXT:
            return super().with_context(context)
        return self

    def to_payloads(self, values: Sequence[Any]) -> list[Payload]:
        if all(_direct_json(value) for value in values):
            # JSONPlainPayloadConverter answers every value (or raises).
            return [cast(Payload, _JSON.to_payload(value)) for value in values]
        return super().to_payloads(values)


def _direct_json(value: Any) -> bool:
    plan = _encoding(type(value))
    return plan is not None and plan.direct_json


def dumps(value: Any) -> str:
    """The JSON this converter writes for `value` (for tests and tools)."""
    return json.dumps(value, cls=ContractJSONEncoder, separators=(",", ":"), sort_keys=True)
