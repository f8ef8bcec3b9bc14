"""What spans every node: a batch's script calls grouped by hash slot and pipelined
per node, SCAN over every primary, UNLINK per slot, INFO and PING.

On one server a script or an UNLINK names all of a batch's keys at once; on a
Redis Cluster a command may only name keys of one hash slot, so a batch becomes
one call per slot, pipelined to each node that holds some of them.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError

from ..conf import user_cache_settings
from . import keys as cache_keys
from .scripts import script
from .transport import (
    SERVER,
    UNAVAILABLE,
    CacheUnavailable,
    call,
    client,
    node_of,
    reaching,
)

T = TypeVar("T")

# A script holds Redis for its whole run, 10-25 µs per entry here: 250 entries
# keep a call to a few milliseconds, well inside the API's read timeout, whatever
# the batch size of a bulk run.
ENTRIES_PER_SCRIPT_CALL = 250


def eval_grouped(
    source: str, keys: Sequence[str], call_for: Callable[[Sequence[int]], tuple[list, list]]
) -> list:
    """Runs a per-entry script (one reply per entry) over all of ``keys`` in as few
    calls as the server allows (``plan``), and returns the replies in the order of
    ``keys``."""
    groups, calls = plan(keys, call_for)
    return spread(groups, eval_many(source, calls), len(keys))


def plan(
    keys: Sequence[str], call_for: Callable[[Sequence[int]], tuple[list, list]]
) -> tuple[list[list[int]], list[tuple[list, list]]]:
    """The script calls a per-entry script over ``keys`` takes: on a single server one
    per ``ENTRIES_PER_SCRIPT_CALL`` entries; on a cluster one per hash slot.
    ``call_for(group)`` makes the keys and arguments of the call for the entries at
    those indexes of ``keys``. Returns the groups of indexes and their calls."""
    groups = [
        group[start : start + ENTRIES_PER_SCRIPT_CALL]
        for group in slot_groups(client(), keys)
        for start in range(0, len(group), ENTRIES_PER_SCRIPT_CALL)
    ]
    return groups, [call_for(group) for group in groups]


def spread(groups: Sequence[Sequence[int]], replies: Sequence[list], count: int) -> list:
    """Each group's reply (one value per entry) put back in the order of the keys."""
    per_entry: list = [None] * count
    for group, reply in zip(groups, replies, strict=True):
        for index, value in zip(group, reply, strict=True):
            per_entry[index] = value
    return per_entry


def slot_groups(redis: Redis | RedisCluster, keys: Sequence[str]) -> list[list[int]]:
    """Indexes of ``keys`` that one command may name together."""
    if not keys:
        return []
    if not isinstance(redis, RedisCluster):
        return [list(range(len(keys)))]
    by_slot = collections.defaultdict(list)
    for index, key in enumerate(keys):
        by_slot[redis.keyslot(key)].append(index)
    return list(by_slot.values())


