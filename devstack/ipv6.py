"""IPv6 for local servers: one /64 per server, its ::1 really reachable on this machine.

Hetzner routes a /64 to every server with IPv6 and the server configures ::1 of it
(docs.hetzner.cloud, Servers: `public_net.ipv6.ip` is the network, e.g.
"2001:db8:1234::/64"). Here each cloud picks a random unique-local /48 (fdXX:XXXX:XXXX::/48,
RFC 4193, so it can never clash with a real route) and gives server N the network
fd..:N::/64. To make ``fd..:N::1`` reachable over real IPv6 sockets, the cloud adds it to
the loopback interface (``ip -6 addr add ADDR/128 dev lo nodad``) and removes it when
the server is deleted. That needs CAP_NET_ADMIN (root in CI); without it the server
still gets its /64 in the API, but nothing listens there, so an IPv6-only plan cannot
be configured, and `can_assign()` says so for tests to check up front.

An address left behind by a SIGKILLed cloud stays on ``lo`` until removed by hand
(``ip -6 addr del ... dev lo``); it is a unique-local /128 that routes nowhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import shutil

log = logging.getLogger("devstack.ipv6")

_IP = shutil.which("ip")


def random_ula_prefix() -> ipaddress.IPv6Network:
    """A random RFC 4193 unique-local /48 (fd00::/8 plus 40 random bits)."""
    global_id = random.SystemRandom().getrandbits(40)
    return ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 48))


def server_network(prefix: ipaddress.IPv6Network, index: int) -> ipaddress.IPv6Network:
    """The /64 of the index-th server inside the cloud's /48."""
    subnets = 1 << (64 - prefix.prefixlen)
    base = int(prefix.network_address) + ((index % subnets) << 64)
    return ipaddress.IPv6Network((base, 64))


def host_address(network: ipaddress.IPv6Network) -> str:
    """The address the server itself uses: ::1 of its /64, as on Hetzner's images."""
    return str(network.network_address + 1)


async def _ip(*args: str) -> tuple[int, str]:
    if _IP is None:
        return 127, "ip: command not found (package iproute2)"
    process = await asyncio.create_subprocess_exec(
        _IP, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    return process.returncode or 0, err.decode(errors="replace").strip()


async def assign(address: str) -> str | None:
    """Put address/128 on lo; None on success, else why not (no CAP_NET_ADMIN, no ip)."""
    code, err = await _ip("-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
    if code != 0 and "File exists" not in err:
        return err or f"ip exited {code}"
    return None


async def release(address: str) -> None:
    code, err = await _ip("-6", "addr", "del", f"{address}/128", "dev", "lo")
    if code != 0 and "Cannot assign" not in err:
        log.warning("could not remove %s from lo: %s", address, err)


async def can_assign() -> bool:
    """Whether this machine lets the local cloud give servers reachable IPv6 addresses."""
    probe = host_address(server_network(random_ula_prefix(), 0))
    if await assign(probe) is not None:
        return False
    await release(probe)
    return True
