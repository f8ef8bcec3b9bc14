"""The near cache's tracking connections (``users/cache/near.py`` decides what their
messages mean; this is the only code that reads them).

One RESP3 connection per Redis primary, which asked for ``CLIENT TRACKING ON
BCAST NOLOOP`` over the prefixes of the kinds the near cache holds: Redis then
pushes the name of every key under them that anyone changes, deletes or lets
expire, except the keys this connection itself changed last. The process's own
fills go out on these connections (``run_scripts``) for that reason, so that
what a fill stored can be kept at once, while a change anyone else makes after
it, even in the same pass of Redis's event loop, still comes. Redis sends a
pass's invalidations once per key, naming the client that changed the key last;
but it counts a script's writes as its own Lua client's, not the caller's
(Redis 7.0), so each fill is followed, in the same packet, by a plain
``PEXPIRE key ttl GT`` of every entry it names, one millisecond longer: the
tracking connection is then the keys' last writer in that pass, and the fill's
own invalidation is spared. Should the two land in different passes, the fill's
invalidation comes, and the near cache just does not keep the entry.

Each connection has a lock, held while a thread sends or reads on it. Pushes
are collected (``collect``) and handed over (``take_pushes``); applying them is
the near cache's, under its own lock. Opening waits on the network; a fill and
a check wait for their own replies; a read never waits for a connection
another thread holds (``TrackingBusy``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence

from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .scripts import evalsha, script_source
from .transport import UNAVAILABLE, client

logger = logging.getLogger(__name__)


class TrackingLost(Exception):
    """A tracking connection failed, or stopped answering: invalidations may be lost."""


class TrackingBusy(Exception):
    """Another thread is sending or reading on a tracking connection: what it holds
    is not known to be applied yet."""


class _Primary:
    """One primary's tracking connection, its lock, and its unanswered PINGs."""

    def __init__(self, connection, address) -> None:
        self.connection = connection
        self.address = address
        self.lock = threading.Lock()
        self.pings_unanswered = 0

    def read_reply(self):
        """The next reply that is neither a push (handed to the handler) nor the
        answer to one of the checks' PINGs. Call with the lock held."""
        while True:
            reply = self.connection.read_response()
            if reply == b"PONG" and self.pings_unanswered:
                self.pings_unanswered -= 1
                continue
            return reply


