"""Fixtures shared by every test: the real MySQL (pytest-django's test database)
and the real Redis, with this run's keys under their own prefix.

``USERSVC_TEST_REDIS`` chooses the Redis the cache uses for the whole run:
``single`` (the default) is the shared server of ``REDIS_URL``; ``cluster`` and
``sentinel`` start a Redis Cluster or a Sentinel group of the run's own and
configure the cache for it through ``config.redis``, as ``REDIS_CLUSTER_NODES``
or ``REDIS_SENTINELS`` would in production.
"""

import contextlib
import copy
import os
import socket
import threading
import time
from collections.abc import Iterable
from unittest import mock
from urllib.parse import quote, urlsplit

import environ
import pytest
from django.conf import settings
from django.test import override_settings
from django_redis import get_redis_connection
from model_bakery import baker
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection, HiredisRespSerializer, PythonRespSerializer
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from config.redis import CLUSTER_CLIENT, SENTINEL_CLIENT, cache_from_env
from tests.servers import RedisClusterServers, SentinelGroup
from users import entries
from users.cache import keys, kinds, readthrough, scripts, store, transport
from users.cache.breaker import Breakers
from users.cache.counters import local_windows
from users.models import User

REDIS_TOPOLOGIES = {"cluster": RedisClusterServers, "sentinel": SentinelGroup}


@pytest.fixture(scope="session")
def redis_topology(tmp_path_factory):
    """The run's own Redis Cluster or Sentinel group, serving the cache for every
    test; None when the run uses the shared server."""
    kind = os.environ.get("USERSVC_TEST_REDIS", "single")
    if kind == "single":
        yield None
        return
    assert kind in REDIS_TOPOLOGIES, f"USERSVC_TEST_REDIS={kind!r}: use single, cluster or sentinel"
    topology = REDIS_TOPOLOGIES[kind](tmp_path_factory.mktemp(f"redis-{kind}"))
    try:  # stopped also when it failed to start: no server outlives the run
        topology.start()
        with override_settings(CACHES={"default": _topology_cache(topology)}):
            yield topology
    finally:
        topology.stop()


def _topology_cache(topology: RedisClusterServers | SentinelGroup) -> dict:
    """The cache for ``topology`` as its environment variables configure it."""
    if isinstance(topology, RedisClusterServers):
        return cache_from_variables({"REDIS_CLUSTER_NODES": ",".join(topology.seeds)})
    return cache_from_variables(
        {
            "REDIS_SENTINELS": ",".join(topology.sentinel_addresses),
            "REDIS_SENTINEL_SERVICE": topology.service,
        }
    )


def cache_from_variables(variables: dict[str, str]) -> dict:
    """``CACHES["default"]`` as ``config.redis`` builds it from the environment
    ``variables`` and nothing else, plus the variables that give it this run's key
    prefix and timeouts (config/settings/test.py)."""
    options = settings.CACHES["default"]["OPTIONS"]
    env = environ.Env()
    env.ENVIRON = {
        "CACHE_KEY_PREFIX": settings.TEST_RUN_PREFIX,
        "REDIS_CONNECT_TIMEOUT_MS": str(round(options["SOCKET_CONNECT_TIMEOUT"] * 1000)),
        "REDIS_READ_TIMEOUT_MS": str(round(options["SOCKET_TIMEOUT"] * 1000)),
        **variables,
    }
    return cache_from_env(env)


