"""Warm, flush and check (users.maintenance) against the real MySQL and Redis."""

import datetime

import pytest
from django.conf import settings
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.authtoken.models import Token

from tests.helpers import absent_marker, cached_entry, redis_nodes_holding
from users import entries, reads, services, tokens
from users.cache import flush, keys, scripts, store, transport
from users.conf import user_cache_settings
from users.maintenance import check, user_state, warm
from users.models import User
from users.tokens import token_mac

# Ids far apart, as TiDB allocates them: keyset pagination must not care.
SPARSE_IDS = [3, 70_000, 5_000_000_000, 9_000_000_000_000]


@pytest.fixture
def sparse_users(db) -> list[User]:
    return User.objects.bulk_create(
        [
            User(id=user_id, username=f"u{user_id}", email=f"u{user_id}@x.io")
            for user_id in SPARSE_IDS
        ]
    )


@pytest.fixture
def scripts_loaded(redis_client):
    """The scripts known to the server, so that round-trip counts do not include a
    NOSCRIPT answer and the load that follows it."""
    for source in (scripts.FILL, scripts.LEASE):
        redis_client.script_load(source)


def _cache_token(token: Token) -> None:
    """Caches a token's lookup, as its first request would, without the lease that
    read keeps until it expires: what a flush finds does not depend on the clock."""
    tokens.token_loaded(tokens.token_cached(key=token.key, prefetch=(), rate=None))
    get_redis_connection("default").delete(keys.lease_key(keys.token_key(token_mac(token.key))))


def _cached(redis_client, user_id: int) -> dict[str, str]:
    return cached_entry(redis_client, user_id)


