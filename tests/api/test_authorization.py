"""Who may change whom: Django's permission model on every write, through the API and
the admin, and the rule that only a superuser may manage a superuser or another
staff account."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token, TokenProxy

from tests.helpers import token_client
from users.models import User

PERMISSIONS = ("add_user", "change_user", "delete_user")


def _grant(user: User, *codenames: str) -> User:
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="users", codename__in=codenames)
    )
    return user


@pytest.fixture
def actors(make_user) -> dict[str, User]:
    def staff(name: str, *codenames: str, **flags) -> User:
        user = make_user(username=name, email=f"{name}@example.com", is_staff=True, **flags)
        return _grant(user, *codenames)

    return {
        "staff without permissions": staff("bare"),
        "staff with add_user": staff("adder", "add_user"),
        "staff with change_user": staff("changer", "change_user"),
        "staff with delete_user": staff("deleter", "delete_user"),
        "staff with all three": staff("manager", *PERMISSIONS),
        "superuser": staff("root", is_superuser=True),
        "non-staff with all three": _grant(
            make_user(username="clerk", email="clerk@example.com"), *PERMISSIONS
        ),
    }


TARGETS = ("plain user", "other staff", "superuser", "self")
OPERATIONS = ("put", "patch", "password", "deactivate", "delete")


def _target(kind: str, actor: User, make_user, n: int) -> User:
    if kind == "self":
        return actor
    return make_user(
        username=f"target{n}",
        email=f"target{n}@example.com",
        is_staff=kind != "plain user",
        is_superuser=kind == "superuser",
    )


def _expected(actor: User, operation: str, target_kind: str) -> int:
    if not actor.is_staff:
        return 403
    needed = "delete_user" if operation == "delete" else "change_user"
    if not actor.has_perm(f"users.{needed}"):
        return 403
    protected = target_kind == "superuser" or target_kind == "other staff"
    if protected and not actor.is_superuser:
        return 403
    return 204 if operation == "delete" else 200


def _send(client, operation: str, target: User):
    url = f"/api/user/{target.id}"
    if operation == "put":
        body = {"username": f"{target.username}-x", "email": target.email}
        return client.put(url, body, format="json")
    if operation == "patch":
        return client.patch(url, {"first_name": "Changed"}, format="json")
    if operation == "password":
        return client.patch(url, {"password": "a-New-passphrase-31"}, format="json")
    if operation == "deactivate":
        return client.patch(url, {"is_active": False}, format="json")
    return client.delete(url)


def _unchanged(target: User) -> bool:
    current = User.objects.filter(pk=target.pk).first()
    return current is not None and (
        current.username,
        current.first_name,
        current.password,
        current.is_active,
    ) == (target.username, target.first_name, target.password, target.is_active)


@pytest.mark.parametrize("actor_kind", [
    "staff without permissions", "staff with add_user", "staff with change_user",
    "staff with delete_user", "staff with all three", "superuser", "non-staff with all three",
])  # fmt: skip
def test_write_matrix(actors, make_user, actor_kind):
    actor = actors[actor_kind]
    create = token_client(actor).post(
        "/api/user", {"username": "fresh", "email": "fresh@example.com"}, format="json"
    )
    may_create = actor.is_staff and actor.has_perm("users.add_user")
    assert create.status_code == (201 if may_create else 403)
    assert User.objects.filter(username="fresh").exists() == may_create

    n = 0
    for target_kind in TARGETS:
        for operation in OPERATIONS:
            if target_kind == "self" and operation == "delete":
                continue  # the actor is needed for the rest of the matrix; below
            n += 1
            target = _target(target_kind, actor, make_user, n)
            target.refresh_from_db()
            client = token_client(actor)
            response = _send(client, operation, target)
            expected = _expected(actor, operation, target_kind)
            assert response.status_code == expected, (
                actor_kind, target_kind, operation, response.content,
            )  # fmt: skip
            if expected == 403:
                assert _unchanged(target), (actor_kind, target_kind, operation)
            if target_kind == "self" and operation in {"put", "password", "deactivate"}:
                actor.refresh_from_db()
                if not actor.is_active:
                    return  # its token stopped working, as it must


def test_a_permission_revoked_takes_effect_at_once(actors, make_user):
    """Permissions are read from MySQL on every write, never from the token cache."""
    actor = actors["staff with all three"]
    client = token_client(actor)
    target = make_user(username="t", email="t@example.com")
    assert (
        client.patch(f"/api/user/{target.id}", {"first_name": "a"}, format="json").status_code
        == 200
    )

    actor.user_permissions.clear()

    response = client.patch(f"/api/user/{target.id}", {"first_name": "b"}, format="json")
    assert response.status_code == 403


def test_a_cached_read_still_runs_no_sql(actors, make_user, django_assert_num_queries):
    client = token_client(actors["staff with all three"])
    target = make_user(username="t", email="t@example.com")
    client.get(f"/api/user/{target.id}")

    with django_assert_num_queries(0):
        assert client.get(f"/api/user/{target.id}")["X-Cache"] == "HIT"


class TestAdmin:
    @pytest.fixture
    def changer_client(self, client, actors):
        actor = actors["staff with change_user"]
        _grant(actor, "view_user")
        client.force_login(actor)
        return client

    def _form(self, user: User, **overrides) -> dict:
        form = {
            "username": user.username,
            "email": user.email,
            "first_name": "Changed",
            "last_name": user.last_name,
            "is_active": "on",
            "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        }
        form.update(overrides)
        return form

    def test_staff_cannot_change_a_superuser(self, changer_client, actors):
        root = actors["superuser"]
        response = changer_client.post(f"/admin/users/user/{root.id}/change/", self._form(root))

        assert response.status_code == 403
        assert _unchanged(root)

    def test_staff_cannot_set_a_superusers_password(self, changer_client, actors):
        root = actors["superuser"]
        response = changer_client.post(
            f"/admin/users/user/{root.id}/password/",
            {"password1": "a-New-passphrase-31", "password2": "a-New-passphrase-31"},
        )

        assert response.status_code == 403
        assert _unchanged(root)

    def test_staff_cannot_change_another_staff_account(self, changer_client, actors):
        other = actors["staff with all three"]
        response = changer_client.post(f"/admin/users/user/{other.id}/change/", self._form(other))

        assert response.status_code == 403
        assert _unchanged(other)

    def test_staff_cannot_raise_their_own_privileges(self, changer_client, actors):
        me = actors["staff with change_user"]
        form = self._form(me, is_superuser="on", is_staff="on")
        form["user_permissions"] = [p.pk for p in Permission.objects.all()[:5]]
        changer_client.post(f"/admin/users/user/{me.id}/change/", form)

        me.refresh_from_db()
        assert not me.is_superuser
        assert set(me.user_permissions.values_list("codename", flat=True)) == {
            "change_user",
            "view_user",
        }

    def test_staff_cannot_delete_a_superuser_in_bulk(self, client, actors):
        deleter = _grant(actors["staff with delete_user"], "view_user")
        client.force_login(deleter)
        root = actors["superuser"]
        response = client.post(
            "/admin/users/user/",
            {"action": "delete_selected", "_selected_action": [root.id], "post": "yes"},
        )

        assert response.status_code in {200, 302, 403}
        assert User.objects.filter(pk=root.id).exists()

    def test_a_superuser_may_do_all_of_it(self, client, actors):
        root = actors["superuser"]
        client.force_login(root)
        other = actors["staff with all three"]
        response = client.post(f"/admin/users/user/{other.id}/change/", self._form(other))

        assert response.status_code == 302
        other.refresh_from_db()
        assert other.first_name == "Changed"

    def test_staff_cannot_make_a_token_for_a_superuser(self, client, actors):
        """A token of the superuser's would be the superuser."""
        staff = actors["staff with all three"]
        staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="authtoken"))
        client.force_login(staff)
        root = actors["superuser"]

        response = client.post("/admin/authtoken/tokenproxy/add/", {"user": root.id})

        assert response.status_code in {200, 403}
        assert not Token.objects.filter(user=root).exists()
        assert not TokenProxy.objects.filter(user=root).exists()
