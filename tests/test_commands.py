"""The cache commands end to end against the real stores: their output, and (run as
``manage.py`` processes) their exit codes and one-line errors."""

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from tests.conftest import cached_entry, redis_environment
from users import reads
from users.cache import keys
from users.models import User

ROOT = Path(__file__).resolve().parent.parent
IDS = [5, 600, 7_000_000, 80_000_000_000]


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
        with pytest.raises(CommandError, match="--batch-size is at most 10000"):
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
        output = _run("flush_user_cache", "--all")
        assert output.startswith(f"Removed 4 keys ({FOUR_USERS}).")
        assert _cached_ids(redis_client) == set()
        assert all(redis_client.exists(key) for key in other_keys)

    def test_ids(self, users, redis_client):
        _run("warm_user_cache", "--all")
        output = _run("flush_user_cache", "--ids", "5", "600")
        assert output == f"Removed 2 keys ({FOUR_USERS.replace('4', '2')}).\n"
        assert _cached_ids(redis_client) == set(IDS[2:])


class TestCheckUserCache:
    def test_a_faithful_cache_passes(self, users):
        _run("warm_user_cache", "--all")
        assert _run("check_user_cache", "--all") == (
            "Checked 4 cached users: 0 stale, 0 orphaned, 0 malformed. No problems.\n"
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
            "Checked 4 cached users: 1 stale, 1 orphaned, 0 malformed. "
            "Run with --fix to repair them."
        ]
        fixed = _run("check_user_cache", "--all", "--fix")
        assert fixed.endswith("1 stale, 1 orphaned, 0 malformed; fixed 2.\n")
        assert reads.user_get(user_id=5).value["last_name"] == "changed-behind-the-cache"
        assert _run("check_user_cache").endswith("No problems.\n")

    def test_at_verbosity_1_a_long_list_is_cut(self, users, redis_client):
        for user_id in range(100, 125):
            redis_client.set(keys.user_key(user_id), "junk", ex=60)
        out = io.StringIO()
        with pytest.raises(SystemExit):
            call_command("check_user_cache", "--all", stdout=out)
        lines = out.getvalue().splitlines()
        assert len(lines) == 22
        assert lines[20] == "... and 5 more (-v 2 lists them all)"


# As processes: exit codes, one-line errors, the progress bar on a terminal.


def _environment(**overrides: str) -> dict[str, str]:
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


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("command", "arguments", "message"),
    [
        ("warm_user_cache", [], "one of the arguments --all --ids --since is required"),
        ("warm_user_cache", ["--ids", "x"], "argument --ids: 'x' is not a whole number"),
        (
            "flush_user_cache",
            ["--all", "--ids", "1"],
            "argument --ids: not allowed with argument --all",
        ),
        ("check_user_cache", ["--sample", "0"], "argument --sample: '0' is not 1 or more"),
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


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("warm_user_cache", ["--all"]),
        ("flush_user_cache", ["--ids", "1"]),
        ("check_user_cache", ["--all"]),
    ],
)
@pytest.mark.parametrize(
    ("store", "environment"),
    [
        ("Redis", {"REDIS_URL": "redis://127.0.0.1:1/0"}),
        ("MySQL", {"DATABASE_URL": "mysql://root@127.0.0.1:1/nowhere"}),
    ],
)
def test_an_unreachable_store_gives_one_line_and_exit_1(
    command, arguments, store, environment, stored_user
):
    result = _manage(command, *arguments, **environment)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"CommandError: {store} is unavailable: ")


def test_flushing_everything_needs_no_mysql(stored_user, redis_client):
    result = _manage("flush_user_cache", "--all", DATABASE_URL="mysql://root@127.0.0.1:1/x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Removed 1 keys (1 user entries")


def test_check_exits_1_on_problems_and_0_once_fixed(transactional_db, redis_client):
    User.objects.create(id=42, username="drifted", email="drifted@x.io")
    _run("warm_user_cache", "--all")
    User.objects.filter(pk=42).update(first_name="changed-behind-the-cache")

    found = _manage("check_user_cache", "--all")
    fixed = _manage("check_user_cache", "--all", "--fix")
    clean = _manage("check_user_cache", "--all")

    assert found.returncode == 1
    assert "stale" in found.stdout and "Run with --fix" in found.stdout
    assert (fixed.returncode, clean.returncode) == (0, 0)
    assert clean.stdout.endswith("No problems.\n")


def test_warm_shows_a_progress_bar_on_a_terminal(transactional_db, redis_client):
    User.objects.bulk_create(
        [User(id=user_id, username=f"p{user_id}", email=f"p{user_id}@x.io") for user_id in IDS]
    )
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "warm_user_cache", "--all", "--batch-size", "1"],
            cwd=ROOT,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        summary, _ = process.communicate(timeout=60)
        os.close(terminal)
        terminal = None
        screen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)

    assert process.returncode == 0
    assert b"100%" in screen and b"4/4" in screen
    assert summary.startswith("Warmed 4 users in ")
