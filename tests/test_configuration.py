"""The engines are chosen by configuration alone: what each environment resolves to."""

import json
import os
import subprocess
import sys
from pathlib import Path

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured

from config.redis import cache_from_env

ROOT = Path(__file__).resolve().parent.parent


def _env(**variables: str) -> environ.Env:
    env = environ.Env()
    env.ENVIRON = variables
    return env


def _settings_under(**variables: str) -> dict:
    """DATABASES and CACHES as the settings resolve them in a fresh process."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REDIS_", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"))
    }
    environment.update(DJANGO_SETTINGS_MODULE="config.settings.local", **variables)
    script = (
        "import json; from django.conf import settings; "
        "print(json.dumps({'DATABASES': settings.DATABASES, 'CACHES': settings.CACHES}))"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v0", "-c", script], cwd=ROOT, env=environment,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


class TestRedis:
    def test_one_server_by_default(self):
        cache = cache_from_env(_env())

        assert cache["LOCATION"] == "redis://127.0.0.1:6379/0"
        assert cache["OPTIONS"]["CLIENT_CLASS"] == "django_redis.client.DefaultClient"
        assert cache["OPTIONS"]["SOCKET_TIMEOUT"] == 0.1
        assert cache["OPTIONS"]["CONNECTION_POOL_KWARGS"] == {"max_connections": 64}

    def test_cluster_nodes_select_the_cluster_client(self):
        cache = cache_from_env(
            _env(REDIS_CLUSTER_NODES="10.0.0.1:7000, 10.0.0.2:7000", REDIS_MAX_CONNECTIONS="16")
        )

        assert cache["LOCATION"] == ["10.0.0.1:7000", "10.0.0.2:7000"]
        assert cache["OPTIONS"]["CLIENT_CLASS"] == "config.redis_cluster.RedisClusterClient"
        assert cache["OPTIONS"]["SOCKET_CONNECT_TIMEOUT"] == 0.1
        assert cache["OPTIONS"]["CONNECTION_POOL_KWARGS"] == {"max_connections": 16}

    def test_sentinels_select_django_redis_sentinel_client(self):
        cache = cache_from_env(
            _env(REDIS_SENTINELS="10.0.0.1:26379,10.0.0.2:26379", REDIS_SENTINEL_SERVICE="users")
        )

        assert cache["LOCATION"] == "redis://users/0"
        assert cache["OPTIONS"]["CLIENT_CLASS"] == "django_redis.client.SentinelClient"
        assert cache["OPTIONS"]["CONNECTION_FACTORY"].endswith("pool.SentinelConnectionFactory")
        assert cache["OPTIONS"]["SENTINELS"] == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]

    def test_cluster_and_sentinel_together_are_refused(self):
        with pytest.raises(ImproperlyConfigured, match="not both"):
            cache_from_env(_env(REDIS_CLUSTER_NODES="a:1", REDIS_SENTINELS="b:2"))

    @pytest.mark.parametrize("variable", ["REDIS_CLUSTER_NODES", "REDIS_SENTINELS"])
    def test_an_address_without_a_port_is_refused_at_start_up(self, variable):
        with pytest.raises(ImproperlyConfigured, match="host:port"):
            cache_from_env(_env(**{variable: "redis.internal"}))

    def test_the_settings_read_the_cluster_from_the_environment(self):
        caches = _settings_under(REDIS_CLUSTER_NODES="127.0.0.1:7000")["CACHES"]

        assert caches["default"]["LOCATION"] == ["127.0.0.1:7000"]
        assert caches["default"]["OPTIONS"]["CLIENT_CLASS"].endswith("RedisClusterClient")
