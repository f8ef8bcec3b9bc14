"""The engines are chosen by configuration alone: what each environment resolves to."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import django
import environ
import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import Env
from config.redis import cache_from_env
from tests.servers import Certificates
from users.conf import DEFAULTS, VARIABLES, checked

ROOT = Path(__file__).resolve().parents[2]


def _env(**variables: str) -> environ.Env:
    env = environ.Env()
    env.ENVIRON = variables
    return env


def _settings_under(**variables: str) -> dict:
    """DATABASES, CACHES and USERS_CACHE as the settings resolve them in a fresh
    process, and the user cache's TTL as users/conf.py reads it."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REDIS_", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"))
        and key not in VARIABLES.values()
    }
    environment.update(DJANGO_SETTINGS_MODULE="config.settings.local", **variables)
    script = (
        "import json; from django.conf import settings; "
        "from users.conf import user_cache_settings; "
        "print(json.dumps({'DATABASES': settings.DATABASES, 'CACHES': settings.CACHES, "
        "'USERS_CACHE': settings.USERS_CACHE, 'TTL': user_cache_settings.TTL}))"
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


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certificates"))


def _tls_files(certificates: Certificates) -> dict[str, str]:
    return {
        "REDIS_TLS_CA_FILE": str(certificates.ca),
        "REDIS_TLS_CERT_FILE": str(certificates.client),
        "REDIS_TLS_KEY_FILE": str(Certificates.key(certificates.client)),
    }


def _tls_arguments(certificates: Certificates) -> dict:
    return {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(certificates.ca),
        "ssl_certfile": str(certificates.client),
        "ssl_keyfile": str(Certificates.key(certificates.client)),
        "ssl_check_hostname": True,
    }


class TestRedisCredentialsAndTls:
    def test_credentials_leave_the_url_for_the_options(self, certificates):
        """LOCATION is not hidden in Django's error reports; PASSWORD is."""
        cache = cache_from_env(
            _env(
                REDIS_URL="rediss://usersvc:p%40ss@redis.internal:6380/0",
                **_tls_files(certificates),
            )
        )

        assert cache["LOCATION"] == "rediss://redis.internal:6380/0"
        assert (cache["OPTIONS"]["USERNAME"], cache["OPTIONS"]["PASSWORD"]) == ("usersvc", "p@ss")
        # rediss:// alone selects redis-py's TLS connection, which takes no ssl=True.
        assert cache["OPTIONS"]["CONNECTION_POOL_KWARGS"] == {
            "max_connections": 64,
            **_tls_arguments(certificates),
        }

    def test_a_password_alone_is_the_default_users(self):
        options = cache_from_env(_env(REDIS_PASSWORD="secret"))["OPTIONS"]

        assert options["PASSWORD"] == "secret"
        assert "USERNAME" not in options

    def test_a_cluster_takes_tls_as_a_switch(self, certificates):
        cache = cache_from_env(
            _env(
                REDIS_CLUSTER_NODES="10.0.0.1:7000", REDIS_TLS="true", REDIS_USERNAME="usersvc",
                REDIS_PASSWORD="secret", REDIS_TLS_CHECK_HOSTNAME="false",
                **_tls_files(certificates),
            )
        )  # fmt: skip

        assert (cache["OPTIONS"]["USERNAME"], cache["OPTIONS"]["PASSWORD"]) == ("usersvc", "secret")
        assert cache["OPTIONS"]["CONNECTION_POOL_KWARGS"] == {
            "max_connections": 64,
            "ssl": True,
            **_tls_arguments(certificates),
            "ssl_check_hostname": False,
        }

    def test_the_sentinels_get_their_own_credentials_and_the_same_tls(self, certificates):
        options = cache_from_env(
            _env(
                REDIS_SENTINELS="10.0.0.1:26379", REDIS_TLS="true",
                REDIS_USERNAME="usersvc", REDIS_PASSWORD="data-secret",
                REDIS_SENTINEL_USERNAME="watcher", REDIS_SENTINEL_PASSWORD="sentinel-secret",
                **_tls_files(certificates),
            )
        )["OPTIONS"]  # fmt: skip

        assert (options["USERNAME"], options["PASSWORD"]) == ("usersvc", "data-secret")
        assert options["CONNECTION_POOL_KWARGS"]["ssl"] is True
        sentinel_kwargs = options["SENTINEL_KWARGS"]
        assert (sentinel_kwargs["username"], sentinel_kwargs["password"]) == (
            "watcher",
            "sentinel-secret",
        )
        assert sentinel_kwargs["ssl"] is True
        assert sentinel_kwargs.items() >= _tls_arguments(certificates).items()

    def test_the_sentinels_never_get_the_data_password(self):
        sentinel_kwargs = cache_from_env(
            _env(REDIS_SENTINELS="10.0.0.1:26379", REDIS_PASSWORD="data-secret")
        )["OPTIONS"]["SENTINEL_KWARGS"]

        assert "password" not in sentinel_kwargs
        assert sentinel_kwargs["socket_timeout"] == 0.1

    def test_a_sentinel_is_asked_once_before_the_next(self):
        sentinel_kwargs = cache_from_env(_env(REDIS_SENTINELS="10.0.0.1:26379"))["OPTIONS"][
            "SENTINEL_KWARGS"
        ]

        assert sentinel_kwargs["retry"].get_retries() == 0

    @pytest.mark.parametrize(
        ("variables", "message"),
        [
            ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_CA_FILE": "/nowhere/ca.pem"},
             "REDIS_TLS_CA_FILE /nowhere/ca.pem: .*No such file"),
            ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_CERT_FILE": "{client}"}, "together"),
            ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_KEY_FILE": "{client_key}"}, "together"),
            ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_CERT_FILE": "{client}",
              "REDIS_TLS_KEY_FILE": "{server_key}"}, "REDIS_TLS_CERT_FILE .*KEY_VALUES_MISMATCH"),
            ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_CA_FILE": "{client_key}"},
             "REDIS_TLS_CA_FILE"),
            ({"REDIS_TLS_CA_FILE": "{ca}"}, "need TLS"),
            ({"REDIS_CLUSTER_NODES": "h:1", "REDIS_TLS_CA_FILE": "{ca}"}, "need TLS"),
            ({"REDIS_TLS": "true"}, "REDIS_URL is not rediss://"),
            ({"REDIS_URL": "redis://:secret@h:1/0", "REDIS_PASSWORD": "secret"}, "use one"),
            ({"REDIS_URL": "redis://usersvc@h:1/0"}, "a user without a password"),
            ({"REDIS_USERNAME": "usersvc"}, "REDIS_USERNAME is set without REDIS_PASSWORD"),
            ({"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_USERNAME": "watcher"},
             "REDIS_SENTINEL_USERNAME is set without REDIS_SENTINEL_PASSWORD"),
        ],
    )  # fmt: skip
    def test_a_mistake_stops_the_start_up_in_one_line(self, certificates, variables, message):
        files = {
            "ca": certificates.ca,
            "client": certificates.client,
            "client_key": Certificates.key(certificates.client),
            "server_key": Certificates.key(certificates.server),
        }
        with pytest.raises(ImproperlyConfigured, match=message) as stopped:
            cache_from_env(
                _env(**{name: value.format(**files) for name, value in variables.items()})
            )

        assert "\n" not in str(stopped.value)
        assert "secret" not in str(stopped.value)


