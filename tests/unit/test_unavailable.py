"""A test this machine cannot run skips with its reason, but never on CI."""

from __future__ import annotations

import pytest

from tests.helpers import unavailable


def test_skips_with_the_reason_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs CAP_NET_ADMIN"):
        unavailable("needs CAP_NET_ADMIN")


def test_fails_with_the_reason_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run this check: needs sshd"):
        unavailable("needs sshd")
