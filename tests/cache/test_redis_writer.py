"""Someone who can write to Redis cannot run code in the service.

django-redis pickles by default, and a pickle runs whatever its author chose
when it is read back. The class test drives every endpoint, plants a pickle
that creates a file under every key the run left in Redis (whatever family:
users, tokens, name lookups, rate-limit counters, leases, Django's cache), drives
everything again, and checks that the file never appears and that no answer is
a 500. The Django cache's own tests show what it stores and how it refuses a
value that is not data.
"""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.checks import Error
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from config.checks import cache_serializer_check
from tests.helpers import grant_user_permissions
from users.cache import keys, kinds
from users.models import User

PASSWORD = "a-Long-passphrase-7"


class _Planted:
    """Unpickled, it creates the file at ``path``: what an attacker's pickle does,
    with a file in place of a shell."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.path!r}).touch()",)


def _pickles(marker: Path) -> tuple[bytes, bytes]:
    """The pickle in django-redis' own protocol, and one in protocol 0, which is
    ASCII text and so also passes wherever a value is decoded as UTF-8."""
    planted = _Planted(marker)
    return pickle.dumps(planted, pickle.HIGHEST_PROTOCOL), pickle.dumps(planted, 0)


class _Service:
    """Every endpoint, the way its callers use it. ``drive`` runs them all once and
    returns each request and its status."""

    def __init__(self) -> None:
        self.superuser = User.objects.create_superuser("root", "root@example.com", PASSWORD)
        self.staff = grant_user_permissions(
            User.objects.create_user("staff", "staff@example.com", PASSWORD, is_staff=True)
        )
        self.reader = User.objects.create_user("reader", "reader@example.com", PASSWORD)
        self.target = User.objects.create_user("target", "target@example.com", PASSWORD)
        self.runs = itertools.count()

    def drive(self) -> list[tuple[str, int]]:
        run = next(self.runs)
        answers: list[tuple[str, int]] = []

        def record(label: str, response) -> None:
            answers.append((label, response.status_code))

        staff = _api_client(self.staff)
        reader = _api_client(self.reader)
        anonymous = APIClient(raise_request_exception=False)
        guesser = APIClient(raise_request_exception=False)
        guesser.credentials(HTTP_AUTHORIZATION="Token " + "f" * 40)
        reader_id, target_id = self.reader.id, self.target.id

        for client, name in ((reader, "reader"), (staff, "staff")):
            for path in (
                f"/api/user/{reader_id}",
                f"/api/user/{target_id}/",
                "/api/user/987654321",
                "/api/user",
                "/api/user?page_size=2",
                f"/api/user?ids={reader_id},{target_id},987654321",
                "/api/user?username=target",
                "/api/user?username=nobody-here",
                "/api/user?email=TARGET@example.com",
                "/api/user?email=nobody@example.com",
                f"/api/user/{reader_id}?format=api",
                "/api/schema/",
                "/api/docs/",
            ):
                record(f"{name} GET {path}", client.get(path))
        record("anonymous GET", anonymous.get(f"/api/user/{reader_id}"))
        record("guessed token GET", guesser.get(f"/api/user/{reader_id}"))

        created = staff.post(
            "/api/user",
            {"username": f"made{run}", "email": f"made{run}@example.com", "password": PASSWORD},
            format="json",
        )
        record("POST", created)
        made = created.json()["id"] if created.status_code == 201 else 987654321
        record("GET created", reader.get(f"/api/user/{made}"))
        etag = staff.get(f"/api/user/{target_id}").headers.get("ETag", "*")
        record(
            "PATCH",
            staff.patch(
                f"/api/user/{target_id}", {"first_name": f"Run {run}"}, format="json",
                HTTP_IF_MATCH=etag,
            ),
        )  # fmt: skip
        record(
            "PUT",
            staff.put(
                f"/api/user/{target_id}",
                {"username": "target", "email": "target@example.com", "last_name": f"{run}"},
                format="json",
            ),
        )
        record("DELETE", staff.delete(f"/api/user/{made}"))
        record("GET deleted", reader.get(f"/api/user/{made}"))

        for path in ("/healthz", "/readyz", "/metrics"):
            record(f"GET {path}", anonymous.get(path))

        for login in ("/admin/login/", "/api-auth/login/"):
            for username in ("reader", "nobody-at-all"):
                browser = Client(raise_request_exception=False)
                record(f"GET {login}", browser.get(login))
                wrong = {"username": username, "password": "wrong-" + PASSWORD}
                record(f"POST {login} wrong password for {username}", browser.post(login, wrong))
        for login, username in (("/admin/login/", "root"), ("/api-auth/login/", "reader")):
            browser = Client(raise_request_exception=False)
            answer = browser.post(login, {"username": username, "password": PASSWORD})
            record(f"POST {login} right password for {username}", answer)
            for path in (f"/api/user/{reader_id}", "/api/user", "/api/docs/"):
                record(f"{username} session GET {path}", browser.get(path))
            if username == "root":
                for path in (
                    "/admin/",
                    "/admin/users/user/",
                    f"/admin/users/user/{target_id}/change/",
                    "/admin/users/user/cache/",
                    "/admin/authtoken/tokenproxy/",
                ):
                    record(f"admin GET {path}", browser.get(path))
        return answers


def _api_client(user: User) -> APIClient:
    client = APIClient(raise_request_exception=False)
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def _family(key: str) -> str:
    """Which of the service's (and its libraries') key families ``key`` is in."""
    label = kinds.key_label(key)
    if label == kinds.LEASES:
        return key.split(":")[3] + " lease"
    if label != kinds.OTHER:
        return label
    if ":throttle:" in key:
        return "throttle"
    if key.startswith(f"{settings.TEST_RUN_PREFIX}:1:"):
        return "django cache"
    return "other"


def _plant(redis_client, key: str, binary: bytes, text: bytes) -> None:
    """The pickle under ``key``, in the key's own type: a string becomes the pickle;
    a hash gets it in an extra field, and in each text field the service shows as
    it is stored (a value in any other field is a wrong entry, whose refusal is
    the entries' own tests' business); a set, a sorted set or a list gets it as a
    member."""
    key_type = redis_client.type(key).decode()
    if key_type == "string":
        redis_client.set(key, binary, keepttl=True)
    elif key_type == "hash":
        fields = {name.decode() for name in redis_client.hkeys(key)}
        planted = {"planted": text}
        planted.update((field, text) for field in fields & _TEXT_FIELDS.get(_family(key), set()))
        redis_client.hset(key, mapping=planted)
    elif key_type == "set":
        redis_client.sadd(key, binary)
    elif key_type == "zset":
        redis_client.zadd(key, {binary: 0})
    elif key_type == "list":
        redis_client.rpush(key, binary)
    else:
        raise AssertionError(f"{key} is a {key_type}: teach the test to plant there")


# The fields of a user entry that hold text as the user wrote it (users.entries).
_TEXT_FIELDS = {"user": {"u", "e", "f", "l"}}


def test_a_pickle_under_any_key_runs_nothing(transactional_db, tmp_path, redis_client):
    marker = tmp_path / "unpickled"
    service = _Service()
    first = service.drive()
    assert not [answer for answer in first if answer[1] >= 500], first

    found = list(redis_client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*", count=1000))
    leases = [
        keys.lease_key(key.decode()) for key in found if _family(key.decode()) in ("user", "token")
    ]
    all_keys = sorted({key.decode() for key in found} | set(leases))
    families = {_family(key) for key in all_keys}
    # The run touched every family the service reads (Django's cache holds nothing
    # since the login limits count in scripts of their own).
    assert {"user", "token", "username", "email", "throttle", "user lease"} <= families, families
    binary, text = _pickles(marker)
    for key in all_keys:
        if not redis_client.exists(key):
            redis_client.set(key, binary, px=60_000)
        else:
            _plant(redis_client, key, binary, text)

    second = service.drive()

    assert not marker.exists(), "a pickle planted in Redis ran in the service"
    assert not [answer for answer in second if answer[1] >= 500], second


class TestDjangoCache:
    """What goes through Django's cache (``config.redis_cache``)."""

    def test_values_are_json_and_integers_stay_raw(self, redis_client):
        cache.set("document", {"a": [1, "b", None]})
        cache.set("count", 7)

        assert redis_client.get(cache.make_key("document")) == b'{"a": [1, "b", null]}'
        assert redis_client.get(cache.make_key("count")) == b"7"
        assert cache.get("document") == {"a": [1, "b", None]}
        assert cache.incr("count") == 8

    @pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
    def test_a_pickle_is_a_miss_and_is_deleted(self, redis_client, tmp_path, protocol):
        marker = tmp_path / "unpickled"
        # One hash tag, so that MGET works on a Redis Cluster too.
        planted, kept = "{t}planted", "{t}kept"
        redis_client.set(cache.make_key(planted), pickle.dumps(_Planted(marker), protocol))
        redis_client.set(cache.make_key(kept), b'"text"')

        assert cache.get(planted, "default") == "default"
        assert not redis_client.exists(cache.make_key(planted))
        redis_client.set(cache.make_key(planted), pickle.dumps(_Planted(marker), protocol))
        assert cache.get_many([planted, kept]) == {kept: "text"}
        assert not redis_client.exists(cache.make_key(planted))
        assert not marker.exists()

    @pytest.mark.parametrize(
        "stored", [b"\x80\x04not json", b"{unclosed", b"[" * 100_000, "\u00e9".encode("latin-1")]
    )
    def test_any_value_that_is_not_json_is_a_miss(self, redis_client, stored):
        redis_client.set(cache.make_key("broken"), stored)
        assert cache.get("broken") is None
        assert cache.add("broken", 1)

    def test_an_increment_of_a_value_that_is_not_a_number_is_one_of_a_missing_key(
        self, redis_client
    ):
        redis_client.set(cache.make_key("counter"), b"\x80\x04not json")
        with pytest.raises(ValueError):
            cache.incr("counter")


