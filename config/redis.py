"""The ``default`` cache from the environment: one Redis server, a Redis Cluster, or
a primary that Redis Sentinel fails over, each with or without ACL credentials
and TLS.

The engine is chosen by configuration alone, so the code that uses the cache
(``users/cache/``) is the same on all three: it takes django-redis' raw client
of this cache (``users/cache/transport.py``), and that client is a
``redis.Redis`` on a server or behind Sentinel, and a
``redis.cluster.RedisCluster`` on a cluster.

* ``REDIS_CLUSTER_NODES`` (``host:port,host:port``, any reachable nodes of the
  cluster; the client discovers the rest) selects the cluster client,
  ``config.redis_cluster.RedisClusterClient``.
* ``REDIS_SENTINELS`` (``host:port,...``) with ``REDIS_SENTINEL_SERVICE`` (the name
  the sentinels monitor) selects django-redis' own ``SentinelClient``.
* Otherwise ``REDIS_URL`` names the one server.

Credentials (``REDIS_USERNAME``, ``REDIS_PASSWORD``, or in ``REDIS_URL``) end up in
the ``USERNAME`` and ``PASSWORD`` options, never in ``LOCATION``: Django hides
settings named like a password in its error reports, but not a URL. TLS is
``rediss://`` on one server and ``REDIS_TLS=true`` on the other two, which have
no URL; the CA, client certificate and key apply to every connection, the
sentinels' included.

Whatever the topology, what Django's cache stores is JSON and what it reads back
is data: a value that is not JSON is a miss, never unpickled
(``config.redis_cache``).
"""

from __future__ import annotations

import ssl
from urllib.parse import unquote, urlsplit, urlunsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.env import in_range

# django-redis, reading back JSON only: never a pickle (config/redis_cache.py).
BACKEND = "config.redis_cache.RedisCache"
SERIALIZER = "config.redis_cache.JSONSerializer"
CLUSTER_CLIENT = "config.redis_cluster.RedisClusterClient"
SENTINEL_CLIENT = "django_redis.client.SentinelClient"
SENTINEL_FACTORY = "django_redis.pool.SentinelConnectionFactory"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
# The CA that signed the servers' certificates (without it, the system's CAs), and
# the client certificate and its key, for servers that require one.
TLS_FILE_VARIABLES = ("REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE")


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
    connect_ms = env.int("REDIS_CONNECT_TIMEOUT_MS", default=100)
    read_ms = env.int("REDIS_READ_TIMEOUT_MS", default=100)
    max_connections = env.int("REDIS_MAX_CONNECTIONS", default=64)
    timeouts = {
        "socket_connect_timeout": in_range("REDIS_CONNECT_TIMEOUT_MS", connect_ms, least=1) / 1000,
        "socket_timeout": in_range("REDIS_READ_TIMEOUT_MS", read_ms, least=1) / 1000,
    }
    pool_kwargs = {"max_connections": in_range("REDIS_MAX_CONNECTIONS", max_connections, least=1)}
    options = {
        "SOCKET_CONNECT_TIMEOUT": timeouts["socket_connect_timeout"],
        "SOCKET_TIMEOUT": timeouts["socket_timeout"],
        "CONNECTION_POOL_KWARGS": pool_kwargs,
        "SERIALIZER": SERIALIZER,
        **_credentials(env, "REDIS_USERNAME", "REDIS_PASSWORD"),
    }
    tls = env.bool("REDIS_TLS", default=False)
    if not (cluster_nodes or sentinels):
        url, url_credentials = _without_credentials(env("REDIS_URL", default=DEFAULT_URL))
        if url_credentials and "PASSWORD" in options:
            raise ImproperlyConfigured(
                "REDIS_URL carries credentials and REDIS_USERNAME/REDIS_PASSWORD are set: use one."
            )
        options.update(url_credentials)
        url_tls = urlsplit(url).scheme == "rediss"
        if tls and not url_tls:
            raise ImproperlyConfigured("REDIS_TLS=true but REDIS_URL is not rediss://.")
        tls = url_tls
    tls_arguments = _tls_arguments(env) if tls else _no_tls_files(env)
    # The cluster client and Sentinel's pools take TLS as ssl=True; on one server
    # rediss:// has already chosen redis-py's TLS connection.
    tls_client_kwargs = {"ssl": True, **tls_arguments} if tls else {}
    if cluster_nodes:
        # Seeds, checked here so that a typo fails at start-up rather than per request.
        location: str | list[str] = [
            f"{host}:{port}" for host, port in map(host_and_port, cluster_nodes)
        ]
        options["CLIENT_CLASS"] = CLUSTER_CLIENT
        pool_kwargs.update(tls_client_kwargs)
    elif sentinels:
        service = env("REDIS_SENTINEL_SERVICE", default="mymaster")
        # django-redis reads the service name from the URL's host; SentinelClient
        # derives a primary and a replica pool from it, and get_redis_connection()
        # hands out the primary's. The URL stays redis:// with TLS: rediss:// would
        # swap the pools' Sentinel-managed connections for plain TLS ones.
        location = f"redis://{service}/0"
        options["CLIENT_CLASS"] = SENTINEL_CLIENT
        options["CONNECTION_FACTORY"] = SENTINEL_FACTORY
        options["SENTINELS"] = [host_and_port(sentinel) for sentinel in sentinels]
        pool_kwargs.update(tls_client_kwargs)
        # The sentinels' own connections: the same timeouts and TLS, but not the
        # data nodes' credentials. Each sentinel keeps an ACL of its own, and the
        # data password is not handed to it: without REDIS_SENTINEL_USERNAME and
        # REDIS_SENTINEL_PASSWORD the sentinels get no AUTH.
        sentinel_credentials = _credentials(
            env, "REDIS_SENTINEL_USERNAME", "REDIS_SENTINEL_PASSWORD"
        )
        options["SENTINEL_KWARGS"] = {
            **timeouts,
            # No retries: finding the primary asks the next sentinel anyway, and
            # redis-py's default retries with backoff would hold the request on a
            # sentinel that is down or refuses the login, instead of bypassing.
            "retry": Retry(NoBackoff(), 0),
            **{name.lower(): value for name, value in sentinel_credentials.items()},
            **tls_client_kwargs,
        }
    else:
        location = url
        options["CLIENT_CLASS"] = "django_redis.client.DefaultClient"
        pool_kwargs.update(tls_arguments)
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


