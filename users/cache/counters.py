"""Rate-limit windows, counted in Redis: DRF's throttles and the token lookup that
counts its request in the same round trip as it reads the token."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from . import scripts
from .store import decode_hash
from .transport import call, execute, execute_many, run_script, script


@dataclasses.dataclass(frozen=True, slots=True)
class WindowCount:
    """A request counted against a rate limit: requests so far in the window, and
    the milliseconds left in it."""

    count: int
    ms_left: int


def count_in_window(key: str, window_ms: int) -> WindowCount:
    """Counts one request against a rate limit."""
    count, ms_left = run_script(scripts.COUNT_IN_WINDOW, [key], [window_ms])[:2]
    return WindowCount(count, ms_left)


def window_count(key: str) -> WindowCount:
    """Requests counted so far in a rate limit's window, without counting one."""

    def peek(redis: Redis | RedisCluster) -> list:
        with redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            return pipe.execute()

    count, ms_left = call(peek)
    return WindowCount(int(count or 0), ms_left)


def read_counted(
    key: str, *, counter: tuple[str, int] | None = None, also: Sequence[str] = ()
) -> tuple[dict[str, str] | None, WindowCount | None, list[dict[str, str] | None]]:
    """HGETALL of ``key``, doing more in the same round trip: with ``counter``
    (counter key, window in ms; the counter must share ``key``'s hash tag) it
    counts a request as ``count_in_window`` does, when the entry exists; with
    ``also``, it reads those keys too (on a cluster, where they live in other
    slots, in round trips of their own). Returns the entry, the count (None
    without a counter, or when the entry is missing and nothing was counted) and
    the other entries (None where missing)."""
    loaded = script(scripts.COUNT_IN_WINDOW)
    first = (
        ("HGETALL", key)
        if counter is None
        else ("EVALSHA", loaded.sha, 2, counter[0], key, counter[1])
    )
    commands = [first, *(("HGETALL", other) for other in also)]

    def run(redis: Redis | RedisCluster) -> list:
        replies = execute_many(redis, commands)
        if isinstance(replies[0], NoScriptError):  # a new, restarted or flushed server
            redis.script_load(loaded.script)
            replies[0] = execute(redis, *first)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    replies = call(run)
    others = [decode_hash(reply) for reply in replies[1:]]
    if counter is None:
        return decode_hash(replies[0]), None, others
    requests, ms_left, flat = replies[0]
    counted = WindowCount(requests, ms_left) if requests else None
    return decode_hash(flat), counted, others
