"""The plan catalog: operator configuration, loaded by the worker, never by the workflow.

A plan names what to buy at the provider: server type, image, the locations to try in
order, how Docker gets onto the server, and which public addresses it gets. The catalog
is a JSON or TOML file named by MAILPROV_PLANS_FILE; without it the shipped default
below is used. The worker loads it once and has the provider check it
(`VpsProvider.check_catalog`: for Hetzner, that the image and locations exist and the
server type is offered, not past its deprecation, in every plan location) and
refuses to start otherwise, so a renamed or retired server type is an operator error
at deploy time, not a purchase that fails after money was spent.

The workflow sees a plan only through the `admit_purchase` activity: workflow code
must not read files, and the activity's answer is recorded in history, so a replay
uses the plan the run really got even after the operator changed the catalog.

A plan may promise backups (`backups = true`): when such a tenant is deprovisioned,
a final snapshot of its server is kept for `final_snapshot_retention_days` (or the
worker's MAILPROV_FINAL_SNAPSHOT_RETENTION_SECONDS) and then deleted
(activities/final_snapshot.py). That promise is read by the worker only
(`load_backup_promises`), never taken from a request.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from activities.cloud_init import DockerInstallError, check_docker_install
from workflows.contracts import Plan
from workflows.input_rules import PLAN_NAME_RULE, InvalidPurchaseRequest

# The catalog shipped with the product (Hetzner names, as of 2026): every plan dual-stack,
# Docker from Docker's apt repository on Debian 12. The cost-optimised CX gen-3 types
# (cx23/cx33/cx43, offered in fsn1, nbg1 and hel1) replaced cx22/cx32/cx42, which Hetzner
# deprecated in October 2025 (Pulumi hcloud getServerType docs, Feb 2026, use "cx23";
# hcloud-python 2.7.0 release notes: per-location server types and deprecations).
DEFAULT_CATALOG: dict[str, Plan] = {
    "starter": Plan(server_type="cx23", image="debian-12", locations=["fsn1", "nbg1"]),
    "business": Plan(server_type="cx33", image="debian-12", locations=["nbg1", "fsn1"]),
    "enterprise": Plan(server_type="cx43", image="debian-12", locations=["hel1", "fsn1"]),
}

# Plans whose tenants are promised backups in the shipped catalog (None: the worker's
# default retention for the final snapshot).
DEFAULT_BACKUP_PROMISES: dict[str, int | None] = {"enterprise": None}
_BACKUP_FIELDS = {"backups", "final_snapshot_retention_days"}
_FIELDS = {
    "server_type",
    "image",
    "location",
    "locations",
    "docker_install",
    "network",
    *_BACKUP_FIELDS,
}
_NETWORK_FIELDS = {"ipv4", "ipv6"}


class CatalogError(Exception):
    """The catalog is unusable; the message names the plan and the field."""


def parse_catalog(document: Mapping[str, Any], source: str = "catalog") -> dict[str, Plan]:
    """Validate a catalog document ``{"plans": {name: {...}}}`` into plans.

    Errors name the plan and the field, e.g. ``plans.starter.locations: must not be empty``.
    """
    plans = document.get("plans") if isinstance(document, Mapping) else None
    if not isinstance(plans, Mapping) or not plans:
        raise CatalogError(f"{source}: must have a non-empty 'plans' table")
    unknown_top = sorted(set(document) - {"plans"})
    if unknown_top:
        raise CatalogError(f"{source}: unknown key {unknown_top[0]!r}")
    catalog: dict[str, Plan] = {}
    for name, raw in plans.items():
        where = f"{source}: plans.{name}"
        if not isinstance(name, str) or not PLAN_NAME_RULE.fullmatch(name):
            raise CatalogError(f"{where}: plan name must match [a-z0-9][a-z0-9_-]{{0,62}}")
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}: must be a table")
        catalog[name] = _parse_plan(raw, where)
    return catalog


def _parse_plan(raw: Mapping[str, Any], where: str) -> Plan:
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise CatalogError(f"{where}.{unknown[0]}: unknown field")
    values: dict[str, str] = {}
    for key in ("server_type", "image"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(f"{where}.{key}: required, a non-empty string")
        values[key] = value
    if ("location" in raw) == ("locations" in raw):
        raise CatalogError(f"{where}.locations: give exactly one of 'location' or 'locations'")
    locations = raw.get("locations", [raw.get("location")])
    if (
        not isinstance(locations, list)
        or not locations
        or not all(isinstance(loc, str) and loc.strip() for loc in locations)
    ):
        raise CatalogError(f"{where}.locations: must be a non-empty list of location names")
    if len(set(locations)) != len(locations):
        raise CatalogError(f"{where}.locations: must not repeat a location")
    docker_install = raw.get("docker_install", "docker-apt")
    if not isinstance(docker_install, str):
        raise CatalogError(f"{where}.docker_install: must be a string")
    try:
        check_docker_install(values["image"], docker_install)
    except DockerInstallError as err:
        raise CatalogError(f"{where}.docker_install: {err}") from None
    network = raw.get("network", {"ipv4": True, "ipv6": True})
    if not isinstance(network, Mapping) or set(network) - _NETWORK_FIELDS:
        raise CatalogError(f"{where}.network: must be a table of 'ipv4' and 'ipv6' booleans")
    ipv4, ipv6 = network.get("ipv4", True), network.get("ipv6", True)
    if not isinstance(ipv4, bool) or not isinstance(ipv6, bool):
        raise CatalogError(f"{where}.network: 'ipv4' and 'ipv6' must be true or false")
    if not (ipv4 or ipv6):
        # A server without public addresses cannot be reached to install MailU.
        raise CatalogError(f"{where}.network: needs at least one of ipv4 or ipv6")
    _backup_promise(raw, where)
    return Plan(
        server_type=values["server_type"],
        image=values["image"],
        locations=list(locations),
        docker_install=docker_install,
        ipv4=ipv4,
        ipv6=ipv6,
    )


def _backup_promise(raw: Mapping[str, Any], where: str) -> tuple[bool, int | None]:
    """`backups` (a boolean, default false) and `final_snapshot_retention_days` (a
    whole number of days >= 1, only beside `backups = true`)."""
    backups = raw.get("backups", False)
    if not isinstance(backups, bool):
        raise CatalogError(f"{where}.backups: must be true or false")
    days = raw.get("final_snapshot_retention_days")
    if days is None:
        return backups, None
    if not backups:
        raise CatalogError(f"{where}.final_snapshot_retention_days: needs backups = true")
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise CatalogError(f"{where}.final_snapshot_retention_days: a whole number >= 1")
    return backups, days


def parse_backup_promises(
    document: Mapping[str, Any], source: str = "catalog"
) -> dict[str, int | None]:
    """The plans that promise backups: plan -> its own retention in days, or None for
    the worker's default. Call after parse_catalog accepted the document."""
    promises: dict[str, int | None] = {}
    for name, raw in document["plans"].items():
        backups, days = _backup_promise(raw, f"{source}: plans.{name}")
        if backups:
            promises[name] = days
    return promises


