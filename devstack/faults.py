"""Fault injection for the local cloud.

Retry policies are only trustworthy if the failures they are meant to absorb can be
produced on demand. Tests register rules here ("the next request matching X fails
with Y"), and the cloud consults the book before (or, for lost responses, after)
serving each request. Nothing here exists in the real Hetzner API.

The same goes for the servers: :class:`VpsFaults` arms failures inside one local VPS
(exec requests that fail without running, SSH connections cut off at accept), which
the cloud sets and the VPS process consumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
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


# --- faults inside one VPS ---------------------------------------------------------------
#
# The cloud and each VPS are separate processes. Rules for a VPS live in a JSON file in
# that server's state directory: the cloud adds and clears rules, the VPS consumes them
# (one use per matching exec request or TCP connection). Both sides read-modify-write
# under an exclusive flock on a sibling lock file and replace the JSON atomically, so a
# use is never lost or double-counted and a reader never sees half a file. A file also
# lets a test arm a rule before the server has booted (e.g. refuse the first SSH
# connections of a server that is still starting), which a socket into the VPS could not.

VPS_FAULTS_FILE = "faults.json"
VPS_FAULTS_LOCK = "faults.lock"
SSH_FAULT_MODES = {
    # Accept, then reset: the client sees ECONNRESET, as close as an accepting socket
    # gets to a port nobody listens on yet (a host still booting sshd).
    "refuse": "reset the connection right after accepting it",
    # Accept, then close before the SSH banner: what OpenSSH does to connections it
    # drops (MaxStartups, tcp-wrappers); clients report "connection closed".
    "close": "close the connection before the SSH banner",
}
MAX_FAULT_TEXT = 64 * 1024


@dataclass
class CommandFault:
    """The next ``times`` exec requests whose command line contains ``match`` fail."""

    id: int
    match: str
    exit_status: int
    stdout: str
    stderr: str
    times: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "match": self.match,
            "exit_status": self.exit_status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "times": self.times,
        }


@dataclass
class SshFault:
    """The next ``times`` TCP connections to the VPS's SSH port are cut off."""

    id: int
    mode: str
    times: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "mode": self.mode, "times": self.times}


def _check_fields(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FaultSpecError("body", "must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise FaultSpecError(unknown[0], "unknown field")
    return body


def _times(body: dict[str, Any]) -> int:
    times = body.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise FaultSpecError("times", "must be an integer >= 1")
    return times


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise FaultSpecError(name, "must be a string")
    if len(value) > MAX_FAULT_TEXT:
        raise FaultSpecError(name, f"must be at most {MAX_FAULT_TEXT} characters")
    return value


def parse_command_fault(rule_id: int, body: Any) -> CommandFault:
    body = _check_fields(body, {"match", "exit_status", "stdout", "stderr", "times"})
    match = body.get("match")
    if not isinstance(match, str) or not match:
        raise FaultSpecError("match", "must be a non-empty substring of the command line")
    exit_status = body.get("exit_status", 1)
    if (
        not isinstance(exit_status, int)
        or isinstance(exit_status, bool)
        or not 0 <= exit_status <= 255
    ):
        raise FaultSpecError("exit_status", "must be an integer exit status (0-255)")
    return CommandFault(
        id=rule_id,
        match=match,
        exit_status=exit_status,
        stdout=_text(body, "stdout"),
        stderr=_text(body, "stderr"),
        times=_times(body),
    )


def parse_ssh_fault(rule_id: int, body: Any) -> SshFault:
    body = _check_fields(body, {"mode", "times"})
    mode = body.get("mode", "refuse")
    if mode not in SSH_FAULT_MODES:
        raise FaultSpecError("mode", f"must be one of {', '.join(sorted(SSH_FAULT_MODES))}")
    return SshFault(id=rule_id, mode=mode, times=_times(body))


class VpsFaults:
    """One VPS's armed command and SSH faults, shared through its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / VPS_FAULTS_FILE
        self._lock_path = self.state_dir / VPS_FAULTS_LOCK

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Yield the rules document; whatever the body changes in it is saved."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Held for a read and maybe a small write, so blocking the loop is fine.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                document = json.loads(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                document = {}
            document.setdefault("next_id", 1)
            document.setdefault("command_faults", [])
            document.setdefault("ssh_faults", [])
            before = json.dumps(document, sort_keys=True)
            yield document
            if json.dumps(document, sort_keys=True) != before:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(tmp_fd, "w", encoding="utf-8") as handle:
                    json.dump(document, handle, indent=1)
                os.replace(tmp, self.path)
        finally:
            os.close(fd)  # releases the lock

    # --- the cloud's side ---------------------------------------------------------

    def add_command_fault(self, body: Any) -> CommandFault:
        with self._locked() as document:
            rule = parse_command_fault(document["next_id"], body)
            document["next_id"] += 1
            document["command_faults"].append(rule.to_json())
        return rule

    def add_ssh_fault(self, body: Any) -> SshFault:
        with self._locked() as document:
            rule = parse_ssh_fault(document["next_id"], body)
            document["next_id"] += 1
            document["ssh_faults"].append(rule.to_json())
        return rule

    def command_faults(self) -> list[CommandFault]:
        if not self.path.exists():
            return []
        with self._locked() as document:
            return [CommandFault(**r) for r in document["command_faults"]]

    def ssh_faults(self) -> list[SshFault]:
        if not self.path.exists():
            return []
        with self._locked() as document:
            return [SshFault(**r) for r in document["ssh_faults"]]

    def clear(self, kind: str | None = None) -> None:
        """Drop the ``command_faults`` or ``ssh_faults`` rules, or both."""
        if not self.path.exists():
            return
        with self._locked() as document:
            for key in ("command_faults", "ssh_faults"):
                if kind in (None, key):
                    document[key] = []

    # --- the VPS's side -----------------------------------------------------------

    def take_command_fault(self, command: str) -> CommandFault | None:
        """Consume one use of the first-armed rule whose ``match`` is in ``command``."""
        if not self.path.exists():  # the common case costs one stat()
            return None
        with self._locked() as document:
            for raw in document["command_faults"]:
                if raw["match"] in command:
                    _use_once(document["command_faults"], raw)
                    return CommandFault(**raw)
        return None

    def take_ssh_fault(self) -> SshFault | None:
        """Consume one use of the first-armed SSH connection rule, if any."""
        if not self.path.exists():
            return None
        with self._locked() as document:
            if document["ssh_faults"]:
                raw = document["ssh_faults"][0]
                _use_once(document["ssh_faults"], raw)
                return SshFault(**raw)
        return None


def _use_once(rules: list[dict[str, Any]], raw: dict[str, Any]) -> None:
    """Count one use; ``raw`` then shows the uses left (0 once it is dropped)."""
    raw["times"] -= 1
    if raw["times"] <= 0:
        rules.remove(raw)