class TestDatabase:
    def test_mysql_is_the_default(self):
        database = _settings_under()["DATABASES"]["default"]

        assert database["ENGINE"] == "django.db.backends.mysql"
        assert database["NAME"] == "usersvc"
        assert (database["HOST"], database["PORT"]) == ("127.0.0.1", 3306)

    def test_a_tidb_url_selects_django_tidb_with_the_same_options(self):
        """TiDB speaks MySQL's protocol: the same driver options, another backend."""
        database = _settings_under(
            DATABASE_URL="tidb://app:secret@tidb.internal:4000/usersvc", DB_CONNECT_TIMEOUT="3"
        )["DATABASES"]["default"]

        assert database["ENGINE"] == "django_tidb"
        assert database["NAME"] == "usersvc"
        assert (database["HOST"], database["PORT"]) == ("tidb.internal", 4000)
        assert (database["USER"], database["PASSWORD"]) == ("app", "secret")
        assert database["OPTIONS"] == {"charset": "utf8mb4", "connect_timeout": 3}
        assert database["CONN_MAX_AGE"] == 60
        assert database["CONN_HEALTH_CHECKS"] is True

    def test_the_tidb_backend_matches_this_django(self):
        """django-tidb's minor version follows Django's; importing it here would
        apply its patches to Django in a run that does not use it."""
        assert importlib.util.find_spec("django_tidb") is not None
        assert metadata.version("django-tidb").split(".")[:2] == django.__version__.split(".")[:2]


