"""Fixtures shared by every test: the real MySQL (pytest-django's test database)
and the real Redis, with this run's keys under their own prefix.

``USERSVC_TEST_REDIS`` chooses the Redis the cache uses for the whole run:
``single`` (the default) is the shared server of ``REDIS_URL``; ``cluster`` and
``sentinel`` start a Redis Cluster or a Sentinel group of the run's own and
configure the cache for it through ``config.redis``, as ``REDIS_CLUSTER_NODES``
or ``REDIS_SENTINELS`` would in production.
"""

import contextlib
import os
import socket
import threading

import pytest
from django.conf import settings
from django.test import override_settings
from django_redis import get_redis_connection
from model_bakery import baker
from redis.connection import AbstractConnection, HiredisRespSerializer, PythonRespSerializer
from rest_framework.test import APIClient

from tests.helpers import (
    cache_from_variables,
    grant_user_permissions,
    one_server_caches,
    token_client,
)
from tests.servers import RedisClusterServers, SentinelGroup
from users.cache import keys, store, transport
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


def _delete_run_keys() -> None:
    client = get_redis_connection("default")
    keys = list(client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*", count=1000))
    if keys:
        client.unlink(*keys)


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


@pytest.fixture
def reader(make_user) -> User:
    return make_user(username="reader", email="reader@example.com")


@pytest.fixture
def staff(make_user) -> User:
    """A staff account that manages users: the three permissions on them."""
    return grant_user_permissions(
        make_user(username="staff", email="staff@example.com", is_staff=True)
    )


@pytest.fixture
def reader_client(reader) -> APIClient:
    return token_client(reader)


@pytest.fixture
def staff_client(staff) -> APIClient:
    return token_client(staff)


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
