"""`make demo`: one purchase, end to end, on the local stack; `make up` keeps the stack.

1. starts the real Temporal dev server (Web UI on), OpenBao (+ bootstrap), the local
   cloud and a worker;
2. starts a purchase with starter.py (the same CLI a back end uses) and shows progress;
3. proves the result: reads the Vault record with the reader token, decrypts the
   password, and logs in over SMTP AUTH (STARTTLS) to the new local VPS;
4. submits the same purchase again and shows nothing was provisioned twice;
5. stops everything it started, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx

from activities.credentials import read_admin_credentials
from activities.vault import Vault, VaultSettings
from devstack.mail_login import certificate_after_dns, submissions_login
from devstack.stack import Stack, StackInfo
from workflows.contracts import workflow_id_for


def say(message: str) -> None:
    print(message, flush=True)


def run_starter(info: StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    """Run starter.py as a user would; its progress (stderr) streams to the terminal."""
    return subprocess.run(
        info.starter_command(*args), stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )


# MailU's submissions port (465, implicit TLS), as a mail client logs in.
smtp_login = submissions_login


def prove_credentials(info: StackInfo, result: dict[str, object]) -> None:
    reader = Vault(
        VaultSettings(url=info.vault_addr, token=info.reader_token_file.read_text().strip())
    )
    tenant = str(result["tenant_id"])
    record = reader.read_credentials(tenant)
    assert record is not None
    say(f"  vault {result['vault_path']} v{record.version}: keys {sorted(record.data)}")
    say(f"  stored password field is an envelope: {record.data['password'][:24]}...")
    credentials = read_admin_credentials(reader, tenant)
    cloud = info.cloud_url.removesuffix("/v1")
    server = httpx.get(f"{cloud}/_devstack/servers/{result['server_id']}", timeout=10)
    server.raise_for_status()
    # MailU has a certificate only once the customer's DNS points at the server.
    say("  the customer publishes the DNS records; MailU's certbot gets its certificate")
    cafile = info.state_dir / f"vps-{result['server_id']}-cert.pem"
    cafile.write_text(certificate_after_dns(Path(server.json()["server"]["state_dir"])))
    reply = smtp_login(
        str(result["ipv4"]), info.smtp_port, cafile, credentials.username, credentials.password
    )
    where = f"{result['ipv4']}:{info.smtp_port}"
    say(f"  SMTP AUTH (submissions, TLS) as {credentials.username} at {where}: {reply}")
    say(f"  addresses: IPv4 {result['ipv4']}, IPv6 {result['ipv6']}; DNS records to publish:")
    records = result["dns_records"]
    assert isinstance(records, list)
    for record in records:
        line = str(record["zone_line"])
        say(f"    {line if len(line) <= 110 else line[:100] + '...'}")


def show_history_encryption(info: StackInfo, workflow_id: str) -> None:
    """What the Temporal server stores, and what an operator sees through the codec server."""
    stored = json.loads(info.workflow_history(workflow_id, decoded=False))
    decoded = json.loads(info.workflow_history(workflow_id, decoded=True))
    encodings = [p["metadata"]["encoding"] for p in _payloads(stored)]
    encrypted = sum(base64.b64decode(e) == b"binary/encrypted" for e in encodings)
    started = decoded["events"][0]["workflowExecutionStartedEventAttributes"]["input"]
    first_input = base64.b64decode(started["payloads"][0]["data"]).decode()
    say(
        f"  the Temporal server holds {encrypted} of {len(encodings)} payloads encrypted; through "
        f"the codec server an operator sees the input:\n    {first_input[:110]}..."
    )


def _payloads(node: object) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        if "metadata" in node and "encoding" in node.get("metadata", {}):
            return [node]
        return [p for value in node.values() for p in _payloads(value)]
    if isinstance(node, list):
        return [p for value in node for p in _payloads(value)]
    return []


def count_servers(info: StackInfo, purchase_id: str) -> int:
    token = (info.state_dir / "cloud.token").read_text().strip()
    response = httpx.get(
        f"{info.cloud_url}/servers",
        params={"label_selector": f"purchase={purchase_id}"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    response.raise_for_status()
    return len(response.json()["servers"])


async def demo(state_dir: Path) -> int:
    purchase_id = f"demo-{uuid.uuid4().hex[:8]}"
    async with Stack(state_dir, web_ui=True) as stack:
        info = await stack.start(progress=lambda step: say(f"stack: {step}"))
        say(
            f"stack: ready (Temporal {info.temporal_address}, Web UI {info.temporal_ui_url}, "
            f"OpenBao {info.vault_addr}, cloud {info.cloud_url})\n"
        )
        request = [
            "start",
            "--purchase-id",
            purchase_id,
            "--tenant-id",
            "demo-tenant",
            "--domain",
            "demo-tenant.example",
            "--plan",
            "starter",
            "--requested-by",
            "make-demo",
            "--notify-url",
            info.notify_url,
            "--wait",
        ]
        say(f"purchase {purchase_id}: starter.py {' '.join(request)}")
        first = run_starter(info, *request)
        if first.returncode != 0:
            say(
                f"demo FAILED: the workflow did not succeed (exit {first.returncode}); "
                f"logs in {info.state_dir / 'logs'}"
            )
            return 1
        result = json.loads(first.stdout)
        say("result:\n" + json.dumps(result, indent=2))

        say("\nproving the stored credentials work:")
        prove_credentials(info, result)

        say("\npayload encryption (temporal workflow show, without and with --codec-endpoint):")
        show_history_encryption(info, workflow_id_for(purchase_id))

        say(f"\nsubmitting purchase {purchase_id} again:")
        again = run_starter(info, *request)
        second = json.loads(again.stdout) if again.returncode == 0 else None
        servers = count_servers(info, purchase_id)
        say(f"  same result: {second == result}; servers for this purchase at the cloud: {servers}")
        if second != result or servers != 1:
            say("demo FAILED: the second submission was not deduplicated")
            return 1
        say("\ndemo OK: provisioned once, credentials in Vault work for SMTP login")
        return 0


def operator_environment(info: StackInfo) -> list[str]:
    """Shell lines that point `temporal`, starter.py and the TS client at this stack.

    The codec settings go in the environment (TEMPORAL_CODEC_ENDPOINT/_AUTH, read by
    the temporal CLI), so every `temporal` command decodes and the token is not in argv.
    """
    return [
        f'export PATH="{Path(sys.executable).parent}:$PATH"',
        f"export TEMPORAL_ADDRESS={info.temporal_address} TEMPORAL_CODEC_ENDPOINT={info.codec_url}",
        f'export TEMPORAL_CODEC_AUTH="Bearer $(cat {info.codec_token_file})"',
        f"export MAILPROV_CODEC_KEYS_FILE={info.codec_keys_file}"
        f" VAULT_ADDR={info.vault_addr} VAULT_TOKEN_FILE={info.reader_token_file}",
    ]


def web_ui_decoding(info: StackInfo) -> str:
    """How a browser gets decoded payloads: the codec server wants a credential from it
    too, and the Web UI can only send a cookie (codec_server.py)."""
    return (
        f"To see decoded payloads in the Web UI, sign this browser in once at "
        f"{info.codec_url}/login with the token in {info.codec_token_file}, then in the "
        "UI's codec server settings choose 'Use my browser setting', endpoint "
        f"{info.codec_url}, and turn on 'Include cross-origin credentials'."
    )


def operator_examples(info: StackInfo) -> list[str]:
    """What `make up` suggests running (docs/OPERATIONS.md explains each)."""
    return [
        "python starter.py start --purchase-id p-1 --tenant-id acme --domain acme.example"
        f" --plan starter --requested-by me --notify-url {info.notify_url} --wait",
        "python starter.py credentials acme",
        "temporal workflow list --query 'WorkflowType=\"ProvisionMailTenant\"'",
        "temporal workflow show -w purchase-p-1 --detailed   # every payload, decoded",
        "temporal workflow show -w purchase-p-1 -o json      # the same as JSON",
    ]


async def up(state_dir: Path) -> int:
    async with Stack(state_dir, web_ui=True) as stack:
        info = await stack.start(progress=lambda step: say(f"stack: {step}"))
        lines = [*operator_environment(info), *operator_examples(info)]
        say(
            f"\nstack is up (Ctrl-C stops it). Web UI: {info.temporal_ui_url}\n"
            + web_ui_decoding(info)
            + "\nIn another terminal, from this directory "
            "(docs/OPERATIONS.md has the rest):\n"
            + "".join(f"  {line}\n" for line in lines)
            + f"logs: {info.state_dir / 'logs'}"
        )
        while True:
            await asyncio.sleep(3600)


def main() -> int:
    parser = argparse.ArgumentParser(description="run the demo on the local stack")
    parser.add_argument("--up", action="store_true", help="start the stack and keep it running")
    parser.add_argument("--state-dir", type=Path, help="default: a fresh temp dir")
    args = parser.parse_args()
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="mailprov-demo-"))
    started = time.monotonic()
    code = asyncio.run(until_signalled(up(state_dir) if args.up else demo(state_dir)))
    if code == 130:
        say("\ninterrupted: everything the demo started has been stopped")
    else:
        say(f"(took {time.monotonic() - started:.0f}s; state and logs in {state_dir})")
    return code


async def until_signalled(run: Coroutine[Any, Any, int]) -> int:
    """Run the demo; Ctrl-C or SIGTERM cancels it, and `async with Stack` stops everything."""
    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 130


if __name__ == "__main__":
    sys.exit(main())