def _start(**variables: str) -> subprocess.CompletedProcess:
    """``manage.py check`` under the local settings and these variables."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key != "DJANGO_SETTINGS_MODULE" and key not in VARIABLES.values()
    }
    environment.update({"DJANGO_SETTINGS_MODULE": "config.settings.local", **variables})
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environment,
        capture_output=True, text=True,
    )  # fmt: skip


class TestKeyPrefix:
    """The prefix goes into SCAN patterns and Redis Cluster hash tags: a glob or a
    brace in it would reach other applications' keys or move entries between slots."""

    @pytest.mark.parametrize("prefix", ["users*", "a?b", "x[ab]", "esc\\", "t{a}g", "sp ace", ""])
    def test_a_prefix_with_pattern_characters_is_refused_at_start(self, prefix):
        result = _start(CACHE_KEY_PREFIX=prefix)

        assert result.returncode != 0
        assert "CACHE_KEY_PREFIX" in result.stderr

    @pytest.mark.parametrize("prefix", ["usersvc", "team-a.users", "svc_2:users"])
    def test_an_ordinary_prefix_is_accepted(self, prefix):
        result = _start(CACHE_KEY_PREFIX=prefix)

        assert result.returncode == 0, result.stderr


class TestCacheSettings:
    """users/conf.py holds each cache setting's default, once, and checks every
    value when the settings are first read, at start: a value the cache cannot
    use stops the process with ImproperlyConfigured, never an assert or an error
    at the first request that uses it."""

    def test_an_unset_variable_leaves_the_default_to_users_conf(self):
        resolved = _settings_under()

        assert resolved["USERS_CACHE"] == {}
        assert resolved["TTL"] == DEFAULTS["TTL"]

    def test_a_set_variable_sets_its_key(self):
        resolved = _settings_under(USER_CACHE_TTL="60", NEAR_CACHE_SIZE="0")

        assert resolved["USERS_CACHE"] == {"TTL": "60", "NEAR_CACHE_SIZE": "0"}
        assert resolved["TTL"] == 60

    def test_the_defaults_pass_their_own_check(self):
        assert checked(DEFAULTS) == DEFAULTS

    def test_numbers_are_read_from_the_environments_strings(self):
        assert checked({"TTL": "60", "RATE_SYNC_MS": "50", "TTL_JITTER": "0.25"}) == {
            "TTL": 60,
            "RATE_SYNC_MS": 50,
            "TTL_JITTER": 0.25,
        }

    @pytest.mark.parametrize("key", sorted(DEFAULTS))
    def test_every_key_is_checked(self, key):
        """A key added without a check would take anything; nothing takes this."""
        with pytest.raises(ImproperlyConfigured, match=re.escape(f"USERS_CACHE[{key!r}]")):
            checked({key: object()})

    @pytest.mark.parametrize(
        ("key", "value", "use"),
        [
            ("TTL", "abc", "a whole number of 1 or more"),
            ("TTL", 0, "a whole number of 1 or more"),
            ("TTL", 1.5, "a whole number of 1 or more"),
            ("TTL", True, "a whole number of 1 or more"),
            ("TTL", "", "a whole number of 1 or more"),
            ("TTL_JITTER", 1, "a number from 0 up to, not including, 1"),
            ("TTL_JITTER", -0.1, "a number from 0 up to, not including, 1"),
            ("NEGATIVE_TTL", -30, "a whole number of 1 or more"),
            ("TOKEN_TTL", None, "a whole number of 1 or more"),
            ("LEASE_TTL_MS", 0, "a whole number of 1 or more"),
            ("LEASE_WAIT_MS", -1, "a number of 0 or more"),
            ("LEASE_POLL_MS", 0, "a number of 1 or more"),
            ("BREAKER_FAILURES", 0, "a whole number of 1 or more"),
            ("BREAKER_COOLDOWN_MS", "soon", "a number of 0 or more"),
            ("OUTBOX_RETRY_MS", float("nan"), "a number of 1 or more"),
            ("OUTBOX_SWEEP_SECONDS", float("inf"), "a number of 0 or more"),
            ("NEAR_CACHE_SIZE", -1, "a whole number of 0 or more"),
            ("NEAR_CACHE_MAX_AGE", "0", "a number of 1 or more"),
            ("RATE_SYNC_MS", "0.5", "a number of 1 or more"),
        ],
    )
    def test_a_number_it_cannot_use_is_refused(self, key, value, use):
        with pytest.raises(ImproperlyConfigured) as refused:
            checked({key: value})

        named = (
            f"{VARIABLES[key]} (USERS_CACHE[{key!r}])"
            if key in VARIABLES
            else (f"USERS_CACHE[{key!r}]")
        )
        assert str(refused.value) == f"{named} is {value!r}: use {use}."

    @pytest.mark.parametrize(
        ("user_settings", "message"),
        [
            ({"UPDATE_STRATEGY": "sometimes"},
             "USER_CACHE_UPDATE_STRATEGY (USERS_CACHE['UPDATE_STRATEGY']) is 'sometimes';"
             " use one of invalidate, write-through."),
            ({"KEY_PREFIX": 7}, "CACHE_KEY_PREFIX (USERS_CACHE['KEY_PREFIX']) is 7: use 1 to 64"),
            ({"TTL_SECONDS": 60}, "Unknown USERS_CACHE settings: ['TTL_SECONDS']"),
        ],
    )  # fmt: skip
    def test_a_word_it_does_not_know_is_refused(self, user_settings, message):
        with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
            checked(user_settings)

    def test_a_settings_module_of_ones_own_is_checked_at_start(self, tmp_path):
        """As docs/configuration.md shows: a module that imports the settings and
        changes a key that has no variable."""
        (tmp_path / "mysite_settings.py").write_text(
            "from config.settings.local import *  # noqa: F403\n"
            "from config.settings.local import USERS_CACHE\n"
            "USERS_CACHE['LEASE_POLL_MS'] = 0\n"
        )
        result = _start(DJANGO_SETTINGS_MODULE="mysite_settings", PYTHONPATH=str(tmp_path))

        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1] == (
            "django.core.exceptions.ImproperlyConfigured: USERS_CACHE['LEASE_POLL_MS'] is 0:"
            " use a number of 1 or more."
        )

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("USER_CACHE_TTL", "1h"),
            ("USER_CACHE_NEGATIVE_TTL", "0"),
            ("TOKEN_CACHE_TTL", "-300"),
            ("USER_CACHE_UPDATE_STRATEGY", "write-back"),
            ("NEAR_CACHE_SIZE", "10k"),
            ("NEAR_CACHE_MAX_AGE", "0"),
            ("RATE_SYNC_MS", ""),
        ],
    )
    def test_a_bad_variable_stops_the_start(self, variable, value):
        result = _start(**{variable: value})

        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"django.core.exceptions.ImproperlyConfigured: {variable} ("), last


