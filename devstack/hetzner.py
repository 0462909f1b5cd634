"""Hetzner Cloud API v1 vocabulary: error bodies, catalog, input rules, label selectors.

Kept apart from the HTTP plumbing so the rules a provider client depends on (status
codes, error codes, the label-selector grammar, name and label syntax) read as one
page that can be checked against https://docs.hetzner.cloud/.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

# Status per documented error code; the stand-in never invents a code outside this.
ERROR_STATUS: dict[str, int] = {
    "invalid_input": 400,
    "json_error": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "resource_limit_exceeded": 403,
    "token_readonly": 403,
    "not_found": 404,
    "conflict": 409,
    "uniqueness_error": 409,
    "resource_unavailable": 422,
    "placement_error": 422,
    # Firewall delete while applied (docs.hetzner.cloud, Firewalls). Hetzner does not
    # document its status; 422 like the other "valid request, wrong state" codes.
    "resource_in_use": 422,
    # change_type's own codes (Server Actions, Change the Type of a Server); their
    # status is not documented either (devstack/plan_change.py).
    "server_not_stopped": 422,
    "invalid_server_type": 422,
    "unsupported_error": 422,
    "locked": 423,
    "protected": 423,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "unavailable": 503,
    "service_error": 503,
    "maintenance": 503,
    "timeout": 504,
}

RATE_LIMIT = 3600
USER_DATA_MAX_BYTES = 32 * 1024
PER_PAGE_DEFAULT = 25
PER_PAGE_MAX = 50


class ApiError(Exception):
    """An error the API answers with, already in Hetzner's shape."""

    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details if details is not None else {}
        self.status = status if status is not None else ERROR_STATUS.get(code, 500)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def invalid_input(fields: dict[str, list[str]]) -> ApiError:
    """Hetzner names every offending field, so clients can report them all at once."""
    names = list(fields)
    noun = "field" if len(names) == 1 else "fields"
    message = f"invalid input in {noun} " + ", ".join(f"'{n}'" for n in names)
    return ApiError(
        "invalid_input",
        message,
        {"fields": [{"name": n, "messages": msgs} for n, msgs in fields.items()]},
    )


