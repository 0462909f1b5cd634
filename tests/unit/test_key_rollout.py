"""starter.py switch-codec-key: which workers polling the task queue lack the key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.taskqueue.v1 import PollerInfo

from runtime.codec import KeyRing, worker_identity
from starter import POLLER_FRESH, workers_lacking_key

NOW = datetime(2027, 5, 1, 12, 0, tzinfo=UTC)


def poller(identity: str, seen_ago: timedelta) -> PollerInfo:
    seen = Timestamp()
    seen.FromDatetime(NOW - seen_ago)
    return PollerInfo(identity=identity, last_access_time=seen)


def test_a_recent_worker_without_the_key_is_named_and_a_stopped_one_ages_out() -> None:
    old = worker_identity("1@a", KeyRing.generate("k1"))
    new = worker_identity("2@b", KeyRing.generate("k1").added("k2"))
    older_release = "3@c"
    pollers = [
        poller(new, timedelta(seconds=5)),
        poller(new, timedelta(seconds=50)),  # its activity poller: one identity
        poller(old, timedelta(seconds=30)),
        poller(older_release, timedelta(seconds=60)),
    ]
    recent, lacking = workers_lacking_key(pollers, "k2", NOW)
    assert recent == sorted({new, old, older_release})
    assert lacking == sorted([old, older_release])
    # Once the old worker stopped polling long enough, only the new one counts.
    stale = [poller(new, timedelta(seconds=5)), poller(old, POLLER_FRESH + timedelta(seconds=1))]
    assert workers_lacking_key(stale, "k2", NOW) == ([new], [])
    assert workers_lacking_key([], "k2", NOW) == ([], [])
