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

Statements of every database reach the follower: those of another application's
database, written by an account with rights only there, neither hold it nor flush
our cache, and the classifier that decides (``users.binlog.statements``) is tested
on its own, for each spelling and for time in proportion to a statement's length.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import MySQLdb
import pytest
from django_redis import get_redis_connection

from tests.helpers import follower_environment, insert_user_row, manage_py
from tests.servers import (
    PROJECT_ROOT,
    BinlogFollower,
    MariaDBServer,
    RedisServer,
    project_python,
    service_stack,
)
from users.binlog import changes, statements
from users.binlog import follower as follower_module
from users.cache.keys import lease_key, name_key, token_key, user_key
from users.tokens import token_mac

pytestmark = pytest.mark.slow

# What the tests allow a change to take to reach Redis: loose, because other work
# shares the machine. The bound a deployment can expect is measured by the soak
# (docs/binlog-follower.md).
BOUND_SECONDS = 10.0


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
        follower = BinlogFollower(workdir, follower_environment(mariadb, **variables))
        followers.append(follower)
        follower.start()
        return follower

    yield start
    for follower in followers:
        if follower.is_running:
            follower.stop()


_counter = iter(range(1, 10**6))


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
    @pytest.mark.parametrize("change", ["rename", "insert"])
    def test_a_name_given_in_sql_is_no_longer_remembered_as_absent(
        self, start_follower, sql, redis_client, change
    ):
        """A lookup of "ghost" remembered it as nobody's; then SQL gives that username
        and e-mail to a user. The keys a row owns are the registry's, old names and
        new, on every path (failed on the previous main: the follower dropped the
        user's entry and tokens, not the absences of its new names)."""
        user_id = insert_user_row(sql)
        start_follower()
        ghost = f"ghost{next(_counter)}"
        names = [name_key("username", ghost), name_key("email", f"{ghost}@example.com")]
        _cache(redis_client, *names)

        if change == "rename":
            sql.execute(
                "UPDATE users_user SET username = %s, email = %s WHERE id = %s",
                [ghost, f"{ghost}@example.com", user_id],
            )
        else:
            insert_user_row(sql, username=ghost, email=f"{ghost}@example.com")

        _reach_the_cache(redis_client, *names)

    def test_a_single_row_update_drops_the_user_and_its_token_lookups(
        self, start_follower, sql, redis_client
    ):
        """A deactivation must also end the cached token lookup, which carries is_active."""
        user_id = insert_user_row(sql)
        token = _insert_token(sql, user_id)
        start_follower()
        _cache(redis_client, user_key(user_id), _token_key(token))

        sql.execute("UPDATE users_user SET is_active = 0 WHERE id = %s", [user_id])

        lag = _reach_the_cache(redis_client, user_key(user_id), _token_key(token))
        print(f"single-row update reached the cache in {lag * 1000:.1f} ms")

    def test_a_multi_row_update_drops_each_row_and_only_those(
        self, start_follower, sql, redis_client
    ):
        changed = [insert_user_row(sql, last_name="batch") for _ in range(3)]
        untouched = insert_user_row(sql, last_name="other")
        start_follower()
        _cache(redis_client, *map(user_key, [*changed, untouched]))

        sql.execute("UPDATE users_user SET first_name = 'many' WHERE last_name = 'batch'")

        _reach_the_cache(redis_client, *map(user_key, changed))
        assert _cached(redis_client, user_key(untouched))

    def test_a_transaction_of_several_statements(self, start_follower, sql, redis_client):
        updated, deleted = insert_user_row(sql), insert_user_row(sql)
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
        rolled_back, committed = insert_user_row(sql), insert_user_row(sql)
        start_follower()
        _cache(redis_client, user_key(rolled_back), user_key(committed))

        sql.execute("BEGIN")
        sql.execute("UPDATE users_user SET first_name = 'never' WHERE id = %s", [rolled_back])
        sql.execute("ROLLBACK")
        sql.execute("UPDATE users_user SET first_name = 'done' WHERE id = %s", [committed])

        _reach_the_cache(redis_client, user_key(committed))
        assert _cached(redis_client, user_key(rolled_back))

    def test_token_rows_deleted_reassigned_or_rekeyed(self, start_follower, sql, redis_client):
        owner, other = insert_user_row(sql), insert_user_row(sql)
        deleted, reassigned = _insert_token(sql, owner), _insert_token(sql, other)
        rekeyed = _insert_token(sql, insert_user_row(sql))
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
        logged_in, changed = insert_user_row(sql), insert_user_row(sql)
        start_follower()
        _cache(redis_client, user_key(logged_in), user_key(changed))

        sql.execute("UPDATE users_user SET last_login = NOW(6) WHERE id = %s", [logged_in])
        sql.execute("UPDATE users_user SET first_name = 'x' WHERE id = %s", [changed])

        _reach_the_cache(redis_client, user_key(changed))
        assert _cached(redis_client, user_key(logged_in))

    def test_a_truncate_the_log_does_not_list_row_by_row_drops_every_entry(
        self, start_follower, sql, redis_client
    ):
        user_id = insert_user_row(sql)
        token = _insert_token(sql, user_id)
        start_follower()
        _cache(redis_client, user_key(user_id), _token_key(token))

        sql.execute("TRUNCATE authtoken_token")

        _reach_the_cache(redis_client, user_key(user_id), _token_key(token))


