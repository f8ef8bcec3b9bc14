"""A write confirmed by a replica: Redis replicates asynchronously, so a change a
primary acknowledged and then died with is lost when a replica takes over
(``users.cache.writes``)."""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Sequence

from redis import Redis
from redis.connection import ConnectionPool

from .transport import Send, load_unknown_scripts, on_connection

# A server's replicas as it last told (INFO replication), and when (monotonic),
# by the connection pool of its client (a node's own, on a cluster).
_replicas: weakref.WeakKeyDictionary[ConnectionPool, tuple[int, float]] = (
    weakref.WeakKeyDictionary()
)
# How long that answer is trusted: a replica that attached since may not be
# waited for during this long.
REPLICAS_KNOWN_FOR_S = 1.0
_CONNECTED_REPLICAS = re.compile(rb"^connected_slaves:(\d+)", re.MULTILINE)


def execute_replicated(redis: Redis, commands: Sequence[tuple]) -> tuple[list, bool]:
    """``commands`` (writes) on one connection of ``redis`` (one server, or a
    cluster node's own client), then ``WAIT 1`` on it when the server has a
    replica: the replies, and whether a replica has the writes (True too for a
    server without one). Redis replicates asynchronously: a write a primary
    acknowledged and died with before any replica had it is lost when a replica
    takes over. Whether the server has replicas is asked (``INFO replication``,
    in the same round trip) when its last answer is more than
    ``REPLICAS_KNOWN_FOR_S`` old; the WAIT goes in the same round trip as the
    writes when it is known."""
    pool = redis.connection_pool
    known = _replicas.get(pool)
    if known is not None and time.monotonic() - known[1] > REPLICAS_KNOWN_FOR_S:
        known = None
    wait = ("WAIT", 1, _replica_wait_ms(redis))

    def exchange(send: Send) -> tuple[list, bool]:
        tail = [("INFO", "replication")] if known is None else [wait] if known[0] else []
        replies = send([*commands, *tail])
        own, told = replies[: len(commands)], replies[len(commands) :]
        reloaded = load_unknown_scripts(send, commands, own)
        if known is None:
            replicas = _connected_replicas(told[0])
            _replicas[pool] = (replicas, time.monotonic())
            waited = None
        else:
            replicas, waited = known[0], told[0] if told else None
        if not replicas:
            return own, True
        if waited is None or reloaded:
            (waited,) = send([wait])
        return own, isinstance(waited, int) and waited >= 1

    return on_connection(redis, exchange)


def _connected_replicas(info: object) -> int:
    """``connected_slaves`` of an INFO reply; 0 for an error reply (the node would
    not say: nothing to wait for)."""
    if isinstance(info, str):
        info = info.encode()
    found = _CONNECTED_REPLICAS.search(info) if isinstance(info, bytes) else None
    return int(found.group(1)) if found else 0


def _replica_wait_ms(redis: Redis) -> int:
    """The longest a write waits for a replica: half the read timeout, so that the
    WAIT's answer comes within it. A replica on the same network acknowledges in
    well under a millisecond; one that takes longer is lagging, and what it has
    not confirmed goes to the outbox. Without a read timeout, half the default
    one (``REDIS_READ_TIMEOUT_MS``, 100 ms)."""
    timeout = redis.connection_pool.connection_kwargs.get("socket_timeout") or 0.1
    return max(1, int(timeout * 500))
