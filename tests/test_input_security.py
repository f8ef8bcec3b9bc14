"""Input an attacker chooses: cursors, Unicode look-alikes, passwords with spaces,
deeply nested JSON, and lookups smuggled into the admin's URL."""

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import RequestFactory
from rest_framework.authtoken.models import Token

from tests.conftest import _token_client
from users.models import User


def _create(staff_client, username: str, email: str, **fields):
    body = {"username": username, "email": email, **fields}
    return staff_client.post("/api/user", body, format="json")


class TestCursor:
    @pytest.mark.parametrize(
        "cursor",
        ["cD1hYmM=", "cD0xJnI9MQ==", "cD0tMQ==", "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ==",
         "!!!", "cj14", "cD0=", "bz0xJnA9MQ=="],
    )  # fmt: skip
    def test_any_cursor_is_a_200_or_a_json_4xx(self, reader_client, cursor):
        response = reader_client.get(f"/api/user?cursor={cursor}")

        assert response.status_code == 200 or 400 <= response.status_code < 500
        assert response["Content-Type"] == "application/json"
        assert response.json()


class TestUnicodeIdentity:
    def test_the_api_stores_a_username_as_the_login_form_reads_it(self, staff_client, db):
        created = _create(
            staff_client, "x\U0001d400", "bold@example.com", password="a-Long-passphrase-7"
        )

        assert created.status_code == 201, created.content
        assert created.json()["username"] == "xA"
        request = RequestFactory().post("/api-auth/login/")
        assert authenticate(request, username="x\U0001d400", password="a-Long-passphrase-7")

    def test_a_login_as_a_look_alike_does_not_open_another_account(self, staff_client, db):
        first = _create(staff_client, "xA", "plain@example.com", password="a-Long-passphrase-7")
        assert first.status_code == 201
        refused = _create(staff_client, "x\U0001d400", "bold@example.com")

        assert refused.status_code == 400
        assert "username" in refused.json()

    def test_characters_outside_the_basic_plane_are_told_apart(self, staff_client, db):
        first = _create(staff_client, "名\U00020000", "a@example.com")
        second = _create(staff_client, "名\U00020001", "b@example.com")
        gothic = _create(staff_client, "\U00010330\U00010331", "c@example.com")
        other_gothic = _create(staff_client, "\U00010331\U00010330", "d@example.com")

        assert [r.status_code for r in (first, second, gothic, other_gothic)] == [201] * 4, [
            r.content for r in (first, second, gothic, other_gothic)
        ]

    @pytest.mark.parametrize(
        "look_alike",
        # Cyrillic a, Cyrillic e, Greek capital alpha, Cyrillic i in Latin names
        ["\u0430lice", "alic\u0435", "\u0391lice", "al\u0456ce"],
    )
    def test_a_name_mixing_scripts_is_refused(self, staff_client, db, look_alike):
        assert _create(staff_client, "alice", "alice@example.com").status_code == 201
        response = _create(staff_client, look_alike, "other@example.com")

        assert response.status_code == 400
        assert "username" in response.json()

    @pytest.mark.parametrize(
        "name", ["Zoë", "名前", "Ελένη", "Пётр", "ひらがなカタカナ漢字", "user_01"]
    )
    def test_a_name_in_one_script_is_accepted(self, staff_client, db, name):
        assert _create(staff_client, name, "n@example.com").status_code == 201

    def test_an_idn_domain_and_its_punycode_are_one_address(self, staff_client, db):
        first = _create(staff_client, "u1", "user@bücher.example")
        second = _create(staff_client, "u2", "user@xn--bcher-kva.example")
        upper = _create(staff_client, "u3", "user@BÜCHER.example")

        assert first.status_code == 201
        assert first.json()["email"] == "user@bücher.example"
        assert second.status_code == 400 and "email" in second.json()
        assert upper.status_code == 400 and "email" in upper.json()

    def test_the_admin_and_createsuperuser_normalize_the_same_way(self, db):
        user = User.objects.create_user(
            username="y\U0001d400", email="someone@XN--BCHER-KVA.example"
        )
        assert (user.username, user.email) == ("yA", "someone@bücher.example")


