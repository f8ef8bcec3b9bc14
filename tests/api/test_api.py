"""The HTTP contract of /api/user, through Django's test client and the real stores."""

import io
import json

import pytest
from rest_framework.authtoken.models import Token

from tests.helpers import cached_entry
from users.models import User


@pytest.fixture
def target(make_user) -> User:
    return make_user(username="target", email="target@example.com", first_name="Tess")


class TestRetrieve:
    @pytest.mark.parametrize("suffix", ["", "/"])
    def test_both_url_forms_answer_without_redirect(self, reader_client, target, suffix):
        response = reader_client.get(f"/api/user/{target.id}{suffix}")
        assert response.status_code == 200
        assert response.json()["username"] == "target"

    def test_miss_then_hit(self, reader_client, target):
        first = reader_client.get(f"/api/user/{target.id}")
        second = reader_client.get(f"/api/user/{target.id}")

        assert first["X-Cache"] == "MISS"
        assert second["X-Cache"] == "HIT"
        assert first.json() == second.json()

    def test_hit_with_a_token_runs_no_sql_authentication_included(
        self, reader_client, target, django_assert_num_queries
    ):
        reader_client.get(f"/api/user/{target.id}")

        with django_assert_num_queries(0):
            response = reader_client.get(f"/api/user/{target.id}")

        assert response.status_code == 200
        assert response["X-Cache"] == "HIT"

    def test_miss_with_a_cached_token_runs_one_query(
        self, reader_client, reader, target, django_assert_num_queries
    ):
        reader_client.get(f"/api/user/{reader.id}")

        with django_assert_num_queries(1):
            response = reader_client.get(f"/api/user/{target.id}")

        assert response["X-Cache"] == "MISS"

    def test_body_is_the_public_projection(self, reader_client, target):
        body = reader_client.get(f"/api/user/{target.id}").json()
        assert set(body) == {
            "id",
            "username",
            "email",
            "first_name",
            "last_name",
            "is_active",
            "date_joined",
            "updated_at",
        }
        assert body["first_name"] == "Tess"

    @pytest.mark.parametrize(
        "raw_id",
        [
            "987654321",
            "abc",
            "0",
            "-1",
            "1.5",
            "+1",
            "%201",
            "1e3",
            "9223372036854775808",
            "99999999999999999999999",
        ],
    )
    def test_unknown_or_impossible_ids_are_a_json_404(self, reader_client, raw_id):
        response = reader_client.get(f"/api/user/{raw_id}")
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert "detail" in response.json()

    def test_largest_bigint_id_is_a_plain_404(self, reader_client):
        response = reader_client.get(f"/api/user/{2**63 - 1}")
        assert response.status_code == 404
        assert response["X-Cache"] == "MISS"