class TestVariablesOfAType:
    """A variable read as a number (or any type) whose text is no such value stops
    the start with ImproperlyConfigured naming it, not with the cast's ValueError."""

    @pytest.mark.parametrize(("read", "text"), [("int", "2s"), ("int", ""), ("float", "fast")])
    def test_a_text_of_another_type_is_refused_with_its_name(self, read, text):
        env = Env()
        env.ENVIRON = {"SOME_VARIABLE": text}

        with pytest.raises(ImproperlyConfigured, match=r"^SOME_VARIABLE is '.*': not a value"):
            getattr(env, read)("SOME_VARIABLE")

    def test_the_default_of_an_unset_variable_is_taken_as_given(self):
        env = Env()
        env.ENVIRON = {}

        assert env.int("SOME_VARIABLE", default=2) == 2

    @pytest.mark.parametrize(
        ("variable", "text"),
        [
            ("DB_CONNECT_TIMEOUT", "2s"),
            ("CONN_MAX_AGE", ""),
            ("MAX_REQUEST_BODY_BYTES", "64k"),
            ("LOGIN_FAILURE_LIMIT", "ten"),
            ("REDIS_READ_TIMEOUT_MS", "0.1s"),
            ("REDIS_MAX_CONNECTIONS", "many"),
        ],
    )
    def test_a_bad_number_stops_the_start(self, variable, text):
        result = _start(**{variable: text})

        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1] == (
            f"django.core.exceptions.ImproperlyConfigured: {variable} is {text!r}: not a value"
            f" of its type (invalid literal for int() with base 10: {text!r})."
        )


