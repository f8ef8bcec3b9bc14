"""How the store talks to Redis: the client, the circuit breakers' gate, and the
only code here that knows redis-py's internals.

Every call goes through ``call``: a Redis error becomes ``CacheUnavailable`` and
feeds the circuit breaker of the node it came from, which, once open, fails the
calls to that node at once. There is one breaker per node a call can reach
(``breaker.Breakers``): on a cluster one per primary, so a failing shard does
not fail the calls to the others; on a single server or behind Sentinel one.

``execute_many`` sends commands on a pooled connection past redis-py's per-call
machinery (its retry wrapper, event dispatch and instrumentation), which cost a
cached read more than the loopback round trip itself. It relies on
``ConnectionPool.get_connection()`` and ``release()``, and on a connection's
``pack_commands``, ``send_packed_command``, ``read_response`` and ``disconnect``:
internals, so ``pyproject.toml`` pins the redis-py versions this was checked
with, and ``tests/cache/test_transport.py`` fails loudly if one of them changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from django.conf import settings
from django.utils.module_loading import import_string
from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from .. import metrics
from .breaker import Breakers, CircuitBreaker
from .scripts import evalsha, script_source

T = TypeVar("T")

# What a client raises when Redis cannot serve a call. A cluster client also
# raises RedisClusterException, which is not a RedisError, when no node answers
# or a slot has no primary (during a failover).
UNAVAILABLE = (RedisError, RedisClusterException)

SERVER = Breakers.SERVER
breakers = Breakers()


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


def node_of(redis: Redis | RedisCluster, key: str) -> str:
    """The node that serves ``key`` now, as the client's map of the slots says:
    a cluster primary's ``host:port``, else ``SERVER``. Raises
    ``RedisClusterException`` for a slot no node serves (during a failover)."""
    if isinstance(redis, RedisCluster):
        return redis.get_node_from_key(key).name
    return SERVER


@dataclasses.dataclass
class _Reach:
    """The breakers one ``call`` went through, each entered once: refused at once
    while open (unless the call probes), then told the call's outcome."""

    probe: bool
    entered: dict[str, CircuitBreaker] = dataclasses.field(default_factory=dict)
    # The nodes a send failed on, inside the call.
    failed: set[str] = dataclasses.field(default_factory=set)

    def enter(self, node: str) -> None:
        if node in self.entered:
            return
        breaker = breakers[node]
        if not self.probe and not breaker.allow():
            raise CacheUnavailable(f"circuit breaker open: Redis at {node} failed recently")
        self.entered[node] = breaker

    def settle(self, *, succeeded: bool, refused: bool = False) -> None:
        """A failure counts on the nodes it came from, or, when no send inside the
        call named its node, on every node the call entered."""
        failed = self.failed or (set() if succeeded or refused else set(self.entered))
        for node, breaker in self.entered.items():
            if node in failed:
                breaker.record_failure()
            elif succeeded:
                breaker.record_success()
            else:
                breaker.release()


_reach: contextvars.ContextVar[_Reach | None] = contextvars.ContextVar("reach", default=None)


@contextlib.contextmanager
def reaching(node: str) -> Iterator[None]:
    """A send to one node inside ``call``: through that node's breaker, and a
    failure in it counts as that node's. Outside a call, nothing."""
    reach = _reach.get()
    if reach is None:
        yield
        return
    reach.enter(node)
    try:
        yield
    except UNAVAILABLE:
        reach.failed.add(node)
        raise


