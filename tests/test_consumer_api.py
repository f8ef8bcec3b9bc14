"""What API consumers reach for next: many users in one request, a user by username
or e-mail, and conditional requests, all served through the cache."""

import threading

import pytest
from django.db import connection
from django_redis import get_redis_connection
from redis.cluster import RedisCluster
from rest_framework.test import APIClient

from tests.conftest import _token_client, one_server_caches, pausing_fills
from users import services
from users.cache import keys
from users.models import User


def _on_cluster() -> bool:
    return isinstance(get_redis_connection("default"), RedisCluster)


@pytest.fixture
def people(make_user) -> list[User]:
    return [make_user(username=f"p{n}", email=f"p{n}@example.com") for n in range(3)]


class TestManyUsers:
    def test_in_the_order_asked_duplicates_collapsed_and_the_missing_named(
        self, reader_client, people
    ):
        ids = [people[2].id, people[0].id, 987654321, people[2].id]
        response = reader_client.get(f"/api/user?ids={','.join(map(str, ids))}")

        assert response.status_code == 200
        body = response.json()
        assert [user["id"] for user in body["results"]] == [people[2].id, people[0].id]
        assert body["missing"] == [987654321]
        assert response["X-Cache"] == "MISS"

    def test_all_cached_is_no_sql_and_one_round_trip_authentication_included(
        self, reader_client, reader, people, django_assert_num_queries, redis_round_trips
    ):
        ids = ",".join(str(user.id) for user in [*people, reader])
        url = f"/api/user?ids={ids},987654321"
        assert reader_client.get(url)["X-Cache"] == "MISS"
        redis_round_trips.reset()

        with django_assert_num_queries(0):
            response = reader_client.get(url)

        assert response["X-Cache"] == "HIT"
        assert response.json()["missing"] == [987654321]  # remembered as absent
        users_read_apart = 5 if _on_cluster() else 0
        assert redis_round_trips.count == 1 + users_read_apart

    def test_the_misses_cost_one_query_together(
        self, reader_client, reader, people, django_assert_num_queries
    ):
        reader_client.get(f"/api/user/{reader.id}")  # the token is cached

        with django_assert_num_queries(1):
            response = reader_client.get(f"/api/user?ids={','.join(str(p.id) for p in people)}")

        assert len(response.json()["results"]) == 3

    def test_without_redis_the_batch_is_bypassed(self, reader_client, people, settings):
        settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")
        response = reader_client.get(f"/api/user?ids={people[0].id},{people[1].id}")

        assert (response.status_code, response["X-Cache"]) == (200, "BYPASS")
        assert len(response.json()["results"]) == 2

    @pytest.mark.parametrize(
        "raw",
        [
            "",
            ",",
            "1,a",
            "0",
            "-1",
            "1.5",
            "9223372036854775808",
            ",".join(map(str, range(1, 102))),
        ],
    )
    def test_bad_ids_are_a_400_that_names_them(self, reader_client, raw):
        response = reader_client.get(f"/api/user?ids={raw}")

        assert response.status_code == 400
        assert "ids" in response.json()

    def test_one_hundred_ids_are_fine(self, reader_client):
        response = reader_client.get(f"/api/user?ids={','.join(map(str, range(1, 101)))}")
        assert response.status_code == 200

    def test_one_lookup_at_a_time(self, reader_client):
        response = reader_client.get("/api/user?ids=1&username=x")
        assert response.status_code == 400


