"""The cache commands end to end against the real stores: their output, and (run as
``manage.py`` processes) their exit codes and one-line errors."""

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.authtoken.models import Token

from tests.helpers import (
    cached_entry,
    command_environment,
    manage_py,
    one_server_caches,
)
from tests.servers import RedisServer
from users import lookups, reads
from users.cache import keys, kinds
from users.cache.readthrough import read_through
from users.models import User
from users.tokens import TOKENS, TokenRef

ROOT = Path(__file__).resolve().parents[2]
IDS = [5, 600, 7_000_000, 80_000_000_000]


@pytest.fixture
def own_redis(tmp_path, settings):
    """A Redis of the test's own: every key in it is the test's, so that a count of
    its keys is the test's to decide."""
    server = RedisServer(tmp_path)
    server.start()
    settings.CACHES = one_server_caches(server.url)
    yield server
    server.stop()


@pytest.fixture
def users(db) -> list[User]:
    return User.objects.bulk_create(
        [User(id=user_id, username=f"c{user_id}", email=f"c{user_id}@x.io") for user_id in IDS]
    )


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _cached_ids(redis_client) -> set[int]:
    return {user_id for user_id in IDS if redis_client.exists(keys.user_key(user_id))}


class TestWarmUserCache:
    def test_all_warms_everyone_and_prints_one_summary_line(self, users, redis_client):
        output = _run("warm_user_cache", "--all", "--batch-size", "3")

        assert _cached_ids(redis_client) == set(IDS)
        [line] = output.splitlines()
        assert line.startswith("Warmed 4 users in ")
        assert " users/s): 4 cached, 0 cached as absent, 0 already cached, 0 changed" in line

    def test_ids_cache_unknown_ids_as_absent(self, users, redis_client):
        output = _run("warm_user_cache", "--ids", "5", "999")
        assert "1 cached, 1 cached as absent" in output
        assert cached_entry(redis_client, 999)["absent"] == "1"

    def test_missing_only_and_since(self, users, redis_client):
        _run("warm_user_cache", "--ids", "5")
        output = _run("warm_user_cache", "--since", "2000-01-01", "--missing-only")
        assert "3 cached, 0 cached as absent, 1 already cached" in output

    def test_verbosity_0_prints_nothing_and_2_reports_each_batch(self, users):
        assert _run("warm_user_cache", "--all", "-v", "0") == ""
        lines = _run("warm_user_cache", "--all", "--batch-size", "2", "-v", "2").splitlines()
        assert lines[0].startswith("2 users so far, ")
        assert lines[1].startswith("4 users so far, ")
        assert lines[2].startswith("Warmed 4 users")

    def test_too_large_a_batch_is_refused(self, users):
        with pytest.raises(CommandError, match="'10001' is not between 1 and 10000"):
            _run("warm_user_cache", "--all", "--batch-size", "10001")


# What a flush reports of four user entries, kind by kind.
FOUR_USERS = "4 user entries, 0 token entries, 0 username entries, 0 email entries, 0 leases"


class TestFlushUserCache:
    @pytest.fixture
    def other_keys(self, redis_client) -> list[str]:
        keys = [
            f"{settings.TEST_RUN_PREFIX}-otherapp:v1:user:{{5}}",
            f"{settings.TEST_RUN_PREFIX}:v1:throttle:user:{{5}}",
        ]
        for key in keys:
            redis_client.set(key, "1", ex=60)
        return keys

    def test_dry_run_reports_and_keeps_everything(self, users, redis_client, other_keys):
        _run("warm_user_cache", "--all")
        output = _run("flush_user_cache", "--all", "--dry-run")
        assert output == (
            f"Would remove 4 keys ({FOUR_USERS}). "
            f"Kept 1 other keys under {settings.TEST_RUN_PREFIX}:.\n"
        )
        assert _cached_ids(redis_client) == set(IDS)

    def test_all_removes_only_this_projects_entries(self, users, redis_client, other_keys):
        _run("warm_user_cache", "--all")
        output = _run("flush_user_cache", "--all", "--no-input")
        assert output.startswith(f"Removed 4 keys ({FOUR_USERS}).")
        assert _cached_ids(redis_client) == set()
        assert all(redis_client.exists(key) for key in other_keys)

    def test_ids(self, users, redis_client):
        _run("warm_user_cache", "--all")
        output = _run("flush_user_cache", "--ids", "5", "600")
        assert output == f"Removed 2 keys ({FOUR_USERS.replace('4', '2')}).\n"
        assert _cached_ids(redis_client) == set(IDS[2:])


