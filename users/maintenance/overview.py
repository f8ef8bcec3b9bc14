"""What the admin shows of the cache: each listed user's entry, and the overview page.

The page counts this project's keys from a sample: a SCAN of the whole database
costs a round trip per thousand keys (ten thousand at ten million), which would
hold the request and load Redis on every view of the page. A fixed
number of SCAN pages, scaled by the number of keys the database holds (INFO),
costs the same at any size, is exact when the database fits in it, and is
current on every view, which a count kept for some minutes would not be.
``flush_user_cache --all --dry-run`` counts every entry, off the request path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .. import metrics
from ..cache import cluster, inspection, kinds
from ..cache.kinds import ABSENT
from ..cache.transport import CacheUnavailable
from ..reads import USERS

# SCAN pages of up to about a thousand keys each, per server: the sample's size,
# and so the overview's cost in Redis calls, whatever the size of the database.
SAMPLE_PAGES = 10


def user_cache_entries(*, user_ids: Sequence[int]) -> dict[int, inspection.EntryInfo] | None:
    """Each user's entry (TTL, type, whether it is an absent marker), one round trip
    for all of them; None when Redis is unavailable."""
    keys = [USERS.key(user_id) for user_id in user_ids]
    try:
        infos = inspection.inspect_many(keys, fields=(ABSENT,))
    except CacheUnavailable:
        return None
    return dict(zip(user_ids, infos, strict=True))


_LOOKUP_RESULTS = {
    "hit": "Hits",
    "negative_hit": "Hits on a cached absence",
    "miss": "Misses (loaded from MySQL)",
    "bypass": "Bypasses (Redis unavailable)",
}


@dataclasses.dataclass(frozen=True, slots=True)
class CacheOverview:
    reachable: bool
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
    try:
        ping_ms = cluster.ping() * 1000
        info = cluster.server_info()
        samples = cluster.sample_keys(pages=SAMPLE_PAGES)
    except CacheUnavailable as exc:
        return CacheOverview(reachable=False, error=str(exc), lookups=lookups)
    estimated = dict.fromkeys(kinds.key_labels(), 0.0)
    for sample in samples:
        # Each key of a server's sample stands for this many of its database's.
        if sample.complete:
            weight = 1.0
        else:
            weight = sample.in_database / sample.examined if sample.examined else 0.0
        for key in sample.project_keys:
            label = kinds.key_label(key)
            estimated[label] = estimated.get(label, 0.0) + weight
    return CacheOverview(
        reachable=True,
        ping_ms=ping_ms,
        info=info,
        keys={label: round(count) for label, count in estimated.items()},
        labels={label: kinds.describe(label) for label in estimated},
        keys_exact=all(sample.complete for sample in samples),
        keys_sampled=sum(sample.examined for sample in samples),
        keys_in_database=sum(sample.in_database for sample in samples),
        lookups=lookups,
    )