# Another application's database on the same server, and its account, which has
# rights there only; it has a table named like ours.
OTHER_DATABASE = "otherapp"


def _connect(mariadb: MariaDBServer, database: str, user: str = "root", password: str = ""):
    connection = MySQLdb.connect(
        host="127.0.0.1", port=mariadb.port, user=user, password=password, database=database,
        autocommit=True,
    )  # fmt: skip
    return connection.cursor()


@pytest.fixture(scope="module")
def other_database(mariadb) -> str:
    root = _connect(mariadb, "mysql")
    for statement in (
        f"CREATE DATABASE {OTHER_DATABASE}",
        f"CREATE TABLE {OTHER_DATABASE}.users_user (id INT PRIMARY KEY)",
        f"CREATE USER '{OTHER_DATABASE}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT ALL PRIVILEGES ON {OTHER_DATABASE}.* TO '{OTHER_DATABASE}'@'%'",
    ):
        root.execute(statement)
    root.connection.close()
    return OTHER_DATABASE


@pytest.fixture
def other_account(mariadb, other_database):
    """A session of the other application's account, in its database."""
    cursor = _connect(mariadb, other_database, user=other_database, password="pw")
    yield cursor
    cursor.connection.close()


@pytest.fixture
def root_in_other_database(mariadb, other_database):
    """A session that may write our tables but whose default database is another."""
    cursor = _connect(mariadb, other_database)
    yield cursor
    cursor.connection.close()