def iso(ts: float) -> str:
    """Hetzner timestamps are ISO-8601 with an explicit UTC offset."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


# --- catalog -------------------------------------------------------------------------

# Server types and where they are sold. Since 2025-09-24 availability and deprecation
# are per location: `server_type.locations[]` = {id, name, deprecation, available,
# recommended} (docs.hetzner.cloud changelog "per-location server types"; the shape is
# hcloud-python 2.27.0 hcloud/server_types/domain.py ServerTypeLocation, `available` /
# `recommended` moved there from datacenters in hcloud-python 2.18.0). A deprecation is
# {announced, unavailable_after} (hcloud/deprecation/domain.py): after unavailable_after
# the type "can not be used in new resources". Deprecated types stay listed.
# cx22/cx32/cx42 were deprecated in October 2025 (issue 19, item 5); the dates below
# are the stand-in's own (a real account shows Hetzner's). cx23/cx33/cx43 (cost-
# optimised gen 3) are sold in the EU locations only; ids are the stand-in's own.
# cpx21/cpx31 are modelled as current; whether Hetzner retired them too is unchecked.
_EU = ("fsn1", "nbg1", "hel1")
_ALL = ("fsn1", "nbg1", "hel1", "ash", "hil")
CX_GEN2_DEPRECATION = {
    "announced": "2025-10-16T00:00:00+00:00",
    "unavailable_after": "2026-01-01T00:00:00+00:00",
}
SERVER_TYPES: dict[str, dict[str, Any]] = {
    "cx22": {
        "id": 104,
        "cores": 2,
        "memory": 4.0,
        "disk": 40,
        "locations": _EU,
        "deprecation": CX_GEN2_DEPRECATION,
    },
    "cx32": {
        "id": 105,
        "cores": 4,
        "memory": 8.0,
        "disk": 80,
        "locations": _EU,
        "deprecation": CX_GEN2_DEPRECATION,
    },
    "cx42": {
        "id": 106,
        "cores": 8,
        "memory": 16.0,
        "disk": 160,
        "locations": _EU,
        "deprecation": CX_GEN2_DEPRECATION,
    },
    "cx23": {"id": 114, "cores": 2, "memory": 4.0, "disk": 40, "locations": _EU},
    "cx33": {"id": 115, "cores": 4, "memory": 8.0, "disk": 80, "locations": _EU},
    "cx43": {"id": 116, "cores": 8, "memory": 16.0, "disk": 160, "locations": _EU},
    "cpx21": {"id": 23, "cores": 3, "memory": 4.0, "disk": 80, "locations": _ALL},
    "cpx31": {"id": 24, "cores": 4, "memory": 8.0, "disk": 160, "locations": _ALL},
    "cpx22": {"id": 117, "cores": 2, "memory": 4.0, "disk": 80, "locations": _ALL},
    "cpx32": {"id": 118, "cores": 4, "memory": 8.0, "disk": 160, "locations": _ALL},
}

IMAGES: dict[str, dict[str, Any]] = {
    "debian-12": {
        "id": 114690387,
        "os_flavor": "debian",
        "os_version": "12",
        "description": "Debian 12",
    },
    # ids of debian-13 and docker-ce are the stand-in's own, not Hetzner's (unchecked).
    "debian-13": {
        "id": 310557660,
        "os_flavor": "debian",
        "os_version": "13",
        "description": "Debian 13",
    },
    # Hetzner's Docker CE app image: an OS image with Docker CE and Compose preinstalled.
    "docker-ce": {
        "id": 40093247,
        "os_flavor": "ubuntu",
        "os_version": "24.04",
        "description": "Docker CE",
        "type": "app",
    },
    "ubuntu-24.04": {
        "id": 161547269,
        "os_flavor": "ubuntu",
        "os_version": "24.04",
        "description": "Ubuntu 24.04",
    },
}

LOCATIONS: dict[str, dict[str, Any]] = {
    "fsn1": {
        "id": 1,
        "description": "Falkenstein DC Park 1",
        "country": "DE",
        "city": "Falkenstein",
        "latitude": 50.47612,
        "longitude": 12.370071,
        "network_zone": "eu-central",
        "datacenter": ("fsn1-dc14", 4),
    },
    "nbg1": {
        "id": 2,
        "description": "Nuremberg DC Park 1",
        "country": "DE",
        "city": "Nuremberg",
        "latitude": 49.452102,
        "longitude": 11.076665,
        "network_zone": "eu-central",
        "datacenter": ("nbg1-dc3", 2),
    },
    "hel1": {
        "id": 3,
        "description": "Helsinki DC Park 1",
        "country": "FI",
        "city": "Helsinki",
        "latitude": 60.169855,
        "longitude": 24.938379,
        "network_zone": "eu-central",
        "datacenter": ("hel1-dc2", 3),
    },
    "ash": {
        "id": 4,
        "description": "Ashburn, VA",
        "country": "US",
        "city": "Ashburn, VA",
        "latitude": 39.045821,
        "longitude": -77.487073,
        "network_zone": "us-east",
        "datacenter": ("ash-dc1", 5),
    },
    "hil": {
        "id": 5,
        "description": "Hillsboro, OR",
        "country": "US",
        "city": "Hillsboro, OR",
        "latitude": 45.54222,
        "longitude": -122.951924,
        "network_zone": "us-west",
        "datacenter": ("hil-dc1", 6),
    },
}
DEFAULT_LOCATION = "fsn1"
# The catalog list endpoints the worker checks its plans against (GET /v1/{kind}?name=).
CATALOG_KINDS = ("server_types", "images", "locations")


def location_json(name: str) -> dict[str, Any]:
    location: dict[str, Any] = datacenter_json(name)["location"]
    return location


def catalog_json(kind: str, name: str | None) -> list[dict[str, Any]]:
    """The entries of one catalog list endpoint, filtered by ``name`` as Hetzner does."""
    table, render = {
        "server_types": (SERVER_TYPES, server_type_json),
        "images": (IMAGES, image_json),
        "locations": (LOCATIONS, location_json),
    }[kind]
    names = sorted(table, key=lambda n: table[n]["id"])
    return [render(n) for n in names if name is None or n == name]


def server_type_json(name: str, out_of_stock: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One server type; `out_of_stock` names locations where it is not available now."""
    spec = SERVER_TYPES[name]
    deprecation = spec.get("deprecation")
    return {
        "id": spec["id"],
        "name": name,
        "description": name.upper(),
        "category": "cost_optimized" if name.startswith("cx") else "regular_purpose",
        "cores": spec["cores"],
        "memory": spec["memory"],
        "disk": spec["disk"],
        # The type-wide fields Hetzner keeps for old clients while phasing them out.
        "deprecated": deprecation is not None,
        "deprecation": dict(deprecation) if deprecation else None,
        "storage_type": "local",
        "cpu_type": "shared",
        "architecture": "x86",
        "locations": [
            {
                "id": LOCATIONS[loc]["id"],
                "name": loc,
                "deprecation": dict(deprecation) if deprecation else None,
                "available": loc not in out_of_stock,
                "recommended": deprecation is None and loc not in out_of_stock,
            }
            for loc in spec["locations"]
        ],
    }