def _delete_run_keys() -> None:
    client = get_redis_connection("default")
    keys = list(client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*", count=1000))
    if keys:
        client.unlink(*keys)


def redis_environment() -> dict[str, str]:
    """The variables that point a child process (manage.py, gunicorn) at the Redis
    this run's cache uses, whichever of the three it is. TLS files come from this
    process's environment, which the child inherits."""
    default = settings.CACHES["default"]
    options = default["OPTIONS"]
    # config.redis moves credentials out of REDIS_URL into these options.
    credentials = {
        f"REDIS_{name}": options[name] for name in ("USERNAME", "PASSWORD") if name in options
    }
    client_class = options["CLIENT_CLASS"]
    if client_class == CLUSTER_CLIENT:
        return {"REDIS_CLUSTER_NODES": ",".join(default["LOCATION"]), **credentials}
    if client_class == SENTINEL_CLIENT:
        return {
            "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in options["SENTINELS"]),
            "REDIS_SENTINEL_SERVICE": urlsplit(default["LOCATION"]).hostname,
            **credentials,
        }
    return {"REDIS_URL": default["LOCATION"], **credentials}


def database_url() -> str:
    """DATABASE_URL for a child process (gunicorn) that must see this run's test
    database, with the credentials the run itself uses."""
    database = settings.DATABASES["default"]
    credentials = quote(database["USER"], safe="")
    if database["PASSWORD"]:
        credentials += ":" + quote(database["PASSWORD"], safe="")
    host, port = database["HOST"] or "127.0.0.1", database["PORT"] or 3306
    return f"mysql://{credentials}@{host}:{port}/{database['NAME']}"


@pytest.fixture
def redis_refused(settings):
    """The cache pointed at a loopback port this process holds bound and never listens
    on: every connection is refused, and no other process (a server another test
    starts, anything else on the machine) can take the port while the test runs, as
    it could the port of a server started and stopped."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        settings.CACHES = one_server_caches(f"redis://127.0.0.1:{closed.getsockname()[1]}/0")
        yield


def one_server_caches(url: str) -> dict:
    """CACHES with the cache on the one redis-server at ``url``, whatever this run's
    topology: for tests that start, stop or pause a server of their own."""
    caches = copy.deepcopy(settings.CACHES)
    options = caches["default"]["OPTIONS"]
    # Sentinel's options (django-redis' SentinelConnectionFactory also writes its
    # pool class into the OPTIONS it is given), and credentials and TLS, which a
    # test's own server does without.
    for not_here in (
        "CONNECTION_FACTORY", "CONNECTION_POOL_CLASS", "SENTINELS", "SENTINEL_KWARGS",
        "USERNAME", "PASSWORD",
    ):  # fmt: skip
        options.pop(not_here, None)
    options["CONNECTION_POOL_KWARGS"] = {
        "max_connections": options["CONNECTION_POOL_KWARGS"]["max_connections"]
    }
    options["CLIENT_CLASS"] = "django_redis.client.DefaultClient"
    caches["default"]["LOCATION"] = url
    return caches


def redis_nodes_holding(keys: Iterable[str]) -> int:
    """How many Redis servers hold ``keys``: the primaries of their slots on a
    cluster, where a pipeline costs one round trip per node; else one."""
    client = get_redis_connection("default")
    if not isinstance(client, RedisCluster):
        return 1
    return len({client.get_node_from_key(key).name for key in keys})


@pytest.fixture(autouse=True)
def _closed_breaker(monkeypatch):
    """Each test starts with breakers of its own, closed: one that an earlier test
    opened (by stopping a Redis) does not fail this one's calls."""
    monkeypatch.setattr(transport, "breakers", Breakers())


@pytest.fixture(autouse=True)
def _isolated_cache(redis_topology):
    """Each test starts and ends with none of this run's keys; other data is untouched.
    The counts a test's near-cache hits took in process are added to Redis first,
    so that the thread that adds them does not write a counter into the next test."""
    _delete_run_keys()
    yield
    with contextlib.suppress(transport.CacheUnavailable):
        local_windows.add_to_redis()
    _delete_run_keys()


def blocked_user_inserts() -> int:
    """INSERTs into the users table now running in this test database's sessions:
    how a race test sees that an INSERT waits on another transaction's row lock."""
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
            " AND COMMAND = 'Query' AND INFO LIKE 'INSERT INTO `users_user`%%'"
        )
        return cursor.fetchone()[0]


def cached_entry(redis_client, user_id: int) -> dict[str, str]:
    """A user's cached hash with its fields named after their columns ("version" and
    "absent" for the metadata, and without its expiry, which a jittered TTL makes
    differ from one fill to the next); empty when nothing is cached."""
    titles = {**entries.COLUMN_OF, kinds.ABSENT: "absent"}
    raw = redis_client.hgetall(keys.user_key(user_id))
    return {
        titles[field.decode()]: value.decode()
        for field, value in raw.items()
        if field.decode() != kinds.EXPIRES
    }


def absent_marker(seconds: int = 20) -> dict[str, str]:
    """A cached absence as this service writes one, valid for ``seconds`` (within
    ``NEGATIVE_TTL``: a longer one is no absence this service wrote)."""
    return {kinds.ABSENT: "1", kinds.EXPIRES: str(int(time.time()) + seconds)}


@pytest.fixture
def redis_client():
    return get_redis_connection("default")


