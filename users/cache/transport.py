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
from collections.abc import Callable, Sequence
from typing import TypeVar

from django.conf import settings
from django.utils.module_loading import import_string
from redis import Redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from .. import metrics
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
    with. What matters of redis-py's machinery is kept: the pool checks a
    connection when it hands it out and reconnects one that Redis closed, a
    connection that failed mid-command is dropped, and Redis's timeouts apply.
    On a cluster, where the keys may live on different nodes, each command goes
    through the cluster client, which keeps its routing and redirections."""
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


@functools.cache
def script(source: str) -> Script:
    """The script object (its SHA); each call names its client, and a server that does
    not know the script yet is sent it (``run_script``, ``cluster.eval_many``)."""
    return Script(None, source.encode())


def run_script(source: str, keys: Sequence[str], args: Sequence) -> object:
    """EVALSHA of one script call, loading the script into a new, restarted or
    flushed server that answers NOSCRIPT."""
    loaded = script(source)

    def run(redis: Redis | RedisCluster) -> object:
        try:
            return execute(redis, "EVALSHA", loaded.sha, len(keys), *keys, *args)
        except NoScriptError:
            redis.script_load(loaded.script)
            return execute(redis, "EVALSHA", loaded.sha, len(keys), *keys, *args)

    return call(run)
