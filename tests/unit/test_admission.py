"""admit_purchase: the plan and the notify URL are checked before the tenant is claimed."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.admission import AdmissionActivities
from activities.notify import IpAddress, NotifyPolicy
from activities.plans import DEFAULT_CATALOG
from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import Admission, AdmissionRequest
from workflows.input_rules import InvalidPurchaseRequest

ROOT = Path(__file__).resolve().parents[2]


class RecordingClaims:
    """Takes every claim it is asked for (the real one starts a TenantClaim workflow)."""

    def __init__(self) -> None:
        self.taken: list[TenantClaimRequest] = []

    async def take(self, request: TenantClaimRequest) -> str:
        self.taken.append(request)
        return f"run-of-{request.holder}"


async def public_dns(host: str, port: int) -> list[IpAddress]:
    """A DNS stand-in: shop.example is public, anything else resolves to loopback."""
    return [ipaddress.ip_address("93.184.216.34" if host == "shop.example" else "127.0.0.1")]


def admission(claims: RecordingClaims) -> AdmissionActivities:
    policy = NotifyPolicy(allowed_hosts=frozenset({"shop.example", "inside.example"}))
    return AdmissionActivities(DEFAULT_CATALOG, policy, public_dns, claims.take)


async def test_an_admitted_purchase_gets_its_plan_and_holds_the_claim() -> None:
    claims = RecordingClaims()
    request = AdmissionRequest("acme", "business", "https://shop.example/hook", "purchase-p1")
    admitted = await ActivityEnvironment().run(admission(claims).admit_purchase, request)
    assert admitted == Admission(DEFAULT_CATALOG["business"], "run-of-purchase-p1")
    assert claims.taken == [TenantClaimRequest("acme", "purchase-p1")]


@pytest.mark.parametrize(
    ("plan", "notify_url", "field_name", "rule_part"),
    [
        ("platinum", None, "plan", "catalog plans: business, enterprise, starter"),
        ("starter", "http://shop.example/hook", "notify_url", "must use https"),
        ("starter", "https://elsewhere.example/hook", "notify_url", "allowlist"),
        # Resolved at admission: a name pointing inside is refused before anything is bought.
        (
            "starter",
            "https://inside.example/hook",
            "notify_url",
            "host 'inside.example' resolves to a loopback address",
        ),
    ],
)
async def test_a_refused_purchase_names_field_and_rule_and_never_takes_the_claim(
    plan: str, notify_url: str | None, field_name: str, rule_part: str
) -> None:
    claims = RecordingClaims()
    request = AdmissionRequest("acme", plan, notify_url, "purchase-p1")
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(admission(claims).admit_purchase, request)
    assert refused.value.type == "InvalidPurchaseRequest" and refused.value.non_retryable
    assert refused.value.details[0]["field"] == field_name
    assert rule_part in refused.value.details[0]["rule"]
    assert f"field '{field_name}'" in refused.value.message
    assert claims.taken == []


def test_the_failure_of_an_invalid_request_is_made_in_one_place() -> None:
    """Only InvalidPurchaseRequest.as_failure builds its ApplicationError; every other
    production module raises that one (clients rely on its type and details)."""
    failure = InvalidPurchaseRequest("plan", "must be known").as_failure()
    assert failure.type == "InvalidPurchaseRequest" and failure.non_retryable
    assert failure.details == ({"field": "plan", "rule": "must be known"},)
    makers = []
    for path in [*ROOT.glob("*.py"), *(ROOT / "workflows").rglob("*.py"),
                 *(ROOT / "activities").rglob("*.py")]:  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "type"
                and isinstance(node.value, ast.Constant)
                and node.value.value == "InvalidPurchaseRequest"
            ):
                makers.append(f"{path.relative_to(ROOT)}:{node.value.lineno}")
    assert len(makers) == 1 and makers[0].startswith("workflows/input_rules.py:"), makers


def test_admission_calls_no_activity_as_a_function() -> None:
    """admit_purchase shares plain functions with the rest, not other activities."""
    source = (ROOT / "activities" / "admission.py").read_text()
    for name in ("PlanActivities", "NotifyActivities", "TenantClaimActivities"):
        assert name not in source, name


async def test_admission_carries_the_workers_keep_failed_servers_setting() -> None:
    """The run learns the operator's choice from its admission, never from its input."""
    claims = RecordingClaims()
    policy = NotifyPolicy(allowed_hosts=frozenset({"shop.example"}))
    keeping = AdmissionActivities(
        DEFAULT_CATALOG, policy, public_dns, claims.take, keep_failed_servers=True
    )
    request = AdmissionRequest("acme", "starter", None, "purchase-p2")
    admitted = await ActivityEnvironment().run(keeping.admit_purchase, request)
    assert admitted.keep_failed_servers is True
    default = await ActivityEnvironment().run(admission(claims).admit_purchase, request)
    assert default.keep_failed_servers is False
