"""ActivateMailDomain's check against the real stack: what it expects is read from our
own records (the local cloud's server, Vault, MailU's export over SSH on the VPS
stand-in) and must be exactly what the purchase handed the customer; the records are
resolved from a real Knot DNS server serving the customer's zone on loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities import hetzner
from activities.activation import ActivationActivities
from activities.dns_check import resolver_from_setting
from activities.ssh import ServerAccess, SshIdentity
from activities.vault import Vault
from devstack.stack import StackInfo
from starter import start_deprovision
from tests.dns_server import knot_serving
from tests.e2e.test_deprovision import QUEUE
from tests.e2e.test_purchase_end_to_end import provision
from workflows.activation_contracts import DnsCheck, DnsCheckRequest, RecordProblem
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
    finally:
        await provider.aclose()
        handle = await start_deprovision(client, DeprovisionRequest(tenant, "e2e-cleanup"), QUEUE)
        assert (await handle.result()).outcome == "deprovisioned"
