"""A real Docker engine decides whether MailU relays for IPv6 clients (issue 19 item 3).

Debian's docker.io (dockerd 20.10, as root) runs a container on MailU's SUBNET, published
as a compose file publishes it, and a client in its own network namespace connects over
IPv4 and IPv6 (devstack/docker_probe.py). Postfix trusts SUBNET, so a client that arrives
as the bridge gateway may relay anywhere.
"""

from __future__ import annotations

from ipaddress import ip_address

from devstack.docker_probe import GATEWAY4, ProbeUnavailable, probe
from tests.helpers import unavailable


def test_real_docker_keeps_client_addresses_with_our_files_and_not_with_the_old_ones() -> None:
    try:
        seen = probe()
    except ProbeUnavailable as err:
        unavailable(f"the Docker probe cannot run here: {err}")
    before, ours = seen["before"], seen["ours"]
    # Before: "P:P" on every address, IPv4-only network, userland proxy on. IPv4 clients
    # keep their address (iptables DNAT), IPv6 clients arrive as the gateway: open relay.
    assert before["ipv4"] == before["client4"]
    assert before["ipv6"] == GATEWAY4
    # Ours: the server's own addresses, an IPv6 subnet, MailU's daemon.json.
    assert ours["ipv4"] == ours["client4"]
    # Compared as addresses: the engine prints fde4:55a:: where we wrote fde4:055a::.
    assert ip_address(ours["ipv6"]) == ip_address(ours["client6"])
