"""Counting and deleting the bench's Redis keys, by pattern, without blocking the server.

Redis is shared, so there is no FLUSHDB here: SCAN finds the keys under the
bench's prefix and UNLINK frees them in the background, a batch at a time.
"""

from redis import Redis

from users import cache

from .environment import KEY_PREFIX

_SCAN_COUNT = 10_000


def user_keys_pattern() -> str:
    """The user entries and their leases (not the token lookups or rate-limit counters)."""
    sample = cache.user_cache_key(0)
    assert sample.endswith(":user:{0}"), f"unexpected user key shape: {sample}"
    return sample.removesuffix("{0}") + "*"


def _scan(client: Redis, pattern: str):
    assert pattern.startswith(f"{KEY_PREFIX}:"), f"not a bench key pattern: {pattern!r}"
    return client.scan_iter(match=pattern, count=_SCAN_COUNT)


def count_keys(client: Redis, pattern: str) -> int:
    return sum(1 for _ in _scan(client, pattern))


def delete_keys(client: Redis, pattern: str) -> int:
    """Deletes every key matching ``pattern``; returns how many there were."""
    deleted = 0
    batch: list[bytes] = []
    for key in _scan(client, pattern):
        batch.append(key)
        if len(batch) == _SCAN_COUNT:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted
