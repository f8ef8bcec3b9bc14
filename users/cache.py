"""The Redis store: key builders, hash <-> dict, the atomic writes, the breaker.

This module knows how entries are laid out in Redis and nothing about when to
read or write them; that algorithm lives in ``users.services``. Every entry is a
Redis hash of strings. Two metadata fields ride along with the public data:

* ``v``: the MySQL row version the entry was made from (the ETag, and how
  ``check_user_cache`` tells an entry's age);
* ``x``: present on an entry that records "no such row" (negative cache),
  which is how a cached absence is told apart from a miss.

Their layout is ``users.entries``'.

Keys carry a Redis Cluster hash tag (``{...}``) so that an entry and its lease
always live in the same slot, as the Lua scripts require. The client is a
``redis.Redis`` on one server or behind Sentinel and a ``RedisCluster`` on a
cluster (``config/redis.py``); everything here works on both.

Every call goes through ``_call``: a Redis error becomes ``CacheUnavailable``
and feeds the circuit breaker, which, once open, fails calls at once instead of
letting each request wait for a timeout.

The batch primitives at the end (``lease_many``, ``fill_many``, ``inspect_many``,
``scan_project_keys``, ``unlink_many``) serve the operator tools in
``users.maintenance``: each is one round trip for a whole batch. A script or an
UNLINK names all of a batch's keys at once on one server, and only keys of one
hash slot on a Redis Cluster, where a batch becomes one call per slot, pipelined
to each node that holds some of them; a scan covers every primary.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection
from redis import Redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from . import metrics
from .conf import user_cache_settings

T = TypeVar("T")


class CacheUnavailable(Exception):
    """Redis did not answer (down, refusing, timed out): the caller bypasses the cache."""


# Key builders: the one place to read every key shape.


def _namespace() -> str:
    return f"{user_cache_settings.KEY_PREFIX}:v{user_cache_settings.SCHEMA_VERSION}"


def user_cache_key(user_id: int) -> str:
    return f"{_namespace()}:user:{{{user_id}}}"


def token_cache_key(token_mac: str) -> str:
    """A token's entry, named by ``users.tokens.token_mac``, never by the key itself."""
    return f"{_namespace()}:token:{{{token_mac}}}"


def throttle_key(scope: str, ident: str) -> str:
    return f"{_namespace()}:throttle:{scope}:{{{ident}}}"


def lease_key(entry_key: str) -> str:
    return f"{entry_key}:lease"


def project_key_pattern() -> str:
    """A SCAN pattern matching every key this project writes, whatever its schema version."""
    return f"{user_cache_settings.KEY_PREFIX}:*"


def user_cache_key_pattern() -> str:
    """A SCAN pattern matching the user entries (and their leases) of the current schema."""
    return f"{_namespace()}:user:*"


def user_id_from_key(key: str) -> int | None:
    """The id in a user entry's key of the current schema; None for any other key."""
    prefix = f"{_namespace()}:user:{{"
    if not (key.startswith(prefix) and key.endswith("}")):
        return None
    digits = key[len(prefix) : -1]
    return int(digits) if digits.isascii() and digits.isdigit() else None


class KeyKind(enum.StrEnum):
    """What a key under the project prefix holds, whatever its schema version."""

    USER = "user entries"
    TOKEN = "token lookups"
    LEASE = "leases"
    # Anything else under the prefix: rate-limit counters, Django's cache.
    OTHER = "other keys"


@functools.cache
def _key_shape(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(prefix)}:v[0-9]+:(user|token):\{{[^}}]*\}}(:lease)?")


def key_kind(key: str) -> KeyKind:
    match = _key_shape(user_cache_settings.KEY_PREFIX).fullmatch(key)
    if match is None:
        return KeyKind.OTHER
    if match.group(2):
        return KeyKind.LEASE
    return KeyKind.USER if match.group(1) == "user" else KeyKind.TOKEN


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

