"""Entries in Redis and in the process's near cache, one or a batch at a time: the
only module that talks to the near cache (``users.cache.near``).

Every entry is a Redis hash of strings, described by its kind
(``users.cache.kinds``). What is read from Redis is opened by the kind's codec
first: a malformed, forged or expired entry is deleted, counted, and read as a
miss. A batch costs one round trip on one server (one per node on a cluster).

The near cache answers first for the kinds it holds, and keeps what Redis
answered (present entries only: what one client can make a process hold does
not grow with the ids it can make up) and what a fill stored. A write's change
goes to the near cache, then Redis, then the near cache again (``invalidate``,
``write``): the writer reads its own write at once, and a read of this process
that fetched the old entry in between does not keep it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from .. import metrics
from ..conf import user_cache_settings
from . import cluster, scripts, writes
from .cluster import eval_grouped
from .counters import WindowCount, local_windows
from .keys import lease_key
from .kinds import CachedKind, Entry, is_absent
from .near import near
from .scripts import evalsha
from .transport import call, decode_hash, execute, execute_many
from .writes import WriteFill, jittered_ttl_ms

logger = logging.getLogger(__name__)

# One entry: its kind and ident.
Ref = tuple[CachedKind, Hashable]


def new_lease_token() -> str:
    return secrets.token_hex(8)


@dataclasses.dataclass(frozen=True, slots=True)
class Count:
    """A request to count against a rate limit, in the same round trip as the first
    entry of a read: the counter (in that entry's hash slot), its window, and what
    the request costs."""

    key: str
    window_ms: int
    cost: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """What ``read_many`` found: each entry (None for a miss), and the request's count
    when one was asked for and taken (None when the first entry was missing:
    nothing was counted)."""

    entries: list[Entry | None]
    counted: WindowCount | None = None


def read_many(refs: Sequence[Ref], *, count: Count | None = None) -> Reading:
    """Each entry, the near cache first and Redis for the rest in one round trip.

    With ``count``, the request is counted against that rate limit when the first
    entry exists: in process when the near cache holds it, else by the script
    that reads it (``scripts.COUNT_IN_WINDOW``).
    """
    keys = [kind.key(ident) for kind, ident in refs]
    held = near.get_many([key for key, (kind, _) in zip(keys, refs, strict=True) if kind.near])
    counted = None
    if count is not None and keys[0] in held:
        counted = local_windows.count(count.key, count.window_ms, count.cost)
    rest = [index for index, key in enumerate(keys) if key not in held]
    if not rest:
        return Reading([held[key] for key in keys], counted)
    near.count_miss(sum(1 for index in rest if refs[index][0].near))
    stamp = near.stamp()
    first_counted = count if count is not None and rest[0] == 0 else None
    replies, counted_now = _read(keys, rest, first_counted)
    if counted_now is not None:
        counted = counted_now
        local_windows.seen(count.key, counted_now, count.window_ms)
    now = time.time()
    found = dict(held)
    refused = []
    for index, raw in zip(rest, replies, strict=True):
        kind, ident = refs[index]
        entry = kind.open(ident, raw, now)
        if raw is not None and entry is None:
            refused.append((kind, keys[index]))
        found[keys[index]] = entry
    if refused:
        _refuse(refused)
    near.put_many(
        {keys[i]: found[keys[i]] for i in rest if refs[i][0].near and _holdable(found[keys[i]])},
        stamp,
    )
    return Reading([found[key] for key in keys], counted)


def held_here(keys: Sequence[str]) -> dict[str, Entry] | None:
    """What this process's near cache holds of ``keys`` (an operator's view: nothing
    counted); None when a read now would not be served from it."""
    return near.peek(keys)


def _read(
    keys: Sequence[str], indexes: Sequence[int], count: Count | None
) -> tuple[list[Entry | None], WindowCount | None]:
    """HGETALL of ``keys[i]`` for each index, one round trip; with ``count``, the
    first through the counting script."""
    commands: list[tuple] = [("HGETALL", keys[i]) for i in indexes]
    if count is not None:
        commands[0] = evalsha(
            scripts.COUNT_IN_WINDOW, [count.key, keys[indexes[0]]], [count.window_ms, count.cost]
        )

    def run(redis: Redis | RedisCluster) -> list:
        replies = execute_many(redis, commands)
        for reply in replies:  # decode_hash reads a WRONGTYPE as no entry
            if isinstance(reply, ResponseError) and not str(reply).startswith("WRONGTYPE"):
                raise reply
        return replies

    replies = call(run)
    if count is None:
        return [decode_hash(reply) for reply in replies], None
    requests, ms_left, flat = replies[0]
    counted = WindowCount(requests, ms_left) if requests else None
    return [decode_hash(flat), *(decode_hash(reply) for reply in replies[1:])], counted


def _holdable(entry: Entry | None) -> bool:
    return entry is not None and not is_absent(entry)


def _refuse(refused: Sequence[tuple[CachedKind, str]]) -> None:
    """Entries that failed their codec: written or kept by someone other than this
    service (or by an older version of it). Deleted, so the next read loads them."""
    for kind, key in refused:
        logger.warning("refused a cached %s entry that fails its check: %s", kind.name, key)
        metrics.ENTRIES_REFUSED.labels(kind.name).inc()
    invalidate([key for _, key in refused])


def lease_many(
    kind: CachedKind, idents: Sequence[Hashable], token: str, *, mode: str
) -> list[tuple[int, Entry | None]]:
    """Each entry's state after ``scripts.LEASE`` in ``mode`` ("read", "missing",
    "refresh"), or "take": ``(PRESENT, entry)``, ``(LEASED, None)`` or
    ``(NOT_LEASED, None)``. A present entry that fails its codec is deleted and
    reported as NOT_LEASED: the caller looks again, and finds it missing."""
    keys = [kind.key(ident) for ident in idents]
    if mode == "take":
        return _take(keys, token)

    def call_for(group: Sequence[int]) -> tuple[list, list]:
        return _entries_and_leases(keys, group), [token, user_cache_settings.LEASE_TTL_MS, mode]

    now = time.time()
    states, refused = [], []
    for ident, key, reply in zip(idents, keys, eval_grouped(scripts.LEASE, keys, call_for),
                                 strict=True):  # fmt: skip
        if reply[0] != scripts.PRESENT:
            states.append((reply[0], None))
            continue
        entry = kind.open(ident, decode_hash(reply[1]), now)
        if entry is None:
            refused.append((kind, key))
        states.append((scripts.PRESENT, entry) if entry else (scripts.NOT_LEASED, None))
    if refused:
        _refuse(refused)
    return states


def _take(keys: Sequence[str], token: str) -> list[tuple[int, Entry | None]]:
    """A plain ``SET lease token NX PX`` per entry the caller has just read as
    missing, one round trip: LEASED, or NOT_LEASED where a lease is held (by
    another reader, a reader that filled it since and keeps it, a write, or a
    key of someone else's, which the "read" mode that follows takes over)."""
    lease_ms = user_cache_settings.LEASE_TTL_MS
    commands = [("SET", lease_key(key), token, "NX", "PX", lease_ms) for key in keys]

    def run(redis: Redis | RedisCluster) -> list:
        replies = execute_many(redis, commands)
        for reply in replies:  # refused (a full Redis under noeviction): as if down
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    replies = call(run, keys=keys)
    return [(scripts.LEASED if reply else scripts.NOT_LEASED, None) for reply in replies]


def fill_many(
    kind: CachedKind, token: str, entries: Mapping[Hashable, Entry], *, release: bool = False
) -> list[bool]:
    """Stores each entry (a row's, or ``kinds.ABSENT_ENTRY`` with the kind's absent
    TTL) while ``token`` still holds its lease (``scripts.FILL``), one round trip
    for all; True where it was stored, False where a write took the lease
    meanwhile. The leases are kept until they expire, or with ``release`` given
    back. The near cache keeps the rows stored, for the kinds it holds."""
    idents = list(entries)
    keys = [kind.key(ident) for ident in idents]
    now = time.time()
    closed, rows = [], []
    shapes: dict[tuple[str, ...], int] = {}
    for ident in idents:
        entry = entries[ident]
        ttl_ms = jittered_ttl_ms(kind.absent_ttl() if is_absent(entry) else kind.ttl())
        entry = kind.codec.close(ident, entry, expires=now + ttl_ms / 1000)
        closed.append(entry)
        # Lua numbers its tables from 1.
        shape = shapes.setdefault(tuple(entry), len(shapes) + 1)
        rows.append([shape, ttl_ms, *entry.values()])

    def call_for(group: Sequence[int]) -> tuple[list, list]:
        document = json.dumps(
            [list(shapes), [rows[index] for index in group]],
            ensure_ascii=False, separators=(",", ":"),
        )  # fmt: skip
        return _entries_and_leases(keys, group), [token, document, "1" if release else "0"]

    groups, calls = cluster.plan(keys, call_for)
    stamp = near.stamp() if kind.near else None
    # On the near cache's own connections when it tracks: no invalidation of this
    # fill comes back to drop what it stored.
    ttls = {key: row[1] for key, row in zip(keys, rows, strict=True)}
    replies = (
        call(lambda _redis: near.fill(scripts.FILL, calls, ttls)) if stamp is not None else None
    )
    if replies is None:
        replies = cluster.eval_many(scripts.FILL, calls)
    stored = [bool(reply) for reply in cluster.spread(groups, replies, len(keys))]
    if stamp is not None:
        # A refused fill's expiry push (``near.fill``) still made this process the
        # key's last writer: a write just before it, in the same pass of Redis's
        # loop, is then not pushed here (NOLOOP). What is held of it goes.
        near.invalidate([key for key, ok in zip(keys, stored, strict=True) if not ok])
        near.put_many(
            {key: entry for key, entry, ok in zip(keys, closed, stored, strict=True)
             if ok and _holdable(entry)},
            stamp,
        )  # fmt: skip
    return stored


def release_many(kind: CachedKind, idents: Sequence[Hashable], token: str) -> None:
    """Gives back the leases ``token`` still holds (``scripts.RELEASE``): after a
    failed load, or for idents found nowhere whose absence is not kept."""
    keys = [kind.key(ident) for ident in idents]

    def call_for(group: Sequence[int]) -> tuple[list, list]:
        return _entries_and_leases(keys, group), [token]

    eval_grouped(scripts.RELEASE, keys, call_for)


def _entries_and_leases(keys: Sequence[str], group: Sequence[int]) -> list[str]:
    return [name for index in group for name in (keys[index], lease_key(keys[index]))]


# Writes.


def take_lease(key: str, token: str) -> None:
    """Takes the entry's lease whoever holds it: a write does, inside its transaction,
    so that every fill begun before it is refused (``users.invalidation``)."""
    lease_ms = user_cache_settings.LEASE_TTL_MS
    call(lambda redis: execute(redis, "SET", lease_key(key), token, "PX", lease_ms))


def invalidate(keys: Iterable[str]) -> None:
    """Deletes entries and their leases, here and in Redis: one pipelined round trip
    per node that holds some of them (one in all on a single server). A read's
    step (the keys this process owes Redis, before it reads; an entry its codec
    refused), so each node's breaker may refuse it at once, and no replica is
    waited for. This process's near cache drops them before and after Redis
    does. Raises ``Missed`` naming the keys a node did not take (the near cache
    has dropped them all)."""
    _change(list(keys), None, after_commit=False)


def write(keys: Sequence[str], *, fill: WriteFill | None = None) -> bool:
    """A write's after-commit step: ``keys`` deleted with their leases, and with
    ``fill``, one entry stored instead, only while the write's own lease stands
    (``scripts.FILL_OR_DELETE``: otherwise it is deleted too). The near cache drops
    every key before Redis is asked and again after.

    Every node is asked whatever its breaker says, and the outcome feeds the
    breaker: writes are rare, and one acknowledged while a breaker still cools
    down after Redis came back must reach Redis now, not through the outbox; nor
    may a failing shard hold back the other shards' keys. Where a node has a
    replica, one must confirm the change (``replication.execute_replicated``), or
    a failover could lose it. Returns whether ``fill`` stored; raises ``Missed``
    naming the keys a node did not take or no replica confirmed."""
    return _change(keys, fill, after_commit=True)


def _change(keys: Sequence[str], fill: WriteFill | None, *, after_commit: bool) -> bool:
    near.invalidate(keys)
    try:
        return writes.change(keys, fill, after_commit=after_commit)
    finally:
        near.invalidate(keys)
