"""The bench's own Redis client, and counting and deleting its keys by pattern.

The HTTP scenarios' keys and the bulk measures' share the bench's Redis, so there
is no FLUSHDB here: SCAN finds the keys under one prefix and UNLINK frees them.
"""

import functools

from django.conf import settings
from redis import Redis

from users.cache import keys as cache_keys
from users.conf import user_cache_settings

_SCAN_COUNT = 10_000
# Seconds; the service's client gives up after REDIS_READ_TIMEOUT_MS (100 ms), which
# a pipeline of thousands of writes, or a SCAN on a busy machine, can take.
_BULK_TIMEOUT_S = 30


@functools.cache
def bench_client() -> Redis:
    """For the bench's bulk work (SCAN, UNLINK, INFO), never for what it measures."""
    location = settings.CACHES["default"]["LOCATION"]
    assert isinstance(location, str) and location.startswith("redis"), (
        "the bench runs against one Redis server (REDIS_URL), not a cluster or Sentinel"
    )
    return Redis.from_url(location, socket_timeout=_BULK_TIMEOUT_S)


def commands_processed() -> int:
    """How many commands Redis has run since it started (``INFO commandstats``),
    the bench's own INFO calls left out."""
    stats = bench_client().info("commandstats")
    return sum(stat["calls"] for name, stat in stats.items() if name != "cmdstat_info")


def _user_key_stem() -> str:
    sample = cache_keys.user_key(0)
    assert sample.endswith(":user:{0}"), f"unexpected user key shape: {sample}"
    return sample.removesuffix("{0}")


def user_keys_pattern() -> str:
    """The user entries and their leases (not the token lookups or rate-limit counters)."""
    return _user_key_stem() + "*"


def user_entries_pattern() -> str:
    """The user entries alone: a lease's key goes on past the id's closing brace."""
    return _user_key_stem() + "{*}"


def _scan(pattern: str):
    prefix = user_cache_settings.KEY_PREFIX
    assert pattern.startswith(f"{prefix}:"), f"not a bench key pattern: {pattern!r}"
    return bench_client().scan_iter(match=pattern, count=_SCAN_COUNT)


def count_keys(pattern: str) -> int:
    return sum(1 for _ in _scan(pattern))


def delete_keys(pattern: str) -> int:
    """Deletes every key matching ``pattern``; returns how many there were."""
    deleted = 0
    batch: list[bytes] = []
    client = bench_client()
    for key in _scan(pattern):
        batch.append(key)
        if len(batch) == _SCAN_COUNT:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def all_keys_pattern() -> str:
    """Every key under this process's prefix (``users.cache.keys.project_pattern``)."""
    return cache_keys.project_pattern()