def server_type_problem(
    name: str, location: str, out_of_stock: frozenset[str], now: float
) -> ApiError | None:
    """Why a create of `name` in `location` is refused now, or None.

    Not offered there, or past the deprecation's unavailable_after: invalid_input
    "unsupported location for server type" with empty details, as real creates answer
    (autobase-tech/autobase#1403: types not sold in US locations, Dec 2025;
    testflows/TestFlows-GitHub-Hetzner-Runners#96: cx22 gone, cx23 refused, Jan 2026).
    Sold there but out of stock for now (mysticaltech/terraform-hcloud-kube-hetzner#1801):
    resource_unavailable (hetznercloud/hcloud-go hcloud/error.go).
    """
    spec = SERVER_TYPES[name]
    deprecation = spec.get("deprecation")
    retired = deprecation is not None and (
        datetime.fromisoformat(deprecation["unavailable_after"]).timestamp() <= now
    )
    if location not in spec["locations"] or retired:
        return ApiError("invalid_input", "unsupported location for server type", {})
    if location in out_of_stock:
        return ApiError("resource_unavailable", f"server type {name} is unavailable in {location}")
    return None


def image_json(name: str) -> dict[str, Any]:
    spec = IMAGES[name]
    return {
        "id": spec["id"],
        "type": spec.get("type", "system"),
        "status": "available",
        "name": name,
        "description": spec["description"],
        "os_flavor": spec["os_flavor"],
        "os_version": spec["os_version"],
        "rapid_deploy": True,
        "architecture": "x86",
        "labels": {},
        # The fields hcloud-python 2.27's Image model names (images/domain.py): a system
        # image has no stored size, is bound to nothing and made from no server; its
        # disk is 5 GB (Hetzner's system images; the date is the stand-in's own).
        "image_size": None,
        "disk_size": 5,
        "created": "2023-06-13T06:00:02+00:00",
        "created_from": None,
        "bound_to": None,
        "protection": {"delete": False},
        "deprecation": None,
    }


def datacenter_json(location: str) -> dict[str, Any]:
    spec = LOCATIONS[location]
    dc_name, dc_id = spec["datacenter"]
    return {
        "id": dc_id,
        "name": dc_name,
        "description": f"{spec['city']} DC",
        "location": {
            "id": spec["id"],
            "name": location,
            "description": spec["description"],
            "country": spec["country"],
            "city": spec["city"],
            "latitude": spec["latitude"],
            "longitude": spec["longitude"],
            "network_zone": spec["network_zone"],
        },
    }


def default_dns_ptr(ip: str) -> str:
    """Hetzner's default reverse DNS name for a primary IPv4."""
    return "static." + ".".join(reversed(ip.split("."))) + ".clients.your-server.de"


# --- input rules -----------------------------------------------------------------------

_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


def is_valid_hostname(name: str) -> bool:
    """RFC 1123 host name, which is what Hetzner demands of server names."""
    if not 1 <= len(name) <= 253 or name.endswith("."):
        return False
    return all(_HOSTNAME_LABEL.match(label) for label in name.split("."))