class TestCreate:
    payload = {
        "username": "newbie",
        "email": "newbie@example.com",
        "password": "a-Long-passphrase-7",
    }

    @pytest.mark.parametrize("path", ["/api/user", "/api/user/"])
    def test_staff_creates_with_201_and_location(
        self, staff_client, redis_client, django_capture_on_commit_callbacks, path
    ):
        with django_capture_on_commit_callbacks(execute=True):
            response = staff_client.post(path, self.payload, format="json")

        assert response.status_code == 201
        body = response.json()
        assert response["Location"] == f"/api/user/{body['id']}"
        assert body["username"] == "newbie"
        assert "password" not in body
        assert User.objects.filter(pk=body["id"]).exists()
        assert cached_entry(redis_client, body["id"])["username"] == "newbie"

    def test_then_get_is_a_hit(self, staff_client, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            created = staff_client.post("/api/user", self.payload, format="json").json()

        response = staff_client.get(f"/api/user/{created['id']}")
        assert response["X-Cache"] == "HIT"
        assert response.json() == created

    @pytest.mark.parametrize(
        ("override", "field"),
        [
            ({"username": ""}, "username"),
            ({"username": "has space"}, "username"),
            ({"username": "x" * 151}, "username"),
            ({"email": "not-an-email"}, "email"),
            ({"password": "123"}, "password"),
            ({"password": "newbie1234"}, "password"),
            ({"first_name": "x" * 151}, "first_name"),
        ],
    )
    def test_invalid_fields_get_a_400_per_field(self, staff_client, override, field):
        response = staff_client.post("/api/user", {**self.payload, **override}, format="json")
        assert response.status_code == 400
        assert field in response.json()

    def test_missing_fields_get_a_400_per_field(self, staff_client):
        response = staff_client.post("/api/user", {}, format="json")
        assert response.status_code == 400
        assert set(response.json()) == {"username", "email"}

    def test_duplicate_username_and_email_are_both_reported(self, staff_client, target):
        payload = {"username": "target", "email": "target@example.com"}
        response = staff_client.post("/api/user", payload, format="json")
        assert response.status_code == 400
        assert set(response.json()) == {"username", "email"}

    def test_malformed_json_is_a_400(self, staff_client):
        response = staff_client.post("/api/user", "{not json", content_type="application/json")
        assert response.status_code == 400
        assert "JSON parse error" in response.json()["detail"]

    def test_wrong_content_type_is_a_415(self, staff_client):
        response = staff_client.post(
            "/api/user", "username=x", content_type="application/x-www-form-urlencoded"
        )
        assert response.status_code == 415
        assert "detail" in response.json()

    def test_oversized_body_is_a_413(self, staff_client, settings):
        oversized = "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = json.dumps({**self.payload, "first_name": oversized})
        response = staff_client.post("/api/user", body, content_type="application/json")
        assert response.status_code == 413
        assert "larger than" in response.json()["detail"]

    def test_non_object_json_is_a_400(self, staff_client):
        response = staff_client.post("/api/user", "[1, 2]", content_type="application/json")
        assert response.status_code == 400


class TestList:
    def test_lists_users_from_the_database_paginated(self, reader_client, make_user, reader):
        for n in range(3):
            make_user(username=f"u{n}", email=f"u{n}@example.com")

        first = reader_client.get("/api/user?page_size=2").json()
        second = reader_client.get(first["next"]).json()

        assert [u["username"] for u in first["results"]] == ["reader", "u0"]
        assert [u["username"] for u in second["results"]] == ["u1", "u2"]
        assert second["next"] is None
        assert all("password" not in u for u in first["results"])

    def test_entries_have_the_same_shape_as_a_single_read(self, reader_client, reader):
        listed = reader_client.get("/api/user").json()["results"][0]
        assert listed == reader_client.get(f"/api/user/{reader.id}").json()

    def test_trailing_slash_form(self, reader_client):
        assert reader_client.get("/api/user/").status_code == 200


class TestBatch:
    @pytest.mark.parametrize("suffix", ["", "/"])
    def test_both_url_forms_answer_without_redirect(self, reader_client, target, suffix):
        response = reader_client.get(f"/api/user/batch{suffix}?ids={target.id}")

        assert response.status_code == 200
        assert [user["username"] for user in response.json()["results"]] == ["target"]

    @pytest.mark.parametrize(
        "path", ["/api/user/batch/1", "/api/user/batches", "/api/user/1/batch"]
    )
    def test_batch_is_no_id_and_takes_none(self, reader_client, path):
        response = reader_client.get(path)

        assert (response.status_code, response["Content-Type"]) == (404, "application/json")

    def test_writes_are_not_allowed(self, staff_client):
        response = staff_client.post("/api/user/batch?ids=1", {}, format="json")

        assert response.status_code == 405


class TestAuthentication:
    def test_anonymous_requests_get_401(self, anonymous_client, target):
        assert anonymous_client.get(f"/api/user/{target.id}").status_code == 401
        assert anonymous_client.get("/api/user").status_code == 401
        assert anonymous_client.post("/api/user", {}, format="json").status_code == 401

    def test_invalid_token_gets_401(self, anonymous_client, target):
        anonymous_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
        assert anonymous_client.get(f"/api/user/{target.id}").status_code == 401

    def test_non_staff_create_gets_403(self, reader_client):
        response = reader_client.post("/api/user", TestCreate.payload, format="json")
        assert response.status_code == 403
        assert not User.objects.filter(username="newbie").exists()

    def test_inactive_user_token_gets_401(self, make_user, target):
        from tests.helpers import token_client

        client = token_client(make_user(username="gone", email="g@example.com", is_active=False))
        assert client.get(f"/api/user/{target.id}").status_code == 401

    def test_session_authentication_for_the_browsable_api(self, client, reader, target):
        client.force_login(reader)
        response = client.get(f"/api/user/{target.id}", HTTP_ACCEPT="text/html")
        assert response.status_code == 200
        assert b"target" in response.content

    def test_logging_in_without_next_lands_on_the_browsable_api(self, client, db):
        """Django's default destination, /accounts/profile/, is a 404 here."""
        User.objects.create_user("visitor", "visitor@example.com", "a-Long-passphrase-7")

        response = client.post(
            "/api-auth/login/", {"username": "visitor", "password": "a-Long-passphrase-7"}
        )
        landing = client.get(response["Location"], HTTP_ACCEPT="text/html")

        assert (response.status_code, response["Location"]) == (302, "/api/user")
        assert landing.status_code == 200
        assert landing["Content-Type"].startswith("text/html")

    def test_deleting_a_token_stops_it_at_once(
        self, transactional_db, make_user, django_capture_on_commit_callbacks
    ):
        from tests.helpers import token_client

        user = make_user(username="holder", email="holder@example.com")
        client = token_client(user)
        assert client.get(f"/api/user/{user.id}").status_code == 200
        assert client.get(f"/api/user/{user.id}")["X-Cache"] == "HIT"

        Token.objects.filter(user=user).delete()

        assert client.get(f"/api/user/{user.id}").status_code == 401

    def test_rotating_a_token_with_drf_create_token(self, transactional_db, make_user):
        from django.core.management import call_command

        from tests.helpers import token_client

        user = make_user(username="rotator", email="rotator@example.com")
        client = token_client(user)
        assert client.get(f"/api/user/{user.id}").status_code == 200

        call_command("drf_create_token", "rotator", "-r", stdout=io.StringIO())

        assert client.get(f"/api/user/{user.id}").status_code == 401
        new_key = Token.objects.get(user=user).key
        client.credentials(HTTP_AUTHORIZATION=f"Token {new_key}")
        assert client.get(f"/api/user/{user.id}").status_code == 200
