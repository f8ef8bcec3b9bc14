"""What the admin shows of the cache: each listed user's entry, and the overview page."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .. import entries, metrics
from ..cache import cluster, store
from ..cache.keys import KeyKind, key_kind, user_key
from ..cache.transport import CacheUnavailable


def user_cache_entries(*, user_ids: Sequence[int]) -> dict[int, store.EntryInfo] | None:
    """Each user's entry (TTL, type, whether it is an absent marker), one round trip
    for all of them; None when Redis is unavailable."""
    keys = [user_key(user_id) for user_id in user_ids]
    try:
        infos = store.inspect_many(keys, fields=(entries.ABSENT_FIELD,))
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
    # This project's keys by kind (a full SCAN of its prefix).
    keys: dict[KeyKind, int] = dataclasses.field(default_factory=dict)
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
        keys = dict.fromkeys(KeyKind, 0)
        for page in cluster.scan_project_keys():
            for key in page:
                keys[key_kind(key)] += 1
    except CacheUnavailable as exc:
        return CacheOverview(reachable=False, error=str(exc), lookups=lookups)
    return CacheOverview(reachable=True, ping_ms=ping_ms, info=info, keys=keys, lookups=lookups)
