"""Hetzner Cloud firewalls for the local cloud: the resources and their rules' checks.

Follows the Firewalls section of https://docs.hetzner.cloud/ (as generated into the
VM::HetznerCloud::API::Firewalls client, metacpan VM-HetznerCloud 0.0.3, and the error
codes of hetznercloud/hcloud-go hcloud/error.go):

* ``POST /v1/firewalls`` {name, labels, rules, apply_to} -> 201 {firewall, actions};
  names are unique per project (``uniqueness_error``).
* a rule: ``direction`` in|out, ``protocol`` tcp|udp|icmp|esp|gre, ``port`` (a port or
  "from-to" range) required for tcp/udp and forbidden otherwise, ``source_ips`` for
  "in" / ``destination_ips`` for "out" as CIDRs, optional ``description``.
* ``GET /v1/firewalls`` with ``name`` and ``label_selector``; ``GET /v1/firewalls/{id}``;
  ``applied_to`` lists {"type": "server", "server": {"id": N}} for every server using it.
* ``DELETE /v1/firewalls/{id}`` -> 204, or ``resource_in_use`` ("Firewall must not be in
  use to be deleted") while applied to a server.
* A server created with ``firewalls: [{"firewall": ID}]`` is in the firewall's
  ``applied_to`` and its ``public_net.firewalls`` shows {"id": ID, "status": "applied"};
  deleting the server removes it from ``applied_to``.

The stand-in keeps the rules; it does not filter the local VPS's traffic (the VPS
listens on loopback, where a packet filter would need root and would affect the host).
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from devstack import hetzner
from devstack.hetzner import ApiError, invalid_input, iso

_PROTOCOLS = {"tcp", "udp", "icmp", "esp", "gre"}
_FIRST_FIREWALL_ID = 7_000_001


@dataclass
class Firewall:
    id: int
    name: str
    labels: dict[str, str]
    rules: list[dict[str, Any]]
    servers: set[int] = field(default_factory=set)
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "labels": dict(self.labels),
            "created": iso(self.created),
            "rules": [dict(rule) for rule in self.rules],
            "applied_to": [
                {"type": "server", "server": {"id": sid}} for sid in sorted(self.servers)
            ],
        }


def _port_problem(port: Any) -> str | None:
    if not isinstance(port, str):
        return "port must be a string (a port or a range 'from-to')"
    bounds = port.split("-")
    if len(bounds) > 2 or not all(b.isdigit() and 1 <= int(b) <= 65535 for b in bounds):
        return f"invalid port {port!r}"
    if len(bounds) == 2 and int(bounds[0]) > int(bounds[1]):
        return f"invalid port range {port!r}"
    return None


def rule_problems(rules: Any) -> list[str]:
    """Every problem with a rules list, in Hetzner's invalid_input message style."""
    if not isinstance(rules, list):
        return ["rules must be a list"]
    problems: list[str] = []
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, dict):
            problems.append(f"{where} must be an object")
            continue
        direction, protocol = rule.get("direction"), rule.get("protocol")
        if direction not in ("in", "out"):
            problems.append(f"{where}.direction must be one of: in, out")
        if protocol not in _PROTOCOLS:
            problems.append(f"{where}.protocol must be one of: {', '.join(sorted(_PROTOCOLS))}")
        if protocol in ("tcp", "udp"):
            if (problem := _port_problem(rule.get("port"))) is not None:
                problems.append(f"{where}.{problem}")
        elif rule.get("port") is not None:
            problems.append(f"{where}.port is only allowed for tcp and udp")
        ips_key = "source_ips" if direction == "in" else "destination_ips"
        ips = rule.get(ips_key)
        if not isinstance(ips, list) or not ips:
            problems.append(f"{where}.{ips_key} must be a non-empty list of CIDRs")
            continue
        for cidr in ips:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except (TypeError, ValueError):
                problems.append(f"{where}.{ips_key}: {cidr!r} is not a valid CIDR")
    return problems


class FirewallBook:
    """The project's firewalls."""

    def __init__(self) -> None:
        self._firewalls: dict[int, Firewall] = {}
        self._ids = itertools.count(_FIRST_FIREWALL_ID)

    def create(self, body: dict[str, Any]) -> Firewall:
        problems: dict[str, list[str]] = {}
        name = body.get("name")
        if not isinstance(name, str) or not name:
            problems["name"] = ["Missing data for required field."]
        labels = body.get("labels", {})
        if label_problems := hetzner.validate_labels(labels):
            problems["labels"] = label_problems
        rules = body.get("rules", [])
        if rule_issues := rule_problems(rules):
            problems["rules"] = rule_issues
        if body.get("apply_to"):
            # Not needed by the product (servers name their firewall on create).
            problems["apply_to"] = ["apply_to is not supported by the devstack cloud"]
        if problems:
            raise invalid_input(problems)
        assert isinstance(name, str)
        if any(fw.name == name for fw in self._firewalls.values()):
            raise ApiError(
                "uniqueness_error", "firewall name is already used", {"fields": [{"name": "name"}]}
            )
        firewall = Firewall(next(self._ids), name, dict(labels), [dict(r) for r in rules])
        self._firewalls[firewall.id] = firewall
        return firewall

    def get(self, raw_id: str) -> Firewall:
        firewall = self._firewalls.get(int(raw_id)) if raw_id.isdigit() else None
        if firewall is None:
            raise ApiError("not_found", f"firewall with ID '{raw_id}' not found")
        return firewall

    def listing(self, name: str | None, selector: str) -> list[Firewall]:
        return hetzner.select(self._firewalls.values(), name, selector)

    def delete(self, raw_id: str) -> None:
        firewall = self.get(raw_id)
        if firewall.servers:
            raise ApiError("resource_in_use", "Firewall must not be in use to be deleted")
        del self._firewalls[firewall.id]

    def for_new_server(self, entries: Any) -> list[Firewall]:
        """The firewalls a server create names (``firewalls: [{"firewall": ID}]``)."""
        if entries is None:
            return []
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("firewall"), int) for e in entries
        ):
            raise invalid_input({"firewalls": ['firewalls must be a list of {"firewall": ID}']})
        found = []
        for entry in entries:
            firewall = self._firewalls.get(entry["firewall"])
            if firewall is None:
                raise ApiError("not_found", f"firewall with ID '{entry['firewall']}' not found")
            found.append(firewall)
        return found

    def apply(self, server_id: int, firewalls: list[Firewall]) -> None:
        for firewall in firewalls:
            firewall.servers.add(server_id)

    def forget_server(self, server_id: int) -> None:
        for firewall in self._firewalls.values():
            firewall.servers.discard(server_id)

    def of_server(self, server_id: int) -> list[int]:
        return sorted(f.id for f in self._firewalls.values() if server_id in f.servers)
