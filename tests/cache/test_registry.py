"""The registry of cached kinds: adding a kind is one registration, and every path
that reads, changes or flushes the cache follows it without another line.

The kind registered here lives in this module only: no production module names
it. It caches each user's initial (the first letter of the first name), keyed by
the user's id and made from the ``first_name`` column.
"""

import time

import pytest
from django_redis import get_redis_connection

from tests.helpers import follower_environment, insert_user_row
from tests.servers import BinlogFollower, project_python
from users import services
from users.cache import kinds
from users.cache.flush import cache_flush
from users.cache.kinds import CachedKind, Codec, MadeFrom
from users.cache.readthrough import Source, read_through
from users.models import User

INITIAL = "c"


def register_initials() -> CachedKind:
    """The throwaway kind: what a module adding a kind writes, and nothing else."""
    return kinds.register(
        CachedKind(
            name="initial",
            codec=Codec(fields=frozenset({INITIAL})),
            load=lambda ids: {
                user_id: {INITIAL: first_name[:1]}
                for user_id, first_name in User.objects.filter(id__in=ids).values_list(
                    "id", "first_name"
                )
            },
            ttl=lambda: 60,
            absent_ttl=lambda: 5,
            near=True,
            sources={
                User: MadeFrom(
                    columns=frozenset({"first_name"}),
                    idents=lambda changes: [i for change in changes for i in change.values("id")],
                )
            },
        )
    )


@pytest.fixture
def initials():
    kind = register_initials()
    yield kind
    kinds.unregister(kind.name)


@pytest.fixture
def ada(make_user) -> User:
    return make_user(username="ada", email="ada@example.com", first_name="Ada")


def _read(kind: CachedKind, user_id: int):
    return read_through(kind, [user_id])[user_id]


def _held(kind: CachedKind, user_id: int) -> bool:
    return bool(get_redis_connection("default").exists(kind.key(user_id)))


class TestAKindRegisteredInATest:
    def test_is_read_through_the_cache(self, initials, ada, django_assert_num_queries):
        with django_assert_num_queries(1):
            first = _read(initials, ada.id)
        with django_assert_num_queries(0):
            second = _read(initials, ada.id)

        assert (first.source, first.entry[INITIAL]) == (Source.MISS, "A")
        assert (second.source, second.entry[INITIAL]) == (Source.HIT, "A")

    def test_is_dropped_by_a_write_through_the_services(
        self, initials, ada, django_capture_on_commit_callbacks
    ):
        _read(initials, ada.id)
        with django_capture_on_commit_callbacks(execute=True):
            services.user_update(actor=None, user_id=ada.id, data={"first_name": "Grace"})

        assert not _held(initials, ada.id)
        assert _read(initials, ada.id).entry[INITIAL] == "G"

    def test_is_dropped_by_a_save_any_code_makes(
        self, initials, ada, django_capture_on_commit_callbacks
    ):
        _read(initials, ada.id)
        user = User.objects.get(pk=ada.id)
        user.first_name = "Hedy"
        with django_capture_on_commit_callbacks(execute=True):
            user.save()

        assert _read(initials, ada.id).entry[INITIAL] == "H"

    def test_is_left_alone_by_a_change_of_a_column_it_does_not_read(
        self, initials, ada, django_capture_on_commit_callbacks
    ):
        _read(initials, ada.id)
        with django_capture_on_commit_callbacks(execute=True):
            services.user_update(actor=None, user_id=ada.id, data={"last_name": "Lovelace"})

        assert _held(initials, ada.id)

    def test_is_flushed(self, initials, ada):
        _read(initials, ada.id)

        report = cache_flush(model=User, pks=[ada.id])

        assert report.matched["initial"] == 1
        assert not _held(initials, ada.id)

    def test_is_held_by_the_near_cache(self, initials, ada, redis_round_trips):
        _read(initials, ada.id)
        redis_round_trips.reset()

        assert _read(initials, ada.id).source is Source.HIT
        assert redis_round_trips.count == 0


class FollowerWithInitials(BinlogFollower):
    """``follow_binlog`` in a process that registered the throwaway kind first, as a
    deployment's own kind would be registered by its app."""

    def command(self) -> list[str]:
        return [
            project_python(), "-c",
            "import django; django.setup();"
            " from tests.cache.test_registry import register_initials; register_initials();"
            " from django.core.management import call_command; call_command('follow_binlog')",
        ]  # fmt: skip


def test_a_kind_registered_in_a_test_is_dropped_by_the_binlog_follower(
    initials, mariadb, sql, tmp_path
):
    """A change made in SQL, which no signal sees, reaches the kind's entries through
    the follower, which derives what to drop from the registry."""
    user_id = insert_user_row(sql, first_name="Ada")
    sql.execute("DELETE FROM users_binlog_position")
    follower = FollowerWithInitials(tmp_path, follower_environment(mariadb))
    follower.start()
    try:
        redis = get_redis_connection("default")
        redis.hset(initials.key(user_id), INITIAL, "A")
        sql.execute("UPDATE users_user SET first_name = 'Grace' WHERE id = %s", [user_id])
        deadline = time.monotonic() + 30
        while redis.exists(initials.key(user_id)):
            assert time.monotonic() < deadline, follower.log()
            time.sleep(0.01)
    finally:
        follower.stop()
