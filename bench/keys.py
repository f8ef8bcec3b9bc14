"""The bench's own Redis client, its command count, and counting keys by pattern.

The HTTP scenarios' keys and the bulk measures' share the bench's Redis: SCAN
counts the keys under one prefix only.
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


def user_entries_pattern() -> str:
    """The user entries alone: a lease's key goes on past the id's closing brace."""
    return _user_key_stem() + "{*}"


def _scan(pattern: str):
    prefix = user_cache_settings.KEY_PREFIX
    assert pattern.startswith(f"{prefix}:"), f"not a bench key pattern: {pattern!r}"
    return bench_client().scan_iter(match=pattern, count=_SCAN_COUNT)


def count_keys(pattern: str) -> int:
    return sum(1 for _ in _scan(pattern))


def all_keys_pattern() -> str:
    """Every key under this process's prefix (``users.cache.keys.project_pattern``)."""
    return cache_keys.project_pattern()
