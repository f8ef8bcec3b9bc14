"""Redis with ACL users and TLS only, on one server, a Sentinel group and a Redis
Cluster: the cache, configured by environment variables alone through
``config.redis`` as in production, does the service's real work, and the
servers refuse what they must.

The servers of this module (``RedisSecurity`` in tests/servers.py) listen on TLS
only, require a client certificate signed by a throwaway CA, and have their
default user off (on the one server: passworded). The service logs in as
``usersvc``, allowed exactly ``SERVICE_COMMANDS`` on the run's keys, so a
command the service sends and the list lacks fails a test. The sentinels know
another user, allowed only what redis-py asks a sentinel.

Each topology starts once for the module and the run's own cache is left alone,
so ``.ci/run`` runs this module in its default pass only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from unittest import mock

import pytest
from django.conf import settings
from django.test import override_settings
from django_redis.pool import ConnectionFactory

from config.redis import TLS_FILE_VARIABLES
from tests.helpers import cache_from_variables, token_client
from tests.servers import (
    Certificates,
    RedisClusterServers,
    RedisSecurity,
    RedisServer,
    SentinelGroup,
    WebService,
)
from users import reads, services
from users.cache import cluster as cache_cluster
from users.cache import flush, transport
from users.cache.breaker import Breakers
from users.cache.kinds import ABSENT
from users.maintenance import check, overview, user_state, warm

SERVICE_USER, SERVICE_PASSWORD = "usersvc", "usersvc-secret"
SENTINEL_USER, SENTINEL_PASSWORD = "usersvc-sentinel", "sentinel-secret"
# The one server's default user, for a login with a password alone.
DEFAULT_PASSWORD = "default-secret"
WRONG_PASSWORD = "not-the-password"
PASSWORDS = (SERVICE_PASSWORD, SENTINEL_PASSWORD, DEFAULT_PASSWORD, WRONG_PASSWORD)

# What the service sends to the data nodes, the commands of its Lua scripts
# included (Redis checks a script's calls against the caller's ACL too);
# docs/configuration.md, "Redis credentials and TLS", lists the same. COMMAND and
# CLUSTER SLOTS are the cluster client's: it maps the slots and the commands' key
# positions with them. CLIENT TRACKING is the near cache's (users/cache/near.py);
# WAIT a write's, for a replica to confirm its invalidation (INFO tells whether
# there is one: users/cache/transport.py).
SERVICE_COMMANDS = (
    "evalsha", "script|load",
    "hgetall", "hmget", "hget", "hset", "get", "set", "del", "unlink", "exists",
    "incr", "incrby", "pexpire", "pttl", "type", "scan",
    "info", "ping", "client|tracking", "wait",
    "cluster|slots", "command",
)  # fmt: skip
# What redis-py asks a sentinel: the primary it names for the service.
SENTINEL_COMMANDS = ("sentinel|masters",)


def _rules(password: str, commands: tuple[str, ...], keys: str = "") -> str:
    allowed = " ".join(f"+{command}" for command in commands)
    return f"on >{password} resetkeys {keys} resetchannels -@all {allowed}"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def security(certificates) -> RedisSecurity:
    """The data nodes': the service's user may touch the run's keys only."""
    keys = f"~{settings.TEST_RUN_PREFIX}:*"
    return RedisSecurity(
        certificates, users={SERVICE_USER: _rules(SERVICE_PASSWORD, SERVICE_COMMANDS, keys)}
    )


@contextlib.contextmanager
def _running(servers):
    try:  # stopped also when it failed to start: no server outlives the module
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def one_server(security, tmp_path_factory):
    default = _rules(DEFAULT_PASSWORD, SERVICE_COMMANDS, f"~{settings.TEST_RUN_PREFIX}:*")
    server = RedisServer(
        tmp_path_factory.mktemp("tls-one"),
        security=dataclasses.replace(security, users={**security.users, "default": default}),
    )
    with _running(server):
        yield server


