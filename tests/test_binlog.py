"""The binary log follower (``manage.py follow_binlog``) against a ``mariadbd`` of the
test's own that writes the binary log: writes that bypass the services, in raw SQL,
reach the cache; a crash, a Redis outage, a MySQL restart or a second follower
lose nothing; a server it cannot follow is refused in one line.

The follower runs as a real process (``tests.servers.BinlogFollower``) with the
run's key prefix and secret key, so the Redis names it deletes are the ones this
process computes with the service's own key builders. What the tests cache at
those names is a marker hash and its lease: what the follower must do is delete
both, whatever the entry held. One test runs the whole service under gunicorn and
shows a token revoked in SQL stop authenticating.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import MySQLdb
import pytest
from django.conf import settings
from django_redis import get_redis_connection

from tests.conftest import redis_environment
from tests.servers import (
    PROJECT_ROOT,
    BinlogFollower,
    MariaDBServer,
    RedisServer,
    project_python,
    service_stack,
)
from users.cache.keys import lease_key, token_key, user_key
from users.tokens import token_mac

pytestmark = pytest.mark.slow

# What the tests allow a change to take to reach Redis: loose, because other work
# shares the machine. The bound a deployment can expect is measured by the soak
# (docs/binlog-follower.md).
BOUND_SECONDS = 10.0


def _environment(mariadb: MariaDBServer, **variables: str) -> dict[str, str]:
    """The follower's environment: this run's key prefix and secret key (token names
    are HMACs under it), the test's MariaDB, and this run's Redis (a cluster's or
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


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [project_python(), "manage.py", *args], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("binlog-mariadb"), binlog=True)
    server.start()
    try:
        root = MySQLdb.connect(host="127.0.0.1", port=server.port, user="root")
        root.cursor().execute("CREATE DATABASE usersvc CHARACTER SET utf8mb4")
        root.close()
        migrated = _manage(_environment(server), "migrate", "--no-input", "-v0")
        assert migrated.returncode == 0, migrated.stderr
        yield server
    finally:
        server.stop()


@pytest.fixture
def sql(mariadb):
    """A connection to the test's MariaDB, in autocommit unless a test begins."""
    connection = MySQLdb.connect(
        host="127.0.0.1", port=mariadb.port, user="root", database="usersvc", autocommit=True
    )
    yield connection.cursor()
    connection.close()


@pytest.fixture
def start_follower(mariadb, tmp_path):
    """Starts followers (``start_follower(**environment)``); stops them at the end.
    Each starts at the end of the binary log, as a first follower does, unless
    ``resume``: an earlier test's changes must not reach this test's entries."""
    followers: list[BinlogFollower] = []

    def start(*, resume: bool = False, **variables: str) -> BinlogFollower:
        if not resume:
            root = MySQLdb.connect(
                host="127.0.0.1", port=mariadb.port, user="root", database="usersvc",
                autocommit=True,
            )  # fmt: skip
            root.cursor().execute("DELETE FROM users_binlog_position")
            root.close()
        workdir = tmp_path / f"follower-{len(followers)}"
        workdir.mkdir()
        follower = BinlogFollower(workdir, _environment(mariadb, **variables))
        followers.append(follower)
        follower.start()
        return follower

    yield start
    for follower in followers:
        if follower.is_running:
            follower.stop()


_counter = iter(range(1, 10**6))


def _insert_user(sql, **columns) -> int:
    """A user row written in SQL, as another application would."""
    name = f"raw{next(_counter)}-{time.monotonic_ns()}"
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


def _insert_token(sql, user_id: int) -> str:
    key = f"{next(_counter):040x}"
    sql.execute(
        "INSERT INTO authtoken_token (`key`, created, user_id) VALUES (%s, NOW(6), %s)",
        [key, user_id],
    )
    return key


def _cache(client, *keys: str) -> None:
    """A marker entry and its lease at each key, as a reader's lease and fill leave them."""
    for key in keys:
        client.hset(key, "marker", "1")
        client.set(lease_key(key), "reader")


def _cached(client, key: str) -> bool:
    return bool(client.exists(key) or client.exists(lease_key(key)))


def _reach_the_cache(client, *keys: str, within: float = BOUND_SECONDS) -> float:
    """Seconds until every key and its lease are gone; fails past ``within``."""
    started = time.monotonic()
    while any(_cached(client, key) for key in keys):
        assert time.monotonic() - started < within, [k for k in keys if _cached(client, k)]
        time.sleep(0.002)
    return time.monotonic() - started


def _token_key(key: str) -> str:
    return token_key(token_mac(key))


@pytest.fixture
def redis_client():
    return get_redis_connection("default")


