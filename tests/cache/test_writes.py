"""Update and delete, under both cache update strategies, through services and the API."""

import pytest
from django.core.exceptions import ValidationError
from rest_framework.authtoken.models import Token

from tests.helpers import cached_entry, token_client
from users import entries, reads, services
from users.cache import keys, store
from users.models import CacheInvalidation, User
from users.reads import USERS


@pytest.fixture(params=["invalidate", "write-through"])
def strategy(request, settings):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": request.param}
    return request.param


@pytest.fixture
def cached_user(make_user) -> User:
    user = make_user(username="cached", email="cached@example.com", first_name="Old")
    assert reads.user_get(user_id=user.id).source is reads.Source.MISS
    return user


def _commit(django_capture_on_commit_callbacks, action):
    with django_capture_on_commit_callbacks(execute=True):
        return action()


class TestUserUpdate:
    def test_next_read_sees_the_new_state(
        self, strategy, cached_user, django_capture_on_commit_callbacks
    ):
        updated = _commit(
            django_capture_on_commit_callbacks,
            lambda: services.user_update(
                actor=None, user_id=cached_user.id, data={"first_name": "New"}
            ),
        )

        assert updated.first_name == "New"
        assert reads.user_get(user_id=cached_user.id).value["first_name"] == "New"

    def test_invalidate_deletes_the_entry(
        self, settings, cached_user, redis_client, django_capture_on_commit_callbacks
    ):
        settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": "invalidate"}
        _commit(
            django_capture_on_commit_callbacks,
            lambda: services.user_update(
                actor=None, user_id=cached_user.id, data={"first_name": "New"}
            ),
        )
        assert redis_client.exists(keys.user_key(cached_user.id)) == 0

    def test_write_through_stores_the_new_version_at_once(
        self, settings, cached_user, redis_client, django_capture_on_commit_callbacks,
        django_assert_num_queries,
    ):  # fmt: skip
        settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": "write-through"}
        _commit(
            django_capture_on_commit_callbacks,
            lambda: services.user_update(
                actor=None, user_id=cached_user.id, data={"first_name": "New"}
            ),
        )
        stored = cached_entry(redis_client, cached_user.id)
        assert stored["first_name"] == "New"
        assert int(stored["version"]) == User.objects.get(pk=cached_user.id).version > 1
        with django_assert_num_queries(0):
            assert reads.user_get(user_id=cached_user.id).value["first_name"] == "New"

    def test_a_writes_fill_stands_only_while_its_lease_does(self, cached_user, redis_client):
        """A later write takes the lease over; the earlier write's late fill then
        deletes the entry instead of storing its older state, and the lease with
        it (it may be a reader's, holding a row read before this commit), so the
        later write's fill deletes too: the next read loads the row."""
        key = keys.user_key(cached_user.id)
        entry = entries.encode(cached_user)
        first_name = entries.NAME_OF["first_name"]
        store.take_lease(key, "earlier-write")
        store.take_lease(key, "later-write")

        def write(token: str, name: str) -> bool:
            fill = store.WriteFill(USERS, cached_user.id, entry | {first_name: name}, token)
            return store.write([key], fill=fill)

        assert write("earlier-write", "x") is False
        assert redis_client.exists(key, keys.lease_key(key)) == 0
        assert write("later-write", "New") is False
        assert redis_client.exists(key) == 0

        store.take_lease(key, "next-write")
        assert write("next-write", "Newer") is True
        assert cached_entry(redis_client, cached_user.id)["first_name"] == "Newer"
        # Kept until it expires (as a reader's fill keeps its own), or already expired.
        assert redis_client.get(keys.lease_key(key)) in (b"next-write", None)

    def test_version_and_updated_at_grow(self, cached_user, django_capture_on_commit_callbacks):
        before = reads.user_get(user_id=cached_user.id).value
        after = _commit(
            django_capture_on_commit_callbacks,
            lambda: services.user_update(
                actor=None, user_id=cached_user.id, data={"last_name": "L"}
            ),
        )
        assert User.objects.get(pk=cached_user.id).version > cached_user.version
        assert (
            entries.to_public(after.id, entries.encode(after))["updated_at"] > before["updated_at"]
        )

    def test_unknown_id_is_http404(self, db):
        with pytest.raises(User.DoesNotExist):
            services.user_update(actor=None, user_id=987654321, data={"first_name": "x"})

    def test_taken_email_is_a_validation_error(self, cached_user, make_user):
        other = make_user(username="other", email="other@example.com")
        with pytest.raises(ValidationError) as excinfo:
            services.user_update(actor=None, user_id=other.id, data={"email": "CACHED@example.com"})
        assert list(excinfo.value.message_dict) == ["email"]

    def test_keeping_ones_own_username_is_fine(self, cached_user):
        updated = services.user_update(
            actor=None, user_id=cached_user.id, data={"username": "cached"}
        )
        assert updated.username == "cached"

    def test_password_change_is_validated_and_hashed(self, cached_user):
        with pytest.raises(ValidationError):
            services.user_update(actor=None, user_id=cached_user.id, data={"password": "123"})
        services.user_update(
            actor=None, user_id=cached_user.id, data={"password": "another-Long-phrase-8"}
        )
        assert User.objects.get(pk=cached_user.id).check_password("another-Long-phrase-8")

    def test_outbox_entry_is_recorded_and_then_cleared(
        self, cached_user, django_capture_on_commit_callbacks
    ):
        before = CacheInvalidation.objects.count()
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            services.user_update(actor=None, user_id=cached_user.id, data={"first_name": "New"})
            assert CacheInvalidation.objects.count() == before + 1
        for callback in callbacks:
            callback()
        assert CacheInvalidation.objects.count() == before


