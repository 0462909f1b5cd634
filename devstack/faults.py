"""Fault injection for the local cloud.

Retry policies are only trustworthy if the failures they are meant to absorb can be
produced on demand. Tests register rules here ("the next request matching X fails
with Y"), and the cloud consults the book before (or, for lost responses, after)
serving each request. Nothing here exists in the real Hetzner API.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

# Paths that configure the stand-in itself; a careless "/*" rule must not lock a test
# out of clearing the very rule that broke it.
_CONTROL_PREFIXES = ("/_devstack/faults", "/_devstack/boot-failures")


class FaultSpecError(ValueError):
    """A fault rule body that cannot be honoured; the message names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name
        self.detail = message


@dataclass
class FaultRule:
    """One armed failure: which requests it hits, what they see, and how often."""

    id: int
    method: str
    path: str
    status: int
    code: str
    message: str
    times: int
    after_effect: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        """A trailing ``*`` makes the path a prefix, so one rule can cover a subtree."""
        if self.method != "*" and self.method != method.upper():
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "times": self.times,
            "after_effect": self.after_effect,
            "headers": dict(self.headers),
            "details": dict(self.details),
        }


def parse_rule(rule_id: int, body: Any) -> FaultRule:
    """Validate a rule body strictly, so a typo fails the test that made it."""
    if not isinstance(body, dict):
        raise FaultSpecError("body", "must be a JSON object")
    allowed = {
        "method",
        "path",
        "status",
        "code",
        "message",
        "times",
        "after_effect",
        "headers",
        "details",
    }
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise FaultSpecError(unknown[0], "unknown field")

    method = body.get("method", "*")
    if not isinstance(method, str) or not method:
        raise FaultSpecError("method", "must be an HTTP method or '*'")
    path = body.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise FaultSpecError("path", "must be an absolute path, optionally ending in '*'")
    status = body.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        raise FaultSpecError("status", "must be an integer HTTP error status (400-599)")
    code = body.get("code")
    if not isinstance(code, str) or not code:
        raise FaultSpecError("code", "must be a non-empty error code string")
    message = body.get("message", code.replace("_", " "))
    if not isinstance(message, str):
        raise FaultSpecError("message", "must be a string")
    times = body.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise FaultSpecError("times", "must be an integer >= 1")
    after_effect = body.get("after_effect", False)
    if not isinstance(after_effect, bool):
        raise FaultSpecError("after_effect", "must be a boolean")
    headers = body.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int)) for k, v in headers.items()
    ):
        raise FaultSpecError("headers", "must map header names to strings")
    details = body.get("details", {})
    if not isinstance(details, dict):
        raise FaultSpecError("details", "must be an object")
    return FaultRule(
        id=rule_id,
        method=method.upper(),
        path=path,
        status=status,
        code=code,
        message=message,
        times=times,
        after_effect=after_effect,
        headers={k: str(v) for k, v in headers.items()},
        details=details,
    )


class FaultBook:
    """Armed fault rules and pending boot failures, consumed first-registered first."""

    def __init__(self) -> None:
        # aiohttp serves on one loop, but the lock keeps "take" atomic should a test
        # drive the book from another thread.
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._rules: list[FaultRule] = []
        self._boot_failures = 0

    def add(self, body: Any) -> FaultRule:
        rule = parse_rule(next(self._ids), body)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._boot_failures = 0

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, method: str, path: str) -> FaultRule | None:
        """Consume one use of the first rule matching this request, if any."""
        if path.startswith(_CONTROL_PREFIXES):
            return None
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    def add_boot_failures(self, times: int) -> int:
        with self._lock:
            self._boot_failures += times
            return self._boot_failures

    def take_boot_failure(self) -> bool:
        with self._lock:
            if self._boot_failures > 0:
                self._boot_failures -= 1
                return True
            return False

    @property
    def pending_boot_failures(self) -> int:
        with self._lock:
            return self._boot_failures