class TestPasswords:
    def test_spaces_around_a_password_are_kept(self, staff_client, db):
        password = "  spaced-Passphrase-9  "
        created = _create(staff_client, "spacey", "spacey@example.com", password=password)

        assert created.status_code == 201
        user = User.objects.get(username="spacey")
        assert user.check_password(password)
        assert not user.check_password(password.strip())

    def test_a_new_password_revokes_the_users_token(
        self, transactional_db, staff_client, make_user
    ):
        user = make_user(username="holder", email="holder@example.com")
        api = _token_client(user)
        assert api.get(f"/api/user/{user.id}").status_code == 200

        response = staff_client.patch(
            f"/api/user/{user.id}", {"password": "a-New-passphrase-31"}, format="json"
        )

        assert response.status_code == 200
        assert api.get(f"/api/user/{user.id}").status_code == 401
        assert not Token.objects.filter(user=user).exists()

    def test_a_rehash_when_the_password_is_checked_keeps_the_token(self, db, make_user, settings):
        """Django rehashes a correct password whose hasher is no longer the preferred one
        (a new default after an upgrade) when it checks it, and saves the new hash:
        that is no change of password, and the first login after it revokes nothing."""
        settings.PASSWORD_HASHERS = [
            "django.contrib.auth.hashers.MD5PasswordHasher",
            "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        ]
        user = make_user(username="holder", email="holder@example.com")
        old_hasher = PBKDF2PasswordHasher()
        old_hash = old_hasher.encode("an-Old-passphrase-7", old_hasher.salt(), iterations=1_000)
        User.objects.filter(pk=user.pk).update(password=old_hash)
        Token.objects.get_or_create(user=user)

        assert User.objects.get(pk=user.pk).check_password("an-Old-passphrase-7")

        assert User.objects.get(pk=user.pk).password.startswith("md5$")
        assert Token.objects.filter(user=user).exists()

    def test_other_changes_keep_the_token(self, transactional_db, staff_client, make_user):
        user = make_user(username="holder", email="holder@example.com")
        api = _token_client(user)
        staff_client.patch(f"/api/user/{user.id}", {"first_name": "New"}, format="json")

        assert api.get(f"/api/user/{user.id}").status_code == 200


class TestBodies:
    @pytest.mark.parametrize("depth", [2_000, 20_000])
    def test_deeply_nested_json_is_a_400(self, staff_client, depth, caplog):
        body = "[" * depth + "]" * depth
        response = staff_client.post("/api/user", body, content_type="application/json")

        assert response.status_code == 400
        assert response.json()["detail"]
        assert not any(record.exc_info for record in caplog.records)

    def test_a_deep_object_is_a_400_too(self, staff_client):
        body = '{"a":' * 5000 + "1" + "}" * 5000
        response = staff_client.post("/api/user", body, content_type="application/json")

        assert response.status_code == 400


class TestAdminLookups:
    @pytest.fixture
    def root_client(self, client, make_user):
        root = make_user(
            username="root", email="root@example.com", is_staff=True, is_superuser=True
        )
        client.force_login(root)
        return client

    @pytest.mark.parametrize(
        "query",
        ["username__regex=(", "password__startswith=pbkdf2", "email__iregex=[",
         "auth_token__key__startswith=a", "id__in=a,b"],
    )  # fmt: skip
    def test_lookups_outside_the_filters_are_refused(self, root_client, query):
        response = root_client.get(f"/admin/users/user/?{query}")

        assert response.status_code == 400 or (
            response.status_code == 302 and "e=1" in response["Location"]
        ), response.status_code

    def test_the_filters_still_work(self, root_client, make_user):
        make_user(username="gone", email="gone@example.com", is_active=False)
        response = root_client.get("/admin/users/user/?is_active__exact=0")

        assert response.status_code == 200
        assert b"gone" in response.content
