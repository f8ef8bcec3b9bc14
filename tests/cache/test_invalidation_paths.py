"""Every path that changes a user or a token drops what the cache holds of it: the
services, and Django's and DRF's own paths (the admin's token pages,
``changepassword``, ``createsuperuser``) which never call the services."""

import io
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from tests.helpers import absent_marker, grant_user_permissions, token_client
from users import services
from users.cache import keys, store
from users.cache.outbox import outbox
from users.cache.transport import CacheUnavailable
from users.models import CacheInvalidation, User


@pytest.fixture
def root_client(client, make_user):
    root = make_user(username="root", email="root@example.com", is_staff=True, is_superuser=True)
    client.force_login(root)
    return client


def test_reassigning_a_token_in_the_admin_drops_its_cached_principal(
    transactional_db, root_client, make_user
):
    owner = make_user(username="owner", email="owner@example.com", is_staff=True)
    owner.user_permissions.add(*Permission.objects.filter(codename="add_user"))
    heir = make_user(username="heir", email="heir@example.com")
    token = Token.objects.create(user=owner)
    api = token_client(owner)
    assert api.get(f"/api/user/{owner.id}").status_code == 200  # the principal is cached

    response = root_client.post(
        f"/admin/authtoken/tokenproxy/{owner.id}/change/", {"user": heir.id}
    )

    assert response.status_code == 302, response.content
    assert Token.objects.get(key=token.key).user_id == heir.id
    created = api.post("/api/user", {"username": "n", "email": "n@example.com"}, format="json")
    assert created.status_code == 403  # the token is heir's now, and heir is no staff


def test_changepassword_drops_the_cached_user_and_revokes_the_token(transactional_db, make_user):
    user = make_user(username="walker", email="walker@example.com")
    api = token_client(user)
    assert api.get(f"/api/user/{user.id}").status_code == 200
    cached_before = api.get(f"/api/user/{user.id}")
    assert cached_before["X-Cache"] == "HIT"

    with mock.patch("getpass.getpass", return_value="a-New-passphrase-31"):
        call_command("changepassword", "walker", stdout=io.StringIO())

    user.refresh_from_db()
    assert user.check_password("a-New-passphrase-31")
    assert api.get(f"/api/user/{user.id}").status_code == 401
    reader = token_client(make_user(username="reader2", email="reader2@example.com"))
    after = reader.get(f"/api/user/{user.id}")
    assert after["X-Cache"] == "MISS"
    assert after.json()["updated_at"] != cached_before.json()["updated_at"]


def test_createsuperuser_replaces_a_cached_absence(transactional_db, make_user, redis_client):
    probe = make_user(username="probe", email="probe@example.com")
    next_id = probe.id + 1
    reader = token_client(probe)
    # An absence a reader cached while the id was below the largest (a row since
    # deleted, its id reused by an insert that names it).
    redis_client.hset(keys.user_key(next_id), mapping=absent_marker())
    assert reader.get(f"/api/user/{next_id}").status_code == 404

    with mock.patch.dict("os.environ", {"DJANGO_SUPERUSER_PASSWORD": "a-New-passphrase-31"}):
        call_command(
            "createsuperuser", "--no-input", "--username", "boss", "--email", "boss@example.com",
            stdout=io.StringIO(),
        )  # fmt: skip

    assert User.objects.get(username="boss").id == next_id
    assert reader.get(f"/api/user/{next_id}").status_code == 200


def test_a_model_save_outside_the_services_drops_the_cached_user(transactional_db, make_user):
    user = make_user(username="saved", email="saved@example.com", first_name="Old")
    reader = token_client(make_user(username="reader2", email="reader2@example.com"))
    reader.get(f"/api/user/{user.id}")
    assert reader.get(f"/api/user/{user.id}")["X-Cache"] == "HIT"

    user.first_name = "New"
    user.save()

    assert reader.get(f"/api/user/{user.id}").json()["first_name"] == "New"


def test_a_login_does_not_drop_the_cached_user(transactional_db, make_user, client):
    """``last_login`` is not part of what is cached: a login leaves the entry alone."""
    user = make_user(username="visitor", email="visitor@example.com")
    user.set_password("a-New-passphrase-31")
    user.save()
    reader = token_client(make_user(username="reader2", email="reader2@example.com"))
    reader.get(f"/api/user/{user.id}")

    assert (
        client.post(
            "/api-auth/login/", {"username": "visitor", "password": "a-New-passphrase-31"}
        ).status_code
        == 302
    )

    assert reader.get(f"/api/user/{user.id}")["X-Cache"] == "HIT"


class TestANameRememberedAsAbsent:
    """``?username=ghost`` remembered nobody holds "ghost"; then a user takes that
    username and e-mail. Every write path drops the absences of the row's new names
    (and the entries of its old ones), from the one list of keys a row owns; the
    binary log follower's path is tests/cache/test_binlog.py's."""

    @pytest.fixture
    def looked_up(self, transactional_db, make_user):
        holder = make_user(username="holder", email="holder@example.com")
        reader = token_client(make_user(username="looker", email="looker@example.com"))
        for query in ("username=ghost", "email=ghost@example.com"):
            assert reader.get(f"/api/user?{query}").json()["results"] == []
        return holder, reader

    @staticmethod
    def _found(reader) -> list[list[int]]:
        return [
            [user["id"] for user in reader.get(f"/api/user?{query}").json()["results"]]
            for query in ("username=ghost", "email=ghost@example.com")
        ]

    def test_through_the_api(self, looked_up, make_user):
        holder, reader = looked_up
        staff = grant_user_permissions(
            make_user(username="boss", email="boss@example.com", is_staff=True)
        )
        renamed = token_client(staff).patch(
            f"/api/user/{holder.id}",
            {"username": "ghost", "email": "ghost@example.com"},
            format="json",
        )
        assert renamed.status_code == 200
        assert self._found(reader) == [[holder.id], [holder.id]]

    def test_through_the_admin(self, looked_up, root_client):
        holder, reader = looked_up
        form = {
            "username": "ghost", "email": "ghost@example.com", "first_name": "",
            "last_name": "", "is_active": "on", "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        }  # fmt: skip
        response = root_client.post(f"/admin/users/user/{holder.id}/change/", form)
        assert response.status_code == 302, response.content
        assert self._found(reader) == [[holder.id], [holder.id]]

    def test_through_a_model_save(self, looked_up):
        holder, reader = looked_up
        user = User.objects.get(pk=holder.id)
        user.username, user.email = "ghost", "ghost@example.com"
        user.save()
        assert self._found(reader) == [[holder.id], [holder.id]]

    def test_through_the_outbox_replay(self, looked_up, monkeypatch):
        """Redis missed the write's own step: the replay of its outbox row drops the
        same keys."""
        holder, reader = looked_up

        def redis_away(keys, *, fill=None):
            raise CacheUnavailable("Redis is away")

        with monkeypatch.context() as patched:
            patched.setattr(store, "write", redis_away)
            services.user_update(
                actor=None,
                user_id=holder.id,
                data={"username": "ghost", "email": "ghost@example.com"},
            )
        assert CacheInvalidation.objects.exists()
        outbox.replay()
        assert self._found(reader) == [[holder.id], [holder.id]]