class TestUserDelete:
    def test_deleted_user_is_not_found_next(
        self, strategy, cached_user, django_capture_on_commit_callbacks
    ):
        _commit(
            django_capture_on_commit_callbacks,
            lambda: services.user_delete(actor=None, user_id=cached_user.id),
        )
        result = reads.user_get(user_id=cached_user.id)
        assert result.value is None
        assert not User.objects.filter(pk=cached_user.id).exists()

    def test_write_through_leaves_no_entry_behind_a_delete(
        self, settings, cached_user, redis_client, django_capture_on_commit_callbacks
    ):
        settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": "write-through"}
        _commit(
            django_capture_on_commit_callbacks,
            lambda: services.user_delete(actor=None, user_id=cached_user.id),
        )
        assert redis_client.exists(keys.user_key(cached_user.id)) == 0
        assert reads.user_get(user_id=cached_user.id).value is None

    def test_a_re_created_id_replaces_its_tombstone(
        self, settings, cached_user, redis_client, django_capture_on_commit_callbacks
    ):
        settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": "write-through"}
        _commit(
            django_capture_on_commit_callbacks,
            lambda: services.user_delete(actor=None, user_id=cached_user.id),
        )
        reborn = User(id=cached_user.id, username="reborn", email="reborn@example.com")
        _commit(
            django_capture_on_commit_callbacks, lambda: services.user_save(actor=None, user=reborn)
        )

        assert reads.user_get(user_id=cached_user.id).value["username"] == "reborn"

    def test_unknown_id_is_http404(self, db):
        with pytest.raises(User.DoesNotExist):
            services.user_delete(actor=None, user_id=987654321)