# What a check reports it examined of four user entries, kind by kind.
FOUR_USER_ENTRIES = "4 user, 0 token, 0 username, 0 email"


class TestCheckUserCache:
    def test_a_faithful_cache_passes(self, users):
        _run("warm_user_cache", "--all")
        assert _run("check_user_cache", "--all") == (
            f"Checked 4 cached entries ({FOUR_USER_ENTRIES}): 0 stale, 0 orphaned, 0 malformed."
            " No problems.\n"
        )

    def test_problems_are_listed_and_exit_1_until_fixed(self, users, redis_client):
        _run("warm_user_cache", "--all")
        User.objects.filter(pk=5).update(last_name="changed-behind-the-cache")
        User.objects.filter(pk=600).delete()
        out = io.StringIO()

        with pytest.raises(SystemExit) as exit_info:
            call_command("check_user_cache", "--sample", "100", stdout=out)

        assert exit_info.value.code == 1
        lines = out.getvalue().splitlines()
        assert sorted(lines[:2]) == [  # in SCAN's order
            f"orphaned  {keys.user_key(600)}: the user no longer exists",
            f"stale     {keys.user_key(5)}: differs from MySQL in last_name",
        ]
        assert lines[2:] == [
            f"Checked 4 cached entries ({FOUR_USER_ENTRIES}): 1 stale, 1 orphaned, 0 malformed. "
            "Run with --fix to repair them."
        ]
        fixed = _run("check_user_cache", "--all", "--fix")
        assert fixed.endswith("1 stale, 1 orphaned, 0 malformed; fixed 2.\n")
        assert reads.user_get(user_id=5).value["last_name"] == "changed-behind-the-cache"
        assert _run("check_user_cache").endswith("No problems.\n")

    def test_a_sample_says_of_how_many_entries(self, users, own_redis):
        _run("warm_user_cache", "--all")

        assert _run("check_user_cache", "--sample", "3") == (
            "Checked a sample of 3 of 4 cached entries (3 user, 0 token, 0 username, 0 email):"
            " 0 stale, 0 orphaned, 0 malformed. No problems.\n"
        )
        assert _run("check_user_cache", "--sample", "4").startswith(
            f"Checked 4 cached entries ({FOUR_USER_ENTRIES}): "
        )

    def test_the_count_of_a_large_database_is_an_estimate(self, users, own_redis):
        """Past what a few SCAN pages go over, the entries are counted from a sample:
        other applications' keys make up most of this database."""
        _run("warm_user_cache", "--all")
        others = own_redis.client()
        with others.pipeline(transaction=False) as pipe:
            for number in range(30_000):
                pipe.set(f"otherapp:{number}", "1")
            pipe.execute()

        output = _run("check_user_cache", "--sample", "1")

        assert re.fullmatch(
            r"Checked a sample of 1 of about \d+ cached entries \(1 user, 0 token, 0 username,"
            r" 0 email\): 0 stale, 0 orphaned, 0 malformed\. No problems\.\n",
            output,
        ), output

    def test_every_kind_is_held_to_its_form(self, users, redis_client):
        """Names and tokens have no row to compare with, but an entry their codec
        refuses is reported, and deleted by --fix; well-formed ones stay."""
        _run("warm_user_cache", "--all")
        token = Token.objects.create(user_id=5)
        read_through(TOKENS, [TokenRef.of(token.key)])
        lookups.user_by(field="username", value="c600")
        lookups.user_by(field="email", value="c600@x.io")
        username, email = kinds.get("username"), kinds.get("email")
        good = [
            TOKENS.key(TokenRef.of(token.key)),
            username.key("c600"),
            email.key("c600@x.io"),
        ]
        expiry = str(int(time.time()) + 60)
        # Another token's entry copied under a name of an attacker's choosing.
        copied = TOKENS.key(TokenRef.of("f" * 40))
        bad = {
            username.key("nobody"): "a value or the expiry is not one this service writes",
            username.key("junk"): "a string, not a hash",
            email.key("nobody@x.io"): "no expiry field",
            copied: "a value or the expiry is not one this service writes",
        }
        redis_client.hset(username.key("nobody"), mapping={"i": "not-an-id", "z": expiry})
        redis_client.set(username.key("junk"), "junk")
        redis_client.hset(email.key("nobody@x.io"), "i", "5")
        redis_client.hset(copied, mapping=redis_client.hgetall(good[0]))
        for key in bad:
            redis_client.expire(key, 60)
        out = io.StringIO()

        with pytest.raises(SystemExit):
            call_command("check_user_cache", "--all", stdout=out)

        *problems, summary = out.getvalue().splitlines()
        assert sorted(problems) == sorted(
            f"malformed {key}: {detail}" for key, detail in bad.items()
        )
        assert summary == (
            "Checked 11 cached entries (4 user, 2 token, 3 username, 2 email): 0 stale,"
            " 0 orphaned, 4 malformed. Run with --fix to repair them."
        )
        assert _run("check_user_cache", "--all", "--fix").endswith("; fixed 4.\n")
        assert [key for key in bad if redis_client.exists(key)] == []
        assert all(redis_client.exists(key) for key in good)
        assert _run("check_user_cache", "--all").endswith("No problems.\n")

    def test_at_verbosity_1_a_long_list_is_cut(self, users, redis_client):
        for user_id in range(100, 125):
            redis_client.set(keys.user_key(user_id), "junk", ex=60)
        out = io.StringIO()
        with pytest.raises(SystemExit):
            call_command("check_user_cache", "--all", stdout=out)
        lines = out.getvalue().splitlines()
        assert len(lines) == 22
        assert lines[20] == "... and 5 more (-v 2 lists them all)"


