"""The ``default`` cache from the environment: one Redis server, a Redis Cluster, or
a primary that Redis Sentinel fails over.

The engine is chosen by configuration alone, so the code that uses the cache
(``users/cache.py``) is the same on all three: it gets its raw client from
``django_redis.get_redis_connection``, and that client is a ``redis.Redis`` on a
server or behind Sentinel, and a ``redis.cluster.RedisCluster`` on a cluster.

* ``REDIS_CLUSTER_NODES`` (``host:port,host:port``, any reachable nodes of the
  cluster; the client discovers the rest) selects the cluster client,
  ``config.redis_cluster.RedisClusterClient``.
* ``REDIS_SENTINELS`` (``host:port,...``) with ``REDIS_SENTINEL_SERVICE`` (the name
  the sentinels monitor) selects django-redis' own ``SentinelClient``.
* Otherwise ``REDIS_URL`` names the one server.
"""

from __future__ import annotations

import environ
from django.core.exceptions import ImproperlyConfigured

BACKEND = "django_redis.cache.RedisCache"
CLUSTER_CLIENT = "config.redis_cluster.RedisClusterClient"
SENTINEL_CLIENT = "django_redis.client.SentinelClient"
SENTINEL_FACTORY = "django_redis.pool.SentinelConnectionFactory"


def cache_from_env(env: environ.Env) -> dict:
    """The ``CACHES["default"]`` entry for the environment ``env`` reads."""
    cluster_nodes = env.list("REDIS_CLUSTER_NODES", default=[])
    sentinels = env.list("REDIS_SENTINELS", default=[])
    if cluster_nodes and sentinels:
        raise ImproperlyConfigured(
            "Set REDIS_CLUSTER_NODES or REDIS_SENTINELS, not both: a cluster fails over by itself."
        )
    # Short timeouts on purpose: a slow Redis must turn into a cache bypass, not
    # into slow requests. The pool size applies per process, and on a cluster per
    # node and process.
    options = {
        "SOCKET_CONNECT_TIMEOUT": env.int("REDIS_CONNECT_TIMEOUT_MS", default=100) / 1000,
        "SOCKET_TIMEOUT": env.int("REDIS_READ_TIMEOUT_MS", default=100) / 1000,
        "CONNECTION_POOL_KWARGS": {"max_connections": env.int("REDIS_MAX_CONNECTIONS", default=64)},
    }
    if cluster_nodes:
        # Seeds, checked here so that a typo fails at start-up rather than per request.
        location: str | list[str] = [
            f"{host}:{port}" for host, port in map(host_and_port, cluster_nodes)
        ]
        options["CLIENT_CLASS"] = CLUSTER_CLIENT
    elif sentinels:
        service = env("REDIS_SENTINEL_SERVICE", default="mymaster")
        # django-redis reads the service name from the URL's host; SentinelClient
        # derives a primary and a replica pool from it, and get_redis_connection()
        # hands out the primary's.
        location = f"redis://{service}/0"
        options["CLIENT_CLASS"] = SENTINEL_CLIENT
        options["CONNECTION_FACTORY"] = SENTINEL_FACTORY
        options["SENTINELS"] = [host_and_port(sentinel) for sentinel in sentinels]
    else:
        location = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
        options["CLIENT_CLASS"] = "django_redis.client.DefaultClient"
    return {
        "BACKEND": BACKEND,
        "LOCATION": location,
        "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="usersvc"),
        "OPTIONS": options,
    }


def host_and_port(address: str) -> tuple[str, int]:
    """``"10.0.0.5:6379"`` -> ``("10.0.0.5", 6379)``; IPv6 hosts in brackets."""
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ImproperlyConfigured(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)