# KEYS: entry, lease, entry, lease, ... ARGV: lease token, guarded (1 or 0), and
# a JSON document [field names, [[ttl (ms), value, ...] per entry]], all strings.
# Stores each entry only while its filler still holds the entry's lease: any
# write to the row deletes the lease, so a load older than that write is
# refused. Returns 1 (stored) or 0 (refused) per entry. Unguarded is what a
# naive cache-aside does; used only when STALE_SET_PROTECTION is off, to show
# that the race is real. One script serves a reader's fill and a bulk warm's
# batch alike, so the rule lives in one place. The entries travel as one JSON
# argument: the client packs one string instead of ten arguments per entry, and
# decoding it (about 4 µs an entry here) costs the script about what parsing
# those arguments would cost Redis, so the two layouts timed alike in Redis.
_FILL = """
local token, guarded = ARGV[1], ARGV[2] == '1'
local batch = cjson.decode(ARGV[3])
local names, entries = batch[1], batch[2]
local stored = {}
for e = 1, #entries do
  local entry, key, lease = entries[e], KEYS[2 * e - 1], KEYS[2 * e]
  stored[e] = 0
  if not guarded or redis.call('GET', lease) == token then
    local hash = {}
    for f = 1, #names do
      hash[2 * f - 1], hash[2 * f] = names[f], entry[f + 1]
    end
    redis.call('DEL', key, lease)
    redis.call('HSET', key, unpack(hash))
    redis.call('PEXPIRE', key, entry[1])
    stored[e] = 1
  end
end
return stored
"""

# KEYS: entry, lease, entry, lease, ... ARGV: lease token, lease ttl (ms),
# only-missing (1 or 0). Takes each entry's lease: unconditionally (a refresh:
# the fill that follows replaces a present entry, and a reader whose lease this
# replaces merely fails to store its own load), or only where the entry is
# missing and nobody holds its lease (the bulk warm's --missing-only, which must
# leave present entries alone). Returns 1 (taken) or 0 per entry.
_LEASE = """
local taken = {}
for i = 1, #KEYS, 2 do
  local ok
  if ARGV[3] == '1' then
    ok = redis.call('EXISTS', KEYS[i]) == 0
      and redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2])
  else
    ok = redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
  end
  taken[#taken + 1] = ok and 1 or 0
end
return taken
"""

# KEYS: entry, lease. ARGV: lease token. Gives a lease back after a failed load.
_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: entry, lease. ARGV: lease token, ttl (ms), field, value, ...
# A write's after-commit step: stores the committed state while the write's own
# lease (taken inside its transaction, under the row lock) still stands, and
# otherwise deletes the entry. A later write replaces the lease, so a step that
# arrives late can never leave an older state behind: at worst it drops a newer
# one, which the next read loads again. Returns 1 (stored) or 0 (deleted).
_FILL_OR_DELETE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
redis.call('DEL', KEYS[1])
return 0
"""


# KEYS: counter[, entry]. ARGV: window (ms). Counts a request in a fixed window
# that starts with its first request; returns the count and the window's time
# left. When an entry is named too (in the counter's hash slot), returns its
# HGETALL as well, and counts only if the entry exists: a token lookup counts
# its request in the same round trip, and a guessed token creates no counter.
# A request not counted here (the reply's count is 0) is counted by the
# throttle once authentication succeeds.
_COUNT_IN_WINDOW = """
local entry
if KEYS[2] then
  entry = redis.call('HGETALL', KEYS[2])
  if #entry == 0 then return {0, 0, entry} end
end
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1]), entry}
"""


class ReadState(enum.Enum):
    HIT = 1
    LEASED = 2
    BUSY = 0


class CircuitBreaker:
    """Opens after ``BREAKER_FAILURES`` consecutive failures; while open, calls fail
    at once. After ``BREAKER_COOLDOWN_MS`` one call probes Redis: success closes
    the breaker, failure opens it again. Per process, like the connection pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until > 0

    def allow(self) -> bool:
        if not self._open_until:
            return True
        with self._lock:
            if time.monotonic() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        if self._failures or self._open_until:
            with self._lock:
                self._failures, self._open_until, self._probing = 0, 0.0, False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= user_cache_settings.BREAKER_FAILURES:
                cooldown = user_cache_settings.BREAKER_COOLDOWN_MS / 1000
                self._open_until = time.monotonic() + cooldown

    def reset(self) -> None:
        with self._lock:
            self._failures, self._open_until, self._probing = 0, 0.0, False


breaker = CircuitBreaker()

# What a client raises when Redis cannot serve a call. A cluster client also
# raises RedisClusterException, which is not a RedisError, when no node answers
# or a slot has no primary (during a failover).
_UNAVAILABLE = (RedisError, RedisClusterException)