class TestLookupByName:
    def test_a_username_exactly_and_an_email_case_insensitively(self, reader_client, people):
        by_name = reader_client.get("/api/user?username=p1").json()
        by_email = reader_client.get("/api/user?email=P1@EXAMPLE.com").json()
        other_case = reader_client.get("/api/user?username=P1").json()
        unknown = reader_client.get("/api/user?username=nobody").json()

        assert [u["id"] for u in by_name["results"]] == [people[1].id]
        assert [u["id"] for u in by_email["results"]] == [people[1].id]
        assert other_case["results"] == [] and unknown["results"] == []
        assert set(by_name) == {"next", "previous", "results"}

    def test_a_cached_lookup_runs_no_sql(self, reader_client, people, django_assert_num_queries):
        for query in ("username=p0", "email=p0@example.com", "username=nobody"):
            first = reader_client.get(f"/api/user?{query}")
            with django_assert_num_queries(0):
                again = reader_client.get(f"/api/user?{query}")
            assert (first["X-Cache"], again["X-Cache"]) == ("MISS", "HIT")
            assert again.json() == first.json()

    def test_a_create_replaces_a_remembered_absence(
        self, reader_client, staff_client, django_capture_on_commit_callbacks
    ):
        assert reader_client.get("/api/user?username=newcomer").json()["results"] == []
        with django_capture_on_commit_callbacks(execute=True):
            staff_client.post(
                "/api/user", {"username": "newcomer", "email": "n@example.com"}, format="json"
            )

        assert len(reader_client.get("/api/user?username=newcomer").json()["results"]) == 1

    def test_a_rename_and_a_delete_are_seen_at_once(
        self, reader_client, staff_client, people, django_capture_on_commit_callbacks
    ):
        target = people[0]
        assert len(reader_client.get("/api/user?username=p0").json()["results"]) == 1
        with django_capture_on_commit_callbacks(execute=True):
            staff_client.patch(f"/api/user/{target.id}", {"username": "renamed"}, format="json")

        assert reader_client.get("/api/user?username=p0").json()["results"] == []
        renamed = reader_client.get("/api/user?username=renamed").json()["results"]
        assert [u["id"] for u in renamed] == [target.id]

        with django_capture_on_commit_callbacks(execute=True):
            staff_client.delete(f"/api/user/{target.id}")
        assert reader_client.get("/api/user?username=renamed").json()["results"] == []

    def test_a_stale_name_entry_never_answers_with_another_name(
        self, reader_client, people, redis_client
    ):
        """The name's entry points at a user who no longer holds the name (an
        invalidation lost to an outage): the user's own entry is checked."""
        reader_client.get(f"/api/user/{people[1].id}")  # p1's entry is cached
        stale = keys.name_key("username", "p0")
        redis_client.hset(stale, mapping={"i": str(people[1].id)})
        redis_client.expire(stale, 60)

        found = reader_client.get("/api/user?username=p0").json()["results"]

        assert [u["id"] for u in found] == [people[0].id]


class TestRenameRaces:
    """A lookup loads a name's id from MySQL and stops before its fill while a rename
    commits, as the stale-set tests race updates and reads."""

    @pytest.fixture
    def renamer(self, transactional_db):
        return User.objects.create(username="before", email="before@example.com")

    def _paused_lookup(self, name: str, during) -> list:
        results, loaded, release = [], threading.Event(), threading.Event()

        def pause(kind, loaded_entries):
            if kind.entity == "username" and threading.current_thread() is thread:
                loaded.set()
                assert release.wait(timeout=30)

        def lookup():
            try:
                client = APIClient()
                client.force_authenticate(User(id=10**9, username="x"))
                results.extend(client.get(f"/api/user?username={name}").json()["results"])
            finally:
                connection.close()

        with pausing_fills(pause):
            thread = threading.Thread(target=lookup)
            thread.start()
            assert loaded.wait(timeout=30)
            during()
            release.set()
            thread.join(timeout=30)
        return results

    def test_the_old_name_is_not_remembered_for_the_renamed_user(self, renamer):
        self._paused_lookup(
            "before",
            lambda: services.user_update(
                actor=None, user_id=renamer.id, data={"username": "after"}
            ),
        )
        reader = _token_client(User.objects.create(username="r", email="r@example.com"))

        assert reader.get("/api/user?username=before").json()["results"] == []
        assert [u["id"] for u in reader.get("/api/user?username=after").json()["results"]] == [
            renamer.id
        ]

    def test_a_remembered_absence_does_not_outlive_the_create(self, renamer):
        self._paused_lookup(
            "fresh",
            lambda: services.user_update(
                actor=None, user_id=renamer.id, data={"username": "fresh"}
            ),
        )
        reader = _token_client(User.objects.create(username="r", email="r@example.com"))

        assert [u["id"] for u in reader.get("/api/user?username=fresh").json()["results"]] == [
            renamer.id
        ]


