"""The JSON Schema the TypeScript package generates its types from (issue 21).

clients/typescript/schema/contracts.json is exported from the Python dataclasses by
`python -m workflows.contract_schema`; the TypeScript build refuses generated types that
differ from it (clients/typescript/scripts/generate-contracts.mjs --check, exercised in
tests/e2e/test_typescript_client.py). Here, without npm: the committed schema is exactly
what the contracts produce today, and the exporter says every field type faithfully.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from temporalio.converter import DataConverter

from workflows import contract_schema
from workflows.contract_schema import SCHEMA_PATH, UnsupportedContractType
from workflows.contracts import OneOf, ProvisionStatus, StepProgress


def test_the_committed_schema_is_what_the_python_contracts_export_now() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == contract_schema.render(), (
        "clients/typescript/schema/contracts.json is stale: run "
        "`python -m workflows.contract_schema`, then `npm run generate` in clients/typescript"
    )


def test_check_mode_fails_on_a_stale_file_and_passes_on_a_fresh_one(tmp_path: Path) -> None:
    stale = tmp_path / "contracts.json"
    stale.write_text(contract_schema.render().replace('"zone_line"', '"zone_lines"'))
    assert contract_schema.main(["--check", "--path", str(stale)]) == 1
    assert contract_schema.main(["--path", str(stale)]) == 0
    assert contract_schema.main(["--check", "--path", str(stale)]) == 0


def test_every_field_of_every_exported_contract_is_in_the_schema() -> None:
    defs = contract_schema.contract_schema()["$defs"]
    for root in contract_schema.INPUTS + contract_schema.OUTPUTS:
        names = [f.name for f in dataclasses.fields(root)]
        assert list(defs[root.__name__]["properties"]) == names
        assert defs[root.__name__]["additionalProperties"] is False


@dataclass(frozen=True)
class _Inner:
    """An inner record."""

    n: int


@dataclass(frozen=True)
class _Request:
    name: str
    kind: Annotated[str, OneOf("a", "b")]
    mode: Literal["x", "y"]
    ratio: float
    flag: bool
    maybe: str | None = None
    inner: list[_Inner] = field(default_factory=list)
    pair: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Result:
    inner: _Inner
    note: str | None = None


def test_types_optionality_and_required_fields_by_direction() -> None:
    defs = contract_schema.contract_schema(inputs=(_Request,), outputs=())["$defs"]
    props = defs["_Request"]["properties"]
    assert props["name"] == {"type": "string"}
    assert props["kind"] == {"type": "string", "enum": ["a", "b"]}
    assert props["mode"] == {"enum": ["x", "y"]}
    assert props["ratio"] == {"type": "number"}
    assert props["flag"] == {"type": "boolean"}
    assert props["maybe"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert props["inner"] == {"type": "array", "items": {"$ref": "#/$defs/_Inner"}}
    assert props["pair"] == {"type": "array", "items": {"type": "string"}}
    # A client may leave out what has a default...
    assert defs["_Request"]["required"] == ["name", "kind", "mode", "ratio", "flag"]
    assert defs["_Inner"] == {
        "type": "object",
        "description": "An inner record.",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    # ...but the worker writes every field of what it returns, defaults included.
    out = contract_schema.contract_schema(inputs=(), outputs=(_Result,))["$defs"]
    assert out["_Result"]["required"] == ["inner", "note"]


def test_a_type_the_schema_cannot_say_is_refused_not_guessed() -> None:
    @dataclass
    class Loose:
        details: dict[str, Any]

    with pytest.raises(UnsupportedContractType, match=r"Loose\.details"):
        contract_schema.contract_schema(inputs=(Loose,), outputs=())

    with pytest.raises(UnsupportedContractType, match="both as input and as output"):
        contract_schema.contract_schema(inputs=(_Inner,), outputs=(_Result,))


async def test_the_choices_annotation_leaves_the_temporal_payloads_plain_strings() -> None:
    """OneOf is for the schema only: Temporal's converter still decodes a plain str (so a
    newer worker's new state does not break an older client's decoding)."""
    status = ProvisionStatus(
        purchase_id="p-1",
        tenant_id="acme",
        state="running",
        current_step="notify",
        steps=[StepProgress(name="notify", state="some-future-state", started_at="t")],
    )
    converter = DataConverter.default
    payloads = await converter.encode([status])
    assert json.loads(payloads[0].data)["steps"][0]["state"] == "some-future-state"
    [decoded] = await converter.decode(payloads, [ProvisionStatus])
    assert decoded == status
