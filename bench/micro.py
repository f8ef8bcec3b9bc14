"""In-process measurements: the cached read against a bare round trip, and Redis memory."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import statistics
import time
import tracemalloc

from django.conf import settings
from django.test import override_settings
from django_redis import get_redis_connection
from redis.exceptions import TimeoutError as RedisTimeoutError

from users import reads
from users.cache import keys as cache_keys
from users.cache.near import near

from . import keys

# Calls are timed in alternating blocks, so a slow spell on the shared machine
# lands on both sides instead of on one.
_BLOCK_CALLS = 500
# Users the near cache measurements read: well under its default size (10,000).
_NEAR_SAMPLE = 5_000
_NEAR_FILL_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class Timing:
    median_us: float
    p99_us: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> Timing:
        ordered = sorted(samples_ns)
        return cls(
            median_us=statistics.median(ordered) / 1000,
            p99_us=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000,
        )


def time_user_get_and_hgetall(*, user_count: int, calls: int, seed: int) -> tuple[Timing, Timing]:
    """``reads.user_get`` on a hit, and a bare redis-py HGETALL of the same entries.

    Both go through the same client and connection pool, so the difference is
    what the service adds to one round trip: the key, decoding, the projection.
    The near cache is off here: this is the read that goes to Redis.
    """
    with override_settings(USERS_CACHE={**settings.USERS_CACHE, "NEAR_CACHE_SIZE": 0}):
        return _time_user_get_and_hgetall(user_count=user_count, calls=calls, seed=seed)


def _time_user_get_and_hgetall(*, user_count: int, calls: int, seed: int):
    client = get_redis_connection("default")
    user_ids = random.Random(seed).choices(range(1, user_count + 1), k=calls)
    entry_keys = [cache_keys.user_key(user_id) for user_id in user_ids]
    user_get_ns: list[int] = []
    hgetall_ns: list[int] = []
    misses = 0
    for block in range(0, calls, _BLOCK_CALLS):
        for user_id in user_ids[block : block + _BLOCK_CALLS]:
            start = time.perf_counter_ns()
            result = reads.user_get(user_id=user_id)
            user_get_ns.append(time.perf_counter_ns() - start)
            misses += result.source is reads.Source.MISS
        for key in entry_keys[block : block + _BLOCK_CALLS]:
            start = time.perf_counter_ns()
            # A stall past the read timeout is a sample too: user_get would have
            # bypassed the cache after the same wait.
            with contextlib.suppress(RedisTimeoutError):
                client.hgetall(key)
            hgetall_ns.append(time.perf_counter_ns() - start)
    if misses:
        raise RuntimeError(f"{misses} of {calls} user_get calls missed: the cache is not warm")
    return Timing.of(user_get_ns), Timing.of(hgetall_ns)


def time_near_hit(*, user_count: int, calls: int, seed: int) -> Timing:
    """``reads.user_get`` answered by the near cache: ids it holds, read again."""
    user_ids = random.Random(seed).choices(range(1, min(user_count, _NEAR_SAMPLE) + 1), k=calls)
    # The near cache empties itself when its tracking connection is lost (a Redis
    # call past its timeout on a loaded machine, say) and refills once it is back:
    # the ids are read again until it holds them all.
    deadline = time.monotonic() + _NEAR_FILL_TIMEOUT_S
    while True:
        for user_id in set(user_ids):
            reads.user_get(user_id=user_id)
        held = near.get_many(cache_keys.user_key(user_id) for user_id in set(user_ids))
        if len(held) == len(set(user_ids)):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the near cache does not hold the users just read: is it on?")
        time.sleep(0.5)
    samples_ns = []
    for user_id in user_ids:
        start = time.perf_counter_ns()
        reads.user_get(user_id=user_id)
        samples_ns.append(time.perf_counter_ns() - start)
    return Timing.of(samples_ns)


def near_cache_bytes_per_entry(*, user_count: int) -> float:
    """Python memory the near cache holds per user entry (tracemalloc), filled from empty."""
    count = min(user_count, _NEAR_SAMPLE)
    near.forget()
    reads.user_get(user_id=1)  # the tracking connection, and the first entry
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for user_id in range(2, count + 1):
            reads.user_get(user_id=user_id)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / (count - 1)


def used_memory_bytes() -> int:
    """``INFO memory`` ``used_memory``: all Redis holds, other clients' data included."""
    return keys.bench_client().info("memory")["used_memory"]


def memory_usage_per_user(*, user_count: int, samples: int, seed: int) -> float:
    """The median ``MEMORY USAGE`` of cached users' entries (key, value and overhead)."""
    client = keys.bench_client()
    user_ids = random.Random(seed).sample(range(1, user_count + 1), k=min(samples, user_count))
    sizes = [client.memory_usage(cache_keys.user_key(user_id), samples=0) for user_id in user_ids]
    missing = sizes.count(None)
    if missing:
        raise RuntimeError(f"{missing} of {len(sizes)} sampled users are not cached")
    return statistics.median(sizes)