class Tracking:
    def __init__(self, primaries: list[_Primary]) -> None:
        self._primaries = primaries
        # Key names (or None: everything) of the pushes read and not yet taken.
        self._pushes: collections.deque[list | None] = collections.deque()

    @classmethod
    def open(cls, prefixes: list[str]) -> Tracking | None:
        """Connects to every primary and turns tracking on; None when one of them
        does not answer (whatever was opened is closed)."""
        tracking = cls([])
        try:
            for address, pool in _primary_pools(client()):
                connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})
                tracking._primaries.append(_Primary(connection, address))
                connection.connect()
                connection._parser.set_invalidation_push_handler(tracking._on_push)
                command = ["CLIENT", "TRACKING", "ON", "BCAST", "NOLOOP"]
                for prefix in prefixes:
                    command += ["PREFIX", prefix]
                connection.send_command(*command)
                connection.read_response()
        except (*UNAVAILABLE, OSError, RedisError) as exc:
            logger.debug("near cache: tracking not up yet: %s", exc)
            tracking.close()
            return None
        return tracking

    def _on_push(self, response: list) -> list:
        """redis-py's handler for invalidation pushes: ``[b"invalidate", keys or None]``,
        called by the thread that reads them, with that connection's lock held."""
        self._pushes.append(response[1])
        return response

    def take_pushes(self) -> list[list | None]:
        taken = []
        while self._pushes:
            taken.append(self._pushes.popleft())
        return taken

    def collect(self, *, wait: bool) -> None:
        """Reads what the sockets already hold (never waits for data): each push is
        kept for ``take_pushes``, each PONG answers a PING. Without ``wait``, raises
        ``TrackingBusy`` rather than wait for a connection another thread holds.
        Raises ``TrackingLost``."""
        for primary in self._primaries:
            if not primary.lock.acquire(blocking=wait):
                raise TrackingBusy
            try:
                while primary.connection.can_read(timeout=0):
                    if primary.connection.read_response(push_request=True) == b"PONG":
                        primary.pings_unanswered -= 1
            except (*UNAVAILABLE, OSError) as exc:
                raise TrackingLost(exc) from exc
            finally:
                primary.lock.release()

    def ping(self) -> None:
        """Sends a PING on each connection, once the previous ones were answered (a
        collect reads the answers); a connection that has not answered since the
        last call is lost, however quiet Redis is. Raises ``TrackingLost``."""
        for primary in self._primaries:
            with primary.lock:
                if primary.pings_unanswered:
                    raise TrackingLost("no answer to a PING since the last check")
                try:
                    primary.connection.send_command("PING")
                except (*UNAVAILABLE, OSError) as exc:
                    raise TrackingLost(exc) from exc
                primary.pings_unanswered += 1

    def run_scripts(
        self, source: str, calls: Sequence[tuple[list, list]], *, then_touch: dict[str, int]
    ) -> list:
        """EVALSHA of ``source`` per (keys, args), on the tracking connection of the
        primary that holds each call's keys, pipelined per primary, followed in the
        same packet by ``PEXPIRE key ms GT`` of each of ``then_touch``'s keys (see
        the module's docstring): replies in the order of ``calls``. Raises
        ``TrackingLost`` when a connection fails or a primary no longer holds a slot
        (the caller sends the calls the usual way)."""
        by_primary: dict[int, list[int]] = collections.defaultdict(list)
        for index, (keys, _args) in enumerate(calls):
            by_primary[self._primary_index(keys[0])].append(index)
        touched: dict[int, list[tuple]] = collections.defaultdict(list)
        for key, ms in then_touch.items():
            touched[self._primary_index(key)].append(("PEXPIRE", key, ms, "GT"))
        replies: list = [None] * len(calls)
        for number, indexes in by_primary.items():
            primary = self._primaries[number]
            commands = [evalsha(source, *calls[index]) for index in indexes]
            with primary.lock:
                try:
                    got = self._send(primary, [*commands, *touched[number]])[: len(commands)]
                except (*UNAVAILABLE, OSError) as exc:
                    raise TrackingLost(exc) from exc
            for index, reply in zip(indexes, got, strict=True):
                if isinstance(reply, ResponseError):
                    raise TrackingLost(f"a fill was refused: {reply}")
                replies[index] = reply
        return replies

    @staticmethod
    def _send(primary: _Primary, commands: list[tuple]) -> list:
        connection = primary.connection
        connection.send_packed_command(connection.pack_commands(commands))
        replies = [_reply_or_error(primary) for _ in commands]
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            connection.send_command("SCRIPT", "LOAD", script_source(commands[unknown[0]][1]))
            _reply_or_error(primary)
            connection.send_packed_command(connection.pack_commands([commands[i] for i in unknown]))
            for i in unknown:
                replies[i] = _reply_or_error(primary)
        return replies

    def _primary_index(self, key: str) -> int:
        redis = client()
        if not isinstance(redis, RedisCluster):
            return 0
        node = redis.get_node_from_key(key)
        for number, primary in enumerate(self._primaries):
            if primary.address == (node.host, node.port):
                return number
        raise TrackingLost(f"no tracked primary holds {key}")

    def covers(self, entry_keys: Iterable[str]) -> bool:
        """Whether the primaries that hold these keys are all tracked: on a cluster, a
        primary added, or a slot moved to one, since opening is not."""
        redis = client()
        if not isinstance(redis, RedisCluster):
            return True
        addresses = {primary.address for primary in self._primaries}
        try:
            nodes = [redis.get_node_from_key(key) for key in entry_keys]
        except RedisError:  # a slot no node serves, during a failover
            return False
        return all((node.host, node.port) in addresses for node in nodes)

    def close(self) -> None:
        for primary in self._primaries:
            with contextlib.suppress(Exception):
                primary.connection.disconnect()
        self._primaries = []

    def __len__(self) -> int:
        return len(self._primaries)


def _reply_or_error(primary: _Primary):
    try:
        return primary.read_reply()
    except ResponseError as error:
        return error


def _primary_pools(redis) -> list:
    """(host, port) and connection pool of each primary; one server's address is
    not needed (None)."""
    if isinstance(redis, RedisCluster):
        return [
            ((node.host, node.port), redis.get_redis_connection(node).connection_pool)
            for node in redis.get_primaries()
        ]
    return [(None, redis.connection_pool)]