def _credentials(env: environ.Env, username_variable: str, password_variable: str) -> dict:
    return _login(
        env(username_variable, default=None),
        env(password_variable, default=None),
        missing_password=f"{username_variable} is set without {password_variable}.",
    )


def _without_credentials(url: str) -> tuple[str, dict]:
    """``url`` without its user and password, and those as ``_login`` gives them."""
    parts = urlsplit(url)
    credentials = _login(
        unquote(parts.username or ""),
        unquote(parts.password or ""),
        missing_password="REDIS_URL names a user without a password.",
    )
    if not credentials:
        return url, {}
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), credentials


def _login(username: str | None, password: str | None, *, missing_password: str) -> dict:
    """django-redis' ``USERNAME`` and ``PASSWORD`` options: a password alone logs in
    as Redis's ``default`` user, a username and password as that ACL user."""
    if username and not password:
        raise ImproperlyConfigured(missing_password)
    given = {"USERNAME": username, "PASSWORD": password}
    return {name: value for name, value in given.items() if value}


def _tls_arguments(env: environ.Env) -> dict:
    """redis-py's TLS arguments. The files are loaded here once, so that a missing,
    unreadable or mismatched one stops the start-up instead of failing every call.

    The servers' certificates are always verified, and so are the names in them
    against the address connected to (an IP address must be among the
    certificate's subjectAltName entries) unless ``REDIS_TLS_CHECK_HOSTNAME=false``:
    a cluster and Sentinel hand out node addresses that certificates often do not
    name, and the CA still vouches for the node.
    """
    ca, cert, key = (env(name, default=None) for name in TLS_FILE_VARIABLES)
    if bool(cert) != bool(key):
        raise ImproperlyConfigured("Set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE together.")
    context = ssl.create_default_context()
    try:
        if ca:
            context.load_verify_locations(cafile=ca)
    except OSError as exc:
        raise ImproperlyConfigured(f"REDIS_TLS_CA_FILE {ca}: {exc}") from exc
    try:
        if cert:
            context.load_cert_chain(cert, key)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"REDIS_TLS_CERT_FILE {cert}, REDIS_TLS_KEY_FILE {key}: {exc}"
        ) from exc
    return {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": ca,
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "ssl_check_hostname": env.bool("REDIS_TLS_CHECK_HOSTNAME", default=True),
    }


def _no_tls_files(env: environ.Env) -> dict:
    """No TLS arguments; a TLS file set all the same is a mistake worth stopping for."""
    if any(env(name, default=None) for name in TLS_FILE_VARIABLES):
        raise ImproperlyConfigured(
            f"{', '.join(TLS_FILE_VARIABLES)} need TLS: REDIS_TLS=true, or rediss:// in REDIS_URL."
        )
    return {}