class TestConditionalRequests:
    def test_a_current_etag_gets_304_from_the_cache_with_no_sql(
        self, reader_client, people, django_assert_num_queries
    ):
        url = f"/api/user/{people[0].id}"
        first = reader_client.get(url)
        etag = first["ETag"]
        assert etag == f'"{User.objects.get(pk=people[0].id).version}"'

        with django_assert_num_queries(0):
            response = reader_client.get(url, HTTP_IF_NONE_MATCH=f'W/"0", {etag}')

        assert (response.status_code, response.content) == (304, b"")
        assert (response["ETag"], response["X-Cache"]) == (etag, "HIT")
        assert reader_client.get(url, HTTP_IF_NONE_MATCH='"1"').status_code == 200

    def test_a_write_changes_the_etag(
        self, staff_client, people, django_capture_on_commit_callbacks
    ):
        url = f"/api/user/{people[0].id}"
        before = staff_client.get(url)["ETag"]
        with django_capture_on_commit_callbacks(execute=True):
            patched = staff_client.patch(url, {"first_name": "N"}, format="json")

        assert patched["ETag"] != before
        assert staff_client.get(url, HTTP_IF_NONE_MATCH=before).status_code == 200

    def test_if_match_guards_writes(self, staff_client, people):
        url = f"/api/user/{people[0].id}"
        current = staff_client.get(url)["ETag"]
        stale = staff_client.patch(url, {"first_name": "A"}, format="json", HTTP_IF_MATCH='"1"')
        weak = staff_client.patch(
            url, {"first_name": "A"}, format="json", HTTP_IF_MATCH=f"W/{current}"
        )

        assert stale.status_code == weak.status_code == 412
        assert stale.json()["detail"]
        assert User.objects.get(pk=people[0].id).first_name == ""
        fresh = staff_client.patch(url, {"first_name": "B"}, format="json", HTTP_IF_MATCH=current)
        assert fresh.status_code == 200
        any_version = staff_client.put(
            url, {"username": "p0", "email": "p0@example.com"}, format="json", HTTP_IF_MATCH="*"
        )
        assert any_version.status_code == 200
        assert staff_client.delete(url, HTTP_IF_MATCH=current).status_code == 412
        assert staff_client.delete(url, HTTP_IF_MATCH=any_version["ETag"]).status_code == 204

    def test_two_writers_with_one_etag_cannot_both_win(self, transactional_db, staff):
        target = User.objects.create(username="shared", email="shared@example.com")
        etag = f'"{target.version}"'
        statuses, barrier = [], threading.Barrier(2)

        def write(name: str):
            try:
                barrier.wait(timeout=10)
                try:
                    services.user_update(
                        actor=None, user_id=target.id, data={"first_name": name}, if_match=etag
                    )
                    statuses.append(200)
                except services.PreconditionFailed:
                    statuses.append(412)
            finally:
                connection.close()

        threads = [threading.Thread(target=write, args=(name,)) for name in ("one", "two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert sorted(statuses) == [200, 412]

    def test_if_match_can_be_required(self, staff_client, people, settings):
        settings.REQUIRE_IF_MATCH = True
        url = f"/api/user/{people[0].id}"

        assert staff_client.patch(url, {"first_name": "A"}, format="json").status_code == 428
        assert staff_client.delete(url).status_code == 428
        current = staff_client.get(url)["ETag"]
        ok = staff_client.patch(url, {"first_name": "A"}, format="json", HTTP_IF_MATCH=current)
        assert ok.status_code == 200
