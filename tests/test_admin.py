"""The admin edits users through services, so the cache follows its edits."""

import pytest

from users import cache, services
from users.models import User


@pytest.fixture
def admin_client(client, make_user):
    admin = make_user(username="root", email="root@example.com", is_staff=True, is_superuser=True)
    client.force_login(admin)
    return client


@pytest.fixture
def cached_user(make_user) -> User:
    user = make_user(username="cached", email="cached@example.com", first_name="Old")
    services.user_get(user_id=user.id)
    return user


def _change_form(user: User, **overrides) -> dict:
    form = {
        "username": user.username,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    form.update(overrides)
    return form


def test_admin_edit_updates_the_cache(
    admin_client, cached_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/admin/users/user/{cached_user.id}/change/",
            _change_form(cached_user, first_name="Edited"),
        )
    assert response.status_code == 302, response.content[:2000]

    assert services.user_get(user_id=cached_user.id).value["first_name"] == "Edited"
    assert User.objects.get(pk=cached_user.id).version > cached_user.version


def test_admin_add_writes_the_cache(admin_client, redis_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/users/user/add/",
            {
                "username": "added",
                "email": "added@example.com",
                "password1": "a-Long-passphrase-7",
                "password2": "a-Long-passphrase-7",
            },
        )
    assert response.status_code == 302, response.content[:2000]
    user = User.objects.get(username="added")
    assert redis_client.hget(cache.user_cache_key(user.id), "email") == b"added@example.com"


def test_admin_delete_clears_the_cache(
    admin_client, cached_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/users/user/{cached_user.id}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert services.user_get(user_id=cached_user.id).value is None


def test_admin_bulk_delete_clears_the_cache(
    admin_client, cached_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/users/user/",
            {"action": "delete_selected", "_selected_action": [cached_user.id], "post": "yes"},
        )
    assert response.status_code == 302
    assert services.user_get(user_id=cached_user.id).value is None