class TestCacheWarm:
    def test_warms_every_user_across_id_gaps_a_batch_per_query(
        self, sparse_users, redis_client, django_assert_num_queries
    ):
        # Three keyset queries for the ids (2, 2, then none) and one load per batch.
        with django_assert_num_queries(5):
            report = warm.cache_warm(batch_size=2)

        assert (report.examined, report.filled, report.refused) == (4, 4, 0)
        for user in sparse_users:
            assert _cached(redis_client, user.id)["username"] == user.username

    def test_each_batch_costs_two_round_trips(
        self, sparse_users, scripts_loaded, redis_round_trips
    ):
        warm.cache_warm(batch_size=2)
        # Lease and fill, for each of 2 batches; on a cluster, to each node of a batch.
        batches = [SPARSE_IDS[:2], SPARSE_IDS[2:]]
        assert redis_round_trips.count == sum(
            2 * redis_nodes_holding(keys.user_key(user_id) for user_id in batch)
            for batch in batches
        )

    def test_warmed_entries_are_what_a_read_would_cache(self, sparse_users, redis_client):
        user_id = SPARSE_IDS[1]
        warm.cache_warm(user_ids=[user_id])
        warmed = _cached(redis_client, user_id)
        ttl_ms = redis_client.pttl(keys.user_key(user_id))
        store.invalidate([keys.user_key(user_id)])

        assert reads.user_get(user_id=user_id).source is reads.Source.MISS
        assert _cached(redis_client, user_id) == warmed
        assert ttl_ms > (1 - user_cache_settings.TTL_JITTER) * user_cache_settings.TTL * 1000
        assert ttl_ms <= user_cache_settings.TTL * 1000

    def test_database_and_python_agree_on_timestamps(self, sparse_users, redis_client):
        """A warm has the database convert timestamps (TIMESTAMPDIFF) and a read converts
        them in Python; both must store the same entry, to the microsecond and before 1970."""
        user_id = SPARSE_IDS[0]
        moon_landing = datetime.datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=datetime.UTC)
        User.objects.filter(pk=user_id).update(date_joined=moon_landing)
        warm.cache_warm(user_ids=[user_id])
        warmed = _cached(redis_client, user_id)
        store.invalidate([keys.user_key(user_id)])

        assert reads.user_get(user_id=user_id).source is reads.Source.MISS
        assert _cached(redis_client, user_id) == warmed
        assert reads.user_get(user_id=user_id).value["date_joined"] == (
            "1969-07-20T20:17:40.000001Z"
        )

    def test_is_then_served_as_hits(self, sparse_users, django_assert_num_queries):
        warm.cache_warm()
        with django_assert_num_queries(0):
            results = [reads.user_get(user_id=user_id) for user_id in SPARSE_IDS]
        assert {result.source for result in results} == {reads.Source.HIT}

    def test_refreshes_present_entries_unless_missing_only(self, sparse_users, redis_client):
        user_id = SPARSE_IDS[0]
        warm.cache_warm(user_ids=[user_id])
        User.objects.filter(pk=user_id).update(first_name="changed-behind-the-cache")

        skipped = warm.cache_warm(user_ids=[user_id], missing_only=True)
        assert (skipped.skipped, skipped.filled) == (1, 0)
        assert _cached(redis_client, user_id)["first_name"] == ""

        refreshed = warm.cache_warm(user_ids=[user_id])
        assert refreshed.filled == 1
        assert _cached(redis_client, user_id)["first_name"] == "changed-behind-the-cache"

    def test_missing_only_fills_what_is_missing(self, sparse_users, redis_client):
        warm.cache_warm(user_ids=SPARSE_IDS[:2])
        report = warm.cache_warm(missing_only=True)
        assert (report.examined, report.skipped, report.filled) == (4, 2, 2)

    def test_given_ids_without_a_row_are_cached_as_absent(self, sparse_users, redis_client):
        report = warm.cache_warm(user_ids=[SPARSE_IDS[0], 424242])

        assert (report.filled, report.absent) == (1, 1)
        assert _cached(redis_client, 424242) == {"absent": "1"}
        ttl_ms = redis_client.pttl(keys.user_key(424242))
        assert 0 < ttl_ms <= user_cache_settings.NEGATIVE_TTL * 1000
        assert reads.user_get(user_id=424242).value is None

    def test_since_selects_users_changed_at_or_after(self, sparse_users, redis_client):
        long_ago = timezone.now() - datetime.timedelta(days=30)
        User.objects.filter(pk__in=SPARSE_IDS[:2]).update(updated_at=long_ago)

        report = warm.cache_warm(since=timezone.now() - datetime.timedelta(days=1))

        assert report.filled == 2
        assert [bool(_cached(redis_client, user_id)) for user_id in SPARSE_IDS] == [
            False,
            False,
            True,
            True,
        ]

    def test_a_write_during_the_warm_wins(
        self, sparse_users, redis_client, monkeypatch, django_capture_on_commit_callbacks
    ):
        """The stale-set rule: a write that commits after the warm loaded the row
        revokes the lease, so the warm cannot store the older row."""
        user_id = SPARSE_IDS[0]
        load = entries.load

        def load_then_write(users):
            rows = load(users)
            with django_capture_on_commit_callbacks(execute=True):
                services.user_update(actor=None, user_id=user_id, data={"first_name": "newer"})
            return rows

        monkeypatch.setattr(entries, "load", load_then_write)
        report = warm.cache_warm(user_ids=[user_id])

        assert (report.refused, report.filled) == (1, 0)
        assert reads.user_get(user_id=user_id).value["first_name"] == "newer"

    def test_a_redis_blip_costs_a_retry_not_the_run(self, sparse_users, redis_client, monkeypatch):
        fill_many, failures = store.fill_many, []

        def fail_once(kind, token, entries, **options):
            if not failures:
                failures.append(1)
                raise transport.CacheUnavailable("TimeoutError: Timeout reading from socket")
            return fill_many(kind, token, entries, **options)

        monkeypatch.setattr(store, "fill_many", fail_once)
        report = warm.cache_warm(batch_size=2)

        assert failures and (report.examined, report.filled) == (4, 4)
        assert all(_cached(redis_client, user_id) for user_id in SPARSE_IDS)

    def test_is_idempotent(self, sparse_users, redis_client):
        warm.cache_warm()
        first = {user_id: _cached(redis_client, user_id) for user_id in SPARSE_IDS}
        warm.cache_warm()
        assert {user_id: _cached(redis_client, user_id) for user_id in SPARSE_IDS} == first

    def test_counts_what_it_will_go_through(self, sparse_users):
        assert warm.cache_warm_count() == 4
        assert warm.cache_warm_count(user_ids=[1, 1, 2]) == 2


