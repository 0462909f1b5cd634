"""The purchase's webhook body is the dict `dataclasses.asdict` gave, key for key and in
the same order (workflows/provision.py ready_event builds it without asdict's copies)."""

from __future__ import annotations

import json
from dataclasses import asdict

from workflows.contracts import DnsRecord, ProvisionResult
from workflows.provision import ready_event


def _result(records: int, ipv6: str | None) -> ProvisionResult:
    return ProvisionResult(
        purchase_id="p-1",
        tenant_id="acme",
        server_id=42,
        server_name="mail-acme",
        ipv4="192.0.2.7",
        ipv6=ipv6,
        webmail_url="https://mail.acme.example",
        vault_path="smtp/data/acme/admin",
        vault_version=1,
        notified=False,
        dns_records=[
            DnsRecord(f"r{i}.acme.example.", "TXT", 3600, f"v={i}", f"r{i} 3600 IN TXT v={i}")
            for i in range(records)
        ],
    )


def test_the_webhook_body_is_what_asdict_gave_in_the_same_order() -> None:
    for result in (_result(0, None), _result(6, "2001:db8::7")):
        before = {"event": "mail_server_ready", **asdict(result)}
        before.pop("notified")
        after = ready_event(result)
        assert after == before
        # Same order, so the same JSON bytes in the history.
        assert json.dumps(after) == json.dumps(before)
        assert after["dns_records"] is not result.dns_records
