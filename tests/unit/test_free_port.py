"""devstack.processes.free_port: ports for the stack's servers, outside the range the
kernel hands to outgoing connections, so a client socket cannot take one before its
server binds it."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from devstack import processes
from devstack.processes import PORT_FLOOR, ephemeral_port_floor, free_port


def test_ports_come_from_below_the_ephemeral_range_and_never_twice() -> None:
    floor = ephemeral_port_floor()
    ports = [free_port() for _ in range(50)]
    assert all(PORT_FLOOR <= port < floor for port in ports), (floor, ports)
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))  # free when handed out


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        picks = iter([busy, busy, 23456, 23457])
        monkeypatch.setattr(random, "randrange", lambda *_: next(picks))
        monkeypatch.setattr(processes, "ephemeral_port_floor", lambda: 60000)
        monkeypatch.setattr(processes, "_handed_out", set())
        port = free_port()
    assert port in (23456, 23457)


def test_a_narrow_or_unreadable_range_falls_back_to_the_kernels_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("10500\t60999\n")
    monkeypatch.setattr(processes, "EPHEMERAL_RANGE", narrow)
    assert ephemeral_port_floor() == 10500
    assert free_port() >= 10500  # fewer than 1000 ports below: bind(0)
    monkeypatch.setattr(processes, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert ephemeral_port_floor() == 32768