def label_key_problem(key: str) -> str | None:
    """Labels follow the Kubernetes rules Hetzner adopted: ``[prefix/]name``."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not is_valid_hostname(prefix)):
        return f"label key prefix of {key!r} must be a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return f"label key {key!r} is invalid"
    return None


def validate_labels(labels: Any) -> list[str]:
    if not isinstance(labels, dict):
        return ["labels must be an object mapping strings to strings"]
    problems: list[str] = []
    for key, value in labels.items():
        if (problem := label_key_problem(str(key))) is not None:
            problems.append(problem)
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            problems.append(f"label value for {key!r} is invalid")
    return problems


def ip_family(text: Any) -> int | None:
    """4 or 6 for an IP address string (change_dns_ptr takes either), else None."""
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def public_net_flags(public_net: Any, problems: dict[str, list[str]]) -> tuple[bool, bool]:
    """``public_net.enable_ipv4`` / ``enable_ipv6`` of a server create (both default true).

    Hetzner: a server needs a public address or a private network; this project never
    attaches networks, so both off is refused as invalid input.
    """
    if public_net is None:
        return True, True
    if not isinstance(public_net, dict):
        problems["public_net"] = ["public_net must be an object"]
        return True, True
    flags = []
    for key in ("enable_ipv4", "enable_ipv6"):
        value = public_net.get(key, True)
        if not isinstance(value, bool):
            problems["public_net"] = [f"public_net.{key}: Not a valid boolean."]
            value = True
        flags.append(value)
    if not any(flags):
        problems["public_net"] = ["a server without public IPv4 and IPv6 needs a network"]
    return flags[0], flags[1]


# --- label selectors -------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """One comma-separated term of a label selector."""

    key: str
    op: str  # "=", "!=", "exists", "!exists", "in", "notin"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            # Kubernetes semantics, which Hetzner follows: absent keys match "!=".
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        return not present or value not in self.values  # notin


class SelectorError(ValueError):
    """The selector does not follow Hetzner's grammar."""


_SET_TERM = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")


def _split_terms(selector: str) -> list[str]:
    """Split on commas outside parentheses: ``env in (a,b),tier`` is two terms."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("unbalanced parentheses")
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SelectorError("unbalanced parentheses")
    terms.append("".join(current))
    return [t.strip() for t in terms]


def _checked_key(key: str) -> str:
    if (problem := label_key_problem(key)) is not None:
        raise SelectorError(problem)
    return key


def _checked_value(value: str) -> str:
    if not _LABEL_VALUE.match(value):
        raise SelectorError(f"invalid label value {value!r}")
    return value


def parse_label_selector(selector: str) -> list[Requirement]:
    """Parse ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (..)``, ``k notin (..)``."""
    requirements: list[Requirement] = []
    for term in _split_terms(selector):
        if not term:
            raise SelectorError("empty selector term")
        if m := _SET_TERM.match(term):
            values = tuple(_checked_value(v.strip()) for v in m["values"].split(","))
            requirements.append(Requirement(_checked_key(m["key"]), m["op"], values))
        elif "!=" in term:
            key, _, value = term.partition("!=")
            requirements.append(
                Requirement(_checked_key(key.strip()), "!=", (_checked_value(value.strip()),))
            )
        elif "==" in term or "=" in term:
            key, _, value = term.partition("==") if "==" in term else term.partition("=")
            requirements.append(
                Requirement(_checked_key(key.strip()), "=", (_checked_value(value.strip()),))
            )
        elif term.startswith("!"):
            requirements.append(Requirement(_checked_key(term[1:].strip()), "!exists"))
        else:
            requirements.append(Requirement(_checked_key(term), "exists"))
    return requirements


def selector_matches(requirements: list[Requirement], labels: dict[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)


class Labelled(Protocol):
    id: int
    name: str
    labels: dict[str, str]


L = TypeVar("L", bound=Labelled)


def select(resources: Iterable[L], name: str | None, selector: str) -> list[L]:
    """A list endpoint's ``name`` and ``label_selector`` filters, sorted by id."""
    found = sorted(resources, key=lambda r: r.id)
    if name is not None:
        found = [r for r in found if r.name == name]
    if selector:
        try:
            requirements = parse_label_selector(selector)
        except SelectorError as exc:
            raise invalid_input({"label_selector": [str(exc)]}) from None
        found = [r for r in found if selector_matches(requirements, r.labels)]
    return found


# --- pagination ------------------------------------------------------------------------


def _positive_int(raw: str | None, default: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_input({name: [f"{name} must be a positive integer"]}) from None
    if value < 1:
        raise invalid_input({name: [f"{name} must be a positive integer"]})
    return value


def paginate(
    items: list[Any], page_raw: str | None, per_page_raw: str | None
) -> tuple[list[Any], dict[str, Any]]:
    """Slice a list the way Hetzner pages it, returning the ``meta`` object too."""
    page = _positive_int(page_raw, 1, "page")
    per_page = min(_positive_int(per_page_raw, PER_PAGE_DEFAULT, "per_page"), PER_PAGE_MAX)
    total = len(items)
    last_page = max(1, -(-total // per_page))
    start = (page - 1) * per_page
    meta = {
        "pagination": {
            "page": page,
            "per_page": per_page,
            "previous_page": page - 1 if page > 1 else None,
            "next_page": page + 1 if page < last_page else None,
            "last_page": last_page,
            "total_entries": total,
        }
    }
    return items[start : start + per_page], meta
