"""In-memory doubles for the bench: a provider whose servers boot in a set time, and
activities that do nothing but return what the real ones return.

They exist to measure Temporal-side costs (sandbox, codec, interceptors, actions,
slots) without the local stack's SSH and Vault work in the figures.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.notify import IpAddress
from activities.tenant_claims import TenantClaimActivities
from activities.vps_provider import Action, Server
from workflows.claim_contracts import TenantClaimRequest
from workflows.contracts import (
    AuditEvent,
    DnsRecord,
    DnsRecordsRequest,
    MailuTarget,
    Notification,
    RemoveCredentialsRequest,
    SealedCredentials,
    ServerAddress,
    ServerHandle,
    ServerSpec,
    ServerUpRequest,
    StoreCredentialsRequest,
    StoredCredentials,
)
from workflows.rotation_contracts import RotationScheduleRequest


def purchase(
    purchase_id: str, notify_url: str = "https://shop.example/hooks/mail-ready"
) -> dict[str, Any]:
    """A valid purchase of its own tenant (one mail server per tenant)."""
    return {
        "purchase_id": purchase_id,
        "tenant_id": f"t-{purchase_id}",
        "domain": f"{purchase_id}.example",
        "plan": "starter",
        "requested_by": "bench",
        "notify_url": notify_url,
    }


@dataclass
class BootingProvider:
    """Servers become `running` `boot_seconds` after creation; counts every GET."""

    boot_seconds: float = 0.0
    gets: int = 0
    ptr_changes: int = 0
    _created: dict[int, float] = field(default_factory=dict)

    def add(self, server_id: int) -> None:
        self._created.setdefault(server_id, time.monotonic())

    async def get_action(self, action_id: int) -> Action:
        self.gets += 1
        return Action(action_id, "create_server", "running")

    async def change_dns_ptr(self, server_id: int, ip: str, dns_ptr: str) -> Action:
        self.ptr_changes += 1
        return Action(server_id, "change_dns_ptr", "success")

    async def get_server(self, server_id: int) -> Server | None:
        self.gets += 1
        self.add(server_id)
        booted = time.monotonic() - self._created[server_id] >= self.boot_seconds
        return Server(
            id=server_id,
            name=f"srv-{server_id}",
            status="running" if booted else "initializing",
            ipv4="192.0.2.10" if booted else None,
            dns_ptr=None,
            labels={},
            ipv6="2001:db8::1" if booted else None,  # the shipped plans are dual-stack
        )


class NoopActivities:
    """The product's activities (same names, types) doing no I/O. `one_look_bring_up` is
    the previous wait design: one look per attempt, the retry policy as the loop."""

    def __init__(self, provider: BootingProvider) -> None:
        self._provider = provider
        self._next_id = 0

    @activity.defn(name="create_server")
    async def create_server(self, spec: ServerSpec) -> ServerHandle:
        self._next_id += 1
        self._provider.add(self._next_id)
        return ServerHandle(spec.tenant_id, self._next_id, spec.name, "ssh-ed25519 AAAA bench")

    @activity.defn(name="bring_up_server")
    async def one_look_bring_up(self, request: ServerUpRequest) -> ServerAddress:
        current = await self._provider.get_server(request.server.server_id)
        if current is None or current.status != "running" or current.ipv4 is None:
            raise ApplicationError("not running yet", type="ServerNotReady")
        return ServerAddress(current.id, current.ipv4, current.ipv6)

    @activity.defn(name="rotate_host_key")
    async def rotate_host_key(self, target: MailuTarget) -> str:
        return target.host_public_key

    @activity.defn(name="set_up_mailu")
    async def set_up_mailu(self, request: DnsRecordsRequest) -> list[DnsRecord]:
        return []

    @activity.defn(name="create_admin_credentials")
    async def create_admin_credentials(self, target: MailuTarget) -> SealedCredentials:
        return SealedCredentials(f"admin@{target.domain}", "v1.bench-envelope")

    @activity.defn(name="store_credentials")
    async def store_credentials(self, request: StoreCredentialsRequest) -> StoredCredentials:
        return StoredCredentials(f"smtp/{request.tenant_id}/admin", 1, "2026-01-01T00:00:00Z")

    @activity.defn(name="record_audit_event")
    async def record_audit_event(self, event: AuditEvent) -> bool:
        return True

    @activity.defn(name="notify_customer")
    async def notify_customer(self, notification: Notification) -> None:
        return None

    @activity.defn(name="remove_credentials")
    async def remove_credentials(self, request: RemoveCredentialsRequest) -> bool:
        return True

    @activity.defn(name="delete_server")
    async def delete_server(self, server: ServerHandle) -> bool:
        return True

    @activity.defn(name="ensure_rotation_schedule")
    async def ensure_rotation_schedule(self, request: RotationScheduleRequest) -> str:
        return f"rotate-{request.target.tenant_id}"


async def public_dns(host: str, port: int) -> list[IpAddress]:
    """Admission resolves the notify host; here every name is one public address, so the
    figures stay those of the workflow, not of this machine's resolver."""
    return [ipaddress.ip_address("93.184.216.34")]


async def noop_take_claim(request: TenantClaimRequest) -> str:
    """The claim starts a workflow per tenant at the real thing; here admission only gets
    an answer, so the overhead and scale figures stay those of one purchase's workflow.
    (The cost part uses the real claims: their workflow start is a billable action.)"""
    return "bench-claim-run"


class NoopClaims(TenantClaimActivities):
    """Releases nothing, as noop_take_claim took nothing."""

    @activity.defn(name="release_tenant_claim")
    async def release_tenant_claim(self, request: TenantClaimRequest) -> None:
        return None