@functools.cache
def _client() -> Redis | RedisCluster:
    """django-redis' raw client of the ``default`` cache, looked up once per process:
    the lookup (Django's per-thread cache handler, then django-redis) costs about
    as much as the rest of a cached read's Python. The client and its pool are
    thread-safe, and the pool reconnects in a forked child."""
    return get_redis_connection("default")


@receiver(setting_changed)
def _forget_client(*, setting: str, **kwargs) -> None:
    """A changed CACHES (tests) names another Redis."""
    if setting == "CACHES":
        _client.cache_clear()


def _call(operation: Callable[[Redis | RedisCluster], T]) -> T:
    if not breaker.allow():
        raise CacheUnavailable("circuit breaker open: Redis failed recently")
    started = time.perf_counter()
    try:
        result = operation(_client())
    except _UNAVAILABLE as exc:
        breaker.record_failure()
        metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        metrics.REDIS_SECONDS.observe(time.perf_counter() - started)
    breaker.record_success()
    return result


def _execute(client: Redis | RedisCluster, *args: object) -> object:
    """One command on a connection from the client's pool, past redis-py's per-call
    machinery; the reply comes raw, without redis-py's response callbacks (except
    on a cluster, below).

    Measured here: a redis-py HGETALL takes about 120 µs, of which the loopback
    round trip is about 40 and a command sent on a pooled connection about 60;
    the rest is the client's retry wrapper, event dispatch and instrumentation,
    paid by every cached read. What matters is kept: the pool still
    checks a connection when it hands it out and reconnects one that Redis
    closed (a restart), and a connection that failed mid-command is dropped.
    Redis's own timeouts apply. A cluster keeps its client's routing and
    redirections, so there the call goes through ``execute_command``.
    """
    (reply,) = _execute_many(client, [args])
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def _execute_many(client: Redis | RedisCluster, commands: Sequence[tuple]) -> list:
    """Commands sent together on one pooled connection, one round trip, as
    ``_execute`` sends one; each reply, or the error Redis answered it with. On a
    cluster, where their keys may live on different nodes, each goes through the
    cluster client."""
    if isinstance(client, RedisCluster):
        replies = []
        for command in commands:
            try:
                replies.append(client.execute_command(*command))
            except ResponseError as error:
                replies.append(error)
        return replies
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        replies = []
        for _command in commands:
            try:
                replies.append(connection.read_response())
            except ResponseError as error:  # an error reply: the connection itself is fine
                replies.append(error)
        return replies
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


@functools.cache
def _script(source: str) -> Script:
    """The script object (its SHA); each call names its client, and redis-py loads
    the script into a server that does not know it yet."""
    return Script(None, source.encode())