class TestOtherDatabases:
    """The reader passes on the statements of every database on the server."""

    def test_a_statement_of_another_database_does_not_hold_a_revocation(
        self, start_follower, sql, other_account, redis_client
    ):
        """Before a statement that is not DML, each comment doubled the time the
        former regular expression took (days for 40), and the follower never read
        the deactivation that followed. The statement names our table in a string,
        so it is read past the cheap test for our names."""
        user_id = insert_user_row(sql)
        token = _insert_token(sql, user_id)
        start_follower()
        _cache(redis_client, user_key(user_id), _token_key(token))

        other_account.execute(
            "/**/" * 40 + f" CREATE TABLE copy{next(_counter)} (id INT)"
            " COMMENT 'a copy of usersvc.users_user'"
        )
        sql.execute("UPDATE users_user SET is_active = 0 WHERE id = %s", [user_id])

        _reach_the_cache(redis_client, user_key(user_id), _token_key(token))

    @pytest.mark.parametrize(
        ("session", "statement"),
        [("other_account", "TRUNCATE users_user"),
         ("other_account", "TRUNCATE TABLE `otherapp` . `users_user`"),
         ("sql", "TRUNCATE otherapp.users_user")],
    )  # fmt: skip
    def test_a_truncate_of_another_databases_users_user_flushes_nothing(
        self, start_follower, sql, redis_client, request, session, statement
    ):
        """The ``sql`` session's default database is ours, so there the qualifier
        decides. A later change shows the follower has read past the TRUNCATE."""
        untouched, changed = insert_user_row(sql), insert_user_row(sql)
        start_follower()
        _cache(redis_client, user_key(untouched), user_key(changed))

        request.getfixturevalue(session).execute(statement)
        sql.execute("UPDATE users_user SET first_name = 'after' WHERE id = %s", [changed])

        _reach_the_cache(redis_client, user_key(changed))
        assert _cached(redis_client, user_key(untouched))

    @pytest.mark.parametrize(
        "statements_run",
        [["TRUNCATE usersvc.authtoken_token"],
         ["TRUNCATE TABLE `usersvc` . `authtoken_token`"],
         ["SET STATEMENT lock_wait_timeout = 10 FOR TRUNCATE usersvc.authtoken_token"],
         ["SET SESSION binlog_format = 'STATEMENT'",
          "ANALYZE UPDATE usersvc.users_user SET first_name = 'analyzed' WHERE id = {user_id}"]],
        ids=["qualified", "quoted-spaced", "set-statement", "analyze-update-as-statement"],
    )  # fmt: skip
    def test_our_table_named_from_another_default_database_flushes(
        self, start_follower, sql, root_in_other_database, redis_client, statements_run
    ):
        """The session's default database is another, so the statement's own
        qualifier must count; an unrelated cached user goes with the flush."""
        user_id, unrelated = insert_user_row(sql), insert_user_row(sql)
        start_follower()
        _cache(redis_client, user_key(user_id), user_key(unrelated))

        for statement in statements_run:
            root_in_other_database.execute(statement.format(user_id=user_id))

        _reach_the_cache(redis_client, user_key(user_id), user_key(unrelated))


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
        user_id = insert_user_row(sql)
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
        users = [insert_user_row(sql) for _ in range(4)]
        token = _insert_token(sql, users[0])
        untouched = insert_user_row(sql)
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
        rotated, restarted = insert_user_row(sql), insert_user_row(sql)
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
            user_id = insert_user_row(sql)
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
        user_id = insert_user_row(sql)
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


def _saved(sql) -> tuple[int, float | None, float]:
    """The follower's row: the offset applied, the lag it saved, and the seconds
    since it saved it (by MariaDB's clock, against the follower's: one machine)."""
    sql.execute(
        "SELECT log_pos, seconds_behind, TIMESTAMPDIFF(MICROSECOND, updated_at, UTC_TIMESTAMP(6))"
        " FROM users_binlog_position"
    )
    log_pos, seconds_behind, microseconds = sql.fetchone()
    return log_pos, seconds_behind, microseconds / 1e6