class TestTokensFollowTheirUser:
    def test_deactivating_a_user_stops_their_token_at_once(
        self, transactional_db, make_user, staff_client
    ):
        user = make_user(username="leaver", email="leaver@example.com")
        client = token_client(user)
        assert client.get(f"/api/user/{user.id}")["X-Cache"] in {"MISS", "HIT"}
        assert client.get(f"/api/user/{user.id}").status_code == 200

        response = staff_client.patch(f"/api/user/{user.id}", {"is_active": False}, format="json")

        assert response.status_code == 200
        assert client.get(f"/api/user/{user.id}").status_code == 401

    def test_deleting_a_user_stops_their_token_at_once(
        self, transactional_db, make_user, staff_client
    ):
        user = make_user(username="leaver", email="leaver@example.com")
        client = token_client(user)
        assert client.get(f"/api/user/{user.id}").status_code == 200

        assert staff_client.delete(f"/api/user/{user.id}").status_code == 204

        assert client.get(f"/api/user/{user.id}").status_code == 401
        assert not Token.objects.filter(user_id=user.id).exists()


class TestApi:
    def test_patch_changes_only_what_it_names(self, staff_client, cached_user):
        response = staff_client.patch(
            f"/api/user/{cached_user.id}", {"last_name": "Lee"}, format="json"
        )
        assert response.status_code == 200
        assert response.json()["last_name"] == "Lee"
        assert response.json()["first_name"] == "Old"

    def test_put_needs_username_and_email(self, staff_client, cached_user):
        response = staff_client.put(
            f"/api/user/{cached_user.id}", {"last_name": "x"}, format="json"
        )
        assert response.status_code == 400
        assert set(response.json()) == {"username", "email"}

    def test_put_replaces(self, staff_client, cached_user):
        body = {"username": "renamed", "email": "renamed@example.com", "first_name": "R"}
        response = staff_client.put(f"/api/user/{cached_user.id}/", body, format="json")
        assert response.status_code == 200
        assert response.json()["username"] == "renamed"

    def test_update_answers_with_the_new_state_and_then_reads_it(
        self, transactional_db, staff_client, make_user
    ):
        user = make_user(username="u", email="u@example.com")
        assert staff_client.get(f"/api/user/{user.id}").json()["first_name"] == ""
        patched = staff_client.patch(f"/api/user/{user.id}", {"first_name": "F"}, format="json")
        assert staff_client.get(f"/api/user/{user.id}").json() == patched.json()

    def test_delete_is_204_then_404(self, transactional_db, staff_client, make_user):
        user = make_user(username="u", email="u@example.com")
        staff_client.get(f"/api/user/{user.id}")
        assert staff_client.delete(f"/api/user/{user.id}").status_code == 204
        assert staff_client.get(f"/api/user/{user.id}").status_code == 404
        assert staff_client.delete(f"/api/user/{user.id}").status_code == 404

    @pytest.mark.parametrize("method", ["put", "patch", "delete"])
    def test_unknown_or_bad_ids_are_404(self, staff_client, method):
        for raw_id in ("987654321", "abc", "-3"):
            response = getattr(staff_client, method)(
                f"/api/user/{raw_id}", {"username": "a", "email": "a@example.com"}, format="json"
            )
            assert response.status_code == 404

    @pytest.mark.parametrize("method", ["put", "patch", "delete"])
    def test_writes_are_for_staff_only(self, reader_client, anonymous_client, cached_user, method):
        body = {"username": "a", "email": "a@example.com"}
        url = f"/api/user/{cached_user.id}"
        assert getattr(reader_client, method)(url, body, format="json").status_code == 403
        assert getattr(anonymous_client, method)(url, body, format="json").status_code == 401
        assert User.objects.get(pk=cached_user.id).username == "cached"

    def test_duplicate_email_is_a_400(self, staff_client, cached_user, staff):
        response = staff_client.patch(
            f"/api/user/{cached_user.id}", {"email": staff.email}, format="json"
        )
        assert response.status_code == 400
        assert "email" in response.json()

    def test_unknown_fields_are_ignored_and_is_staff_cannot_be_set(self, staff_client, cached_user):
        response = staff_client.patch(
            f"/api/user/{cached_user.id}", {"is_staff": True, "id": 5}, format="json"
        )
        assert response.status_code == 200
        assert User.objects.get(pk=cached_user.id).is_staff is False
