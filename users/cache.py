"""The Redis store: key builders, hash <-> dict, and the atomic writes.

This module knows how entries are laid out in Redis and nothing about when to
read or write them; that algorithm lives in ``users.services``. Every entry is a
Redis hash of strings. Two metadata fields ride along with the public data:

* ``_v``: the MySQL row version the entry was made from, so a write can refuse
  to replace a newer state with an older one;
* ``_absent``: present on an entry that records "no such row" (negative cache),
  which is how a cached absence is told apart from a miss.

Keys carry a Redis Cluster hash tag (``{...}``) so that an entry and its lease
always live in the same slot, as the Lua scripts require.
"""

from __future__ import annotations

import enum
import functools
import secrets
from collections.abc import Iterable, Mapping

from django_redis import get_redis_connection
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import RedisError

from .conf import user_cache_settings

VERSION_FIELD = "_v"
ABSENT_FIELD = "_absent"


class CacheUnavailable(Exception):
    """Redis did not answer (down, refusing, timed out): the caller bypasses the cache."""


# Key builders: the one place to read every key shape.


def _namespace() -> str:
    return f"{user_cache_settings.KEY_PREFIX}:v{user_cache_settings.SCHEMA_VERSION}"


def user_cache_key(user_id: int) -> str:
    return f"{_namespace()}:user:{{{user_id}}}"


def token_cache_key(token_digest: str) -> str:
    return f"{_namespace()}:token:{{{token_digest}}}"


def lease_key(entry_key: str) -> str:
    return f"{entry_key}:lease"


def project_key_pattern() -> str:
    """A SCAN pattern matching every key this project writes, whatever its schema version."""
    return f"{user_cache_settings.KEY_PREFIX}:*"


# Lua scripts. Each runs atomically in Redis, so a hash, its fields and its TTL
# always land together and a check-then-write cannot be interleaved.

# KEYS: entry, lease. ARGV: lease token, lease ttl (ms).
# Returns {1, hash} when the entry exists, {2} when this caller now holds the
# lease and must fill the entry, {0} when another caller holds it.
_READ_OR_LEASE = """
local entry = redis.call('HGETALL', KEYS[1])
if #entry > 0 then return {1, entry} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""

# KEYS: entry, lease. ARGV: lease token, ttl (ms), field, value, ...
# Writes only while the caller still holds its lease: any write to the row
# deletes the lease, so a reader that loaded an older state cannot store it.
_FILL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: entry, lease. ARGV: version, ttl (ms), field, value, ...
# Write-through: replaces the entry unless it already holds this version or a
# newer one, and revokes any reader's lease so its older load is refused.
_WRITE = """
redis.call('DEL', KEYS[2])
local current = redis.call('HGET', KEYS[1], '_v')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class ReadState(enum.Enum):
    HIT = 1
    LEASED = 2
    BUSY = 0


def _client() -> Redis:
    return get_redis_connection("default")


@functools.cache
def _script(source: str) -> Script:
    """The script object (its SHA); each call names its client, and redis-py loads
    the script into a server that does not know it yet."""
    return _client().register_script(source)


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {field.decode(): value.decode() for field, value in raw.items()}


def _flatten(mapping: Mapping[str, str]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]


def new_lease_token() -> str:
    return secrets.token_hex(8)


def read(key: str) -> dict[str, str] | None:
    """One HGETALL: the entry's fields, or None on a miss."""
    try:
        raw = _client().hgetall(key)
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    return _decode(raw) if raw else None


def read_or_lease(key: str, token: str, lease_ms: int) -> tuple[ReadState, dict[str, str] | None]:
    """Reads the entry, or, when it is missing, tries to take the lease to fill it."""
    client = _client()
    try:
        reply = _script(_READ_OR_LEASE)(
            keys=[key, lease_key(key)], args=[token, lease_ms], client=client
        )
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    state = ReadState(reply[0])
    if state is ReadState.HIT:
        flat = reply[1]
        return state, {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
    return state, None


def fill(key: str, token: str, fields: Mapping[str, str], ttl_ms: int) -> bool:
    """Stores a reader's load if its lease still stands; True when it was stored."""
    client = _client()
    try:
        stored = _script(_FILL)(
            keys=[key, lease_key(key)], args=[token, ttl_ms, *_flatten(fields)], client=client
        )
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    return bool(stored)


def write(key: str, fields: Mapping[str, str], ttl_ms: int) -> bool:
    """Write-through of a committed state; refused when Redis holds the same or a newer one."""
    client = _client()
    try:
        stored = _script(_WRITE)(
            keys=[key, lease_key(key)],
            args=[fields[VERSION_FIELD], ttl_ms, *_flatten(fields)],
            client=client,
        )
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    return bool(stored)


def invalidate(keys: Iterable[str]) -> None:
    """Deletes entries and their leases, one pipelined round trip for all of them.

    Each DEL names one entry and its lease, which share a hash slot, so this
    also works on a Redis Cluster.
    """
    client = _client()
    try:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key, lease_key(key))
            pipe.execute()
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