class TestLagSaved:
    """What the admin's overview reads of the follower: the row it saves with its
    position, which carries its lag, is saved while it idles and while Redis is
    down, and says when it stopped."""

    def test_it_saves_its_lag_running_waiting_for_redis_and_stopping(
        self, start_follower, sql, own_redis
    ):
        report_every = follower_module.server.REPORT_SECONDS
        user_id = insert_user_row(sql)
        follower = start_follower(REDIS_URL=own_redis.url)
        _cache(own_redis.client(), user_key(user_id))
        # Idle: the row is saved again, with no lag, though nothing happens.
        _wait_for(
            lambda: _saved(sql)[1] == 0 and _saved(sql)[2] < 1,
            "an idle follower saved its row",
            within=3 * report_every,
        )

        own_redis.pause()
        try:
            sql.execute("SHOW MASTER STATUS")
            before_the_change = sql.fetchone()[1]
            sql.execute("UPDATE users_user SET first_name = 'late' WHERE id = %s", [user_id])
            # The change waits for Redis: the lag saved grows, the position stays.
            _wait_for(
                lambda: (_saved(sql)[1] or 0) >= 1, "the lag saved grew", within=3 * report_every
            )
            assert _saved(sql)[0] <= before_the_change
        finally:
            own_redis.resume()
        _reach_the_cache(own_redis.client(), user_key(user_id))
        _wait_for(
            lambda: _saved(sql)[0] > before_the_change and _saved(sql)[1] == 0,
            "the change applied, then no lag saved",
            within=3 * report_every,
        )

        follower.process.send_signal(signal.SIGTERM)
        assert follower.process.wait(timeout=BOUND_SECONDS) == 0
        follower.process = None
        assert _saved(sql)[1] is None


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
            line = _one_line_refusal(manage_py(follower_environment(mariadb), "follow_binlog"))

        assert f"{name} is {value}: set {name}=" in line

    def test_a_server_without_the_binary_log(self, tmp_path):
        server = MariaDBServer(tmp_path)
        server.start()
        try:
            env = follower_environment(server, DATABASE_URL=server.url("mysql"))
            line = _one_line_refusal(manage_py(env, "follow_binlog", "--check"))
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
        env = follower_environment(
            mariadb, DATABASE_URL=f"mysql://{user}:pw@127.0.0.1:{mariadb.port}/usersvc"
        )

        line = _one_line_refusal(manage_py(env, "follow_binlog"))

        assert missing in line and "GRANT REPLICATION SLAVE, REPLICATION CLIENT" in line

    def test_a_purged_position(self, mariadb, sql):
        """The stored position names a file the server no longer has: changes since
        may be missing, so the follower says how to start again, and --from-end does."""
        env = follower_environment(mariadb)
        sql.execute("UPDATE users_binlog_position SET log_file = 'binlog.000000', log_pos = 4")

        line = _one_line_refusal(manage_py(env, "follow_binlog"))
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


OURS = statements.WatchedTables(
    database="usersvc",
    tables=changes.watched_tables(),
    mariadb=True,
)
ANSI_QUOTES = statements.MODE_ANSI_QUOTES
NO_BACKSLASH_ESCAPES = statements.MODE_NO_BACKSLASH_ESCAPES


def _ours(statement: str, default: str = "usersvc", sql_mode: int = 0) -> bool:
    return OURS.unlisted_change(statement, default_database=default, sql_mode=sql_mode)


