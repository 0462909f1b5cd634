"""ActivateMailDomain against the real stack: what the DNS check expects is read from our
own records (the local cloud's server, Vault, MailU's export over SSH on the VPS
stand-in) and must be exactly what the purchase handed the customer; the records are
resolved from a real Knot DNS server serving the customer's zone on loopback. The
whole run then waits for MailU's certificate from a real CA (pebble, through Debian's
certbot on the front stand-in) and for validating TLS handshakes on 443, 465 and 993.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities import hetzner
from activities.activation import ActivationActivities
from activities.audit import SqliteAuditStore
from activities.dns_check import resolver_from_setting
from activities.ssh import ServerAccess, SshIdentity
from activities.vault import Vault
from devstack.stack import StackInfo
from starter import activation_status, start_deprovision
from tests.dns_server import knot_serving
from tests.e2e.activation_world import (
    activation_world,
    secret_texts,
    server_state_dir,
    status_until,
)
from tests.e2e.conftest import CloudControl, new_request, run_in_process_worker
from tests.e2e.test_deprovision import QUEUE
from tests.e2e.test_purchase_end_to_end import provision
from workflows.activation_contracts import (
    ACTIVATED_EVENT,
    DNS_PUBLISHED_SIGNAL,
    MAIL_ACTIVE_WEBHOOK,
    ActivationResult,
    ActivationStatus,
    DnsCheck,
    DnsCheckRequest,
    RecordProblem,
    TlsCheck,
    activation_workflow_id,
)
from workflows.contracts import ProvisionResult, workflow_id_for
from workflows.deprovision_contracts import DeprovisionRequest


async def test_the_check_expects_what_the_purchase_handed_out_and_finds_what_is_missing(
    client: Client, info: StackInfo, worker_vault: Vault, purchase: dict[str, Any]
) -> None:
    result = await provision(client, purchase)
    tenant, domain = purchase["tenant_id"], purchase["domain"]
    provider = hetzner.from_settings(
        {"token": (info.state_dir / "cloud.token").read_text().strip(), "api_url": info.cloud_url}
    )
    access = ServerAccess(
        SshIdentity.from_file(Path(info.worker_env["MAILPROV_SSH_KEY_FILE"])), port=info.ssh_port
    )
    handed_out = [record.zone_line for record in result.dns_records]
    dkim = next(r for r in result.dns_records if r.name.startswith("dkim._domainkey."))
    try:
        # The customer pasted every line we gave them.
        with knot_serving({domain: handed_out}) as knot:
            check: DnsCheck = await ActivityEnvironment().run(
                ActivationActivities(
                    worker_vault, provider, access, resolver_from_setting(knot.resolver_setting)
                ).check_mail_dns,
                DnsCheckRequest(tenant),
            )
        assert (check.domain, check.records_checked) == (domain, len(result.dns_records))
        assert check.missing == []
        # ... all but the DKIM record.
        with knot_serving(
            {domain: [line for line in handed_out if line != dkim.zone_line]}
        ) as knot:
            partial: DnsCheck = await ActivityEnvironment().run(
                ActivationActivities(
                    worker_vault, provider, access, resolver_from_setting(knot.resolver_setting)
                ).check_mail_dns,
                DnsCheckRequest(tenant),
            )
        assert partial.missing == [RecordProblem(dkim.name, "TXT", dkim.value, "absent")]
        # The TLS stage, once the customer removed the mail host's A/AAAA again: no
        # certificate (front's certbot never reached itself), and the check says why.
        host = f"mail.{domain}"
        without_host = [
            r.zone_line
            for r in result.dns_records
            if not (r.type in ("A", "AAAA") and r.name.rstrip(".") == host)
        ]
        with knot_serving({domain: without_host}) as knot:
            tls: TlsCheck = await ActivityEnvironment().run(
                ActivationActivities(
                    worker_vault, provider, access, resolver_from_setting(knot.resolver_setting)
                ).check_mail_tls,
                DnsCheckRequest(tenant),
            )
        assert tls.certificate is None and not tls.front_restart_needed
        assert tls.missing[0].startswith(f"no certificate for {host} yet")
        because = ": front's certbot asks the CA only once it points at the server"
        assert f"A {host} absent{because}" in tls.missing
    finally:
        await provider.aclose()
        handle = await start_deprovision(client, DeprovisionRequest(tenant, "e2e-cleanup"), QUEUE)
        assert (await handle.result()).outcome == "deprovisioned"


# --- the whole activation against the real outside world --------------------------------
#
# tests/e2e/activation_world.py: Knot DNS serves the customer's zone (empty at first, then
# the lines we handed out), pebble is the CA, Debian's certbot runs on the MailU front
# stand-in, and the workflow runs on an in-process worker pointed at that world.


async def test_the_activation_waits_for_dns_then_the_certificate_restarts_front_and_ends_active(
    client: Client, info: StackInfo, cloud: CloudControl
) -> None:
    request = new_request(info)
    tenant, domain = request.tenant_id, request.domain
    task_queue = f"activation-{uuid.uuid4().hex[:8]}"
    outcome: dict[str, Any] = {}

    async def activation_story() -> None:
        purchase = await client.get_workflow_handle(
            workflow_id_for(request.purchase_id), result_type=ProvisionResult
        ).result()
        handed_out = [record.zone_line for record in purchase.dns_records]
        state_dir = server_state_dir(cloud, request.purchase_id)
        live = state_dir / "root/mailu/certs/letsencrypt/live"
        handle = client.get_workflow_handle(activation_workflow_id(tenant))
        try:
            # 1. Nothing published yet: the check says what is missing, the wait goes on.
            with world.customer_zone(domain, []):
                await handle.signal(DNS_PUBLISHED_SIGNAL)
                outcome["dns_wrong"] = await status_until(
                    client, tenant, lambda s: s.checks >= 1 and s.state == "waiting_for_dns"
                )
            # 2. Published; the CA cannot be reached from the server yet (no world file):
            #    DNS verified, no certificate, reported as what is missing.
            with world.customer_zone(domain, handed_out):
                await handle.signal(DNS_PUBLISHED_SIGNAL)
                outcome["no_certificate"] = await status_until(
                    client, tenant, lambda s: s.tls_checks >= 1 and s.state == "waiting_for_tls"
                )
                assert not live.exists()
                # 3. The CA is there: front's certbot gets both certificates; the back
                #    end says "check now" once they exist (as a customer's button would).
                world.let_front_reach_the_ca(state_dir)
                await world.certificate_issued(state_dir)
                await handle.signal(DNS_PUBLISHED_SIGNAL)
                outcome["result"] = await client.get_workflow_handle(
                    activation_workflow_id(tenant), result_type=ActivationResult
                ).result()
                outcome["status"] = await activation_status(client, tenant)
            outcome["secrets"] = secret_texts(state_dir)
            [server] = cloud.servers_of(request.purchase_id)
            outcome["commands"] = [c["command"] for c in cloud.commands(server["id"])]
        finally:
            done = await start_deprovision(
                client, DeprovisionRequest(tenant, "e2e-cleanup"), task_queue
            )
            assert (await done.result()).outcome == "deprovisioned"

    with activation_world() as world:
        workflow_id, failure = await run_in_process_worker(
            info,
            client,
            task_queue,
            None,
            request,
            extra_env=world.worker_env(info),
            after=activation_story,
        )
    assert failure is None

    dns_wrong: ActivationStatus = outcome["dns_wrong"]
    assert {(p.type, p.problem) for p in dns_wrong.missing} >= {("A", "absent"), ("MX", "absent")}
    no_certificate: ActivationStatus = outcome["no_certificate"]
    assert no_certificate.dns_verified_at is not None
    assert no_certificate.tls_missing[0].startswith(f"no certificate for mail.{domain} yet")
    assert any(m.startswith("465: connection refused") for m in no_certificate.tls_missing)

    result: ActivationResult = outcome["result"]
    assert (result.outcome, result.stage) == ("active", "active")
    # MailU 2024.06: dovecot needed front restarted for the first certificate.
    assert result.front_restarted and result.notified
    assert result.certificate_not_after is not None
    status: ActivationStatus = outcome["status"]
    assert status.state == "active" and status.front_restarts == 1 and status.tls_missing == []

    activated = [
        row for row in SqliteAuditStore(info.audit_db).rows() if row.event == ACTIVATED_EVENT
    ]
    [row] = [r for r in activated if r.tenant_id == tenant]
    assert row.details["tls_ports"] == "443,465,993" and row.details["front_restarted"] == "true"
    assert row.details["certificate_issuer"].startswith("Pebble Intermediate CA")
    hooks = [n["body"] for n in cloud.notifications() if n["body"].get("tenant_id") == tenant]
    [active] = [body for body in hooks if body.get("event") == MAIL_ACTIVE_WEBHOOK]
    assert active["webmail_url"] == f"https://mail.{domain}" and active["tls_ports"] == [
        443,
        465,
        993,
    ]

    # The ACME account key and the certificates' private keys never left the server: the
    # activation read the public chains only, and restarted front once.
    commands = outcome["commands"]
    assert not [c for c in commands if "privkey" in c or "accounts" in c]
    assert any(c.endswith("live/mailu/fullchain.pem") for c in commands)
    assert sum(c.endswith("restart front") for c in commands) == 1
    secrets = outcome["secrets"]
    assert len(secrets) >= 3
    history = info.workflow_history(activation_workflow_id(tenant), decoded=True).decode()
    audit = info.audit_db.read_bytes().decode("latin-1")
    notified = json.dumps(hooks)
    for secret in secrets:
        assert secret not in history and secret not in audit and secret not in notified
    assert workflow_id == workflow_id_for(request.purchase_id)