class TestChangesInSQL:
    def test_a_single_row_update_drops_the_user_and_its_token_lookups(
        self, start_follower, sql, redis_client
    ):
        """A deactivation must also end the cached token lookup, which carries is_active."""
        user_id = _insert_user(sql)
        token = _insert_token(sql, user_id)
        start_follower()
        _cache(redis_client, user_key(user_id), _token_key(token))

        sql.execute("UPDATE users_user SET is_active = 0 WHERE id = %s", [user_id])

        lag = _reach_the_cache(redis_client, user_key(user_id), _token_key(token))
        print(f"single-row update reached the cache in {lag * 1000:.1f} ms")

    def test_a_multi_row_update_drops_each_row_and_only_those(
        self, start_follower, sql, redis_client
    ):
        changed = [_insert_user(sql, last_name="batch") for _ in range(3)]
        untouched = _insert_user(sql, last_name="other")
        start_follower()
        _cache(redis_client, *map(user_key, [*changed, untouched]))

        sql.execute("UPDATE users_user SET first_name = 'many' WHERE last_name = 'batch'")

        _reach_the_cache(redis_client, *map(user_key, changed))
        assert _cached(redis_client, user_key(untouched))

    def test_a_transaction_of_several_statements(self, start_follower, sql, redis_client):
        updated, deleted = _insert_user(sql), _insert_user(sql)
        start_follower()
        _cache(redis_client, user_key(updated), user_key(deleted))

        sql.execute("BEGIN")
        sql.execute("UPDATE users_user SET email = CONCAT('x', email) WHERE id = %s", [updated])
        sql.execute("DELETE FROM users_user WHERE id = %s", [deleted])
        sql.execute("COMMIT")

        _reach_the_cache(redis_client, user_key(updated), user_key(deleted))

    def test_a_rolled_back_transaction_changes_nothing(self, start_follower, sql, redis_client):
        """The rolled-back change comes first, so once the committed one after it has
        reached the cache, the follower has read past the rollback."""
        rolled_back, committed = _insert_user(sql), _insert_user(sql)
        start_follower()
        _cache(redis_client, user_key(rolled_back), user_key(committed))

        sql.execute("BEGIN")
        sql.execute("UPDATE users_user SET first_name = 'never' WHERE id = %s", [rolled_back])
        sql.execute("ROLLBACK")
        sql.execute("UPDATE users_user SET first_name = 'done' WHERE id = %s", [committed])

        _reach_the_cache(redis_client, user_key(committed))
        assert _cached(redis_client, user_key(rolled_back))

    def test_token_rows_deleted_reassigned_or_rekeyed(self, start_follower, sql, redis_client):
        owner, other = _insert_user(sql), _insert_user(sql)
        deleted, reassigned = _insert_token(sql, owner), _insert_token(sql, other)
        rekeyed = _insert_token(sql, _insert_user(sql))
        new_key = f"{next(_counter):040x}"
        start_follower()
        _cache(redis_client, *map(_token_key, [deleted, reassigned, rekeyed, new_key]))

        sql.execute("DELETE FROM authtoken_token WHERE `key` = %s", [deleted])
        sql.execute("UPDATE authtoken_token SET user_id = %s WHERE `key` = %s", [owner, reassigned])
        sql.execute("UPDATE authtoken_token SET `key` = %s WHERE `key` = %s", [new_key, rekeyed])

        _reach_the_cache(redis_client, *map(_token_key, [deleted, reassigned, rekeyed, new_key]))

    def test_a_login_alone_leaves_the_cache_as_it_is(self, start_follower, sql, redis_client):
        """last_login is not cached: the services skip such a save, and so does the
        follower. A later change shows it has read past the login."""
        logged_in, changed = _insert_user(sql), _insert_user(sql)
        start_follower()
        _cache(redis_client, user_key(logged_in), user_key(changed))

        sql.execute("UPDATE users_user SET last_login = NOW(6) WHERE id = %s", [logged_in])
        sql.execute("UPDATE users_user SET first_name = 'x' WHERE id = %s", [changed])

        _reach_the_cache(redis_client, user_key(changed))
        assert _cached(redis_client, user_key(logged_in))

    def test_a_truncate_the_log_does_not_list_row_by_row_drops_every_entry(
        self, start_follower, sql, redis_client
    ):
        user_id = _insert_user(sql)
        token = _insert_token(sql, user_id)
        start_follower()
        _cache(redis_client, user_key(user_id), _token_key(token))

        sql.execute("TRUNCATE authtoken_token")

        _reach_the_cache(redis_client, user_key(user_id), _token_key(token))


