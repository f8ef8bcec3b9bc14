"""Operations on entries, one or a batch at a time. Every entry is a Redis hash of
strings; ``users.entries`` says what its fields mean. A batch costs one round
trip on one server (one per node on a cluster). The read-through's reads and
fills consult the process's near cache here (``near_cache=True``); the token
lookup's first read, which counts its request in the same round trip, does so
itself (``users.tokens``)."""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from ..conf import user_cache_settings
from . import scripts
from .cluster import eval_grouped
from .keys import lease_key
from .near import near
from .transport import call, execute, execute_many, run_script


def decode_hash(raw: Mapping[bytes, bytes] | Sequence[bytes]) -> dict[str, str] | None:
    """An HGETALL reply (a dict through a cluster client, else flat: field, value,
    ...), decoded; None for a missing key."""
    if not raw:
        return None
    if isinstance(raw, Mapping):
        return {field.decode(): value.decode() for field, value in raw.items()}
    return {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}


def new_lease_token() -> str:
    return secrets.token_hex(8)


def jittered_ttl_ms(seconds: int) -> int:
    """An entry's TTL: ``seconds`` shortened by up to ``TTL_JITTER``, so that entries
    written together do not all expire together."""
    jitter = user_cache_settings.TTL_JITTER
    return int(seconds * 1000 * (1 - jitter * random.random()))


def read_many(keys: Sequence[str], *, near_cache: bool = False) -> list[dict[str, str] | None]:
    """HGETALL of every key, one round trip: each entry's fields, or None on a miss.

    With ``near_cache``, the process's near cache (``users.cache.near``) answers
    first, and keeps what Redis answers for the rest: no round trip at all when it
    holds every key.
    """
    held = near.get_many(keys) if near_cache else {}
    rest = [key for key in keys if key not in held]
    if not rest:
        return [held[key] for key in keys]
    stamp = near.stamp() if near_cache else None
    read = dict(zip(rest, [decode_hash(reply) for reply in call(_hgetall(rest))], strict=True))
    if near_cache:
        near.count_miss(len(rest))
        near.put_many({key: entry for key, entry in read.items() if entry}, stamp)
    return [held[key] if key in held else read[key] for key in keys]


def _hgetall(keys: Sequence[str]) -> Callable[[Redis | RedisCluster], list]:
    def read(redis: Redis | RedisCluster) -> list:
        replies = execute_many(redis, [("HGETALL", key) for key in keys])
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    return read