class TestStatementsClassified:
    """``users.binlog.statements``: which statements flush our cache."""

    @pytest.mark.parametrize(
        "statement",
        ["TRUNCATE usersvc.users_user", "truncate table USERSVC.Users_User",
         "TRUNCATE `usersvc`.`users_user`", "TRUNCATE usersvc . users_user",
         "TRUNCATE `usersvc` /* the db */ . -- and\n `authtoken_token`",
         "UPDATE otherapp.t JOIN usersvc.users_user u ON u.id = t.id SET t.a = 1",
         "UPDATE usersvc.users_user SET usersvc.users_user.is_active = 0",
         "INSERT INTO usersvc.authtoken_token VALUES (1)",
         "REPLACE INTO usersvc.users_user SELECT 1",
         "LOAD DATA INFILE 'x' INTO TABLE usersvc.users_user",
         "WITH x AS (SELECT 1) DELETE FROM usersvc.users_user",
         "SET STATEMENT max_statement_time = 1 FOR TRUNCATE usersvc.users_user",
         "ANALYZE UPDATE usersvc.users_user SET first_name = 'x'",
         "ANALYZE FORMAT=JSON DELETE FROM usersvc.users_user"],
    )  # fmt: skip
    def test_our_table_qualified_is_ours_from_any_default_database(self, statement):
        assert _ours(statement, default="otherapp")
        assert _ours(statement, default="")

    @pytest.mark.parametrize(
        "statement",
        ["TRUNCATE users_user", "TRUNCATE TABLE `authtoken_token`", "TRUNCATE .users_user",
         "UPDATE users_user SET first_name = 'x'", "DELETE u FROM users_user AS u"],
    )  # fmt: skip
    def test_an_unqualified_name_is_in_the_sessions_default_database(self, statement):
        assert _ours(statement, default="usersvc")
        assert _ours(statement, default="UsersVC")
        assert not _ours(statement, default="otherapp")
        assert not _ours(statement, default="")

    @pytest.mark.parametrize(
        "statement",
        ["TRUNCATE otherapp.users_user", "TRUNCATE `otherapp` . `users_user`",
         "TRUNCATE usersvc.users_user_old", "TRUNCATE usersvc.users", "TRUNCATE users_user_old",
         "UPDATE otherapp.users_user SET a = 1"],
    )  # fmt: skip
    def test_another_databases_table_or_another_table_is_not_ours(self, statement):
        assert not _ours(statement, default="usersvc")

    @pytest.mark.parametrize(
        "statement",
        ["CREATE TABLE users_user (id INT)", "ALTER TABLE usersvc.users_user ADD x INT",
         "DROP TABLE otherapp.t, usersvc.authtoken_token", "ANALYZE TABLE usersvc.users_user",
         "SET @users_user = 1", "BEGIN", "COMMIT", "", "   ", "/* TRUNCATE users_user */",
         "/* TRUNCATE */ CREATE TABLE usersvc.users_user (id INT)",
         "-- TRUNCATE users_user\nCREATE TABLE users_user (id INT)",
         "# TRUNCATE users_user\nCREATE TABLE users_user (id INT)",
         "`TRUNCATE` users_user", "'TRUNCATE' users_user"],
    )  # fmt: skip
    def test_only_statements_that_change_rows_count(self, statement):
        assert not _ours(statement)

    def test_leading_comments_are_skipped_to_the_first_keyword(self):
        assert _ours("  /* a */ -- b\n # c\n\t/**/TRUNCATE users_user")
        assert not _ours("/**/" * 40 + " CREATE TABLE users_user (id INT) COMMENT 'usersvc'")
        # "--" is a comment only before whitespace or a control character.
        assert _ours("--\tx\nTRUNCATE users_user") and _ours("--\nTRUNCATE users_user")

    def test_executable_comments_are_statement_text(self):
        assert _ours("/*!40000 TRUNCATE */ usersvc.users_user", default="otherapp")
        assert _ours("/*!TRUNCATE*/ users_user")
        assert _ours("/*M!100500 TRUNCATE usersvc.users_user */", default="otherapp")
        assert _ours("TRUNCATE /*!40000 usersvc . */ users_user", default="otherapp")
        assert _ours("TRUNCATE /*!40000 /* a comment */ usersvc.users_user */")
        # Its */ ends it, not the statement: what follows is read too.
        assert _ours("/*!40000 TRUNCATE */ /*!40000 usersvc */ . users_user", default="x")

    def test_a_skipped_executable_comment_arrives_as_a_plain_comment(self):
        """The server writes a versioned comment it skipped with a space for its
        "!", and a comment nested in it as (*...*): only the first */ ends it."""
        assert not _ours("TRUNCATE t /* 99999 (* x *) , usersvc.users_user */", default="x")
        assert not _ours("TRUNCATE t /*M 999999 , usersvc.users_user */", default="x")
        assert not _ours("/* 99999 TRUNCATE */ CREATE TABLE usersvc.users_user (id INT)")

    def test_mysql_reads_mariadb_comments_as_plain_comments(self):
        mysql = statements.WatchedTables(database="usersvc", tables=OURS.tables, mariadb=False)
        statement = "/*M!100500 TRUNCATE usersvc.users_user */ CREATE TABLE t (id INT)"

        assert _ours(statement, default="x")
        assert not mysql.unlisted_change(statement, default_database="x", sql_mode=0)
        assert mysql.unlisted_change(
            "/*!80000 TRUNCATE usersvc.users_user */", default_database="x", sql_mode=0
        )

    def test_names_in_strings_and_comments_are_not_names(self):
        assert not _ours("TRUNCATE t /* usersvc.users_user */", default="x")
        assert not _ours("TRUNCATE t -- usersvc.users_user", default="x")
        assert not _ours("TRUNCATE t # usersvc.users_user", default="x")
        assert not _ours("UPDATE t SET a = 'usersvc.users_user'", default="x")
        assert not _ours("UPDATE t SET a = 'it''s usersvc.users_user'", default="x")
        assert not _ours('UPDATE t SET a = "usersvc"."users_user"', default="x")
        assert not _ours("UPDATE t SET a = 2 */* usersvc.users_user */ 3", default="x")
        assert not _ours("UPDATE `t``usersvc`.`users_user` SET a = 1", default="x")

    def test_quoting_follows_the_sessions_sql_mode(self):
        quoted = 'TRUNCATE "usersvc"."users_user"'
        assert _ours(quoted, default="x", sql_mode=ANSI_QUOTES)
        assert not _ours(quoted, default="x")
        escaped = r"UPDATE t SET a = 'C:\', b = 1 WHERE id IN (SELECT id FROM usersvc.users_user)"
        assert not _ours(escaped, default="x")  # the string goes on past \'
        assert _ours(escaped, default="x", sql_mode=NO_BACKSLASH_ESCAPES)

    def test_a_database_name_with_quotes_in_it(self):
        odd = statements.WatchedTables(database="a`b", tables=["users_user"], mariadb=True)

        assert odd.unlisted_change("TRUNCATE `a``b`.users_user", default_database="x", sql_mode=0)
        assert not odd.unlisted_change("TRUNCATE `a`.users_user", default_database="x", sql_mode=0)