@pytest.fixture(scope="module")
def sentinel_group(security, certificates, tmp_path_factory):
    sentinels = RedisSecurity(
        certificates, users={SENTINEL_USER: _rules(SENTINEL_PASSWORD, SENTINEL_COMMANDS)}
    )
    group = SentinelGroup(
        tmp_path_factory.mktemp("tls-sentinel"), service="usersvc-tls", security=security,
        sentinel_security=sentinels,
    )  # fmt: skip
    with _running(group):
        yield group


@pytest.fixture(scope="module")
def cluster(security, tmp_path_factory):
    servers = RedisClusterServers(tmp_path_factory.mktemp("tls-cluster"), security=security)
    with _running(servers):
        yield servers


def _tls_files(certificates: Certificates) -> dict[str, str]:
    return {
        "REDIS_TLS_CA_FILE": str(certificates.ca),
        "REDIS_TLS_CERT_FILE": str(certificates.client),
        "REDIS_TLS_KEY_FILE": str(Certificates.key(certificates.client)),
    }


@dataclasses.dataclass(frozen=True)
class Topology:
    """A running topology, locked down, and the environment that points the cache at it."""

    variables: dict[str, str]
    # Every redis-server and sentinel, for their ACL logs.
    processes: list


def _one_server(request, certificates) -> Topology:
    """The credentials in the URL; the web service's test gives them as variables."""
    server = request.getfixturevalue("one_server")
    url = f"rediss://{SERVICE_USER}:{SERVICE_PASSWORD}@127.0.0.1:{server.port}/0"
    return Topology({"REDIS_URL": url, **_tls_files(certificates)}, [server])


def _sentinel_group(request, certificates) -> Topology:
    group = request.getfixturevalue("sentinel_group")
    variables = {
        "REDIS_SENTINELS": ",".join(group.sentinel_addresses),
        "REDIS_SENTINEL_SERVICE": group.service,
        "REDIS_SENTINEL_USERNAME": SENTINEL_USER,
        "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        "REDIS_USERNAME": SERVICE_USER,
        "REDIS_PASSWORD": SERVICE_PASSWORD,
        "REDIS_TLS": "true",
        **_tls_files(certificates),
    }
    return Topology(variables, [*group.servers, *group.sentinels])


def _cluster(request, certificates) -> Topology:
    servers = request.getfixturevalue("cluster")
    variables = {
        "REDIS_CLUSTER_NODES": ",".join(servers.seeds),
        "REDIS_USERNAME": SERVICE_USER,
        "REDIS_PASSWORD": SERVICE_PASSWORD,
        "REDIS_TLS": "true",
        **_tls_files(certificates),
    }
    return Topology(variables, servers.nodes)


@pytest.fixture(params=[_one_server, _sentinel_group, _cluster], ids=["one", "sentinel", "cluster"])
def topology(request, certificates) -> Topology:
    return request.param(request, certificates)


@pytest.fixture(autouse=True)
def _own_pools(monkeypatch):
    """django-redis keeps one pool per URL for the whole process, whatever the
    credentials and TLS files: each test gets pools of its own, closed after it."""
    pools: dict = {}
    monkeypatch.setattr(ConnectionFactory, "_pools", pools)
    yield
    for pool in pools.values():
        pool.disconnect()


@contextlib.contextmanager
def cache_configured_by(variables: dict[str, str]):
    """The ``default`` cache as these environment variables configure it."""
    with (
        override_settings(CACHES={"default": cache_from_variables(variables)}),
        mock.patch.object(transport, "breakers", Breakers()),
    ):
        yield


