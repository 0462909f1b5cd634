"""ChangeMailPlan's input decoding and the rules that refuse a change before anything
is touched (activities/plan_change.py cites Hetzner's change_type documentation)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from activities.plan_change import ChangeRefused, plan_change_decision
from activities.plans import DEFAULT_CATALOG
from activities.vps_provider import Server, ServerTypeInfo
from workflows.contracts import Plan
from workflows.plan_change_contracts import (
    InvalidPlanChangeRequest,
    PlanChangeRequest,
    plan_change_request_from_payloads,
    plan_change_workflow_id,
)

SERVER = Server(
    id=1,
    name="mail-t1",
    status="running",
    ipv4="192.0.2.1",
    dns_ptr="mail.example.com",
    labels={},
    ipv6="2001:db8::1",
    server_type="cx23",
    location="fsn1",
    disk_gb=40,
    image="debian-12",
)
EU = {"fsn1": (True, True), "nbg1": (True, True), "hel1": (True, True)}
CX33 = ServerTypeInfo("cx33", 80, "local", EU, deprecated=False)
BUSINESS = DEFAULT_CATALOG["business"]


def test_a_bigger_type_is_taken_with_its_disk() -> None:
    assert plan_change_decision(SERVER, "business", BUSINESS, CX33) is True


def test_same_disk_keeps_the_disk() -> None:
    same_disk = replace(CX33, disk_gb=40)
    assert plan_change_decision(SERVER, "business", BUSINESS, same_disk) is False


@pytest.mark.parametrize(
    ("server", "plan", "wanted", "error_type", "words"),
    [
        (replace(SERVER, server_type="cx33"), BUSINESS, CX33, "PlanUnchanged", "current type"),
        (replace(SERVER, status="off"), BUSINESS, CX33, "ServerBusy", "not running"),
        (replace(SERVER, status="migrating"), BUSINESS, CX33, "ServerBusy", "not running"),
        (replace(SERVER, location="ash"), BUSINESS, CX33, "PlanChangeImpossible", "cannot move"),
        (SERVER, replace(BUSINESS, ipv6=False), CX33, "PlanChangeImpossible", "addresses"),
        (SERVER, replace(BUSINESS, image="debian-13"), CX33, "PlanChangeImpossible", "keeps"),
        (
            SERVER,
            BUSINESS,
            replace(CX33, locations={"hel1": (True, True)}),
            "PlanChangeImpossible",
            "not sold in fsn1",
        ),
        (
            SERVER,
            BUSINESS,
            replace(CX33, locations={"fsn1": (False, True)}),
            "PlanChangeImpossible",
            "not sold in fsn1",
        ),
        (SERVER, BUSINESS, replace(CX33, deprecated=True), "PlanChangeImpossible", "deprecated"),
        (
            SERVER,
            BUSINESS,
            replace(CX33, locations={"fsn1": (True, False)}),
            "PlanChangeUnavailable",
            "out of stock",
        ),
        # The disk was upgraded to 80 GB by an earlier change: a 40 GB type cannot hold it.
        (
            replace(SERVER, server_type="cx33", disk_gb=80),
            DEFAULT_CATALOG["starter"],
            ServerTypeInfo("cx23", 40, "local", EU, deprecated=False),
            "PlanChangeImpossible",
            "cannot shrink",
        ),
    ],
)
def test_impossible_changes_are_refused_naming_the_rule(
    server: Server, plan: Plan, wanted: ServerTypeInfo, error_type: str, words: str
) -> None:
    with pytest.raises(ChangeRefused) as refused:
        plan_change_decision(server, "p", plan, wanted)
    assert refused.value.error_type == error_type
    assert refused.value.field == ("tenant_id" if error_type == "ServerBusy" else "plan")
    assert words in refused.value.rule


def test_another_storage_type_is_refused() -> None:
    network = replace(CX33, storage_type="network")
    with pytest.raises(ChangeRefused) as refused:
        plan_change_decision(SERVER, "business", BUSINESS, network, storage_type="local")
    assert "storage type" in refused.value.rule


def test_a_kept_disk_lets_the_plan_go_back_down() -> None:
    kept = replace(SERVER, server_type="cx33", disk_gb=40)
    starter = ServerTypeInfo("cx23", 40, "local", EU, deprecated=False)
    assert plan_change_decision(kept, "starter", DEFAULT_CATALOG["starter"], starter) is False


def payload(value: object) -> list[tuple[bytes, bytes]]:
    return [(b"json/plain", json.dumps(value).encode())]


GOOD = {"tenant_id": "acme", "request_id": "r-1", "plan": "business", "requested_by": "ops"}


def test_a_good_request_decodes_under_its_own_workflow_id() -> None:
    request = plan_change_request_from_payloads(
        payload(GOOD), plan_change_workflow_id("acme", "r-1")
    )
    assert request == PlanChangeRequest("acme", "r-1", "business", "ops")
    assert plan_change_workflow_id("acme", "r-1") == "change-plan-acme-r-1"


@pytest.mark.parametrize(
    ("raw", "workflow_id", "field"),
    [
        ([1, 2], "change-plan-acme-r-1", "(input)"),
        ({**GOOD, "server_id": 7}, "change-plan-acme-r-1", "server_id"),
        ({**GOOD, "tenant_id": "Acme!"}, "change-plan-acme-r-1", "tenant_id"),
        ({**GOOD, "request_id": "-x"}, "change-plan-acme--x", "request_id"),
        ({**GOOD, "plan": "../x"}, "change-plan-acme-r-1", "plan"),
        ({**GOOD, "requested_by": "a\nb"}, "change-plan-acme-r-1", "requested_by"),
        ({**GOOD, "requested_by": 3}, "change-plan-acme-r-1", "requested_by"),
        ({k: v for k, v in GOOD.items() if k != "plan"}, "change-plan-acme-r-1", "plan"),
        (GOOD, "change-plan-other-r-1", "request_id"),
    ],
)
def test_hostile_input_is_refused_naming_the_field(
    raw: object, workflow_id: str, field: str
) -> None:
    with pytest.raises(InvalidPlanChangeRequest) as refused:
        plan_change_request_from_payloads(payload(raw), workflow_id)
    assert refused.value.field == field


def test_oversized_and_extra_arguments_are_refused() -> None:
    huge = {**GOOD, "requested_by": "x" * 20_000}
    with pytest.raises(InvalidPlanChangeRequest):
        plan_change_request_from_payloads(payload(huge), "change-plan-acme-r-1")
    with pytest.raises(InvalidPlanChangeRequest) as two:
        plan_change_request_from_payloads(payload(GOOD) * 2, "change-plan-acme-r-1")
    assert two.value.field == "(input)"