def lease_many(
    keys: Sequence[str], token: str, lease_ms: int, *, mode: str
) -> list[tuple[int, dict[str, str] | None]]:
    """Each entry's state after ``scripts.LEASE`` in ``mode`` ("read", "missing",
    "refresh"): ``(PRESENT, fields)``, ``(LEASED, None)`` or ``(NOT_LEASED, None)``."""

    def call_for(group: Sequence[int]) -> tuple[list, list]:
        return _entries_and_leases(keys, group), [token, lease_ms, mode]

    replies = eval_grouped(scripts.LEASE, keys, call_for)
    return [
        (reply[0], decode_hash(reply[1]) if reply[0] == scripts.PRESENT else None)
        for reply in replies
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class FillBatch:
    """Entries of one shape filled under one lease token: ``rows[i]`` holds the values
    of ``names`` for ``keys[i]``, stored with a TTL of ``ttls_ms[i]``.

    Columns rather than a mapping per entry: the field names travel to Redis once
    per call instead of with every entry.
    """

    token: str
    names: Sequence[str]
    keys: list[str] = dataclasses.field(default_factory=list)
    rows: list[Sequence[str | int]] = dataclasses.field(default_factory=list)
    ttls_ms: list[int] = dataclasses.field(default_factory=list)

    def add(self, key: str, row: Sequence[str | int], ttl_ms: int) -> None:
        self.keys.append(key)
        self.rows.append(row)
        self.ttls_ms.append(ttl_ms)


def fill_many(batch: FillBatch, *, near_cache: bool = False) -> list[bool]:
    """Stores every entry of ``batch`` whose lease still stands (``scripts.FILL``);
    True where it was stored, False where a write took the lease meanwhile. With
    ``near_cache``, the process's near cache keeps what was stored."""
    names = list(batch.names)

    def call_for(group: Sequence[int]) -> tuple[list, list]:
        entries = [[str(batch.ttls_ms[index]), *map(str, batch.rows[index])] for index in group]
        document = json.dumps([names, entries], ensure_ascii=False, separators=(",", ":"))
        return _entries_and_leases(batch.keys, group), [batch.token, document]

    stamp = near.stamp() if near_cache else None
    stored = [bool(reply) for reply in eval_grouped(scripts.FILL, batch.keys, call_for)]
    if stamp is not None:
        kept = [index for index, ok in enumerate(stored) if ok]
        rows = {batch.keys[i]: dict(zip(names, map(str, batch.rows[i]), strict=True)) for i in kept}
        near.put_many(rows, stamp)
    return stored


def release_many(keys: Sequence[str], token: str) -> None:
    """Gives back the leases ``token`` still holds (``scripts.RELEASE``)."""

    def call_for(group: Sequence[int]) -> tuple[list, list]:
        return _entries_and_leases(keys, group), [token]

    eval_grouped(scripts.RELEASE, keys, call_for)


def _entries_and_leases(keys: Sequence[str], group: Sequence[int]) -> list[str]:
    return [name for index in group for name in (keys[index], lease_key(keys[index]))]


def take_lease(key: str, token: str, lease_ms: int) -> None:
    """Takes the entry's lease whoever holds it: a write does, inside its transaction,
    so that every fill begun before it is refused (``users.invalidation``)."""
    call(lambda redis: execute(redis, "SET", lease_key(key), token, "PX", lease_ms))


def fill_or_delete(key: str, token: str, fields: Mapping[str, str], ttl_ms: int) -> bool:
    """A write's after-commit step (``scripts.FILL_OR_DELETE``); True when it stored."""
    args = [token, ttl_ms, *(item for pair in fields.items() for item in pair)]
    return bool(run_script(scripts.FILL_OR_DELETE, [key, lease_key(key)], args))


def invalidate(keys: Iterable[str]) -> None:
    """Deletes entries and their leases, one pipelined round trip for all of them
    (on a cluster, one per node that holds some of them).

    One key per DEL: a cluster pipeline refuses multi-key commands, and a plain
    server does not mind.
    """

    def delete_all(redis: Redis | RedisCluster) -> None:
        with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
                pipe.delete(lease_key(key))
            pipe.execute()

    call(delete_all)


@dataclasses.dataclass(frozen=True, slots=True)
class EntryInfo:
    """What ``inspect_many`` saw at one key."""

    key: str
    # PTTL: milliseconds left, -1 for a key without expiry, -2 for no such key.
    ttl_ms: int
    # TYPE: "hash" for a well-formed entry, "none" for no such key.
    type: str
    # The hash (all of it, or the fields asked for); None when the key is not a hash.
    fields: dict[str, str] | None

    @property
    def exists(self) -> bool:
        return self.ttl_ms != -2


def inspect_many(keys: Sequence[str], *, fields: Sequence[str] | None = None) -> list[EntryInfo]:
    """PTTL, TYPE and the hash of every key, in one round trip.

    ``fields=None`` reads the whole hash (HGETALL), a sequence reads those fields
    (HMGET), an empty one none at all. A key of another type is reported, not an error.
    """

    def inspect(redis: Redis | RedisCluster) -> list:
        with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
                pipe.type(key)
                if fields is None:
                    pipe.hgetall(key)
                elif fields:
                    pipe.hmget(key, list(fields))
            return pipe.execute(raise_on_error=False)

    replies = call(inspect)
    per_key = 2 + (fields is None or bool(fields))
    infos = []
    for index, key in enumerate(keys):
        ttl_ms, key_type, *content = replies[index * per_key : (index + 1) * per_key]
        key_type = key_type.decode()
        infos.append(
            EntryInfo(
                key=key,
                ttl_ms=ttl_ms,
                type=key_type,
                fields=_entry_fields(content, fields) if key_type == "hash" else None,
            )
        )
    return infos


def _entry_fields(content: list, names: Sequence[str] | None) -> dict[str, str] | None:
    if not content:
        return {}
    reply = content[0]
    if isinstance(reply, ResponseError):  # the key changed type between TYPE and the read
        return None
    if names is None:
        return decode_hash(reply) or {}
    return {name: value.decode() for name, value in zip(names, reply, strict=True) if value}
