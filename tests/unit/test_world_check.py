"""The decisions made from our own records: orphan evidence and check-world's rules."""

from __future__ import annotations

import pytest

from workflows.reconcile_contracts import (
    ManagedServer,
    PurchaseRun,
    ReconcileRequest,
    TenantRecord,
    orphan_evidence,
)
from workflows.world_check_contracts import (
    KINDS,
    CompletedPurchase,
    FinalSnapshotView,
    TenantView,
    count_by_kind,
    disagreements,
)

SERVER = ManagedServer(7, "mail-p1", "p1", "acme", "2026-01-01T00:00:00Z")
HELD = TenantRecord("acme", 3, "claim-run", "purchase-p1", "run-1")


@pytest.mark.parametrize(
    ("record", "status", "evidence"),
    [
        # The purchase holds the claim: only a run Temporal shows unfinished is evidence.
        (HELD, "COMPLETED", None),
        (HELD, "NOT_FOUND", None),
        (HELD, "RUNNING", None),
        (HELD, "TERMINATED", "TERMINATED"),
        (HELD, "TIMED_OUT", "TIMED_OUT"),
        (HELD, "CANCELED", "CANCELED"),
        # No claim: the tenant's current record protects it, whatever Temporal says.
        (TenantRecord("acme", 3), "NOT_FOUND", None),
        (TenantRecord("acme", 3), "TERMINATED", None),
        # Neither claim nor record: an orphan unless its purchase is still running.
        (TenantRecord("acme", None), "CANCELED", "UNCLAIMED"),
        (TenantRecord("acme", None), "NOT_FOUND", "UNCLAIMED"),
        (TenantRecord("acme", None), "RUNNING", None),
        # Another purchase holds the tenant and there is no record.
        (TenantRecord("acme", None, "c", "purchase-p2", "r"), "COMPLETED", "UNCLAIMED"),
    ],
)
def test_orphan_evidence_comes_from_our_records(
    record: TenantRecord, status: str, evidence: str | None
) -> None:
    assert orphan_evidence(SERVER, record, PurchaseRun("p1", status)) == evidence


@pytest.mark.parametrize(
    ("raw", "expected"),
    [({}, ReconcileRequest()), ({"grace_seconds": 0, "dry_run": True}, ReconcileRequest(0, True))],
)
def test_a_reconcile_request_parses(raw: dict[str, object], expected: ReconcileRequest) -> None:
    assert ReconcileRequest.parse(raw) == expected


def kinds(tenant: TenantView, completed: list[CompletedPurchase] | None = None) -> list[str]:
    return sorted(d.kind for d in disagreements([tenant], completed or []))


def test_a_live_tenant_whose_records_agree_has_no_disagreement() -> None:
    view = TenantView("acme", [SERVER], HELD, claim_keep=True, rotation_schedule=True)
    assert kinds(view, [CompletedPurchase("purchase-p1", "run-1", audited=True)]) == []


def test_each_disagreement_is_named() -> None:
    no_claim = TenantView("acme", [SERVER], TenantRecord("acme", 3), rotation_schedule=True)
    assert kinds(no_claim) == ["server_without_claim"]
    no_record = TenantView(
        "acme", [SERVER], TenantRecord("acme", None, "c", "purchase-p1", "run-1"), claim_keep=True
    )
    assert kinds(no_record) == ["server_without_record"]
    orphan = TenantView(
        "acme", [SERVER], TenantRecord("acme", None), orphan_evidence={7: "UNCLAIMED"}
    )
    assert kinds(orphan) == ["orphaned_server"]
    dead_claim = TenantView(
        "acme", [], TenantRecord("acme", None, "c", None, None), claim_keep=False
    )
    assert kinds(dead_claim) == ["claim_without_live_holder"]
    no_server = TenantView("acme", [], HELD, claim_keep=True, rotation_schedule=True)
    assert kinds(no_server) == [
        "claim_without_server",
        "record_without_server",
        "rotation_schedule_without_server",
    ]
    two = TenantView(
        "acme",
        [SERVER, ManagedServer(8, "mail-p1b", "p1", "acme", "")],
        HELD,
        claim_keep=True,
        rotation_schedule=True,
    )
    assert kinds(two) == ["tenant_with_several_servers"]
    no_schedule = TenantView("acme", [SERVER], HELD, claim_keep=True)
    assert kinds(no_schedule) == ["live_tenant_without_rotation_schedule"]
    unaudited = CompletedPurchase("purchase-p1", "run-1", audited=False)
    assert kinds(TenantView("x", [], TenantRecord("x", None)), [unaudited]) == [
        "completed_purchase_without_audit_row"
    ]


def test_a_tenant_in_flight_is_not_judged_mid_way() -> None:
    view = TenantView("acme", [SERVER], TenantRecord("acme", None), in_flight=True)
    assert kinds(view) == []


def test_counts_cover_every_kind() -> None:
    counts = count_by_kind([])
    assert set(counts) == set(KINDS) and set(counts.values()) == {0}


@pytest.mark.parametrize(
    ("timer", "deprovisioning", "now", "kinds"),
    [
        # Kept with its timer running, before its delete-after: expected.
        (True, False, 1_000, []),
        # Being taken: the deprovisioning starts its timer once it is available.
        (False, True, 1_000, []),
        # Nothing will delete it.
        (False, False, 1_000, ["final_snapshot_without_timer"]),
        # Its timer runs but has not deleted it long after its delete-after.
        (True, False, 2_000 + 3_601, ["final_snapshot_past_expiry"]),
        # Within the grace after delete-after: the timer is deleting it now.
        (True, False, 2_000 + 3_600, []),
        (False, False, 9_999, ["final_snapshot_without_timer", "final_snapshot_past_expiry"]),
    ],
)
def test_a_final_snapshot_is_expected_only_with_its_timer_and_before_its_expiry(
    timer: bool, deprovisioning: bool, now: int, kinds: list[str]
) -> None:
    snapshot = FinalSnapshotView(900_001, "acme", 2_000, timer, deprovisioning)
    found = disagreements([], [], [snapshot], now)
    assert [d.kind for d in found] == kinds
    assert all(d.subject == "image-900001" and "acme" in d.detail for d in found)
    assert all(kind in KINDS for kind in kinds)
    if "final_snapshot_without_timer" in kinds:
        assert "final-snapshot-expiry-900001" in found[0].fix
