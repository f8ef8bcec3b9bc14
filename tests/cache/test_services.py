"""The cache-aside algorithm against the real MySQL and Redis."""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.helpers import absent_marker, cached_entry
from users import entries, identity, reads, services
from users.cache import keys
from users.cache.readthrough import Source
from users.conf import user_cache_settings
from users.models import LOOKALIKE_MESSAGE, SKELETON_FIELDS, User


def _create(**overrides) -> dict:
    fields = {"username": "alice", "email": "alice@example.com", "password": "a-Long-passphrase-7"}
    fields.update(overrides)
    return services.user_create(actor=None, **fields)


class TestUserGet:
    def test_miss_loads_with_one_query_and_fills_the_hash_with_a_ttl(
        self, make_user, redis_client, django_assert_num_queries
    ):
        user = make_user(username="bob", email="bob@example.com")
        key = keys.user_key(user.id)

        with django_assert_num_queries(1):
            result = reads.user_get(user_id=user.id)

        assert result.source is Source.MISS
        assert result.value["username"] == "bob"
        stored = cached_entry(redis_client, user.id)
        assert stored["username"] == "bob"
        assert stored["version"] == str(User.objects.get(pk=user.id).version)
        ttl_ms = redis_client.pttl(key)
        assert 0.8 * user_cache_settings.TTL * 1000 < ttl_ms <= user_cache_settings.TTL * 1000

    def test_hit_is_served_from_redis_without_sql(self, make_user, django_assert_num_queries):
        user = make_user(username="bob", email="bob@example.com")
        miss = reads.user_get(user_id=user.id)

        with django_assert_num_queries(0):
            hit = reads.user_get(user_id=user.id)

        assert hit.source is Source.HIT
        assert hit.value == miss.value

    def test_hit_does_not_see_the_database(self, make_user):
        """Proves the hit came from Redis: a change that bypasses the service is not seen."""
        user = make_user(username="bob", email="bob@example.com")
        reads.user_get(user_id=user.id)
        User.objects.filter(pk=user.id).update(first_name="changed-behind-the-cache")

        assert reads.user_get(user_id=user.id).value["first_name"] == ""

    def test_projection_has_exactly_the_public_fields(self, make_user):
        user = make_user(username="bob", email="bob@example.com", password="secret-hash")
        miss = reads.user_get(user_id=user.id).value
        hit = reads.user_get(user_id=user.id).value

        assert set(miss) == set(entries.PUBLIC_FIELDS)
        assert hit == miss
        assert miss["id"] == user.id
        assert miss["is_active"] is True
        assert miss["date_joined"].endswith("Z")

    def test_a_deleted_users_id_is_not_found_and_cached_as_absent(
        self, make_user, redis_client, django_assert_num_queries
    ):
        """A gap below the largest id (its load, and one query for that largest id)."""
        gone = make_user(username="gone", email="gone@example.com")
        make_user(username="later", email="later@example.com")
        gone_id = gone.id
        gone.delete()
        with django_assert_num_queries(2):
            first = reads.user_get(user_id=gone_id)
        with django_assert_num_queries(0):
            second = reads.user_get(user_id=gone_id)

        assert first.value is None and first.source is Source.MISS
        assert second.value is None and second.source is Source.HIT
        key = keys.user_key(gone_id)
        assert cached_entry(redis_client, gone_id)["absent"] == "1"
        assert 0 < redis_client.pttl(key) <= user_cache_settings.NEGATIVE_TTL * 1000

    def test_an_id_above_the_largest_is_not_remembered(
        self, make_user, redis_client, django_assert_num_queries
    ):
        """What a client can make Redis hold must not grow with the ids it makes up:
        the table bounds the absences kept, and an id past its end costs two indexed
        queries each time instead (failed on the previous main: it was cached)."""
        largest = make_user(username="largest", email="largest@example.com").id
        for made_up in (largest + 1, largest + 987_654_321, 2**63 - 1):
            with django_assert_num_queries(2):
                assert reads.user_get(user_id=made_up).value is None
            assert redis_client.exists(keys.user_key(made_up)) == 0
            assert redis_client.exists(keys.lease_key(keys.user_key(made_up))) == 0

    def test_keys_carry_prefix_schema_version_and_hash_tag(self, settings):
        key = keys.user_key(42)
        schema = keys.SCHEMA_VERSION
        assert key == f"{settings.TEST_RUN_PREFIX}:v{schema}:user:{{42}}"
        # The lease shares the entry's hash tag, outside the tracked prefixes.
        assert keys.lease_key(key) == f"{settings.TEST_RUN_PREFIX}:v{schema}:lease:user:{{42}}"


