"""How the store talks to Redis: the client, the circuit breaker's gate, and the
only code here that knows redis-py's internals.

Every call goes through ``call``: a Redis error becomes ``CacheUnavailable`` and
feeds the circuit breaker, which, once open, fails calls at once.

``execute_many`` sends commands on a pooled connection past redis-py's per-call
machinery (its retry wrapper, event dispatch and instrumentation), which cost a
cached read more than the loopback round trip itself. It relies on
``ConnectionPool.get_connection()`` and ``release()``, and on a connection's
``pack_commands``, ``send_packed_command``, ``read_response`` and ``disconnect``:
internals, so ``pyproject.toml`` pins the redis-py versions this was checked
with, and ``tests/test_transport.py`` fails loudly if one of them changes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from django.conf import settings
from django.utils.module_loading import import_string
from redis import Redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from .. import metrics
from ..conf import user_cache_settings
from .breaker import CircuitBreaker

T = TypeVar("T")

# What a client raises when Redis cannot serve a call. A cluster client also
# raises RedisClusterException, which is not a RedisError, when no node answers
# or a slot has no primary (during a failover).
UNAVAILABLE = (RedisError, RedisClusterException)

breaker = CircuitBreaker()


class CacheUnavailable(Exception):
    """Redis did not answer (down, refusing, timed out): the caller bypasses the cache."""


# The client, and the CACHES["default"] it was made from.
_made: tuple[dict | None, Redis | RedisCluster | None] = (None, None)


def client() -> Redis | RedisCluster:
    """django-redis' raw client of the ``default`` cache, made once per process (and
    again when the settings change: tests override them). Made from the settings
    in force rather than looked up through Django's cache handler, which costs
    about as much as the rest of a cached read's Python, holds a cache per thread,
    and forgets the old settings only when its receiver of ``setting_changed``
    runs: a background thread could get the old client in between. The client and
    its pool are thread-safe, and the pool reconnects in a forked child. A
    ``redis.Redis`` on one server or behind Sentinel, a ``RedisCluster`` on a
    cluster (``config/redis.py``)."""
    global _made
    configured = settings.CACHES["default"]
    made_for, redis = _made
    if made_for is not configured:
        options = {name: value for name, value in configured.items() if name != "BACKEND"}
        cache = import_string(configured["BACKEND"])(options.pop("LOCATION", ""), options)
        redis = cache.client.get_client(write=True)
        _made = (configured, redis)
    return redis


def call(operation: Callable[[Redis | RedisCluster], T]) -> T:
    """Runs ``operation`` with the client, through the breaker, timed."""
    if not breaker.allow():
        raise CacheUnavailable("circuit breaker open: Redis failed recently")
    started = time.perf_counter()
    try:
        result = operation(client())
    except UNAVAILABLE as exc:
        breaker.record_failure()
        metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        metrics.REDIS_SECONDS.observe(time.perf_counter() - started)
    breaker.record_success()
    return result


def execute(redis: Redis | RedisCluster, *args: object) -> object:
    """One command (see ``execute_many``); an error reply is raised."""
    (reply,) = execute_many(redis, [args])
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def execute_many(redis: Redis | RedisCluster, commands: Sequence[tuple]) -> list:
    """Commands sent together on one pooled connection, one round trip; each reply
    raw (without redis-py's response callbacks), or the error Redis answered it
    with. An EVALSHA of a script of ``script()`` that a new, restarted or flushed
    server does not know yet is loaded and sent again (a second round trip, once).
    What matters of redis-py's machinery is kept: the pool checks a connection
    when it hands it out and reconnects one that Redis closed, a connection that
    failed mid-command is dropped, and Redis's timeouts apply. On a cluster,
    where the keys may live on different nodes, each command goes through the
    cluster client, which keeps its routing and redirections."""
    replies = _send(redis, commands)
    unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:
        for sha in {commands[index][1] for index in unknown}:
            redis.script_load(script_source(sha))
        for index, reply in zip(unknown, _send(redis, [commands[i] for i in unknown]), strict=True):
            replies[index] = reply
    return replies


def _send(redis: Redis | RedisCluster, commands: Sequence[tuple]) -> list:
    if isinstance(redis, RedisCluster):
        replies = []
        for command in commands:
            try:
                replies.append(redis.execute_command(*command))
            except ResponseError as error:
                replies.append(error)
        return replies
    pool = redis.connection_pool
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


def decode_hash(
    raw: Mapping[bytes, bytes] | Sequence[bytes] | ResponseError,
) -> dict[str, str] | None:
    """An HGETALL reply (a dict through a cluster client, else flat: field, value,
    ...), decoded; None for a missing key; ``{}``, no entry of anyone's, for a hash
    that is not valid UTF-8 or a key of another type (the WRONGTYPE error Redis
    answered: what someone else wrote there is no reason to take Redis for down)."""
    if isinstance(raw, ResponseError):
        if str(raw).startswith("WRONGTYPE"):
            return {}
        raise raw
    if not raw:
        return None
    try:
        if isinstance(raw, Mapping):
            return {field.decode(): value.decode() for field, value in raw.items()}
        return {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
    except UnicodeDecodeError:
        return {}


# Script sources by SHA, for the servers that answer NOSCRIPT.
_SOURCES: dict[str, bytes] = {}


@functools.cache
def script(source: str) -> Script:
    """The script object (its SHA); each call names its client, and a server that does
    not know the script yet is sent it (``execute_many``, ``cluster.eval_many``)."""
    loaded = Script(None, source.encode())
    _SOURCES[loaded.sha] = loaded.script
    return loaded


def script_source(sha: str | bytes) -> bytes:
    """The source of a script of ``script()``, by its SHA."""
    return _SOURCES[sha.decode() if isinstance(sha, bytes) else sha]


def evalsha(source: str, keys: Sequence[str], args: Sequence) -> tuple:
    """The command that runs ``source`` (see ``script``) on ``keys`` with ``args``."""
    return ("EVALSHA", script(source).sha, len(keys), *keys, *args)


def run_script(source: str, keys: Sequence[str], args: Sequence) -> object:
    """One script call, in a round trip of its own."""
    return call(lambda redis: execute(redis, *evalsha(source, keys, args)))


# Tries of one batch's step before a bulk run gives up on Redis.
REDIS_ATTEMPTS = 3


def retrying(step: Callable[[], T]) -> T:
    """Runs a batch's step again when Redis failed it, after the breaker's cooldown.

    A bulk run holds Redis to the API's short timeouts, and on a busy server one
    pipeline of a long run may miss them; each step is idempotent (a retried
    lease-and-load takes new leases and loads again; a retried fill stores under
    the same leases, which still refuse it if a write came in between), so a
    blip costs a retry rather than the run.
    """
    for attempt in range(1, REDIS_ATTEMPTS + 1):
        try:
            return step()
        except CacheUnavailable:
            if attempt == REDIS_ATTEMPTS:
                raise
            time.sleep(user_cache_settings.BREAKER_COOLDOWN_MS / 1000 * attempt)
    raise AssertionError("unreachable")