def call(
    operation: Callable[[Redis | RedisCluster], T],
    *,
    keys: Iterable[str] | None = None,
    probe: bool = False,
) -> T:
    """Runs ``operation`` with the client, timed, through the breakers of the nodes
    it reaches: on a single server or behind Sentinel the one breaker; on a
    cluster the breakers of the nodes that serve ``keys``, and of each node the
    operation's own sends name (``reaching``: ``execute_many``, the cluster
    module's per-node pipelines). With ``probe``, the call goes whatever the
    breakers say, and its outcome counts all the same."""
    redis = client()
    reach = _Reach(probe)
    token = _reach.set(reach)
    started = time.perf_counter()
    try:
        if isinstance(redis, RedisCluster):
            if breakers.is_open:
                breakers.keep_only({node.name for node in redis.get_primaries()})
            for key in keys or ():
                reach.enter(node_of(redis, key))
        else:
            reach.enter(SERVER)
        result = operation(redis)
    except UNAVAILABLE as exc:
        reach.settle(succeeded=False)
        metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except BaseException:
        reach.settle(succeeded=False, refused=True)
        raise
    finally:
        _reach.reset(token)
        metrics.REDIS_SECONDS.observe(time.perf_counter() - started)
    reach.settle(succeeded=True)
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
    cluster client, which keeps its routing and redirections, and through the
    breaker of the node that serves its key (``reaching``)."""
    if isinstance(redis, RedisCluster):
        return _execute_routed(redis, commands)
    return on_connection(redis, lambda send: _with_scripts(send, commands))


def _execute_routed(redis: RedisCluster, commands: Sequence[tuple]) -> list:
    def send(batch: Sequence[tuple]) -> list:
        replies = []
        for command in batch:
            key = _key_of(command)
            with reaching(node_of(redis, key)) if key else contextlib.nullcontext():
                try:
                    replies.append(redis.execute_command(*command))
                except ResponseError as error:
                    replies.append(error)
        return replies

    replies = send(commands)
    unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:
        for sha in {commands[index][1] for index in unknown}:
            redis.script_load(script_source(sha))
        for index, reply in zip(unknown, send([commands[i] for i in unknown]), strict=True):
            replies[index] = reply
    return replies


def _key_of(command: tuple) -> str | None:
    """The (first) key a command names: after the script and its key count for a
    script call, else its first argument; None for a command without one (the
    cluster client sends it where it sends it, past the breakers)."""
    if str(command[0]).upper() in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) else None
    return command[1] if len(command) > 1 else None


# Sends commands on one connection and returns their replies (an error reply in
# place of its reply).
Send = Callable[[Sequence[tuple]], list]


def on_connection(redis: Redis, exchange: Callable[[Send], T]) -> T:
    """Runs ``exchange`` with one pooled connection of ``redis`` (one server, or one
    cluster node's own client): every round trip it sends goes on that
    connection, as a WAIT must, after the writes it waits for."""
    pool = redis.connection_pool
    connection = pool.get_connection()

    def send(commands: Sequence[tuple]) -> list:
        connection.send_packed_command(connection.pack_commands(commands))
        replies = []
        for _command in commands:
            try:
                replies.append(connection.read_response())
            except ResponseError as error:  # an error reply: the connection itself is fine
                replies.append(error)
        return replies

    try:
        return exchange(send)
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _with_scripts(send: Send, commands: Sequence[tuple]) -> list:
    """``commands``' replies, the scripts the server did not know loaded and their
    calls sent again, in one more round trip."""
    replies = send(commands)
    load_unknown_scripts(send, commands, replies)
    return replies


def load_unknown_scripts(send: Send, commands: Sequence[tuple], replies: list) -> bool:
    """Loads the scripts whose calls got NOSCRIPT and sends those calls again, on
    the same connection and in one round trip; their new replies replace the old
    in ``replies``. Returns whether there were any."""
    unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if not unknown:
        return False
    loads = [("SCRIPT", "LOAD", script_source(sha)) for sha in {commands[i][1] for i in unknown}]
    again = send([*loads, *(commands[index] for index in unknown)])[len(loads) :]
    for index, reply in zip(unknown, again, strict=True):
        replies[index] = reply
    return True


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


def run_script(source: str, keys: Sequence[str], args: Sequence) -> object:
    """One script call, in a round trip of its own."""
    return call(lambda redis: execute(redis, *evalsha(source, keys, args)))
