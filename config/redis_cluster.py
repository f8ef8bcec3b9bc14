"""A django-redis client on a Redis Cluster, through redis-py's ``RedisCluster``.

django-redis has clients for one server, for Sentinel and for client-side
sharding, but none for Redis Cluster. This one keeps all of ``DefaultClient``
but the connection: ``get_redis_connection()`` returns a ``RedisCluster``, which
sends each command to the primary that owns its key's hash slot and follows the
cluster through failovers and resharding (MOVED, ASK).

There is one ``RedisCluster`` per process and configuration, shared by every
thread, as django-redis shares its connection pools: Django makes a cache client
per thread, and a ``RedisCluster`` per thread would each map the cluster and
keep a connection pool per node.
"""

from __future__ import annotations

import threading

from django_redis.client import DefaultClient
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .redis import host_and_port

_clusters: dict[tuple, RedisCluster] = {}
_clusters_lock = threading.Lock()


class RedisClusterClient(DefaultClient):
    """``LOCATION`` lists seed nodes (``host:port``); any one that answers is enough.

    The options are django-redis' own: the timeouts, ``USERNAME`` and ``PASSWORD``,
    and ``CONNECTION_POOL_KWARGS``, here the arguments of every node's connections
    (the pool size, and TLS as ``ssl=True`` with redis-py's ``ssl_*`` arguments).
    """

    def connect(self, index: int = 0) -> RedisCluster:
        # Every index names the same cluster: the LOCATION entries are seeds of
        # one cluster, not the primary and replicas DefaultClient takes them for.
        settings = (
            tuple(self._server),
            self._options.get("SOCKET_CONNECT_TIMEOUT"),
            self._options.get("SOCKET_TIMEOUT"),
            self._options.get("USERNAME"),
            self._options.get("PASSWORD"),
            tuple(sorted(self._options.get("CONNECTION_POOL_KWARGS", {}).items())),
        )
        with _clusters_lock:
            if settings not in _clusters:
                _clusters[settings] = _connect(*settings)
            return _clusters[settings]


def _connect(
    seeds: tuple[str, ...],
    connect_timeout: float | None,
    read_timeout: float | None,
    username: str | None,
    password: str | None,
    connection_kwargs: tuple[tuple[str, object], ...],
) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(*host_and_port(seed)) for seed in seeds],
        socket_connect_timeout=connect_timeout,
        socket_timeout=read_timeout,
        username=username,
        password=password,
        # One retry, after the client has re-read the slot map from a live node:
        # enough to reach a replica promoted after a failover. While a failover is
        # still in progress, failing fast lets the read bypass the cache instead
        # of waiting for it (redis-py's default is ten tries).
        retry=Retry(NoBackoff(), retries=1),
        **dict(connection_kwargs),
    )