def eval_many(source: str, calls: Sequence[tuple[list, list]]) -> list:
    """EVALSHA of one script per (keys, args) of ``calls``, pipelined without a
    transaction.

    A server that does not know the script yet answers NOSCRIPT: the script is
    loaded and only those calls are sent again. redis-py refuses scripts in a
    cluster pipeline, so on a cluster the calls are pipelined per node, on each
    node's own connection; each call's keys share a slot. Calls that a node
    redirects (MOVED, ASK: the slot map is out of date after a failover or
    resharding) or that a node could not take go one at a time through the
    cluster client, which follows redirections and reads the map again.
    """
    loaded = script(source)

    def send(redis: Redis, batch: Sequence[tuple[list, list]]) -> list:
        with redis.pipeline(transaction=False) as pipe:
            for keys, args in batch:
                pipe.evalsha(loaded.sha, len(keys), *keys, *args)
            return pipe.execute(raise_on_error=False)

    def run(redis: Redis, calls: Sequence[tuple[list, list]]) -> list:
        replies = send(redis, calls)
        unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            redis.script_load(loaded.script)
            retried = send(redis, [calls[index] for index in unknown])
            for index, reply in zip(unknown, retried, strict=True):
                replies[index] = reply
        return replies

    def run_on_cluster(redis: RedisCluster, calls: Sequence[tuple[list, list]]) -> list:
        by_node = collections.defaultdict(list)
        for index, (keys, _args) in enumerate(calls):
            by_node[redis.get_node_from_key(keys[0]).name].append(index)
        replies: list = [None] * len(calls)
        redirected = []
        for name, indexes in by_node.items():
            node = redis.get_redis_connection(redis.get_node(node_name=name))
            try:
                with reaching(name):
                    node_replies = run(node, [calls[index] for index in indexes])
            except RedisConnectionError:
                redirected.extend(indexes)
                continue
            for index, reply in zip(indexes, node_replies, strict=True):
                if isinstance(reply, AskError):  # MOVED or ASK
                    redirected.append(index)
                else:
                    replies[index] = reply
        for index in redirected:
            keys, args = calls[index]
            with reaching(node_of(redis, keys[0])):
                replies[index] = loaded(keys=keys, args=args, client=redis)
        return replies

    def run_anywhere(redis: Redis | RedisCluster) -> list:
        if isinstance(redis, RedisCluster):
            replies = run_on_cluster(redis, calls)
        else:
            replies = run(redis, calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    return call(run_anywhere)


def scan_project_keys(pattern: str | None = None, *, count: int = 1000) -> Iterator[list[str]]:
    """Every key matching ``pattern`` (by default all of this project's), a SCAN page at
    a time: one round trip per page, never KEYS, and never a key outside the prefix.
    On a cluster every primary is scanned in turn, each with its own cursor."""
    pattern = pattern or cache_keys.project_pattern()
    assert pattern.startswith(f"{user_cache_settings.KEY_PREFIX}:"), (
        f"{pattern!r} reaches outside this project's prefix {user_cache_settings.KEY_PREFIX!r}"
    )
    for name, server in call(_servers_to_scan):
        cursor = 0
        while True:
            cursor, found = call(
                lambda _redis, name=name, server=server, cursor=cursor: on_node(
                    name, lambda: server.scan(cursor, match=pattern, count=count)
                )
            )
            if found:
                yield [key.decode() for key in found]
            if cursor == 0:
                break


@dataclasses.dataclass(frozen=True, slots=True)
class KeySample:
    """What a bounded SCAN of one server found (``sample_keys``)."""

    # The keys under this project's prefix among those it went over.
    project_keys: list[str]
    # How many keys it went over, this project's and any other application's.
    examined: int
    # How many keys the server's database holds (INFO keyspace).
    in_database: int
    # Whether it went over the whole database.
    complete: bool


def sample_keys(*, pages: int, count: int = 1000) -> list[KeySample]:
    """Each server's keys as far as ``pages`` SCAN pages go (each primary's, on a
    cluster), and how many its database holds: ``pages + 1`` round trips a
    server, however many keys there are.

    No MATCH, so that a page holds every key it went over: the share of this
    project's keys in the sample estimates their share of the database, where
    other applications' keys may be most. Only the project's key names are kept."""
    prefix = f"{user_cache_settings.KEY_PREFIX}:".encode()
    samples = []
    for name, server in call(_servers_to_scan):
        database = f"db{server.connection_pool.connection_kwargs.get('db', 0)}"
        keyspace = call(
            lambda _redis, name=name, server=server: on_node(name, lambda: server.info("keyspace"))
        )
        project_keys, examined, cursor = [], 0, 0
        for _ in range(pages):
            cursor, found = call(
                lambda _redis, name=name, server=server, cursor=cursor: on_node(
                    name, lambda: server.scan(cursor, count=count)
                )
            )
            examined += len(found)
            project_keys += [key.decode() for key in found if key.startswith(prefix)]
            if cursor == 0:
                break
        samples.append(
            KeySample(
                project_keys=project_keys,
                examined=examined,
                in_database=keyspace.get(database, {}).get("keys", 0),
                complete=cursor == 0,
            )
        )
    return samples


def _servers_to_scan(redis: Redis | RedisCluster) -> list[tuple[str, Redis]]:
    """The server, or each primary of a cluster (through its own connection), by
    the name of its breaker."""
    if isinstance(redis, RedisCluster):
        return [(node.name, redis.get_redis_connection(node)) for node in redis.get_primaries()]
    return [(SERVER, redis)]


def on_node(node: str, send: Callable[[], T]) -> T:
    """``send``, to that node alone, through its breaker (``transport.reaching``)."""
    with reaching(node):
        return send()


def unlink_many(keys: Sequence[str]) -> int:
    """UNLINKs the keys, one round trip; returns how many existed.

    One UNLINK names many keys: Redis spends about a microsecond on each, and the
    client far less than on a command per key. On a cluster, one UNLINK per hash
    slot, pipelined per node.
    """

    def unlink_all(redis: Redis | RedisCluster) -> list:
        with redis.pipeline(transaction=False) as pipe:
            for group in slot_groups(redis, keys):
                # execute_command: a cluster pipeline's unlink() refuses several keys
                # even when they share a slot, which the command itself allows.
                pipe.execute_command("UNLINK", *(keys[index] for index in group))
            return pipe.execute()

    return sum(call(unlink_all, keys=keys)) if keys else 0


# Health and the admin's overview: the server's own word, past the breaker, so
# that they show what Redis does now rather than what it did a moment ago.


def ping() -> float:
    """Seconds one PING took (to every node of a cluster); raises ``CacheUnavailable``
    when Redis does not answer."""
    started = time.perf_counter()
    try:
        client().ping()
    except UNAVAILABLE as exc:
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return time.perf_counter() - started


# INFO counters that a cluster's overview adds up over its primaries.
_SUMMED_INFO = ("used_memory", "evicted_keys", "keyspace_hits", "keyspace_misses")


def server_info() -> dict:
    """Redis ``INFO`` (server, memory, stats, keyspace sections), parsed by redis-py.

    On a cluster: one primary's, with memory, evictions and keyspace hits and
    misses added up over every primary.
    """
    try:
        redis = client()
        if not isinstance(redis, RedisCluster):
            return redis.info()
        infos = [redis.get_redis_connection(node).info() for node in redis.get_primaries()]
    except UNAVAILABLE as exc:
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    info = {**infos[0], **{name: sum(each.get(name, 0) for each in infos) for name in _SUMMED_INFO}}
    info["used_memory_human"] = f"{info['used_memory'] / 2**20:.2f}M"
    return info