class RoundTrips:
    """Counts round trips to Redis (every send on a connection: a pipeline sends
    once) and the commands they carry."""

    def __init__(self) -> None:
        self.count = 0
        self.commands = 0

    def reset(self) -> None:
        self.count = self.commands = 0


_BACKGROUND_THREADS = frozenset({"cache-outbox", "near-cache-tracking", "rate-counts"})


@pytest.fixture
def redis_round_trips(monkeypatch) -> RoundTrips:
    """Counts what the test's own threads send on established connections: not the
    background threads (the outbox's, which an earlier test may have left retrying
    or sweeping; the near cache's checks; the rate counts' additions), and not what
    a new connection sends to set itself up."""
    counter = RoundTrips()
    setting_up = threading.local()

    def counted() -> bool:
        background = threading.current_thread().name in _BACKGROUND_THREADS
        return not background and not getattr(setting_up, "depth", 0)

    def setting_itself_up(connect):
        def connecting(self, *args, **kwargs):
            setting_up.depth = getattr(setting_up, "depth", 0) + 1
            try:
                return connect(self, *args, **kwargs)
            finally:
                setting_up.depth -= 1

        return connecting

    # What a connection sends when it opens (HELLO, CLIENT SETINFO, ...).
    monkeypatch.setattr(
        AbstractConnection, "connect_check_health",
        setting_itself_up(AbstractConnection.connect_check_health),
    )  # fmt: skip
    send = AbstractConnection.send_packed_command

    def counting_send(self, command, check_health=True):
        if counted():
            counter.count += 1
        return send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    # Every command is packed once, alone or in a pipeline, whichever packer the
    # connection uses (hiredis's or redis-py's own).
    for packer in (HiredisRespSerializer, PythonRespSerializer):
        pack = packer.pack

        def counting_pack(self, *args, pack=pack):
            if counted():
                counter.commands += 1
            return pack(self, *args)

        monkeypatch.setattr(packer, "pack", counting_pack)
    return counter


@pytest.fixture
def make_user(db):
    """A user in MySQL whom the cache does not hold yet, as most tests start: the
    entry a create writes after its commit (or, in a test whose transaction never
    commits, the lease it takes for that) is dropped."""

    def make(**fields) -> User:
        user = baker.make(User, **fields)
        store.invalidate([keys.user_key(user.pk)])
        return user

    return make


@pytest.fixture
def deleted_id(make_user) -> int:
    """The id of a user since deleted, below the largest id: an absence the cache
    remembers (an id above the largest, it does not: ``users.entries``)."""
    gone = make_user(username="deleted", email="deleted@example.com")
    make_user(username="after-deleted", email="after-deleted@example.com")
    gone_id = gone.id
    gone.delete()
    return gone_id


def _token_client(user: User) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def reader(make_user) -> User:
    return make_user(username="reader", email="reader@example.com")


@contextlib.contextmanager
def pausing_fills(hook):
    """Runs ``hook(kind, loaded)`` in every reader between its MySQL load and its Redis
    fill (``users.cache.readthrough.fill``): how a test drives a race to the moment it
    needs."""
    original = readthrough.fill

    def fill(kind, token, loaded):
        hook(kind, loaded)
        return original(kind, token, loaded)

    with mock.patch.object(readthrough, "fill", fill):
        yield


# The fill script without its lease check: what a naive cache-aside does, for the
# tests that show the race is real.
UNGUARDED_FILL = scripts.FILL.replace("if LEASE_HELD_BY(lease) == token then", "if true then")
assert UNGUARDED_FILL != scripts.FILL


def grant_user_permissions(user: User, *codenames: str) -> User:
    """Gives ``user`` these permissions on users (all three when none are named)."""
    from django.contrib.auth.models import Permission

    codenames = codenames or ("add_user", "change_user", "delete_user")
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="users", codename__in=codenames)
    )
    return user


@pytest.fixture
def staff(make_user) -> User:
    """A staff account that manages users: the three permissions on them."""
    return grant_user_permissions(
        make_user(username="staff", email="staff@example.com", is_staff=True)
    )


@pytest.fixture
def reader_client(reader) -> APIClient:
    return _token_client(reader)


@pytest.fixture
def staff_client(staff) -> APIClient:
    return _token_client(staff)


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()


@pytest.fixture
def rates(settings):
    """Sets throttle rates by scope for the test (``rates(user="3/min")``; None: off)."""

    def set_rates(**rates):
        rest = {**settings.REST_FRAMEWORK}
        rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], **rates}
        settings.REST_FRAMEWORK = rest

    return set_rates
