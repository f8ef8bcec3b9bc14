"""The transport relies on redis-py internals (``users/cache/transport.py``): these
tests fail loudly, naming what changed, when a redis-py release changes them."""

import inspect
import re
import tomllib
from pathlib import Path

import redis
from django.core.signals import setting_changed
from django.test import override_settings
from django.test.signals import clear_cache_handlers
from django_redis import get_redis_connection
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection, ConnectionPool

from tests.helpers import one_server_caches
from users.cache import transport

ROOT = Path(__file__).resolve().parents[2]


def test_redis_py_is_within_the_pinned_range():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [dependency for dependency in dependencies if dependency.startswith("redis[")]
    low, high = re.fullmatch(r"redis\[hiredis\]>=([\d.]+),<(\d+)", pin).groups()
    version = tuple(int(part) for part in redis.__version__.split(".")[:2])
    assert tuple(map(int, low.split("."))) <= version < (int(high),), (
        f"redis-py {redis.__version__} is outside {pin}: check users/cache/transport.py "
        "against its internals, then move the pin"
    )


def test_the_internals_the_transport_uses_are_there():
    assert not [
        name
        for name, parameter in inspect.signature(ConnectionPool.get_connection).parameters.items()
        if name != "self"
        and parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ], "ConnectionPool.get_connection() now needs arguments"
    for method in ("pack_commands", "send_packed_command", "read_response", "disconnect"):
        assert callable(getattr(AbstractConnection, method, None)), f"Connection.{method} is gone"
    assert callable(getattr(ConnectionPool, "release", None)), "ConnectionPool.release is gone"


def test_commands_sent_past_the_client_come_back_raw_and_in_order(redis_client):
    client = get_redis_connection("default")
    if isinstance(client, RedisCluster):
        return  # a cluster goes through the client's own execute_command
    replies = transport.execute_many(client, [("PING",), ("ECHO", "raw"), ("HGETALL", "no:key")])

    assert replies[:2] == [b"PONG", b"raw"]
    assert not replies[2]  # an empty hash: a list (RESP2) or a map (RESP3)
    # The connection went back to the pool, unharmed.
    assert transport.execute(client, "ECHO", "again") == b"again"


def test_the_client_is_of_the_settings_in_force_whatever_order_receivers_run_in():
    """Django's cache handler forgets the old CACHES only when its own receiver of
    ``setting_changed`` runs, which may be after the transport's, and a thread (the
    near cache's tracking, the outbox's) may look the client up in between: the
    client must be made from the settings in force, not from the handler."""
    setting_changed.disconnect(clear_cache_handlers)
    try:
        with override_settings(CACHES=one_server_caches("redis://127.0.0.1:7/0")):
            seen = transport.client().connection_pool.connection_kwargs.get("port")
            clear_cache_handlers(setting="CACHES")
    finally:
        clear_cache_handlers(setting="CACHES")
        setting_changed.connect(clear_cache_handlers)
    assert seen == 7
    assert transport.client().ping()
