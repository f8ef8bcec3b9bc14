"""Token authentication as an attacker sees it: other spellings of a key, a Redis
writer forging or editing cached principals, and guessing past the limit."""

import hashlib
import io

import pytest
from django.conf import settings
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.helpers import token_client
from users.models import User


def _project_keys(redis_client) -> set[bytes]:
    return set(redis_client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*", count=1000))


def _client_with(key: str, **extra) -> APIClient:
    client = APIClient(**extra)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def holder(transactional_db, make_user) -> User:
    return make_user(username="holder", email="holder@example.com")


def _spellings(key: str) -> list[str]:
    return [key.upper(), key[:20] + key[20:].upper(), key.swapcase()]


class TestOneSpellingPerKey:
    @pytest.mark.parametrize("change", ["rotate", "delete", "deactivate", "demote"])
    def test_revoking_a_token_revokes_every_spelling(self, holder, staff_client, change):
        """The upper-case spelling once authenticated and was cached under its own
        digest, which no revocation of the real key reached."""
        if change == "demote":
            holder.is_staff = True
            holder.save()
        key = Token.objects.create(user=holder).key
        for spelling in [key, *_spellings(key)]:
            _client_with(spelling).get(f"/api/user/{holder.id}")

        if change == "rotate":
            call_command("drf_create_token", "holder", "-r", stdout=io.StringIO())
        elif change == "delete":
            Token.objects.filter(user=holder).delete()
        elif change == "deactivate":
            staff_client.patch(f"/api/user/{holder.id}", {"is_active": False}, format="json")
        else:
            holder.is_staff = False
            holder.save()

        for spelling in [key, *_spellings(key)]:
            client = _client_with(spelling)
            read = client.get(f"/api/user/{holder.id}")
            write = client.post(
                "/api/user", {"username": "n", "email": "n@example.com"}, format="json"
            )
            if change == "demote" and spelling == key:
                assert (read.status_code, write.status_code) == (200, 403)
            else:
                assert (read.status_code, write.status_code) == (401, 401), spelling

    @pytest.mark.parametrize(
        "presented",
        [
            "upper",
            "0" * 39,
            "0" * 41,
            "g" * 40,
            "0" * 39 + "\u00b2",  # SUPERSCRIPT TWO: a digit to str.isdigit(), not a hex digit
            "0" * 38 + "%%",
        ],
    )
    def test_another_spelling_is_refused_without_a_query_or_a_redis_key(
        self, holder, redis_client, django_assert_num_queries, presented
    ):
        key = Token.objects.create(user=holder).key
        presented = key.upper() if presented == "upper" else presented
        before = _project_keys(redis_client)

        with django_assert_num_queries(0):
            response = _client_with(presented).get(f"/api/user/{holder.id}")

        assert response.status_code == 401
        assert response.json()["detail"]
        assert _project_keys(redis_client) == before


class TestRedisCannotVouch:
    """Someone who can write to Redis, but does not hold the server's secret."""

    def test_a_forged_principal_for_a_chosen_token_is_not_believed(
        self, holder, redis_client, settings
    ):
        chosen = "ab" * 20
        forged = {
            "user_id": str(holder.id),
            "username": "holder",
            "is_staff": "1",
            "is_superuser": "1",
            "is_active": "1",
        }
        digests = {hashlib.sha256(chosen.encode()).hexdigest(), chosen}
        prefix = f"{settings.USERS_CACHE['KEY_PREFIX']}:v{1}"
        for digest in digests:
            redis_client.hset(f"{prefix}:token:{{{digest}}}", mapping=forged)

        response = _client_with(chosen).post(
            "/api/user", {"username": "minted", "email": "minted@example.com"}, format="json"
        )

        assert response.status_code == 401
        assert not User.objects.filter(username="minted").exists()

    def test_an_edited_principal_is_not_believed(self, holder, redis_client):
        """The attacker holds a plain user's token and raises its cached entry to staff."""
        client = token_client(holder)
        assert client.get(f"/api/user/{holder.id}").status_code == 200
        token_entries = [
            key for key in _project_keys(redis_client) if b":token:" in key and b":lease" not in key
        ]
        assert token_entries
        for key in token_entries:
            fields = {name.decode() for name in redis_client.hkeys(key)}
            redis_client.hset(key, mapping=dict.fromkeys(fields & _PRIVILEGE_FIELDS, "1"))
            for name in fields - _PRIVILEGE_FIELDS:
                value = redis_client.hget(key, name)
                if value in (b"0", b"1"):
                    redis_client.hset(key, name, "1")

        response = client.post(
            "/api/user", {"username": "minted", "email": "minted@example.com"}, format="json"
        )

        assert response.status_code == 403
        assert not User.objects.filter(username="minted").exists()


_PRIVILEGE_FIELDS = {"is_staff", "is_superuser", "s", "S"}


class TestGuessing:
    @pytest.fixture
    def rates(self, settings):
        rest = {**settings.REST_FRAMEWORK}
        rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], "auth_failure": "3/min"}
        settings.REST_FRAMEWORK = rest

    def test_over_the_limit_a_guess_costs_no_query(
        self, rates, transactional_db, django_assert_num_queries
    ):
        guesser = APIClient()
        for n in range(3):
            guesser.credentials(HTTP_AUTHORIZATION=f"Token {n:040x}")
            assert guesser.get("/api/user").status_code == 401

        guesser.credentials(HTTP_AUTHORIZATION=f"Token {99:040x}")
        with django_assert_num_queries(0):
            response = guesser.get("/api/user")

        assert response.status_code == 429
        assert int(response["Retry-After"]) > 0

    def test_guesses_leave_a_bounded_number_of_redis_keys(
        self, rates, transactional_db, redis_client
    ):
        before = _project_keys(redis_client)
        guesser = APIClient()
        for n in range(20):
            guesser.credentials(HTTP_AUTHORIZATION=f"Token {n:040x}")
            guesser.get("/api/user")

        created = _project_keys(redis_client) - before
        assert len(created) <= 1, created  # this address's failure counter
