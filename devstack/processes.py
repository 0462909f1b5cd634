"""Process plumbing shared by the stack runner and the local cloud."""

from __future__ import annotations

import ctypes
import random
import signal
import socket
from pathlib import Path

_PR_SET_PDEATHSIG = 1

# free_port picks from [PORT_FLOOR, the kernel's lowest ephemeral port).
PORT_FLOOR = 10000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM if the parent dies.

    Without it a crashed or killed parent (a demo, a test run, the cloud) would leave
    servers behind holding the ports the next run wants.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server about to be started on it.

    Chosen below the kernel's ephemeral range (net.ipv4.ip_local_port_range), not by
    bind(0): bind(0) takes its port from that range, where every outgoing connection of
    every test also takes one, so between this pick and the server's own bind a client
    socket could take the port (seen under make test: "address already in use" on an
    in-process worker's health port). Never the same port twice in one process.
    """
    low = ephemeral_port_floor()
    for _ in range(100):
        # Not a secret: any spread of picks will do.
        port = random.randrange(PORT_FLOOR, low) if low - PORT_FLOOR >= 1000 else 0  # noqa: S311
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _handed_out.add(port)
        return port
    raise OSError(f"no free port found on {host} in {PORT_FLOOR}-{low - 1}")


def ephemeral_port_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (32768 when unknown)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
