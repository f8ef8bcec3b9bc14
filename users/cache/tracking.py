"""The near cache's tracking connections (``users/cache/near.py`` decides what their
messages mean; this is the only code that reads them).

One RESP3 connection per Redis primary, which asked for ``CLIENT TRACKING ON
BCAST`` over some key prefixes: Redis then pushes the name of every key under them
that anyone changes, deletes or lets expire, and redis-py hands each push to the
handler given at opening. Opening waits on the network; nothing else here does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from .transport import UNAVAILABLE, client

logger = logging.getLogger(__name__)


class TrackingLost(Exception):
    """A tracking connection failed, or stopped answering: invalidations may be lost."""


class Tracking:
    def __init__(self, connections: list, addresses: set) -> None:
        self._connections = connections
        # (host, port) of each tracked primary, on a cluster.
        self._addresses = addresses
        self._pings_unanswered = 0

    @classmethod
    def open(cls, prefixes: list[str], on_push: Callable[[list], list]) -> Tracking | None:
        """Connects to every primary and turns tracking on; None when one of them
        does not answer (whatever was opened is closed)."""
        opened, addresses = [], set()
        try:
            for address, pool in _primary_pools(client()):
                connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})
                opened.append(connection)
                connection.connect()
                connection._parser.set_invalidation_push_handler(on_push)
                command = ["CLIENT", "TRACKING", "ON", "BCAST"]
                for prefix in prefixes:
                    command += ["PREFIX", prefix]
                connection.send_command(*command)
                connection.read_response()
                addresses.add(address)
        except (*UNAVAILABLE, OSError, RedisError) as exc:
            logger.debug("near cache: tracking not up yet: %s", exc)
            cls(opened, addresses).close()
            return None
        return cls(opened, addresses)

    def drain(self) -> None:
        """Reads what the sockets already hold (never waits): each push goes to the
        handler, each PONG answers a PING. Raises ``TrackingLost``."""
        try:
            for connection in self._connections:
                while connection.can_read(timeout=0):
                    if connection.read_response(push_request=True) == b"PONG":
                        self._pings_unanswered -= 1
        except (*UNAVAILABLE, OSError) as exc:
            raise TrackingLost(exc) from exc

    def ping(self) -> None:
        """Sends a PING on each connection, once the previous ones were answered (a
        drain reads the answers); a connection that has not answered since the last
        call is lost, however quiet Redis is. Raises ``TrackingLost``."""
        if self._pings_unanswered:
            raise TrackingLost("no answer to a PING since the last check")
        try:
            for connection in self._connections:
                connection.send_command("PING")
                self._pings_unanswered += 1
        except (*UNAVAILABLE, OSError) as exc:
            raise TrackingLost(exc) from exc

    def covers(self, entry_keys: Iterable[str]) -> bool:
        """Whether the primaries that hold these keys are all tracked: on a cluster, a
        primary added, or a slot moved to one, since opening is not."""
        redis = client()
        if not isinstance(redis, RedisCluster):
            return True
        try:
            nodes = [redis.get_node_from_key(key) for key in entry_keys]
        except RedisError:  # a slot no node serves, during a failover
            return False
        return all((node.host, node.port) in self._addresses for node in nodes)

    def close(self) -> None:
        for connection in self._connections:
            with contextlib.suppress(Exception):
                connection.disconnect()
        self._connections = []

    def __len__(self) -> int:
        return len(self._connections)


def _primary_pools(redis) -> list:
    """(host, port) and connection pool of each primary; one server's address is
    not needed (None)."""
    if isinstance(redis, RedisCluster):
        return [
            ((node.host, node.port), redis.get_redis_connection(node).connection_pool)
            for node in redis.get_primaries()
        ]
    return [(None, redis.connection_pool)]