def _lines_run(call: Callable[[], object]) -> int:
    """Lines of users/binlog/statements.py run by ``call``: a count, not a time, so
    the machine's load does not change it."""
    count = 0

    def in_module(frame, event, _arg):
        nonlocal count
        count += event == "line"
        return in_module

    def on_call(frame, _event, _arg):
        return in_module if frame.f_code.co_filename == statements.__file__ else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count


# Shapes that make a scanner work per character: runs of comments, executable
# comments opened and closed, dots and names that qualify each other, quoted names
# and strings with doubled quotes and escapes, both kinds of line comment, "--"
# that is arithmetic; and statements left open at the end.
_BODY = (
    "/**/ /*!40000 a */ . . otherapp . users_user `x``y` . 'a''b\\'c' \"d\" -- e\n"
    "#f\n --g ,;()*/ 5--3 usersvc.`users_user_old` @v /* 99999 (* *) */ "
)
_SHAPES = {
    "leading comments": ("", "/**/", " CREATE TABLE users_user (id INT) COMMENT 'usersvc'"),
    "a statement body": ("TRUNCATE otherapp.users_user ", _BODY, ""),
    "an open string": ("UPDATE usersvc.t SET a = 'users_user", "\\\\''", ""),
    "comment marks run together": ("TRUNCATE otherapp.users_user usersvc /*", "*/*", ""),
    "an open name": ("TRUNCATE otherapp.users_user usersvc `", "``", ""),
}


class TestStatementsInLinearTime:
    """Every statement of every database is classified, so a statement's cost must
    grow with its length and no faster, whatever it holds."""

    @pytest.mark.parametrize("shape", _SHAPES)
    def test_a_megabyte_costs_a_hundred_times_ten_kilobytes(self, shape):
        """Lines run are counted, not timed. The C calls between them are linear
        too: str.find and startswith from the current position, and regular
        expressions pinned by the next test."""
        head, unit, tail = _SHAPES[shape]
        repeats = -(-10_000 // len(unit))  # at least 10 kB, and so at least 1 MB
        small = head + unit * repeats + tail
        large = head + unit * (100 * repeats) + tail

        lines_small = _lines_run(lambda: _ours(small, default="otherapp"))
        lines_large = _lines_run(lambda: _ours(large, default="otherapp"))

        assert lines_small > len(small) // 100  # the statement was read, not dropped
        assert lines_large <= 100 * lines_small, (lines_small, lines_large)

    def test_every_regular_expression_is_one_character_class_repeated(self):
        """Such an expression matches or stops at each character without going
        back, so no statement makes it slow, as (?:/\\*.*?\\*/\\s*)* did."""
        found = {}
        for module in (statements, follower_module):
            for name, value in vars(module).items():
                values = value.values() if isinstance(value, dict) else [value]
                for pattern in values:
                    if isinstance(pattern, re.Pattern):
                        found[f"{module.__name__}.{name}"] = pattern.pattern

        assert found
        shape = re.compile(r"\[\^?(?:\\.|[^\]\\])+\][*+]")
        assert {name: p for name, p in found.items() if not shape.fullmatch(p)} == {}