# As processes: exit codes, one-line errors, what a terminal shows and asks.


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return manage_py(command_environment(**env), *args, timeout=60)


def _on_terminal(*args: str, answer: str | None = None, **env: str) -> tuple[int, str]:
    """Runs ``manage.py`` with stdin, stdout and stderr on a terminal of 100 columns,
    as a person at a shell would (without colours); types ``answer`` when it asks for
    confirmation. Returns the exit code and everything the terminal showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=command_environment(DJANGO_COLORS="nocolor", **env),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], max(deadline - time.monotonic(), 0))
            assert ready, f"manage.py {' '.join(args)} still runs after 60 s: {screen!r}"
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            screen += chunk
            if answer is not None and b"Type 'yes'" in screen:
                os.write(controller, f"{answer}\n".encode())
                answer = None
        return process.wait(timeout=60), screen.decode(errors="replace").replace("\r\n", "\n")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()


# What argparse says of an id out of range, and of an option next to its alternative.
NOT_AN_ID = f"is not between 1 and {2**63 - 1}"
NOT_WITH = "not allowed with argument"


@pytest.mark.parametrize(
    ("command", "arguments", "message"),
    [
        ("warm_user_cache", [], "one of the arguments --all --ids --since is required"),
        ("warm_user_cache", ["--ids", "x"], "argument --ids: 'x' is not a whole number"),
        ("warm_user_cache", ["--ids", "0"], f"argument --ids: '0' {NOT_AN_ID}"),
        ("warm_user_cache", ["--ids", str(2**63)], f"argument --ids: '{2**63}' {NOT_AN_ID}"),
        ("warm_user_cache", ["--all", "--ids", "1"], f"argument --ids: {NOT_WITH} --all"),
        (
            "warm_user_cache",
            ["--all", "--batch-size", "999999"],
            "argument --batch-size: '999999' is not between 1 and 10000",
        ),
        (
            "warm_user_cache",
            ["--all", "--batch-size", "0"],
            "argument --batch-size: '0' is not between 1 and 10000",
        ),
        (
            "warm_user_cache",
            ["--since", "yesterday"],
            "argument --since: 'yesterday' is not a date (2024-05-31) or date and time"
            " (2024-05-31T12:00)",
        ),
        ("flush_user_cache", [], "one of the arguments --all --ids is required"),
        ("flush_user_cache", ["--all", "--ids", "1"], f"argument --ids: {NOT_WITH} --all"),
        ("flush_user_cache", ["--ids", "-3"], f"argument --ids: '-3' {NOT_AN_ID}"),
        ("check_user_cache", ["--sample", "0"], "argument --sample: '0' is not 1 or more"),
        ("check_user_cache", ["--sample", "x"], "argument --sample: 'x' is not a whole number"),
        ("check_user_cache", ["--all", "--sample", "5"], f"argument --sample: {NOT_WITH} --all"),
        ("unlock_login", ["--username", " "], "argument --username: ' ' names no account"),
        ("follow_binlog", ["--check", "--from-end"], f"argument --from-end: {NOT_WITH} --check"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(command, arguments, message, db):
    result = _manage(command, *arguments)

    assert result.returncode == 2
    assert result.stderr == f"manage.py {command}: error: {message} (see --help)\n"


@pytest.fixture
def stored_user(transactional_db) -> User:
    """A user in MySQL and in the cache, so that every command reads both stores."""
    user = User.objects.create(username="stored", email="stored@x.io")
    reads.user_get(user_id=user.id)
    return user


# An error as Python prints a tuple, e.g. (2002, "Can't connect ...").
PYTHON_TUPLE = re.compile(r"\(\d+, ['\"]")


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("warm_user_cache", ["--all"]),
        ("flush_user_cache", ["--ids", "1"]),
        ("check_user_cache", ["--all"]),
        ("unlock_login", ["--username", "someone"]),
    ],
)
@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"REDIS_URL": "redis://127.0.0.1:1/0"},
         "Redis is unavailable at redis://127.0.0.1:1/0: ConnectionError: "),
        ({"DATABASE_URL": "mysql://root@127.0.0.1:1/nowhere"},
         "MySQL is unavailable at 127.0.0.1:1 (database nowhere): Can't connect"),
    ],
    ids=["Redis", "MySQL"],
)  # fmt: skip
def test_an_unreachable_store_gives_one_line_and_exit_1(
    command, arguments, environment, message, stored_user
):
    """What failed and where, in words: no Python tuple, no traceback."""
    result = _manage(command, *arguments, **environment)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"CommandError: {message}"), result.stderr
    assert not PYTHON_TUPLE.search(result.stderr), result.stderr


def test_a_database_mysql_does_not_know_is_named(db):
    database = connection.settings_dict
    result = _manage(
        "warm_user_cache",
        "--all",
        DATABASE_URL=f"mysql://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:"
        f"{database['PORT'] or 3306}/no_such_database_here",
    )

    assert result.returncode == 1
    assert result.stderr == (
        f"CommandError: MySQL is unavailable at {database['HOST']}:{database['PORT'] or 3306}"
        " (database no_such_database_here): Unknown database 'no_such_database_here'"
        " (MySQL error 1049)\n"
    )


@pytest.mark.parametrize(
    "command", [("warm_user_cache", "--all"), ("unlock_login", "--username", "admin")]
)
def test_a_database_without_the_tables_is_named(transactional_db, command):
    """A query MySQL refuses (here: no table, migrate was not run) is one line too,
    for every command that reads MySQL (unlock_login failed on the previous main:
    a TypeError's traceback, the collation's query finding no column)."""
    database = connection.settings_dict
    empty = f"test_usersvc_empty_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{empty}`")
    try:
        result = _manage(
            *command,
            DATABASE_URL=f"mysql://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:"
            f"{database['PORT'] or 3306}/{empty}",
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE `{empty}`")

    assert result.returncode == 1, result.stderr
    where = f"{database['HOST']}:{database['PORT'] or 3306} (database {empty})"
    assert result.stderr.startswith(f"CommandError: MySQL at {where} refused a query: Table ")
    assert f"'{empty}.users_user' " in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_redis_password_is_never_shown(settings, db):
    settings.CACHES = one_server_caches("redis://usersvc:s3cret@127.0.0.1:1/0")

    with pytest.raises(CommandError) as failed:
        _run("check_user_cache")

    assert str(failed.value).startswith("Redis is unavailable at redis://127.0.0.1:1/0: ")
    assert "s3cret" not in str(failed.value)


def test_flushing_everything_needs_no_mysql(stored_user, redis_client):
    # Without the lease the create's fill keeps until it expires: one key, whenever.
    redis_client.delete(keys.lease_key(keys.user_key(stored_user.id)))
    result = _manage(
        "flush_user_cache", "--all", "--no-input", DATABASE_URL="mysql://root@127.0.0.1:1/x"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Removed 1 keys (1 user entries")


class TestFlushConfirmation:
    """--all asks on a terminal, as Django's flush does; scripts say --no-input."""

    @pytest.fixture
    def cached(self, transactional_db, own_redis) -> list[str]:
        User.objects.bulk_create(
            [User(id=user_id, username=f"f{user_id}", email=f"f{user_id}@x.io") for user_id in IDS]
        )
        _run("warm_user_cache", "--all")
        return [keys.user_key(user_id) for user_id in IDS]

    def test_yes_on_a_terminal_removes_everything(self, cached, own_redis):
        code, screen = _on_terminal(
            "flush_user_cache", "--all", answer="yes", REDIS_URL=own_redis.url
        )

        assert code == 0, screen
        assert (
            f"This will remove 4 keys ({FOUR_USERS}) under {settings.TEST_RUN_PREFIX}: from Redis"
            f" at {own_redis.url}. Other keys stay; reads fill the entries again from MySQL.\n"
            "Type 'yes' to continue, or 'no' to cancel: yes\n"
            f"Removed 4 keys ({FOUR_USERS}).\n"
        ) in screen
        assert not any(own_redis.client().exists(key) for key in cached)

    @pytest.mark.parametrize("answer", ["no", "y", ""])
    def test_anything_but_yes_cancels(self, cached, own_redis, answer):
        code, screen = _on_terminal(
            "flush_user_cache", "--all", answer=answer, REDIS_URL=own_redis.url
        )

        assert code == 0, screen
        assert screen.endswith("Flush cancelled.\n")
        assert all(own_redis.client().exists(key) for key in cached)

    def test_without_a_terminal_it_refuses_and_removes_nothing(self, cached, own_redis):
        result = _manage("flush_user_cache", "--all", REDIS_URL=own_redis.url)

        assert result.returncode == 1
        assert result.stderr == (
            "CommandError: flush_user_cache --all asks for confirmation and there is no terminal"
            " to ask on: add --no-input to flush without asking.\n"
        )
        assert all(own_redis.client().exists(key) for key in cached)

    @pytest.mark.parametrize("flag", ["--no-input", "--noinput"])
    def test_no_input_flushes_without_asking(self, cached, own_redis, flag):
        code, screen = _on_terminal("flush_user_cache", "--all", flag, REDIS_URL=own_redis.url)

        assert code == 0, screen
        assert screen == f"Removed 4 keys ({FOUR_USERS}).\n"

    @pytest.mark.parametrize(
        "arguments", [["--ids", "5", "600"], ["--all", "--dry-run"]], ids=["ids", "dry-run"]
    )
    def test_ids_and_dry_runs_ask_nothing(self, cached, own_redis, arguments):
        result = _manage("flush_user_cache", *arguments, REDIS_URL=own_redis.url)

        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(("Removed 2 keys", "Would remove 4 keys"))


