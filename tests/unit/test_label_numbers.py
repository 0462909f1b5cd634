"""Numbers read back from provider labels: anything but ASCII digits is no number.

Labels are strings anyone with the project's token can set; str.isdigit() alone accepts
"²", which int() then refuses, so one odd label would fail every expiry check."""

from __future__ import annotations

import pytest

from activities.final_snapshot import delete_after_of
from activities.vps_provider import Image
from workflows.final_snapshot_contracts import DELETE_AFTER_LABEL


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1765000000", 1765000000),
        ("", None),
        ("²", None),
        ("12²", None),
        ("-5", None),
        (" 7", None),
    ],
)
def test_delete_after_reads_ascii_digits_only(raw: str, expected: int | None) -> None:
    image = Image(1, "available", "final snapshot", {DELETE_AFTER_LABEL: raw})
    assert delete_after_of(image) == expected
