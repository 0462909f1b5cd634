"""`make faults` for ActivateMailDomain's stage 2: the certificate and the TLS ports.

The outside world is real (as in tests/e2e/test_activation.py): Knot DNS serves the
customers' zones (devstack/dns_server.py), pebble is the CA (devstack/acme_server.py),
and each server's MailU front runs Debian's certbot against it (devstack/mailu_front.py,
MailU 2024.06). The workers resolve through that Knot, trust pebble's roots and shake
hands with the fronts' 443/465/993 (MAILPROV_DNS_RESOLVERS, MAILPROV_TLS_CA_FILE,
MAILPROV_TLS_CHECK_PORTS; workers restarted with them, and back after).

The scenario's tenants are dealt round-robin into these groups (size 1: `kill` only,
the cheap one make test runs):

    kill               front has its certificates when the back end signals (one TLS
                       round: check, restart front, check); the first `restart front` is
                       refused by the engine (exit 1, docker/compose#739), and all
                       workers are SIGKILLed while the run restarts front (the step lasts
                       until its retry 10 s later)
    restart_not_taken  `docker compose restart front` answers 0 once without restarting
                       anything (front's dovecot still down: Mailu/Mailu#3827, dovecot
                       starts only with front; the real users' fix is another
                       `docker compose restart front`, Mailu/Mailu#395 and #1474); its
                       back end signals once the kills are over, so no kill uses the
                       fault up unseen
    ca_down            the CA down while front's certbot first asks (connection refused,
                       a Let's Encrypt outage), then refusing every request with badNonce
                       (pebble PEBBLE_WFE_NONCEREJECT=100), then well: front's certbot
                       fails and tries again a "day" later (core/nginx/letsencrypt.py
                       sleeps 86400 s after each run; compressed in the stand-in, see
                       AcmeWorld.day_seconds), then gets the certificates; all workers
                       SIGKILLed while such a run checks TLS (the certificate being
                       obtained). Real users hit the same wait after a failed first
                       attempt: Mailu/Mailu#1474 (port 80 closed, "Mailu will
                       retry/check"), #2303 and #2429 (Let's Encrypt's rate limits)
    dns_removed        the customer's A/AAAA of mail.{domain} removed after the DNS stage
                       passed, before front's certbot asked: front's reachability poll
                       never reaches itself, certbot never runs (Mailu/Mailu#3827's log:
                       "Exception while fetching http://.../.well-known/acme-challenge/
                       testing"), the run keeps waiting at stage tls saying "no
                       certificate ... yet" and that the A record is absent; records
                       back: certificate, activation

Every run must end `active` (the faults clear), with one mail_domain_dns_verified and
one mail_domain_activated row and no expiry row, one certificate issued per lineage
(certbot's archive holds cert1.pem only: no second order, front's own certbot reruns
at each restart use --keep-until-expiring) and front really restarted exactly once
(commands.jsonl; a `restart front` answered by an armed fault is counted apart), and
the stored credentials log in on 465, which presents the CA's certificate (a
purchase's own login check is deferred to here: it would make the stand-in publish
DNS and write a self-signed certificate before the CA is met). Anything else is
*lost*. Then the tenants are deprovisioned; nothing is ever deleted by the activation
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle

from activities.credentials import read_admin_credentials
from activities.mail_tls import CA_FILE_ENV, PORTS_ENV
from devstack.acme_server import Pebble
from devstack.dns_server import DnsServer, knot_serving
from devstack.faults_lifecycle import Handles
from devstack.faults_rotation_activation import (
    RESIGNAL_SECONDS,
    RESOLVERS,
    RotationActivationFaultRun,
)
from devstack.faults_run import Purchase, ScenarioResult, say
from devstack.mail_login import submissions_login
from devstack.mailu_front import CERT_NAMES, AcmeWorld
from devstack.processes import free_port
from workflows.activation_contracts import (
    ACTIVATED_EVENT,
    DNS_PUBLISHED_SIGNAL,
    DNS_VERIFIED_EVENT,
    GAVE_UP_EVENT,
    ActivationResult,
    ActivationStatus,
    activation_workflow_id,
)
from workflows.contracts import ProvisionResult

GROUPS = ("kill", "restart_not_taken", "ca_down", "dns_removed")
# The states of a run at stage 2 (workflows/activation.py).
TLS_ACTIVE = frozenset({"checking_tls", "restarting_front"})
# How long front may take to get its certificates from a CA that works, and how long
# the whole stage may take (a round after a failed one is a minute away at least:
# SIGNAL_CHECK_GAP, FIRST_TLS_CHECK_AFTER).
CERTIFICATE_WAIT_SECONDS = 180.0
STAGE_WAIT_SECONDS = 600.0
RESTART_FRONT = "restart front"
# What Compose prints when the engine will not restart a container (docker/compose#739,
# "Error response from daemon: Cannot restart container ...").
DAEMON_REFUSED = (
    "Error response from daemon: Cannot restart container mailu-front-1: "
    "container is marked for removal and cannot be started\n"
)
# The `restart front` exec requests each group's server sees: (run, answered by a fault).
RESTARTS = {"kill": (1, 1), "restart_not_taken": (1, 1)}
LETSENCRYPT = "root/mailu/certs/letsencrypt"
# What certbot logs when the CA is down (requests' ConnectionError) or refuses nonces.
CA_REFUSED_MARK = "Connection refused"
BAD_NONCE_MARK = "badNonce"
REQUESTING_MARK = "Requesting a certificate"  # certbot 2.1, before each new order


@dataclass
class TlsTenant:
    purchase: Purchase
    group: str
    state_dir: Path
    handle: WorkflowHandle[Any, Any]
    outcome: Any = None  # the run's ActivationResult, or what it failed with
    login: str | None = "not tried"  # what the SMTP login after activation met (None: 235)
    problems: list[str] = field(default_factory=list)

    @property
    def tenant(self) -> str:
        return self.purchase.request.tenant_id

    @property
    def domain(self) -> str:
        return self.purchase.request.domain

    def zone(self, with_mail_host: bool = True) -> list[str]:
        """The records we handed out, as the customer published them (without the mail
        host's A/AAAA: the customer removed them again)."""
        assert self.purchase.result is not None
        return [
            record.zone_line
            for record in self.purchase.result.dns_records
            if with_mail_host
            or not (record.type in ("A", "AAAA") and record.name.rstrip(".") == self.mail_host)
        ]

    @property
    def mail_host(self) -> str:
        return f"mail.{self.domain}"

    def issued(self, cert_name: str) -> list[str]:
        """The certificates certbot keeps for the lineage (one per order it completed)."""
        archive = self.state_dir / LETSENCRYPT / "archive" / cert_name
        return sorted(p.name for p in archive.glob("cert*.pem")) if archive.is_dir() else []

    def has_certificates(self) -> bool:
        live = self.state_dir / LETSENCRYPT / "live"
        return all((live / name / "fullchain.pem").is_file() for name, _ in CERT_NAMES)

    def certbot_said(self, mark: str) -> bool:
        logs = self.state_dir / "certbot"
        files = [logs / "certbot.log", *logs.glob("logs/letsencrypt.log*")]
        return any(mark in f.read_text(errors="replace") for f in files if f.is_file())

    def front_restarts(self) -> tuple[int, int]:
        """`restart front` exec requests: (run, answered by an armed fault)."""
        log = self.state_dir / "commands.jsonl"
        run = injected = 0
        for line in log.read_text().splitlines() if log.is_file() else []:
            entry = json.loads(line)
            if RESTART_FRONT in (entry.get("command") or ""):
                if entry.get("injected"):
                    injected += 1
                else:
                    run += 1
        return run, injected


class AcmeWorldOutside:
    """Knot (restartable with other zones on its port), a pebble that stays up and one
    that `make faults` breaks, and the workers' trust-anchor bundle of both roots."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dns = DnsServer("127.0.0.1", free_port())
        self.steady = Pebble(directory / "steady-ca", self.dns)
        self.faulty = Pebble(directory / "faulty-ca", self.dns)
        self.ca_bundle = directory / "ca-bundle.pem"
        self.https_port, self.imaps_port = free_port(), free_port()
        self._knot: contextlib.ExitStack | None = None

    def serve_zones(self, zones: dict[str, list[str]]) -> None:
        """Serve `zones` from now on (Knot restarted on the same port, as a DNS provider
        keeps answering at its address after an edit)."""
        self.close_zones()
        stack = contextlib.ExitStack()
        stack.enter_context(knot_serving(zones, port=self.dns.port))
        self._knot = stack

    def close_zones(self) -> None:
        if self._knot is not None:
            self._knot.close()
            self._knot = None

    def write_bundle(self) -> None:
        """Every root a running pebble issues from (a restarted pebble has a new one)."""
        roots = [p.root.read_text() for p in (self.steady, self.faulty) if p.running]
        tmp = self.ca_bundle.with_name(self.ca_bundle.name + ".tmp")
        tmp.write_text("".join(roots))
        tmp.replace(self.ca_bundle)

    def world_for(self, pebble: Pebble) -> AcmeWorld:
        server = pebble.server
        return AcmeWorld(
            server.directory_url,
            str(server.listener_ca),
            server.http_port,
            self.dns.resolver_setting,
            self.https_port,
            self.imaps_port,
        )

    def close(self) -> None:
        self.steady.stop()
        self.faulty.stop()
        self.close_zones()


class ActivationTlsFaultRun(RotationActivationFaultRun):
    """The activation's certificate/TLS-stage scenario, on the same stack."""

    async def activation_tls(self, size: int) -> ScenarioResult:
        result = ScenarioResult(
            "activation TLS: CA down/badNonce, SIGKILL, restart not taken, DNS removed"
        )
        # A purchase's check logs in over 465, which makes the stand-in (without a CA)
        # write its self-signed certificate as if DNS were published; these tenants'
        # fronts must meet the real CA first, so the login is checked after activation.
        self.smtp_deferred = True
        try:
            purchases = await self.bought(size, "activation_tls", result)
        finally:
            self.smtp_deferred = False
        tenants = [
            TlsTenant(
                purchase,
                GROUPS[index % len(GROUPS)],
                await self.state_dir_of(purchase),
                self.client.get_workflow_handle(
                    activation_workflow_id(purchase.request.tenant_id),
                    result_type=ActivationResult,
                ),
            )
            for index, purchase in enumerate(purchases)
        ]
        armed = 0
        with tempfile.TemporaryDirectory(prefix="mailprov-acme-") as tmp:
            outside = AcmeWorldOutside(Path(tmp))
            saved = {
                name: self.info.worker_env.get(name) for name in (RESOLVERS, CA_FILE_ENV, PORTS_ENV)
            }
            try:
                await asyncio.to_thread(outside.serve_zones, {t.domain: t.zone() for t in tenants})
                await asyncio.to_thread(outside.steady.start)
                outside.write_bundle()
                await self.restart_workers(
                    {
                        RESOLVERS: outside.dns.resolver_setting,
                        CA_FILE_ENV: str(outside.ca_bundle),
                        PORTS_ENV: f"443={outside.https_port},465={self.info.smtp_port},"
                        f"993={outside.imaps_port}",
                    }
                )
                armed = await self.restart_faults(tenants)
                await self.tls_story(tenants, outside, result)
                for tenant in tenants:
                    tenant.login = await self.login_problem(tenant, outside.ca_bundle)
            finally:
                await self.restart_workers(saved)
                await asyncio.to_thread(outside.close)
        result.injected += armed - await self.unused_faults(purchases, "command-faults")
        await self.devstack.delete("faults")
        for tenant in tenants:
            self.count(
                result, f"activation of {tenant.tenant} ({tenant.group})", self.tls_problem(tenant)
            )
        await self.release(purchases, result)
        return result

    smtp_deferred = False

    async def _smtp_problem(self, result: ProvisionResult) -> str | None:
        if self.smtp_deferred:
            return None  # checked once the domain is active (login_problem)
        return await super()._smtp_problem(result)

    async def login_problem(self, tenant: TlsTenant, ca_bundle: Path) -> str | None:
        """The stored credentials log in on 465, which presents the certificate the CA
        issued (verified against the CA's root, as a mail client's store would)."""
        assert tenant.purchase.result is not None
        result = tenant.purchase.result
        credentials = await asyncio.to_thread(read_admin_credentials, self.reader, tenant.tenant)
        try:
            reply = await asyncio.to_thread(
                submissions_login,
                str(result.ipv4),
                self.info.smtp_port,
                ca_bundle,
                credentials.username,
                credentials.password,
            )
        except OSError as err:  # smtplib's errors and ssl's verification failure
            return f"SMTP login on 465 after activation failed: {err}"
        return None if reply.startswith("235") else f"SMTP login refused: {reply}"

    async def state_dir_of(self, purchase: Purchase) -> Path:
        assert purchase.result is not None
        response = await self.devstack.get(f"servers/{purchase.result.server_id}")
        response.raise_for_status()
        return Path(response.json()["server"]["state_dir"])

    async def restart_faults(self, tenants: list[TlsTenant]) -> int:
        """`docker compose restart front` answers 0 once, restarting nothing, on the
        `restart_not_taken` servers; the daemon refuses it once on the `kill` servers
        (so the run stays in restarting_front until the retry, where the kill lands)."""
        armed = await self.on_each_bought_server(
            [t.purchase for t in tenants if t.group == "restart_not_taken"],
            "command-faults",
            {"match": RESTART_FRONT, "exit_status": 0, "times": 1},
        )
        return armed + await self.on_each_bought_server(
            [t.purchase for t in tenants if t.group == "kill"],
            "command-faults",
            {"match": RESTART_FRONT, "exit_status": 1, "stderr": DAEMON_REFUSED, "times": 1},
        )

    # ------------------------------------------------------------------ the story

    async def tls_story(
        self, tenants: list[TlsTenant], outside: AcmeWorldOutside, result: ScenarioResult
    ) -> None:
        group = functools.partial(_in_group, tenants)
        # Front reaches the working CA at once for `kill` and `restart_not_taken` (their
        # certificates exist when the back end signals), the broken one for `ca_down`
        # (pebble not started yet: connections refused); `dns_removed` gets its world
        # once its records are gone.
        for tenant in group("kill", "restart_not_taken"):
            outside.world_for(outside.steady).write(tenant.state_dir)
        for tenant in group("ca_down"):
            outside.world_for(outside.faulty).write(tenant.state_dir)
        await self.until_all(
            group("kill", "restart_not_taken"),
            TlsTenant.has_certificates,
            "front's certificates from a working CA",
        )
        # The restart that does not take is met only once the kills are over: a killed
        # attempt would use the armed fault up unseen (its exec cancelled, not logged).
        early = [t for t in tenants if t.group != "restart_not_taken"]
        for tenant in early:
            await tenant.handle.signal(DNS_PUBLISHED_SIGNAL)
        await asyncio.gather(self.kills(tenants, result), self.past_dns(_runs(early)))
        for tenant in group("restart_not_taken"):
            await tenant.handle.signal(DNS_PUBLISHED_SIGNAL)
        await self.past_dns(_runs(tenants))
        await asyncio.gather(
            self.ca_outage(group("ca_down"), outside),
            self.dns_removed(group("dns_removed"), tenants, outside),
            self.until_ended(tenants),
        )

    async def kills(self, tenants: list[TlsTenant], result: ScenarioResult) -> None:
        """All workers SIGKILLed while a `kill` run restarts front (its first restart is
        refused by the engine, so the step lasts until the retry 10 s later: a poll
        sees it), and while a `ca_down` run checks TLS (its certificate still being
        obtained)."""
        measuring: list[asyncio.Future[None]] = []
        kill = functools.partial(self.kill_workers, None)
        for group, state in (("kill", "restarting_front"), ("ca_down", "checking_tls")):
            if await self.when_state(_runs(_in_group(tenants, group)), {state}):
                measuring.append(await self.tls_outage(_runs(tenants), result, kill))
        await asyncio.gather(*measuring)

    async def ca_outage(self, tenants: list[TlsTenant], outside: AcmeWorldOutside) -> None:
        """The CA down until front's certbot failed on it, then refusing every nonce
        until certbot failed again, then well."""
        if not tenants:
            return
        await self.until_all(tenants, lambda t: t.certbot_said(CA_REFUSED_MARK), "certbot refused")
        await asyncio.to_thread(outside.faulty.start, 100)
        outside.write_bundle()
        await self.until_all(tenants, lambda t: t.certbot_said(BAD_NONCE_MARK), "certbot badNonce")
        await asyncio.to_thread(outside.faulty.stop)
        await asyncio.to_thread(outside.faulty.start, 0)
        outside.write_bundle()
        for tenant in tenants:
            if tenant.issued(CERT_NAMES[0][0]):
                tenant.problems.append("a certificate was issued while the CA refused")

    async def dns_removed(
        self, removed: list[TlsTenant], tenants: list[TlsTenant], outside: AcmeWorldOutside
    ) -> None:
        """The mail host's A/AAAA removed after the DNS stage: the run waits at stage tls
        (at least one TLS check seeing no certificate) and front's certbot never runs;
        then the records are back."""
        if not removed:
            return
        gone = {t.tenant for t in removed}
        zones = {t.domain: t.zone(with_mail_host=t.tenant not in gone) for t in tenants}
        await asyncio.to_thread(outside.serve_zones, zones)
        before = {t.tenant: await self.status(t.handle) for t in removed}
        for tenant in removed:
            outside.world_for(outside.steady).write(tenant.state_dir)
        latest: dict[str, ActivationStatus | None] = {}
        deadline = time.monotonic() + STAGE_WAIT_SECONDS
        while time.monotonic() < deadline:
            latest = {t.tenant: await self.status(t.handle) for t in removed}
            if all(_checked_again(before[key], now) for key, now in latest.items()):
                break
            await asyncio.sleep(1)
        for tenant in removed:
            status = latest.get(tenant.tenant)
            if status is None or not _checked_again(before[tenant.tenant], status):
                tenant.problems.append(f"no TLS check while the records were gone: {status}")
            elif not any(
                m.startswith(f"no certificate for {tenant.mail_host}") for m in status.tls_missing
            ) or not any(m.startswith(f"A {tenant.mail_host} absent") for m in status.tls_missing):
                tenant.problems.append(f"records gone, yet: {status.tls_missing}")
            if tenant.issued(CERT_NAMES[0][0]) or tenant.certbot_said(REQUESTING_MARK):
                tenant.problems.append("front's certbot asked the CA while the records were gone")
        await asyncio.to_thread(outside.serve_zones, {t.domain: t.zone() for t in tenants})

    async def until_ended(self, tenants: list[TlsTenant]) -> None:
        """Until every run has ended: a run waiting at stage tls is signalled every
        RESIGNAL_SECONDS, as the back end would once the customer says "check now"."""
        deadline = time.monotonic() + STAGE_WAIT_SECONDS
        signalled = time.monotonic()
        pending = {t.tenant: t for t in tenants}
        while pending and time.monotonic() < deadline:
            for key, tenant in list(pending.items()):
                if await self._closed(tenant.handle):
                    tenant.outcome = await self.ended(tenant.handle)
                    del pending[key]
            if time.monotonic() - signalled >= RESIGNAL_SECONDS:
                for tenant in pending.values():
                    if await self._state(tenant.handle) == "waiting_for_tls":
                        await tenant.handle.signal(DNS_PUBLISHED_SIGNAL)
                signalled = time.monotonic()
            await asyncio.sleep(1)
        for tenant in pending.values():
            tenant.outcome = TimeoutError(f"still {await self._state(tenant.handle)}")

    # ------------------------------------------------------------------ watching

    async def until_all(
        self, tenants: Iterable[TlsTenant], done: Callable[[TlsTenant], bool], what: str
    ) -> None:
        """Poll `done(tenant)` for each until all hold (CERTIFICATE_WAIT_SECONDS); a
        tenant for which it never held gets a problem naming `what`."""
        waiting = list(tenants)
        deadline = time.monotonic() + CERTIFICATE_WAIT_SECONDS
        while waiting and time.monotonic() < deadline:
            waiting = [t for t in waiting if not done(t)]
            await asyncio.sleep(0.5)
        for tenant in waiting:
            tenant.problems.append(f"never saw {what}")

    async def status(self, handle: WorkflowHandle[Any, Any]) -> ActivationStatus | None:
        with contextlib.suppress(Exception):
            status: ActivationStatus = await handle.query("status", result_type=ActivationStatus)
            return status
        return None

    async def when_state(self, runs: Handles, states: set[str]) -> str | None:
        """Until a run is in one of `states` (which one); None once all ended (or
        none got there within STAGE_WAIT_SECONDS)."""
        if not runs:
            return None
        deadline = time.monotonic() + STAGE_WAIT_SECONDS
        while time.monotonic() < deadline:
            found = [await self._state(handle) for handle in runs.values()]
            for state in found:
                if state in states:
                    return state
            if all([await self._closed(h) for h in runs.values()]):
                return None
            await asyncio.sleep(0.05)
        return None

    async def tls_outage(
        self, runs: Handles, result: ScenarioResult, fault: Any
    ) -> asyncio.Future[None]:
        """Inject `fault` (returns once the workers are back); then, in the returned
        task, for each run caught checking TLS or restarting front, the seconds until
        the step it was in completed (its status moved on: another state, one more TLS
        check or restart, or ended). Measured aside, so that the next fault's watch
        starts at once (the step after a killed one is often seconds away)."""
        before = {}
        for key, handle in runs.items():
            status = await self.status(handle)
            if status is not None and status.state in TLS_ACTIVE:
                before[key] = status
        await fault()
        result.injected += 1
        return asyncio.ensure_future(self._recovered(runs, before, result, time.monotonic()))

    async def _recovered(
        self,
        runs: Handles,
        before: dict[str, ActivationStatus],
        result: ScenarioResult,
        restored: float,
    ) -> None:
        deadline = restored + STAGE_WAIT_SECONDS
        while before and time.monotonic() < deadline:
            for key, old in list(before.items()):
                now = await self.status(runs[key])
                moved = now is None and await self._closed(runs[key])
                if moved or (now is not None and _moved_on(old, now)):
                    result.recoveries.append((time.monotonic() - restored, old.state))
                    del before[key]
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ the checks

    def tls_problem(self, tenant: TlsTenant) -> str | None:
        outcome = tenant.outcome
        say(f"  activation {tenant.handle.id} ({tenant.group}): {outcome!r}"[:300])
        if tenant.problems:
            return "; ".join(tenant.problems)
        if not isinstance(outcome, ActivationResult):
            return f"did not end: {getattr(outcome, 'cause', None) or outcome!r}"
        # front_restarted is not required: a run whose worker died after front's restart
        # ran cannot tell (the retry finds it not needed); commands.jsonl says below.
        if (outcome.outcome, outcome.stage) != ("active", "active"):
            return f"result {outcome}"
        events = self.events_of(tenant.handle.id)
        if (events.count(DNS_VERIFIED_EVENT), events.count(ACTIVATED_EVENT)) != (1, 1) or (
            GAVE_UP_EVENT in events
        ):
            return f"audit rows {events}"
        orders = {name: tenant.issued(name) for name, _ in CERT_NAMES}
        if any(len(issued) != 1 for issued in orders.values()):
            return f"certificates issued {orders}, expected one per lineage"
        restarts = tenant.front_restarts()
        expected = RESTARTS.get(tenant.group, (1, 0))
        if restarts != expected:
            return f"front restarts (run, not taken) {restarts}, expected {expected}"
        if tenant.group == "ca_down" and not (
            tenant.certbot_said(CA_REFUSED_MARK) and tenant.certbot_said(BAD_NONCE_MARK)
        ):
            return "certbot never met the CA's outage and its badNonce refusals"
        return tenant.login


def _runs(tenants: list[TlsTenant]) -> Handles:
    return {t.tenant: t.handle for t in tenants}


def _in_group(tenants: list[TlsTenant], *names: str) -> list[TlsTenant]:
    return [t for t in tenants if t.group in names]


def _moved_on(old: ActivationStatus, now: ActivationStatus) -> bool:
    return (
        now.state != old.state
        or now.tls_checks > old.tls_checks
        or now.front_restarts > old.front_restarts
        or len(now.steps) > len(old.steps)
    )


def _checked_again(before: ActivationStatus | None, now: ActivationStatus | None) -> bool:
    """A TLS check ran since `before` and the run waits at stage tls again."""
    return (
        before is not None
        and now is not None
        and now.tls_checks > before.tls_checks
        and now.state == "waiting_for_tls"
    )