def _run_script(source: str, keys: list[str], args: list) -> object:
    script = _script(source)

    def run(client: Redis | RedisCluster) -> object:
        try:
            return _execute(client, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new, restarted or flushed server
            client.script_load(script.script)
            return _execute(client, "EVALSHA", script.sha, len(keys), *keys, *args)

    return _call(run)


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {field.decode(): value.decode() for field, value in raw.items()}


def _decode_flat(flat: Sequence[bytes]) -> dict[str, str]:
    """A hash as Redis sends it (field, value, field, value, ...), decoded."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _flatten(mapping: Mapping[str, str]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]


def new_lease_token() -> str:
    return secrets.token_hex(8)


def read(key: str) -> dict[str, str] | None:
    """One HGETALL: the entry's fields, or None on a miss."""
    return _hash_fields(_call(lambda client: _execute(client, "HGETALL", key)))


def _hash_fields(raw: Mapping[bytes, bytes] | Sequence[bytes]) -> dict[str, str] | None:
    """An HGETALL reply (a dict through a cluster client, else flat), decoded; None
    for a missing key."""
    if not raw:
        return None
    return _decode(raw) if isinstance(raw, Mapping) else _decode_flat(raw)


def read_or_lease(key: str, token: str, lease_ms: int) -> tuple[ReadState, dict[str, str] | None]:
    """Reads the entry, or, when it is missing, tries to take the lease to fill it."""
    reply = _run_script(_READ_OR_LEASE, [key, lease_key(key)], [token, lease_ms])
    state = ReadState(reply[0])
    if state is ReadState.HIT:
        return state, _decode_flat(reply[1])
    return state, None


def fill(key: str, token: str, fields: Mapping[str, str], ttl_ms: int) -> bool:
    """Stores a reader's load if its lease still stands; True when it was stored."""
    batch = FillBatch(
        token=token, names=list(fields), keys=[key], rows=[list(fields.values())], ttls_ms=[ttl_ms]
    )
    return fill_many(batch)[0]


def release_lease(key: str, token: str) -> None:
    _run_script(_RELEASE, [key, lease_key(key)], [token])


def take_lease(key: str, token: str, lease_ms: int) -> None:
    """Takes the entry's lease whoever holds it: a write does, inside its transaction,
    so that every fill begun before it is refused (``users.invalidation``)."""
    _call(lambda client: _execute(client, "SET", lease_key(key), token, "PX", lease_ms))


def fill_or_delete(key: str, token: str, fields: Mapping[str, str], ttl_ms: int) -> bool:
    """A write's after-commit step (see ``_FILL_OR_DELETE``); True when it stored."""
    args = [token, ttl_ms, *_flatten(fields)]
    return bool(_run_script(_FILL_OR_DELETE, [key, lease_key(key)], args))


def jittered_ttl_ms(seconds: int) -> int:
    """An entry's TTL: ``seconds`` shortened by up to ``TTL_JITTER``, so that entries
    written together do not all expire together."""
    jitter = user_cache_settings.TTL_JITTER
    return int(seconds * 1000 * (1 - jitter * random.random()))


@dataclasses.dataclass(frozen=True, slots=True)
class WindowCount:
    """A request counted against a rate limit: requests so far in the window, and
    the milliseconds left in it."""

    count: int
    ms_left: int


def count_in_window(key: str, window_ms: int) -> WindowCount:
    """Counts one request against a rate limit."""
    count, ms_left = _run_script(_COUNT_IN_WINDOW, [key], [window_ms])[:2]
    return WindowCount(count, ms_left)


def window_count(key: str) -> WindowCount:
    """Requests counted so far in a rate limit's window, without counting one."""

    def peek(client: Redis | RedisCluster) -> list:
        with client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            return pipe.execute()

    count, ms_left = _call(peek)
    return WindowCount(int(count or 0), ms_left)


def read_with(
    key: str, *, count: tuple[str, int] | None = None, read_ahead: str | None = None
) -> tuple[dict[str, str] | None, WindowCount | None, dict[str, str] | None]:
    """``read`` of ``key`` that does more in the same round trip: with ``count``
    (counter, window in ms; the counter must share ``key``'s hash tag), it counts a
    request as ``count_in_window`` does, in the same script call; with
    ``read_ahead``, it reads that key too (on a cluster, where it lives in another
    slot, in a round trip of its own). Returns the entry, the count (None without
    ``count``, or when the entry is missing and the request was not counted) and the
    read-ahead entry (None when missing or not asked for)."""
    script = _script(_COUNT_IN_WINDOW)
    first = (
        ("HGETALL", key) if count is None else ("EVALSHA", script.sha, 2, count[0], key, count[1])
    )
    commands = [first] if read_ahead is None else [first, ("HGETALL", read_ahead)]

    def run(client: Redis | RedisCluster) -> list:
        replies = _execute_many(client, commands)
        if isinstance(replies[0], NoScriptError):  # a new, restarted or flushed server
            client.script_load(script.script)
            replies[0] = _execute(client, *first)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    replies = _call(run)
    ahead = _hash_fields(replies[1]) if read_ahead is not None else None
    if count is None:
        return _hash_fields(replies[0]), None, ahead
    requests, ms_left, flat = replies[0]
    counted = WindowCount(requests, ms_left) if requests else None
    return _decode_flat(flat) or None, counted, ahead


def invalidate(keys: Iterable[str]) -> None:
    """Deletes entries and their leases, one pipelined round trip for all of them
    (on a cluster, one per node that holds some of them).

    One key per DEL: a cluster pipeline refuses multi-key commands, and a plain
    server does not mind.
    """

    def delete_all(client: Redis | RedisCluster) -> None:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
                pipe.delete(lease_key(key))
            pipe.execute()

    _call(delete_all)


# Health and the admin's overview: the server's own word, past the breaker, so
# that they show what Redis does now rather than what it did a moment ago.


def ping() -> float:
    """Seconds one PING took (to every node of a cluster); raises ``CacheUnavailable``
    when Redis does not answer."""
    started = time.perf_counter()
    try:
        _client().ping()
    except _UNAVAILABLE as exc:
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
        client = _client()
        if not isinstance(client, RedisCluster):
            return client.info()
        infos = [client.get_redis_connection(node).info() for node in client.get_primaries()]
    except _UNAVAILABLE as exc:
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    info = {**infos[0], **{name: sum(each.get(name, 0) for each in infos) for name in _SUMMED_INFO}}
    info["used_memory_human"] = f"{info['used_memory'] / 2**20:.2f}M"
    return info


# Batch primitives for users.maintenance.


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

    def inspect(client: Redis) -> list:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
                pipe.type(key)
                if fields is None:
                    pipe.hgetall(key)
                elif fields:
                    pipe.hmget(key, list(fields))
            return pipe.execute(raise_on_error=False)

    replies = _call(inspect)
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
        return _decode(reply)
    return {name: value.decode() for name, value in zip(names, reply, strict=True) if value}


def lease_many(keys: Sequence[str], token: str, lease_ms: int, *, only_missing: bool) -> list[bool]:
    """Takes the lease of every entry (see ``_LEASE``); True where it was taken."""

    def call(group: Sequence[int]) -> tuple[list[str], list]:
        return _entries_and_leases(keys, group), [token, lease_ms, int(only_missing)]

    return [bool(reply) for reply in _eval_grouped(_LEASE, keys, call)]


@dataclasses.dataclass(frozen=True, slots=True)
class FillBatch:
    """Entries of one shape filled under one lease token: ``rows[i]`` holds the values
    of ``names`` for ``keys[i]``, stored with a TTL of ``ttls_ms[i]``.

    Columns rather than a mapping per entry: a warm builds one of these per batch,
    and the field names travel to Redis once instead of with every entry.
    """

    token: str
    names: Sequence[str]
    keys: Sequence[str]
    rows: Sequence[Sequence[str | int]]
    ttls_ms: Sequence[int]


def fill_many(batch: FillBatch) -> list[bool]:
    """Stores every entry of ``batch`` whose lease still stands (see ``_FILL``); True
    where it was stored, False where a write revoked the lease meanwhile."""
    guarded = int(user_cache_settings.STALE_SET_PROTECTION)
    names = list(batch.names)

    def call(group: Sequence[int]) -> tuple[list[str], list]:
        entries = [[str(batch.ttls_ms[index]), *map(str, batch.rows[index])] for index in group]
        document = json.dumps([names, entries], ensure_ascii=False, separators=(",", ":"))
        return _entries_and_leases(batch.keys, group), [batch.token, guarded, document]

    return [bool(reply) for reply in _eval_grouped(_FILL, batch.keys, call)]


def _entries_and_leases(keys: Sequence[str], group: Sequence[int]) -> list[str]:
    return [name for index in group for name in (keys[index], lease_key(keys[index]))]


# A script holds Redis for its whole run, 10-25 µs per entry here: 250 entries
# keep a call to a few milliseconds, well inside the API's read timeout, whatever
# the batch size of a bulk run.
_ENTRIES_PER_SCRIPT_CALL = 250


def _eval_grouped(
    source: str, keys: Sequence[str], call: Callable[[Sequence[int]], tuple[list[str], list]]
) -> list:
    """Runs a per-entry script (one reply per entry) over all of ``keys`` in as few
    calls as the server allows, pipelined: on a single server one per
    ``_ENTRIES_PER_SCRIPT_CALL`` entries; on a cluster one per hash slot, since a
    script may only name keys of one slot. ``call(group)`` makes the keys and
    arguments of the call for the entries at those indexes of ``keys``.
    """
    groups: list[list[int]] = []

    def calls_for(client: Redis | RedisCluster) -> list[tuple[list[str], list]]:
        groups[:] = [
            group[start : start + _ENTRIES_PER_SCRIPT_CALL]
            for group in _slot_groups(client, keys)
            for start in range(0, len(group), _ENTRIES_PER_SCRIPT_CALL)
        ]
        return [call(group) for group in groups]

    replies = _eval_many(source, calls_for)
    per_entry: list = [None] * len(keys)
    for group, reply in zip(groups, replies, strict=True):
        for index, value in zip(group, reply, strict=True):
            per_entry[index] = value
    return per_entry


def _slot_groups(client: Redis | RedisCluster, keys: Sequence[str]) -> list[list[int]]:
    """Indexes of ``keys`` that one script call may name together."""
    if not keys:
        return []
    if not isinstance(client, RedisCluster):
        return [list(range(len(keys)))]
    by_slot = collections.defaultdict(list)
    for index, key in enumerate(keys):
        by_slot[client.keyslot(key)].append(index)
    return list(by_slot.values())


def _eval_many(
    source: str, calls_for: Callable[[Redis | RedisCluster], Sequence[tuple[list[str], list]]]
) -> list:
    """EVALSHA of one script per (keys, args) of ``calls_for(client)``, pipelined
    without a transaction.

    A server that does not know the script yet (restarted, failed over, flushed)
    answers NOSCRIPT: the script is loaded and only those calls are sent again.

    redis-py refuses scripts in a cluster pipeline, so on a cluster the calls are
    pipelined per node, on each node's own connection; each call's keys share a
    slot (hash tags). Calls that a node redirects (MOVED, ASK: the slot map is out
    of date after a failover or resharding) or that a node could not take go one
    at a time through the cluster client, which follows redirections and reads
    the map again.
    """
    script = _script(source)

    def send(client: Redis, batch: Sequence[tuple[list[str], list]]) -> list:
        with client.pipeline(transaction=False) as pipe:
            for keys, args in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return pipe.execute(raise_on_error=False)

    def run(client: Redis, calls: Sequence[tuple[list[str], list]]) -> list:
        """The replies, errors included."""
        replies = send(client, calls)
        unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            client.script_load(script.script)
            retried = send(client, [calls[index] for index in unknown])
            for index, reply in zip(unknown, retried, strict=True):
                replies[index] = reply
        return replies

    def run_on_cluster(client: RedisCluster, calls: Sequence[tuple[list[str], list]]) -> list:
        by_node = collections.defaultdict(list)
        for index, (keys, _args) in enumerate(calls):
            by_node[client.get_node_from_key(keys[0]).name].append(index)
        replies: list = [None] * len(calls)
        redirected = []
        for name, indexes in by_node.items():
            node = client.get_redis_connection(client.get_node(node_name=name))
            try:
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
            replies[index] = script(keys=keys, args=args, client=client)
        return replies

    def run_anywhere(client: Redis | RedisCluster) -> list:
        calls = calls_for(client)
        replies = (
            run_on_cluster(client, calls)
            if isinstance(client, RedisCluster)
            else run(client, calls)
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    return _call(run_anywhere)


def scan_project_keys(pattern: str | None = None, *, count: int = 1000) -> Iterator[list[str]]:
    """Every key matching ``pattern`` (by default all of this project's), a SCAN page at
    a time: one round trip per page, never KEYS, and never a key outside the prefix.
    On a cluster every primary is scanned in turn, each with its own cursor."""
    pattern = pattern or project_key_pattern()
    assert pattern.startswith(f"{user_cache_settings.KEY_PREFIX}:"), (
        f"{pattern!r} reaches outside this project's prefix {user_cache_settings.KEY_PREFIX!r}"
    )
    for server in _call(_servers_to_scan):
        cursor = 0
        while True:
            cursor, keys = _call(
                lambda _client, server=server, cursor=cursor: server.scan(
                    cursor, match=pattern, count=count
                )
            )
            if keys:
                yield [key.decode() for key in keys]
            if cursor == 0:
                break


def _servers_to_scan(client: Redis | RedisCluster) -> list[Redis]:
    """The server, or each primary of a cluster (through its own connection)."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def unlink_many(keys: Sequence[str]) -> int:
    """UNLINKs the keys, one round trip; returns how many existed.

    One UNLINK names many keys: Redis spends about a microsecond on each, and the
    client far less than on a command per key. On a cluster, one UNLINK per hash
    slot (a command may not name keys of two), pipelined per node.
    """

    def unlink_all(client: Redis | RedisCluster) -> list:
        with client.pipeline(transaction=False) as pipe:
            for group in _slot_groups(client, keys):
                # execute_command: a cluster pipeline's unlink() refuses several keys
                # even when they share a slot, which the command itself allows.
                pipe.execute_command("UNLINK", *(keys[index] for index in group))
            return pipe.execute()

    return sum(_call(unlink_all)) if keys else 0