def load_catalog(path: Path | None) -> dict[str, Plan]:
    """The catalog from a .json or .toml file, or the shipped default when path is None."""
    if path is None:
        return dict(DEFAULT_CATALOG)
    return parse_catalog(_read_document(path), str(path))


def load_backup_promises(path: Path | None) -> dict[str, int | None]:
    """Which plans of that catalog file (or of the shipped one) promise backups."""
    if path is None:
        return dict(DEFAULT_BACKUP_PROMISES)
    document = _read_document(path)
    parse_catalog(document, str(path))
    return parse_backup_promises(document, str(path))


def _read_document(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CatalogError(f"MAILPROV_PLANS_FILE={path}: {err.strerror}") from None
    try:
        if path.suffix == ".toml":
            document: Any = tomllib.loads(raw.decode("utf-8"))
        elif path.suffix == ".json":
            document = json.loads(raw)
        else:
            raise CatalogError(f"MAILPROV_PLANS_FILE={path}: must end in .json or .toml")
    except (ValueError, UnicodeDecodeError) as err:
        raise CatalogError(
            f"MAILPROV_PLANS_FILE={path}: not valid {path.suffix[1:]}: {err}"
        ) from None
    return document


def plan_for(catalog: Mapping[str, Plan], name: str) -> Plan:
    """The catalog's plan of that name; InvalidPurchaseRequest naming the plans if none."""
    plan = catalog.get(name)
    if plan is None:
        raise InvalidPurchaseRequest(
            "plan", f"must be one of the catalog plans: {', '.join(sorted(catalog))}"
        )
    return plan
