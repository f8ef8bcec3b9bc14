"""What the admin's overview page shows of the cache: Redis's state, this
project's keys by kind, the service's lookups, the outbox's backlog and the
binary log follower; and ``duration``, how every admin page writes a span.
One user's entries are ``user_state``'s.

The page counts this project's keys from a sample (``flush.estimate_keys``, as
``flush_user_cache`` estimates its work): a SCAN of the whole database costs a
round trip per thousand keys (ten thousand at ten million), which would hold the
request and load Redis on every view of the page. A fixed number of SCAN pages,
scaled by the number of keys the database holds (INFO), costs the same at any
size, is exact when the database fits in it, and is current on every view,
which a count kept for some minutes would not be. ``flush_user_cache --all
--dry-run`` counts every entry, off the request path.
"""

from __future__ import annotations

import dataclasses
import datetime

from django.utils import timezone

from .. import metrics
from ..binlog import server as binlog_server
from ..cache import cluster, flush, kinds
from ..cache.outbox import BacklogCollector
from ..cache.transport import CacheUnavailable


def duration(seconds: float) -> str:
    """A span as an operator reads it: "42 s", "57 min", "3 h 5 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


_LOOKUP_RESULTS = {
    "hit": "Hits",
    "negative_hit": "Hits on a cached absence",
    "miss": "Misses (loaded from MySQL)",
    "bypass": "Bypasses (Redis unavailable)",
}


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """The outbox table's backlog: cache invalidations Redis missed, waiting for their
    replay, and the oldest one's age (0 when none waits)."""

    rows: int
    oldest_seconds: float

    @property
    def oldest_age(self) -> str:
        return duration(self.oldest_seconds)


def outbox_backlog() -> OutboxBacklog | None:
    """The backlog as ``/metrics`` reports it: read by the same collector, so the page
    and the alerts agree. None when MySQL did not answer."""
    values = {family.name: family.samples[0].value for family in BacklogCollector().collect()}
    if not values:
        return None
    return OutboxBacklog(
        rows=int(values["usersvc_outbox_backlog"]),
        oldest_seconds=values["usersvc_outbox_oldest_age_seconds"],
    )


# A running follower saves its row every REPORT_SECONDS at least: a row older than
# this many reports means none runs (or none can write to MySQL).
SILENT_AFTER_REPORTS = 3


@dataclasses.dataclass(frozen=True, slots=True)
class FollowerState:
    """The binary log follower as its row in ``users_binlog_position`` tells it: the
    web process may not reach the follower's metrics, on another host."""

    # "none" (no follower ever saved a position here), "stopped" (it said so),
    # "silent" (no report for SILENT_AFTER_REPORTS reports), or "running".
    state: str
    position: str = ""
    # Its lag at its last save: seconds between the start on MySQL of the last
    # change it had read and that save; 0 when MySQL had nothing newer for it.
    seconds_behind: float | None = None
    saved_at: datetime.datetime | None = None
    # Seconds since that save, by this host's clock.
    saved_ago: float = 0.0

    @property
    def report_every(self) -> str:
        return duration(binlog_server.REPORT_SECONDS)

    @property
    def silent_after(self) -> str:
        return duration(SILENT_AFTER_REPORTS * binlog_server.REPORT_SECONDS)

    @property
    def saved_age(self) -> str:
        return duration(self.saved_ago)


def follower_state() -> FollowerState:
    """What the follower last saved of itself."""
    row = binlog_server.stored_position()
    if row is None:
        return FollowerState("none")
    saved_ago = max((timezone.now() - row.updated_at).total_seconds(), 0.0)
    if row.seconds_behind is None:
        state = "stopped"
    elif saved_ago > SILENT_AFTER_REPORTS * binlog_server.REPORT_SECONDS:
        state = "silent"
    else:
        state = "running"
    return FollowerState(
        state,
        position=str(row),
        seconds_behind=row.seconds_behind,
        saved_at=row.updated_at,
        saved_ago=saved_ago,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class CacheOverview:
    reachable: bool
    # The outbox's backlog (None: MySQL did not answer) and the follower, from MySQL:
    # shown whether Redis answers or not.
    backlog: OutboxBacklog | None = None
    follower: FollowerState | None = None
    # Why Redis is unreachable, when it is.
    error: str = ""
    ping_ms: float | None = None
    # Redis INFO: version, memory, and the server-wide keyspace hits and misses.
    info: dict = dataclasses.field(default_factory=dict)
    # This project's keys by kind: counted when the sample covered the database
    # (``keys_exact``), else estimated from ``keys_sampled`` of its
    # ``keys_in_database`` keys.
    keys: dict[str, int] = dataclasses.field(default_factory=dict)
    # How operators read each of ``keys``' labels.
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    keys_exact: bool = True
    keys_sampled: int = 0
    keys_in_database: int = 0

    @property
    def key_counts(self) -> list[tuple[str, int]]:
        return [(self.labels.get(label, label), count) for label, count in self.keys.items()]

    # This service's user lookups by result, over every worker since it started.
    lookups: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def lookup_counts(self) -> list[tuple[str, float]]:
        return [(label, self.lookups.get(result, 0)) for result, label in _LOOKUP_RESULTS.items()]

    @property
    def service_hit_ratio(self) -> float | None:
        hits = self.lookups.get("hit", 0) + self.lookups.get("negative_hit", 0)
        total = hits + self.lookups.get("miss", 0) + self.lookups.get("bypass", 0)
        return hits / total if total else None

    @property
    def server_hit_ratio(self) -> float | None:
        hits, misses = self.info.get("keyspace_hits", 0), self.info.get("keyspace_misses", 0)
        return hits / (hits + misses) if hits + misses else None


def cache_overview() -> CacheOverview:
    """The state of the cache for the admin's overview page."""
    lookups = metrics.lookup_totals("user")
    mysql = {"backlog": outbox_backlog(), "follower": follower_state()}
    try:
        ping_ms = cluster.ping() * 1000
        info = cluster.server_info()
        estimate = flush.estimate_keys()
    except CacheUnavailable as exc:
        return CacheOverview(reachable=False, error=str(exc), lookups=lookups, **mysql)
    counts = {**dict.fromkeys(kinds.key_labels(), 0), **estimate.counts}
    return CacheOverview(
        reachable=True,
        ping_ms=ping_ms,
        info=info,
        keys=counts,
        labels={label: kinds.describe(label) for label in counts},
        keys_exact=estimate.exact,
        keys_sampled=estimate.sampled,
        keys_in_database=estimate.in_database,
        lookups=lookups,
        **mysql,
    )