@pytest.fixture
def foreign_keys(redis_client):
    """Keys another application keeps in the same Redis, and this project's own keys
    that are not cache entries: a flush must leave every one of them."""
    prefix = settings.TEST_RUN_PREFIX
    keys = {
        f"{prefix}-otherapp:v1:user:{{1}}": "theirs",
        f"{prefix}_v1:user:{{1}}": "theirs",
        f"{prefix}:v1:throttle:user:{{1}}": "7",
        f"{prefix}:1:django-cache-entry": "ours, not a user entry",
    }
    for key, value in keys.items():
        redis_client.set(key, value, ex=60)
    return keys


class TestCacheFlush:
    def test_all_removes_entries_leases_and_token_lookups_only(
        self, sparse_users, redis_client, foreign_keys
    ):
        token = Token.objects.create(user=sparse_users[0])
        warm.cache_warm()
        _cache_token(token)
        redis_client.set(keys.lease_key(keys.user_key(1)), "t", px=60_000)
        redis_client.hset(f"{settings.TEST_RUN_PREFIX}:v0:user:{{9}}", "old", "schema")

        report = flush.cache_flush(batch_size=2)

        assert report.matched == {
            "user": 5,
            "token": 1,
            "username": 0,
            "email": 0,
            "leases": 1,
            "other": 2,
        }
        assert report.removed == 7
        remaining = set(redis_client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*"))
        assert remaining == {key.encode() for key in foreign_keys}

    def test_an_entry_and_its_lease_go_together(self, sparse_users, redis_client):
        """They share a hash slot, so one UNLINK names both, on a cluster too."""
        warm.cache_warm()
        key = keys.user_key(SPARSE_IDS[0])
        redis_client.set(keys.lease_key(key), "t", px=60_000)

        report = flush.cache_flush(model=User, pks=[SPARSE_IDS[0]])

        assert report.removed == 2
        assert redis_client.exists(key, keys.lease_key(key)) == 0

    def test_dry_run_counts_and_removes_nothing(self, sparse_users, redis_client):
        warm.cache_warm()
        report = flush.cache_flush(dry_run=True)
        assert (report.total, report.removed) == (4, 0)
        assert all(_cached(redis_client, user_id) for user_id in SPARSE_IDS)

    def test_ids_remove_those_users_entries_and_token_lookups(
        self, sparse_users, redis_client, foreign_keys
    ):
        tokens = [Token.objects.create(user=user) for user in sparse_users[:2]]
        warm.cache_warm()
        for token in tokens:
            _cache_token(token)

        report = flush.cache_flush(model=User, pks=[SPARSE_IDS[0], 777])

        assert report.matched["user"] == 1
        assert report.matched["token"] == 1
        assert report.removed == 2
        assert not _cached(redis_client, SPARSE_IDS[0])
        assert _cached(redis_client, SPARSE_IDS[1])
        assert redis_client.exists(keys.token_key(token_mac(tokens[1].key)))
        assert all(redis_client.exists(key) for key in foreign_keys)


class TestCacheCheck:
    def test_a_faithful_cache_has_no_problems(self, sparse_users):
        warm.cache_warm(user_ids=[*SPARSE_IDS, 55])
        report = check.cache_check()
        assert (report.examined, report.problems) == (5, 0)

    def test_finds_stale_orphaned_and_malformed_entries(self, sparse_users, redis_client):
        warm.cache_warm()
        stale, orphaned, falsely_absent, no_expiry = SPARSE_IDS
        User.objects.filter(pk=stale).update(first_name="changed-behind-the-cache")
        User.objects.filter(pk=orphaned).delete()
        redis_client.hset(keys.user_key(falsely_absent), mapping=absent_marker())
        redis_client.hdel(keys.user_key(falsely_absent), *"uefl")
        redis_client.persist(keys.user_key(no_expiry))
        redis_client.set(keys.user_key(12), "not a hash", ex=60)
        redis_client.hset(keys.user_key(13), mapping={"id": "13"})
        redis_client.expire(keys.user_key(13), 60)
        nameless = f"{keys.user_key(0)[:-3]}{{abc}}"
        redis_client.hset(nameless, "x", "1")
        redis_client.set(keys.lease_key(keys.user_key(14)), "t", px=60_000)
        seen = []

        report = check.cache_check(sample=None, on_problem=seen.append)

        assert report.found == {
            check.ProblemKind.STALE: 1,
            check.ProblemKind.ORPHANED: 1,
            check.ProblemKind.MALFORMED: 5,
        }
        details = {problem.key: (problem.kind, problem.detail) for problem in seen}
        assert details[keys.user_key(stale)] == ("stale", "differs from MySQL in first_name")
        assert details[keys.user_key(orphaned)][0] == "orphaned"
        assert details[keys.user_key(no_expiry)] == ("malformed", "no expiry")
        assert details[keys.user_key(12)] == ("malformed", "a string, not a hash")
        assert details[nameless] == ("malformed", "the key names no user id")
        assert keys.lease_key(keys.user_key(14)) not in details

    def test_an_absence_of_a_user_who_exists_is_stale(self, sparse_users, redis_client):
        key = keys.user_key(SPARSE_IDS[0])
        redis_client.hset(key, mapping=absent_marker())
        redis_client.expire(key, 30)
        seen = []
        check.cache_check(on_problem=seen.append)
        assert [(p.kind, p.detail) for p in seen] == [
            ("stale", "cached as absent, but the user exists")
        ]

    def test_fix_repairs_every_problem(self, sparse_users, redis_client):
        warm.cache_warm()
        User.objects.filter(pk=SPARSE_IDS[0]).update(first_name="changed-behind-the-cache")
        User.objects.filter(pk=SPARSE_IDS[1]).delete()
        redis_client.set(keys.user_key(SPARSE_IDS[2]), "not a hash", ex=60)
        nameless = f"{keys.user_key(0)[:-3]}{{abc}}"
        redis_client.hset(nameless, "x", "1")

        fixed = check.cache_check(fix=True)
        again = check.cache_check()

        assert (fixed.problems, fixed.fixed) == (4, 4)
        assert again.problems == 0
        assert _cached(redis_client, SPARSE_IDS[0])["first_name"] == "changed-behind-the-cache"
        assert _cached(redis_client, SPARSE_IDS[1]) == {"absent": "1"}
        assert not redis_client.exists(nameless)

    def test_sample_stops_after_that_many_entries(self, sparse_users):
        warm.cache_warm()
        assert check.cache_check(sample=3, batch_size=2).examined == 3


class TestUserCacheEntries:
    def test_one_round_trip_for_any_number_of_users(self, sparse_users, redis_round_trips):
        warm.cache_warm(user_ids=SPARSE_IDS[:2])
        redis_round_trips.count = 0

        listed = user_state.user_cache_entries(user_ids=[*SPARSE_IDS, 31337])

        entry_keys = [keys.user_key(user_id) for user_id in [*SPARSE_IDS, 31337]]
        assert redis_round_trips.count == redis_nodes_holding(entry_keys)
        assert [entry.exists for entry in listed.values()] == [True, True, False, False, False]
        assert listed[SPARSE_IDS[0]].ttl_ms > 0
