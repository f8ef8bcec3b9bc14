"""What operators see of entries: each key's TTL, type and fields, read raw (no
codec, no near cache), for the check, the admin and the flush."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from .transport import call, decode_hash


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