class TestVariablesInTheirRange:
    """A number of its type but outside what its setting can use stops the start with
    ImproperlyConfigured naming the variable and the range (failed on the previous
    main: each was taken silently; NUM_PROXIES=-1 counted clients by the wrong
    X-Forwarded-For entry), one family each: MySQL, request bodies and proxies,
    Redis, the login limits and client networks, the rate limits."""

    @pytest.mark.parametrize(
        ("variable", "text", "allowed"),
        [
            ("DB_CONNECT_TIMEOUT", "0", "a whole number of 1 or more"),
            ("CONN_MAX_AGE", "-1", "a whole number of 0 or more"),
            ("MAX_REQUEST_BODY_BYTES", "0", "a whole number of 1 or more"),
            ("NUM_PROXIES", "-1", "a whole number of 0 or more"),
            ("REDIS_CONNECT_TIMEOUT_MS", "0", "a whole number of 1 or more"),
            ("REDIS_READ_TIMEOUT_MS", "-5", "a whole number of 1 or more"),
            ("REDIS_MAX_CONNECTIONS", "0", "a whole number of 1 or more"),
            ("LOGIN_FAILURE_LIMIT", "0", "a whole number of 1 or more"),
            ("LOGIN_LOCKOUT_MINUTES", "-15", "a whole number of 1 or more"),
            ("CLIENT_IPV6_PREFIX", "129", "a whole number from 1 to 128"),
        ],
    )
    def test_a_number_out_of_range_stops_the_start(self, variable, text, allowed):
        result = _start(**{variable: text})

        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1] == (
            f"django.core.exceptions.ImproperlyConfigured: {variable} is {text!r}: use {allowed}."
        )

    @pytest.mark.parametrize(
        "variable",
        [
            "THROTTLE_RATE_USER",
            "THROTTLE_RATE_ANON",
            "THROTTLE_RATE_AUTH_FAILURE",
            "THROTTLE_RATE_PASSWORD_HASH",
        ],
    )
    @pytest.mark.parametrize("text", ["-1/min", "0/s", "ten/min", "100", "5/week"])
    def test_a_rate_not_of_the_form_stops_the_start(self, variable, text):
        """DRF would read "-1/min" as a limit nobody is within, and fail on the others
        at the first request (a 500)."""
        result = _start(**{variable: text})

        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1].startswith(
            f"django.core.exceptions.ImproperlyConfigured: {variable} is {text!r}: use N/s"
        )

    def test_the_hsts_age_is_held_to_its_range(self):
        """The production settings' one number of their own."""
        result = _start(
            DJANGO_SETTINGS_MODULE="config.settings.production",
            SECRET_KEY="a-long-random-production-secret-0123456789-abcdefg",
            SECURE_HSTS_SECONDS="-1",
        )

        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1] == (
            "django.core.exceptions.ImproperlyConfigured: SECURE_HSTS_SECONDS is '-1': use a"
            " whole number of 0 or more."
        )

    @pytest.mark.parametrize(
        ("variable", "text"),
        [("NUM_PROXIES", "0"), ("CLIENT_IPV6_PREFIX", "128"), ("THROTTLE_RATE_USER", "off")],
    )
    def test_the_ends_of_a_range_are_accepted(self, variable, text):
        result = _start(**{variable: text})

        assert result.returncode == 0, result.stderr