def test_a_token_deactivated_in_sql_stops_authenticating(tmp_path):
    """The whole service under gunicorn: its staff token is cached by a request, then
    the user is deactivated behind its back; the follower makes the next request
    read MySQL, which refuses the token."""
    with service_stack(tmp_path, binlog=True) as (mariadb, _redis, web):
        web.start()
        follower = BinlogFollower(tmp_path, web.env)
        follower.start()
        try:
            assert web.request("GET", "/api/user")[0] == 200  # the token is cached now
            connection = MySQLdb.connect(
                host="127.0.0.1", port=mariadb.port, user="root", database="usersvc",
                autocommit=True,
            )  # fmt: skip
            connection.cursor().execute("UPDATE users_user SET is_active = 0")
            connection.close()
            started = time.monotonic()
            while web.request("GET", "/api/user")[0] != 401:
                assert time.monotonic() - started < BOUND_SECONDS
                time.sleep(0.01)
        finally:
            follower.stop()


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    """A redis-server that keeps its data when stopped, for the tests that stop it."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


def _wait_for(condition, what: str, within: float = BOUND_SECONDS) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, what
        time.sleep(0.02)


def _redis_errors(follower: BinlogFollower) -> float:
    return follower.metrics().get('usersvc_binlog_errors_total{store="redis"}', 0)


class TestFaults:
    def test_killed_between_a_change_and_its_invalidation_it_applies_it_on_restart(
        self, start_follower, sql, own_redis
    ):
        """Redis is paused, so the follower has read the change but cannot apply it
        when SIGKILL ends it; its position must not have moved past the change."""
        client = own_redis.client()
        user_id = _insert_user(sql)
        follower = start_follower(REDIS_URL=own_redis.url)
        _cache(client, user_key(user_id))

        own_redis.pause()
        try:
            sql.execute("UPDATE users_user SET first_name = 'late' WHERE id = %s", [user_id])
            _wait_for(lambda: _redis_errors(follower) > 0, "the follower tried to apply")
            follower.kill()
        finally:
            own_redis.resume()
        assert _cached(client, user_key(user_id))

        start_follower(resume=True, REDIS_URL=own_redis.url)

        _reach_the_cache(client, user_key(user_id))

    def test_changes_made_while_redis_is_down_are_all_applied_once_it_is_back(
        self, start_follower, sql, own_redis
    ):
        client = own_redis.client()
        users = [_insert_user(sql) for _ in range(4)]
        token = _insert_token(sql, users[0])
        untouched = _insert_user(sql)
        follower = start_follower(REDIS_URL=own_redis.url)
        _cache(client, *map(user_key, [*users, untouched]), _token_key(token))

        own_redis.stop()
        sql.execute("UPDATE users_user SET first_name = 'a' WHERE id = %s", [users[0]])
        sql.execute(
            "UPDATE users_user SET first_name = 'b' WHERE id IN (%s, %s)", [users[1], users[2]]
        )
        sql.execute("DELETE FROM users_user WHERE id = %s", [users[3]])
        sql.execute("DELETE FROM authtoken_token WHERE `key` = %s", [token])
        _wait_for(lambda: _redis_errors(follower) > 0, "the follower tried to apply")
        own_redis.start()

        _reach_the_cache(client, *map(user_key, users), _token_key(token))
        assert _cached(client, user_key(untouched))

    def test_it_follows_a_rotation_and_a_restart_of_mysql(
        self, start_follower, mariadb, redis_client
    ):
        follower = start_follower()
        connection = MySQLdb.connect(
            host="127.0.0.1", port=mariadb.port, user="root", database="usersvc", autocommit=True
        )
        sql = connection.cursor()
        rotated, restarted = _insert_user(sql), _insert_user(sql)
        _cache(redis_client, user_key(rotated), user_key(restarted))

        sql.execute("FLUSH BINARY LOGS")
        sql.execute("UPDATE users_user SET first_name = 'r' WHERE id = %s", [rotated])
        _reach_the_cache(redis_client, user_key(rotated))
        connection.close()

        mariadb.restart()
        connection = MySQLdb.connect(
            host="127.0.0.1", port=mariadb.port, user="root", database="usersvc", autocommit=True
        )
        connection.cursor().execute(
            "UPDATE users_user SET first_name = 's' WHERE id = %s", [restarted]
        )
        connection.close()

        _reach_the_cache(redis_client, user_key(restarted), within=30)
        assert follower.metrics()['usersvc_binlog_errors_total{store="mysql"}'] >= 1

    def test_two_followers_both_keep_following(self, start_follower, sql, redis_client):
        """A server drops a replica's stream when another registers with the same
        server id: two followers must each keep theirs, and both apply."""
        first, second = start_follower(), start_follower()
        for _ in range(2):
            user_id = _insert_user(sql)
            _cache(redis_client, user_key(user_id))
            sql.execute("UPDATE users_user SET first_name = 'two' WHERE id = %s", [user_id])
            _reach_the_cache(redis_client, user_key(user_id))
        applied = 'usersvc_binlog_rows_total{table="users_user"}'
        _wait_for(
            lambda: all(f.metrics().get(applied, 0) >= 4 for f in (first, second)),
            "both followers applied both inserts and both updates",
        )
        assert first.process.poll() is None and second.process.poll() is None

    def test_sigterm_stops_it_within_seconds_with_its_position_saved(
        self, start_follower, sql, mariadb
    ):
        user_id = _insert_user(sql)
        follower = start_follower()
        sql.execute("SHOW MASTER STATUS")
        log_file, before = sql.fetchone()[:2]
        sql.execute("UPDATE users_user SET first_name = 'last' WHERE id = %s", [user_id])
        # The end of the change's commit event, the first after ``before``.
        sql.execute(f"SHOW BINLOG EVENTS IN '{log_file}' FROM {before}")
        after_the_change = next(row[4] for row in sql.fetchall() if row[2] == "Xid")
        _wait_for(
            lambda: follower.metrics()["usersvc_binlog_position_offset"] >= after_the_change,
            "the follower applied the change",
        )

        started = time.monotonic()
        follower.process.send_signal(signal.SIGTERM)
        assert follower.process.wait(timeout=BOUND_SECONDS) == 0
        print(f"stopped in {time.monotonic() - started:.2f} s")
        follower.process = None

        sql.execute("SELECT log_file, log_pos FROM users_binlog_position")
        stored_file, stored_pos = sql.fetchone()
        assert stored_file == log_file and stored_pos >= after_the_change


def _one_line_refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@contextlib.contextmanager
def _global(mariadb: MariaDBServer, name: str, value: str) -> Iterator[None]:
    root = MySQLdb.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
    cursor = root.cursor()
    cursor.execute(f"SELECT @@GLOBAL.{name}")
    before = cursor.fetchone()[0]
    cursor.execute(f"SET GLOBAL {name} = %s", [value])
    try:
        yield
    finally:
        cursor.execute(f"SET GLOBAL {name} = %s", [before])
        root.close()


class TestRefusals:
    """Each refusal is one line that names what to change, and exit status 1."""

    @pytest.mark.parametrize(
        ("name", "value"),
        [("binlog_format", "STATEMENT"), ("binlog_row_image", "MINIMAL"),
         ("binlog_row_metadata", "MINIMAL")],
    )  # fmt: skip
    def test_a_server_that_does_not_log_full_rows(self, mariadb, name, value):
        with _global(mariadb, name, value):
            line = _one_line_refusal(_manage(_environment(mariadb), "follow_binlog"))

        assert f"{name} is {value}: set {name}=" in line

    def test_a_server_without_the_binary_log(self, tmp_path):
        server = MariaDBServer(tmp_path)
        server.start()
        try:
            env = _environment(server, DATABASE_URL=server.url("mysql"))
            line = _one_line_refusal(_manage(env, "follow_binlog", "--check"))
        finally:
            server.stop()

        assert "the server's binary log is off: turn it on with log_bin" in line

    @pytest.mark.parametrize(
        ("grants", "missing"),
        [("REPLICATION SLAVE", "may not see the binary log"),
         ("REPLICATION CLIENT", "may not read the binary log")],
    )  # fmt: skip
    def test_a_user_without_a_replication_privilege(self, mariadb, grants, missing):
        user = f"follower_{grants.split()[1].lower()}"
        root = MySQLdb.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        for statement in (
            f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'pw'",
            f"GRANT SELECT, INSERT, UPDATE ON usersvc.* TO '{user}'@'%'",
            f"GRANT {grants} ON *.* TO '{user}'@'%'",
        ):
            root.cursor().execute(statement)
        root.close()
        env = _environment(
            mariadb, DATABASE_URL=f"mysql://{user}:pw@127.0.0.1:{mariadb.port}/usersvc"
        )

        line = _one_line_refusal(_manage(env, "follow_binlog"))

        assert missing in line and "GRANT REPLICATION SLAVE, REPLICATION CLIENT" in line

    def test_a_purged_position(self, mariadb, sql):
        """The stored position names a file the server no longer has: changes since
        may be missing, so the follower says how to start again, and --from-end does."""
        env = _environment(mariadb)
        sql.execute("UPDATE users_binlog_position SET log_file = 'binlog.000000', log_pos = 4")

        line = _one_line_refusal(_manage(env, "follow_binlog"))
        assert "binlog.000000:4 is no longer in the server's binary log" in line
        assert "flush_user_cache --all" in line and "--from-end" in line

        follower = subprocess.Popen(
            [project_python(), "manage.py", "follow_binlog", "--from-end"], cwd=PROJECT_ROOT,
            env={**env, "FOLLOWER_METRICS_BIND": "127.0.0.1:0"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for(lambda: _stored_file(sql) != "binlog.000000", "--from-end stored a position")
        finally:
            follower.terminate()
            follower.wait(timeout=30)


def _stored_file(sql) -> str:
    sql.execute("SELECT log_file FROM users_binlog_position")
    return sql.fetchone()[0]
