"""Every workflow reads its start argument by the same rules (workflows/input_rules.py),
each refusing with its own error type: the same bad input names the same field and rule
whichever workflow it is sent to."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from workflows.activation_contracts import (
    InvalidActivationRequest,
    activation_request_from_payloads,
)
from workflows.contracts import PurchaseRequest
from workflows.deprovision_contracts import (
    InvalidDeprovisionRequest,
    deprovision_request_from_payloads,
)
from workflows.input_rules import InvalidPurchaseRequest, purchase_input_from_payloads
from workflows.plan_change_contracts import (
    InvalidPlanChangeRequest,
    plan_change_request_from_payloads,
)
from workflows.rotation_contracts import InvalidRotationRequest, rotation_request_from_payloads

GOOD: dict[str, Any] = {
    "purchase_id": "p-1",
    "request_id": "r-1",
    "tenant_id": "acme",
    "domain": "acme.example",
    "plan": "starter",
    "requested_by": "shop",
}
Payloads = list[tuple[bytes, bytes]]


def _purchase(payloads: Payloads) -> Any:
    return PurchaseRequest.parse(purchase_input_from_payloads(payloads))


# name -> (its decoder, its error type, the fields its argument holds)
WORKFLOWS: dict[str, tuple[Callable[[Payloads], Any], type[ValueError], tuple[str, ...]]] = {
    "purchase": (
        _purchase,
        InvalidPurchaseRequest,
        ("purchase_id", "tenant_id", "domain", "plan", "requested_by"),
    ),
    "plan_change": (
        lambda p: plan_change_request_from_payloads(p, "change-plan-acme-r-1"),
        InvalidPlanChangeRequest,
        ("tenant_id", "request_id", "plan", "requested_by"),
    ),
    "deprovision": (
        deprovision_request_from_payloads,
        InvalidDeprovisionRequest,
        ("tenant_id", "requested_by"),
    ),
    "rotation": (rotation_request_from_payloads, InvalidRotationRequest, ("tenant_id",)),
    "activation": (activation_request_from_payloads, InvalidActivationRequest, ("tenant_id",)),
}


def _json(value: Any) -> Payloads:
    return [(b"json/plain", json.dumps(value).encode())]


def _argument(fields: tuple[str, ...], **changes: Any) -> dict[str, Any]:
    argument = {name: GOOD[name] for name in fields}
    argument.update(changes)
    return {k: v for k, v in argument.items() if v is not ...}


def _cases(fields: tuple[str, ...]) -> list[tuple[Payloads, str, str]]:
    """(payloads, field, rule) every workflow must refuse alike."""
    cases = [
        (_json(["acme"]), "(input)", "must be a JSON object, got an array"),
        (_json(_argument(fields, extra="x")), "extra", "is not a known field"),
        (_json(_argument(fields, tenant_id=...)), "tenant_id", "is required"),
        (_json(_argument(fields, tenant_id=None)), "tenant_id", "is required"),
        (_json(_argument(fields, tenant_id=7)), "tenant_id", "must be a string"),
        (
            _json(_argument(fields, tenant_id="Acme")),
            "tenant_id",
            "must be 1-63 characters of [a-z0-9-], starting and ending with [a-z0-9]",
        ),
        ([(b"json/plain", b"{")], "(input)", "is not valid JSON"),
        ([(b"binary/plain", b"x")], "(input)", "must be JSON (encoding json/plain)"),
    ]
    if "requested_by" in fields:
        cases += [
            (_json(_argument(fields, requested_by=" ")), "requested_by", "not blank"),
            (
                _json(_argument(fields, requested_by="a\nb")),
                "requested_by",
                "must not contain control characters",
            ),
        ]
    if "plan" in fields:
        cases.append(
            (_json(_argument(fields, plan="Big!")), "plan", "must match [a-z0-9][a-z0-9_-]{0,62}")
        )
    return cases


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_the_same_bad_argument_is_refused_alike_by_every_workflow(workflow: str) -> None:
    decode, error, fields = WORKFLOWS[workflow]
    decode(_json(_argument(fields)))  # the good argument passes
    for payloads, field_name, rule in _cases(fields):
        with pytest.raises(error) as refused:
            decode(payloads)
        refusal: Any = refused.value  # each error type carries .field and .rule
        assert refusal.field == field_name, payloads
        assert rule in refusal.rule, payloads


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_not_exactly_one_argument_is_refused_in_the_workflows_own_terms(workflow: str) -> None:
    decode, error, fields = WORKFLOWS[workflow]
    with pytest.raises(error, match=r"must be exactly one argument.*\(got 2\)"):
        decode(_json(_argument(fields)) * 2)
