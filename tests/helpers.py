"""What many test modules share apart from fixtures: clients, the cache's settings
for a server of a test's own, a child process's environment, cached entries as
Redis holds them, and the hooks that drive a race (fixtures are in conftest.py)."""

import contextlib
import copy
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from unittest import mock
from urllib.parse import quote, urlsplit

import environ
from django.conf import settings
from django.db import OperationalError, connection
from django_redis import get_redis_connection
from redis.cluster import RedisCluster
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from config.redis import CLUSTER_CLIENT, SENTINEL_CLIENT, cache_from_env
from users import entries
from users.cache import keys, kinds, readthrough, scripts
from users.models import User


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


def token_client(user: User) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


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


def manage_py(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``manage.py`` run as an operator would, in a process of its own, with no
    terminal and ``env`` as its whole environment."""
    from tests.servers import PROJECT_ROOT

    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def command_environment(**overrides: str) -> dict[str, str]:
    """A command's environment: this run's database, Redis and key prefix, so that
    it sees what the test set up."""
    database = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": (
            f"mysql://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:"
            f"{database['PORT'] or 3306}/{database['NAME']}"
        ),
        # A REDIS_URL override means that server, whatever Redis this run uses.
        **({} if "REDIS_URL" in overrides else redis_environment()),
        "CACHE_KEY_PREFIX": settings.TEST_RUN_PREFIX,
        **overrides,
    }


def follower_environment(mariadb, **variables: str) -> dict[str, str]:
    """The binary log follower's environment: this run's key prefix and secret key
    (token names are HMACs under it), the test's MariaDB (``mariadb``, a
    ``tests.servers.MariaDBServer``), and this run's Redis (a cluster's or
    Sentinel's variables included) unless ``REDIS_URL`` names another."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "SECRET_KEY": settings.SECRET_KEY,
        "CACHE_KEY_PREFIX": settings.TEST_RUN_PREFIX,
        "DATABASE_URL": mariadb.url("usersvc"),
        **({} if "REDIS_URL" in variables else redis_environment()),
        **variables,
    }


_rows = itertools.count(1)


def insert_user_row(sql, **columns) -> int:
    """A user row written in SQL (``sql``, a MySQLdb cursor), as another application
    would; returns its id."""
    name = f"raw{next(_rows)}-{time.monotonic_ns()}"
    row = {
        "password": "!", "is_superuser": 0, "username": name, "first_name": "", "last_name": "",
        "email": f"{name}@example.com", "is_staff": 0, "is_active": 1, "version": 1, **columns,
    }  # fmt: skip
    names = ", ".join(row)
    sql.execute(
        f"INSERT INTO users_user ({names}, date_joined, updated_at)"
        f" VALUES ({', '.join(['%s'] * len(row))}, NOW(6), NOW(6))",
        list(row.values()),
    )
    return sql.lastrowid


class FailingUserUpdates:
    """Raises ``OperationalError(code, ...)`` from the first ``times`` UPDATEs of a user."""

    def __init__(self, code: int, times: int) -> None:
        self.code = code
        self.times = times
        self.raised = 0

    def __call__(self, execute, sql, params, many, context):
        if sql.startswith("UPDATE `users_user`") and self.raised < self.times:
            self.raised += 1
            raise OperationalError(self.code, "raised by the test")
        return execute(sql, params, many, context)