class TestUserCreate:
    def test_writes_mysql_then_redis_after_commit(
        self, db, redis_client, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            created = _create()

        assert len(callbacks) == 1
        row = User.objects.get(pk=created.id)
        assert row.check_password("a-Long-passphrase-7")
        assert cached_entry(redis_client, created.id)["email"] == "alice@example.com"
        assert redis_client.pttl(keys.user_key(created.id)) > 0

    def test_created_user_is_a_hit_with_no_sql(
        self, db, django_capture_on_commit_callbacks, django_assert_num_queries
    ):
        with django_capture_on_commit_callbacks(execute=True):
            created = _create()

        with django_assert_num_queries(0):
            result = reads.user_get(user_id=created.id)
        assert result.source is Source.HIT
        assert result.value == entries.to_public(created.id, entries.encode(created))

    def test_rolled_back_create_writes_neither_store(self, transactional_db, redis_client):
        class Abort(Exception):
            pass

        with pytest.raises(Abort), transaction.atomic():
            created = _create()
            raise Abort

        assert not User.objects.filter(pk=created.id).exists()
        assert redis_client.exists(keys.user_key(created.id)) == 0

    def test_create_replaces_a_cached_absence(
        self, db, redis_client, django_capture_on_commit_callbacks
    ):
        """No 404 after a 201: the negative entry for the new id is overwritten."""
        probe = User.objects.create(username="probe", email="probe@example.com")
        next_id = probe.id + 1
        probe.delete()
        key = keys.user_key(next_id)
        redis_client.hset(key, mapping=absent_marker())

        with django_capture_on_commit_callbacks(execute=True):
            created = _create()

        assert created.id == next_id
        assert reads.user_get(user_id=created.id).value["username"] == created.username

    def test_password_is_optional_and_then_unusable(self, db):
        created = _create(password=None)
        assert not User.objects.get(pk=created.id).has_usable_password()

    def test_weak_password_is_rejected(self, db):
        with pytest.raises(ValidationError) as excinfo:
            _create(password="123")
        assert "password" in excinfo.value.message_dict
        assert not User.objects.exists()

    @pytest.mark.parametrize(
        ("field", "value"),
        [("username", "alice"), ("username", "ALICE"), ("email", "Alice@example.com")],
    )
    def test_duplicates_are_a_validation_error(self, db, field, value):
        _create()
        other = {"username": "carol", "email": "carol@example.com", field: value}
        with pytest.raises(ValidationError) as excinfo:
            _create(**other)
        assert list(excinfo.value.message_dict) == [field]

    def test_a_look_alike_username_is_a_validation_error_beside_a_taken_email(self, db):
        _create()
        with pytest.raises(ValidationError) as excinfo:
            _create(username="al\u0131ce")
        assert excinfo.value.message_dict == {
            "username": [LOOKALIKE_MESSAGE],
            "email": ["A user with that email already exists."],
        }

    def test_every_save_of_the_name_stores_its_skeletons(self, db):
        user = _create(username="Alice")
        services.user_update(actor=None, user_id=user.id, data={"username": "ALICE"})

        stored = User.objects.values_list(*SKELETON_FIELDS).get(pk=user.id)
        assert stored == identity.username_skeletons("ALICE") == ("ALlCE", "alice", "ALlCE")

    def test_the_uniqueness_check_uses_the_unique_indexes(self, make_user):
        """It once counted over the whole table: 61 ms a create at 100k users."""
        for n in range(20):
            make_user(username=f"u{n}", email=f"u{n}@example.com")
        with CaptureQueriesContext(connection) as queries:
            _create()
        check = next(query["sql"] for query in queries if "COUNT(" in query["sql"])
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {check}")
            columns = [column[0] for column in cursor.description]
            plan = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        assert all(step["type"] != "ALL" for step in plan), plan

    def test_email_domain_is_normalized(self, db):
        assert _create(email="alice@EXAMPLE.com").email == "alice@example.com"


class TestExpiry:
    def test_users_filled_together_get_spread_ttls(self, make_user, redis_client):
        users = [make_user(username=f"j{n}", email=f"j{n}@example.com") for n in range(20)]
        for user in users:
            reads.user_get(user_id=user.id)

        ttls = [redis_client.pttl(keys.user_key(user.id)) for user in users]

        full = user_cache_settings.TTL * 1000
        assert all(full * (1 - user_cache_settings.TTL_JITTER) - 1000 < ttl <= full for ttl in ttls)
        assert max(ttls) - min(ttls) > full * user_cache_settings.TTL_JITTER / 4

    def test_an_expired_entry_is_fetched_again(self, make_user, redis_client):
        user = make_user(username="old", email="old@example.com")
        reads.user_get(user_id=user.id)
        User.objects.filter(pk=user.id).update(first_name="changed-meanwhile")
        key = keys.user_key(user.id)
        # An entry expires long after the lease its fill kept: both go.
        redis_client.pexpire(key, 1)
        redis_client.pexpire(keys.lease_key(key), 1)
        while redis_client.exists(key, keys.lease_key(key)):
            pass

        result = reads.user_get(user_id=user.id)

        assert result.source is Source.MISS
        assert result.value["first_name"] == "changed-meanwhile"
        assert redis_client.pttl(key) > 0
