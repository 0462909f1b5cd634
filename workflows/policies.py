"""How long each step may take and how it is retried, chosen for what it talks to.

Plain values, no workflow code: the worker passes this module through the workflow
sandbox (worker.PASSED_THROUGH) like the contracts, so it is imported once per worker
instead of once per run. Every workflow of the task queue takes its options from here.

`cancellation_type`: a cancel of the purchase waits for the steps whose effect the
compensation must undo (the tenant claim, the server, the Vault record, the rotation
schedule) until their attempt has really stopped, and gets their result when the
attempt completed anyway; see workflows/steps.py and docs/RELIABILITY.md. Other steps
are abandoned at once (the default, TRY_CANCEL): whatever they did lives on the server,
which compensation deletes.
"""

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

Options = dict[str, Any]
WAIT_FOR_THE_ATTEMPT = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


def policy(
    initial: float,
    maximum: float,
    attempts: int = 0,
    backoff: float = 2.0,
    final: tuple[str, ...] = (),
) -> RetryPolicy:
    """A retry policy in seconds; 0 attempts means unlimited (bounded by a timeout)."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=initial),
        backoff_coefficient=backoff,
        maximum_interval=timedelta(seconds=maximum),
        maximum_attempts=attempts,
        non_retryable_error_types=list(final),
    )


# Every activity heartbeats from a side task while it runs (runtime/heartbeat.py), so a
# worker that dies mid-attempt is noticed after HEARTBEAT, not after the attempt's
# start-to-close: with a first retry within 5 s, a purchase resumes within ~20 s of a
# worker being available (measured by `make faults`, docs/RELIABILITY.md).
HEARTBEAT = timedelta(seconds=15)

# Two lookups in the worker's configuration and one start (or describe) against Temporal
# itself (activities/admission.py): a refusal is final, outages are short. Takes the
# tenant's claim, so a cancel waits for the attempt.
ADMIT_PURCHASE: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=policy(1, 30, 10),
    cancellation_type=WAIT_FOR_THE_ATTEMPT,
)
# Provider API calls are quick; rate limits and 5xx clear within minutes. Adoption on
# uniqueness_error makes a retried create safe. On cancel, wait until the attempt has
# really stopped, so the clean-up that looks for the purchase's server runs after any
# server it could create exists.
CREATE_SERVER: Options = dict(
    start_to_close_timeout=timedelta(seconds=60),
    heartbeat_timeout=HEARTBEAT,
    retry_policy=policy(2, 60, 8),
    cancellation_type=WAIT_FOR_THE_ATTEMPT,
)
# One attempt polls until the server runs (activities/vps_provider.py), then sets its
# reverse DNS (one quick provider call). It heartbeats from half the heartbeat timeout on
# and the SDK sends one per 80% of it, so a 2-minute boot costs the activity plus 2
# heartbeats instead of 40 retries, and a boot under 45 s none (each is a billable
# action, docs/PERFORMANCE.md). The price: a worker that dies mid-wait is noticed after
# 90 s, which delays the purchase only by what exceeds the boot still under way.
# Retries are for provider errors only. Gives up after 15 minutes.
WAIT_FOR_SERVER: Options = dict(
    start_to_close_timeout=timedelta(minutes=15),
    heartbeat_timeout=timedelta(seconds=90),
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=policy(3, 3, backoff=1.0),
)
# Two short SSH sessions; a retry trusts the old or the new key, so it is idempotent.
# The first SSH step: sshd may refuse or drop connections while the server still boots
# (`make faults` found 5 capped attempts too few), so it is bounded by time instead.
ROTATE_HOST_KEY: Options = dict(
    start_to_close_timeout=timedelta(minutes=2),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=policy(2, 30),
)
# Image pulls and MailU's first start take minutes: long timeout, heartbeats prove life.
# Bounded by time, not attempts: dropped SSH connections must not end the purchase.
CONFIGURE_MAILU: Options = dict(
    start_to_close_timeout=timedelta(minutes=20),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(hours=1),
    retry_policy=policy(5, 120),
)
# One Transit call and one SSH command; a retry sets a fresh password, which is harmless.
# No attempt cap: a sealed or denying Vault is retried for a bounded time (10 min,
# activities/vault.py) and only then final; 15 min overall covers that bound.
CREATE_CREDENTIALS: Options = dict(
    start_to_close_timeout=timedelta(minutes=2),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=policy(2, 30),
)
# Vault writes are fast; outages (sealed, leader election, lost policies) are retried as
# above. CAS makes retries safe. On cancel, wait: the activity finishes a write already
# under way and reports its version, which compensation then withdraws.
STORE_CREDENTIALS: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=policy(1, 30),
    cancellation_type=WAIT_FOR_THE_ATTEMPT,
)
# The audit row must not be lost: retry for up to a day (unique key keeps it to one row).
AUDIT: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(1, 60),
)
# One Temporal call; a working server must not lose its rotation to a short outage.
# Creates a schedule, so a cancel waits for the attempt.
SCHEDULE_ROTATION: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(1, 60),
    cancellation_type=WAIT_FOR_THE_ATTEMPT,
)
# The customer's webhook may be down for a while; the mail server is ready regardless.
NOTIFY: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(hours=6),
    retry_policy=policy(5, 300),
)

# ---------------------------------------------------------------- compensation
# Undoing must finish: a leaked server costs money every hour, a current record of a
# void purchase logs in on nothing, a held claim blocks the tenant.

DELETE_SERVER: Options = dict(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(5, 300),
)
# Withdrawing a written record is one Vault call; like deletion, it must finish.
REMOVE_CREDENTIALS: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(1, 60),
)
# Deleting a schedule is one Temporal call.
REMOVE_SCHEDULE: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(1, 60),
)
# Releasing must happen, or the tenant stays blocked: retry for as long as deletion does.
TENANT_CLAIM_RELEASE: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(1, 60),
)

# ---------------------------------------------------------------- deprovisioning
# A cancelled tenant is removed for good (workflows/deprovision.py): each step must
# finish, so each is retried for a day like compensation; a refusal is final at once.

# Reads of the provider, Vault and Temporal.
INSPECT_TENANT: Options = dict(
    start_to_close_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(1, 60),
)
# Deleting servers waits for the provider's actions (as DELETE_SERVER does).
DELETE_TENANT_SERVERS: Options = DELETE_SERVER
# One Vault call (and a read before it).
DESTROY_CREDENTIALS: Options = REMOVE_CREDENTIALS
# Reads, one signal, and a short wait for the claim's owner check to end it.
RELEASE_DEPROVISIONED_CLAIM: Options = dict(
    start_to_close_timeout=timedelta(seconds=90),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(2, 60),
)

# A final snapshot for a plan that promises backups (activities/final_snapshot.py):
# creating the image takes minutes, growing with the disk's data, and the server stays
# locked meanwhile. One attempt waits for it, heartbeating as the boot wait does (90 s
# timeout: a 10-minute snapshot costs about 8 heartbeats); a retry finds its own image
# by label. Like deletion it must finish, or the server is never deleted.
TAKE_FINAL_SNAPSHOT: Options = dict(
    start_to_close_timeout=timedelta(hours=2),
    heartbeat_timeout=timedelta(seconds=90),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(5, 300),
)
# The expiry timer's look-and-delete: two provider calls; retried for a day, then the
# run fails and check-world reports the snapshot past its expiry.
EXPIRE_FINAL_SNAPSHOT: Options = dict(
    start_to_close_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=policy(5, 300),
)

# ---------------------------------------------------------------- activation
# One DNS check (workflows/activation.py): a provider read, a Vault read, one SSH
# command (MailU's export) and about six lookups. A check that still fails after a few
# tries is not an error: the run waits for its next check. The stage's steps heartbeat
# like the others (HEARTBEAT): a worker killed mid-check or mid-restart was otherwise
# noticed only at the attempt's start-to-close, 3 or 5 minutes later (make faults'
# activation_tls).
CHECK_MAIL_DNS: Options = dict(
    start_to_close_timeout=timedelta(minutes=2),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=10),
    retry_policy=policy(5, 60, 4),
)
# One TLS check: the same reads, two `cat`s over SSH and three handshakes of at most
# 10 s each (activities/mail_tls.py). Like the DNS check, one that keeps failing only
# means the run waits for its next check.
CHECK_MAIL_TLS: Options = dict(
    start_to_close_timeout=timedelta(minutes=3),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=15),
    retry_policy=policy(5, 60, 4),
)
# `docker compose restart front` (MailU's own restart_policy brings it back; the
# activity checks the need first, so a retry after a restart that worked does nothing).
RESTART_MAIL_FRONT: Options = dict(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=HEARTBEAT,
    schedule_to_close_timeout=timedelta(minutes=20),
    retry_policy=policy(10, 120, 3),
)
# Two Temporal reads (the claim, the purchase's first event).
ACTIVATION_CONTACT: Options = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=10),
    retry_policy=policy(2, 60),
)