def test_the_service_works_through_the_cache(
    topology, make_user, staff_client, client, django_capture_on_commit_callbacks
):
    """Every kind of call the service makes: the API's reads (the token lookup
    that counts the request, a miss, a hit), a write's invalidation and its
    write-through, failed logins (counted by the login limits' own scripts), and the
    operator tools (warm, the admin's entry states, check, overview, flush). No
    server logs a command it refused, not even one whose failure the service
    would have shrugged off (a rate limit fails open)."""
    for process in topology.processes:
        process.client().acl_log_reset()
    with cache_configured_by(topology.variables):
        user = make_user(username="tls", email="tls@example.com", first_name="Old")
        reader = token_client(user)
        url = f"/api/user/{user.id}"

        assert [reader.get(url)["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]

        with django_capture_on_commit_callbacks(execute=True):
            assert staff_client.patch(url, {"first_name": "New"}, format="json").status_code == 200
        reread = reader.get(url)
        assert (reread["X-Cache"], reread.json()["first_name"]) == ("MISS", "New")

        # An override inside the cache's: pytest-django's settings fixture would
        # restore, after the test, the settings it found, this cache among them.
        write_through = {**settings.USERS_CACHE, "UPDATE_STRATEGY": "write-through"}
        with (
            override_settings(USERS_CACHE=write_through),
            django_capture_on_commit_callbacks(execute=True),
        ):
            services.user_update(actor=None, user_id=user.id, data={"first_name": "Newer"})
        written = reads.user_get(user_id=user.id)
        assert (written.source, written.value["first_name"]) == (reads.Source.HIT, "Newer")

        for _ in range(2):  # the first failure adds the counter, the second increments it
            login = client.post("/admin/login/", {"username": "tls", "password": "wrong"})
            assert login.status_code == 200

        # An id the cache remembers as absent: below the largest, its user deleted.
        gone = make_user(username="gone", email="gone@example.com")
        make_user(username="after-gone", email="after-gone@example.com")
        absent_id = gone.id
        gone.delete()
        warmed = warm.cache_warm(user_ids=[user.id, absent_id], missing_only=True)
        assert (warmed.skipped, warmed.absent) == (1, 1)
        listed = user_state.user_cache_entries(user_ids=[user.id, absent_id])
        assert listed[user.id].ttl_ms > 0
        assert listed[user.id].fields == {}
        assert listed[absent_id].fields == {ABSENT: "1"}
        assert check.cache_check().problems == 0
        state = overview.cache_overview()
        assert state.reachable, state.error
        assert state.keys["user"] == 2
        # The rate-limit counters the token lookups made, the login failures.
        assert state.keys["other"] >= 1

        assert flush.cache_flush().removed >= 2
        assert reads.user_get(user_id=user.id).source is reads.Source.MISS

    assert [entry for process in topology.processes for entry in process.client().acl_log()] == []


def _replaced(variables: dict[str, str], old: str, new: str) -> dict[str, str]:
    return {name: value.replace(old, new) for name, value in variables.items()}


def _without(variables: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in variables.items() if name not in names}


# A change that breaks the working variables, and what the error must say when a
# login was refused (the server's answer); a refused handshake says nothing
# that is the same on every topology.
MISTAKES = {
    "wrong password": (
        lambda variables: _replaced(variables, SERVICE_PASSWORD, WRONG_PASSWORD),
        "invalid username-password pair",
    ),
    "no credentials": (
        lambda variables: _replaced(
            _without(variables, "REDIS_USERNAME", "REDIS_PASSWORD"),
            f"{SERVICE_USER}:{SERVICE_PASSWORD}@", "",
        ),
        "authenticated|Authentication required",
    ),
    "no client certificate": (
        lambda variables: _without(variables, "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"),
        None,
    ),
    "plain TCP": (
        lambda variables: _replaced(
            _without(variables, "REDIS_TLS", *TLS_FILE_VARIABLES), "rediss://", "redis://"
        ),
        None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_the_servers_refuse(topology, mistake, client, db, caplog):
    """The working variables with one thing wrong: the cache is unavailable, and
    readiness says so by the error's class, with no password in it or in the logs."""
    broken, says = MISTAKES[mistake]
    with cache_configured_by(broken(topology.variables)):
        with pytest.raises(transport.CacheUnavailable, match=says) as refused:
            cache_cluster.ping()
        readiness = client.get("/readyz")

    assert readiness.json()["checks"]["redis"]["status"] == "unavailable"
    assert "readiness check failed" in caplog.text
    _assert_no_password_in(str(refused.value), readiness.content.decode(), caplog.text)


def test_the_sentinels_refuse_the_wrong_sentinel_password(request, certificates):
    variables = _sentinel_group(request, certificates).variables
    with (
        cache_configured_by(_replaced(variables, SENTINEL_PASSWORD, WRONG_PASSWORD)),
        pytest.raises(transport.CacheUnavailable, match="MasterNotFoundError") as refused,
    ):
        cache_cluster.ping()
    assert "AuthenticationError" in str(refused.value)
    _assert_no_password_in(str(refused.value))


def _assert_no_password_in(*texts: str) -> None:
    for text in texts:
        assert not re.search("|".join(PASSWORDS), text), text


def test_a_password_alone_logs_in_as_the_default_user(one_server, certificates, make_user):
    variables = {
        "REDIS_URL": one_server.url,
        "REDIS_PASSWORD": DEFAULT_PASSWORD,
        **_tls_files(certificates),
    }
    user = make_user()
    with cache_configured_by(variables):
        sources = [reads.user_get(user_id=user.id).source for _ in range(2)]
    assert sources == [reads.Source.MISS, reads.Source.HIT]


class TestServerCertificates:
    """Verified against the CA, and against the address connected to."""

    def test_one_from_another_ca_is_refused(self, one_server, certificates, tmp_path):
        stranger = Certificates.make(tmp_path)
        variables = _one_server_variables(one_server, certificates)
        with (
            cache_configured_by({**variables, "REDIS_TLS_CA_FILE": str(stranger.ca)}),
            pytest.raises(transport.CacheUnavailable, match="certificate verify failed"),
        ):
            cache_cluster.ping()

    def test_one_that_does_not_name_the_host_is_refused(self, one_server, certificates):
        """The certificate names 127.0.0.1, not localhost."""
        variables = _one_server_variables(one_server, certificates, host="localhost")
        with (
            cache_configured_by(variables),
            pytest.raises(transport.CacheUnavailable, match="certificate verify failed"),
        ):
            cache_cluster.ping()

    def test_unless_the_name_check_is_off(self, one_server, certificates):
        variables = _one_server_variables(one_server, certificates, host="localhost")
        with cache_configured_by({**variables, "REDIS_TLS_CHECK_HOSTNAME": "false"}):
            assert cache_cluster.ping() > 0


def _one_server_variables(
    server: RedisServer, certificates: Certificates, *, host: str = "127.0.0.1"
) -> dict[str, str]:
    return {
        "REDIS_URL": f"rediss://{host}:{server.port}/0",
        "REDIS_USERNAME": SERVICE_USER,
        "REDIS_PASSWORD": SERVICE_PASSWORD,
        **_tls_files(certificates),
    }


@pytest.mark.slow
def test_the_web_service_with_the_production_settings(
    one_server, certificates, tmp_path, transactional_db
):
    """gunicorn and config.settings.production, given the variables and nothing else:
    ready, then an API read misses, hits, and misses again after a write."""
    database = settings.DATABASES["default"]
    web = WebService(
        tmp_path,
        database_url=f"mysql://root@{database['HOST']}:{database['PORT'] or 3306}/"
        f"{database['NAME']}",
        **_one_server_variables(one_server, certificates),
        CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX,
    )
    web.prepare()
    web.start()
    try:
        ready = web.request("GET", "/readyz", token=None)
        staff = web.request("GET", "/api/user")[2]["results"][0]
        url = f"/api/user/{staff['id']}"
        reads = [web.request("GET", url)[1]["x-cache"] for _ in range(2)]
        web.request("PATCH", url, {"first_name": "Changed"})
        reread = web.request("GET", url)
    finally:
        web.stop()

    assert (ready[0], ready[2]["checks"]["redis"]["status"]) == (200, "ok")
    assert reads == ["MISS", "HIT"]
    assert (reread[1]["x-cache"], reread[2]["first_name"]) == ("MISS", "Changed")