class TestSerializerCheck:
    """``config.checks.cache_serializer_check``: no cache alias may read with pickle."""

    def test_the_configured_caches_pass(self):
        assert cache_serializer_check(None) == []

    @pytest.mark.parametrize(
        "alias",
        [
            {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1/0"},
            {
                "BACKEND": "config.redis_cache.RedisCache",
                "LOCATION": "redis://127.0.0.1/0",
                "OPTIONS": {"SERIALIZER": "django_redis.serializers.pickle.PickleSerializer"},
            },
            {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://x"},
            {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "cache"},
            {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": "/x"},
        ],
    )
    def test_an_alias_that_reads_pickle_is_refused(self, settings, alias):
        settings.CACHES = {**settings.CACHES, "other": alias}
        [error] = cache_serializer_check(None)
        assert isinstance(error, Error)
        assert (error.id, error.obj) == ("usersvc.E003", "other")

    @pytest.mark.parametrize(
        "alias",
        [
            {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
            {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": "redis://127.0.0.1/0",
                "OPTIONS": {"SERIALIZER": "django_redis.serializers.json.JSONSerializer"},
            },
        ],
    )
    def test_an_alias_that_reads_data_only_or_keeps_nothing_outside_is_allowed(
        self, settings, alias
    ):
        settings.CACHES = {**settings.CACHES, "other": alias}
        assert cache_serializer_check(None) == []