def test_check_exits_1_on_problems_and_0_once_fixed(transactional_db, redis_client):
    User.objects.create(id=42, username="drifted", email="drifted@x.io")
    _run("warm_user_cache", "--all")
    User.objects.filter(pk=42).update(first_name="changed-behind-the-cache")

    found = _manage("check_user_cache", "--all")
    fixed = _manage("check_user_cache", "--all", "--fix")
    clean = _manage("check_user_cache", "--all")

    assert found.returncode == 1
    assert "stale" in found.stdout and "Run with --fix" in found.stdout
    assert found.stderr == ""  # no terminal: no progress bar
    assert (fixed.returncode, clean.returncode) == (0, 0)
    assert clean.stdout.endswith("No problems.\n")


@pytest.mark.parametrize(
    ("arguments", "done"),
    [
        (["warm_user_cache", "--all", "--batch-size", "1"], "Warmed 4 users in "),
        (["check_user_cache", "--all"], "Checked 4 cached entries "),
    ],
    ids=["warm", "check"],
)
def test_a_terminal_shows_a_progress_bar(transactional_db, redis_client, arguments, done):
    User.objects.bulk_create(
        [User(id=user_id, username=f"p{user_id}", email=f"p{user_id}@x.io") for user_id in IDS]
    )
    _run("warm_user_cache", "--all")

    code, screen = _on_terminal(*arguments)

    assert code == 0, screen
    assert "100%" in screen and "4/4" in screen
    assert done in screen
