"""Which `VpsProvider` the worker uses, chosen by MAILPROV_PROVIDER (default: hetzner).

Each provider registers a `ProviderEntry`: how it reads its own settings from the
environment (so the worker holds no provider-specific names) and how it is built from
them. A second provider is one more module and one `register_provider` call; the
workflows and VpsActivities stay as they are (tests/unit/test_provider_registry.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from activities import hetzner
from activities.vps_provider import VpsProvider

DEFAULT_PROVIDER = "hetzner"

# (environment, read_secret) -> settings; read_secret(NAME) reads NAME or NAME_FILE.
ReadSettings = Callable[[Mapping[str, str], Callable[[str], str]], dict[str, str]]


@dataclass(frozen=True)
class ProviderEntry:
    read_settings: ReadSettings
    build: Callable[[Mapping[str, str]], VpsProvider]


def _hetzner_settings(env: Mapping[str, str], read_secret: Callable[[str], str]) -> dict[str, str]:
    return {
        "token": read_secret("HCLOUD_TOKEN"),
        "api_url": env.get("HCLOUD_API_URL", "").strip() or hetzner.DEFAULT_API_URL,
    }


_PROVIDERS: dict[str, ProviderEntry] = {
    "hetzner": ProviderEntry(_hetzner_settings, hetzner.from_settings),
}


class UnknownProvider(ValueError):
    """MAILPROV_PROVIDER names no registered provider."""


def register_provider(name: str, entry: ProviderEntry) -> None:
    _PROVIDERS[name] = entry


def provider_entry(name: str) -> ProviderEntry:
    try:
        return _PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS))
        raise UnknownProvider(f"MAILPROV_PROVIDER={name!r}: must be one of {known}") from None
