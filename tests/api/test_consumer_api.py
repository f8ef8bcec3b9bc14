"""What API consumers reach for next: many users in one request, a user by username
or e-mail, and conditional requests, all served through the cache; and the query
parameters as every client form sends them."""

import threading
from datetime import UTC, datetime

import pytest
import requests
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.helpers import one_server_caches, pausing_fills, token_client
from users import services
from users.cache import keys
from users.models import User


@pytest.fixture
def people(make_user) -> list[User]:
    return [make_user(username=f"p{n}", email=f"p{n}@example.com") for n in range(3)]


# The batch read, and the list's ?ids= it took over from, which answers alike.
BATCH_PATHS = ["/api/user/batch", "/api/user"]


def _ids(*forms: str) -> str:
    """A query of ``ids`` values as given: ``_ids("1,2", "3")`` is ``ids=1,2&ids=3``."""
    return "&".join(f"ids={value}" for value in forms)


class TestManyUsers:
    @pytest.mark.parametrize("path", BATCH_PATHS)
    def test_in_the_order_asked_duplicates_collapsed_and_the_missing_named(
        self, reader_client, people, path
    ):
        ids = [people[2].id, people[0].id, 987654321, people[2].id]
        response = reader_client.get(f"{path}?ids={','.join(map(str, ids))}")

        assert response.status_code == 200
        body = response.json()
        assert [user["id"] for user in body["results"]] == [people[2].id, people[0].id]
        assert body["missing"] == [987654321]
        assert response["X-Cache"] == "MISS"

    @pytest.mark.parametrize("path", BATCH_PATHS)
    @pytest.mark.parametrize(
        "forms",
        [
            ("{0}", "{1}", "{2}"),  # repeated keys: requests and generated clients
            ("{0},{1},{2}",),  # comma-separated
            ("{0},{1}", "{2}"),  # both
            ("{0}", "{1},{2}"),
            (" {0} , {1}", "{2} "),  # spaces around an id, as before
            ("{0}", "{0},{1}", "{2},{1}"),  # duplicates within and across keys
        ],
    )
    def test_every_client_form_of_a_list_keeps_every_id(self, reader_client, people, path, forms):
        ids = [person.id for person in people]
        query = _ids(*(form.format(*ids) for form in forms))

        body = reader_client.get(f"{path}?{query}").json()

        assert [user["id"] for user in body["results"]] == ids, query
        assert body["missing"] == []

    def test_all_cached_is_no_sql_and_one_round_trip_authentication_included(
        self, reader_client, reader, people, deleted_id, django_assert_num_queries,
        redis_round_trips,
    ):
        ids = ",".join(str(user.id) for user in [*people, reader])
        url = f"/api/user/batch?ids={ids},{deleted_id}"
        assert reader_client.get(url)["X-Cache"] == "MISS"
        redis_round_trips.reset()

        with django_assert_num_queries(0):
            response = reader_client.get(url)

        assert response["X-Cache"] == "HIT"
        assert response.json()["missing"] == [deleted_id]  # remembered as absent
        # The near cache holds the token and the users the first read filled; the
        # absence, which no process holds, is the one read from Redis.
        assert redis_round_trips.count == 1

    def test_the_misses_cost_one_query_together(
        self, reader_client, reader, people, django_assert_num_queries
    ):
        reader_client.get(f"/api/user/{reader.id}")  # the token is cached

        with django_assert_num_queries(1):
            response = reader_client.get(f"/api/user/batch?{_ids(*(str(p.id) for p in people))}")

        assert len(response.json()["results"]) == 3

    def test_without_redis_the_batch_is_bypassed(self, reader_client, people, settings):
        settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")
        response = reader_client.get(f"/api/user/batch?ids={people[0].id}&ids={people[1].id}")

        assert (response.status_code, response["X-Cache"]) == (200, "BYPASS")
        assert len(response.json()["results"]) == 2

    @pytest.mark.parametrize("path", BATCH_PATHS)
    @pytest.mark.parametrize(
        "query",
        [
            "ids=",
            "ids=,",
            "ids=1,a",
            "ids=0",
            "ids=-1",
            "ids=1.5",
            "ids=9223372036854775808",
            "ids=1,,2",
            "ids=1,2,",
            _ids("1", ""),  # an empty value beside a good one
            _ids("", "1"),
            _ids("1", "a"),
            _ids("1,2", "3,x"),
            "ids=" + ",".join(map(str, range(1, 102))),
            # 101 distinct ids over the two forms, none over 100 in either
            _ids(",".join(map(str, range(1, 61))), ",".join(map(str, range(61, 102)))),
            _ids(*map(str, range(1, 102))),
        ],
    )
    def test_bad_ids_are_a_400_that_names_them(self, reader_client, path, query):
        response = reader_client.get(f"{path}?{query}")

        assert response.status_code == 400, query
        assert list(response.json()) == ["ids"]

    def test_the_batch_needs_ids(self, reader_client):
        response = reader_client.get("/api/user/batch")

        assert response.status_code == 400
        assert list(response.json()) == ["ids"]

    @pytest.mark.parametrize("path", BATCH_PATHS)
    def test_one_hundred_distinct_ids_are_fine_however_often_repeated(self, reader_client, path):
        hundred = ",".join(map(str, range(1, 101)))
        response = reader_client.get(f"{path}?{_ids(hundred, hundred, '1', '100')}")

        assert response.status_code == 200
        assert response.json()["missing"] == list(range(1, 101))

    def test_one_lookup_at_a_time(self, reader_client):
        response = reader_client.get("/api/user?ids=1&username=x")
        assert response.status_code == 400

    def test_a_batch_is_for_authenticated_callers_only(self, anonymous_client, people):
        response = anonymous_client.get(f"/api/user/batch?ids={people[0].id}")

        assert response.status_code == 401
        assert people[0].username not in response.content.decode()


class TestIdsOnTheList:
    """``GET /api/user?ids=``, the batch read before ``/api/user/batch``: answered as
    before for the callers written against it, marked deprecated (RFC 9745) and
    pointing at its successor (RFC 8288)."""

    DEPRECATION = f"@{int(datetime(2026, 12, 7, tzinfo=UTC).timestamp())}"

    def test_answers_as_the_batch_does_and_says_where_it_moved(self, reader_client, people):
        query = f"ids={people[1].id},{people[0].id}&ids=987654321"
        old = reader_client.get(f"/api/user?{query}")
        new = reader_client.get(f"/api/user/batch?{query}")

        assert (old.status_code, old.json()) == (new.status_code, new.json())
        assert old["Deprecation"] == self.DEPRECATION
        successor = f'</api/user/batch?{query}>; rel="successor-version"'
        assert old["Link"] == successor
        assert "Deprecation" not in new and "Link" not in new

    def test_the_successor_link_answers_alike(self, reader_client, people):
        old = reader_client.get(f"/api/user?ids={people[0].id}&ids=%20{people[1].id}")
        link = old["Link"].split(">")[0].removeprefix("<")

        assert reader_client.get(link).json() == old.json()

    def test_an_error_is_marked_too_and_cannot_inject_into_the_link(self, reader_client):
        response = reader_client.get("/api/user?ids=1%3E%3B%20rel%3D%22x%22,2")

        assert response.status_code == 400
        assert response["Deprecation"] == self.DEPRECATION
        assert response["Link"] == (
            '</api/user/batch?ids=1%3E%3B%20rel%3D%22x%22,2>; rel="successor-version"'
        )

    def test_the_list_without_ids_is_not_deprecated(self, reader_client):
        response = reader_client.get("/api/user")

        assert response.status_code == 200
        assert "Deprecation" not in response and "Link" not in response


class TestSingleValuedParameters:
    """A parameter that takes one value, given twice, is a 400 naming it: which one
    a client meant is not the service's guess (``QueryDict.get`` takes the last)."""

    @pytest.mark.parametrize(
        "query",
        [
            "username=p0&username=p1",
            "email=p0@example.com&email=p1@example.com",
            "page_size=1&page_size=2",
            "cursor=a&cursor=b",
            "username=p0&username=p0",
        ],
    )
    def test_a_repeated_single_valued_parameter_is_a_400(self, reader_client, people, query):
        name = query.split("=")[0]
        response = reader_client.get(f"/api/user?{query}")

        assert response.status_code == 400
        assert list(response.json()) == [name]

    @pytest.mark.parametrize(
        "raw", ["", "0", "-1", "501", "1.5", "ten", "+5", "99999999999999999999"]
    )
    def test_a_page_size_out_of_range_is_a_400_not_a_clamp(self, reader_client, raw):
        response = reader_client.get(f"/api/user?page_size={raw}")

        assert response.status_code == 400
        assert list(response.json()) == ["page_size"]

    def test_page_sizes_from_one_to_five_hundred(self, reader_client, people):
        assert len(reader_client.get("/api/user?page_size=1").json()["results"]) == 1
        assert len(reader_client.get("/api/user?page_size=500").json()["results"]) == 4
        assert len(reader_client.get("/api/user").json()["results"]) == 4


class TestWithARealClient:
    """``requests`` against a live server: the encoding of a list is the client's."""

    @pytest.fixture
    def session(self, live_server, transactional_db) -> requests.Session:
        reader = User.objects.create_user(username="r", email="r@example.com")
        session = requests.Session()
        session.headers["Authorization"] = f"Token {Token.objects.create(user=reader).key}"
        return session

    @pytest.mark.parametrize("path", BATCH_PATHS)
    def test_every_way_requests_sends_ids(self, session, live_server, path):
        users = [User.objects.create_user(username=f"u{n}", email=f"u{n}@x.io") for n in range(3)]
        a, b, c = (user.id for user in users)
        url = f"{live_server.url}{path}"

        for params, expected in (
            ({"ids": [a, b, c]}, [a, b, c]),
            ({"ids": f"{c},{a},{b}"}, [c, a, b]),
            ([("ids", f"{b},{a}"), ("ids", c)], [b, a, c]),
            ({"ids": [c, a, c, b]}, [c, a, b]),
        ):
            response = session.get(url, params=params, timeout=30)
            body = response.json()
            assert response.status_code == 200, (params, body)
            assert [user["id"] for user in body["results"]] == expected, params
            assert body["missing"] == []

    def test_a_repeated_page_size_from_requests_is_a_400(self, session, live_server):
        response = session.get(
            f"{live_server.url}/api/user", params={"page_size": [1, 2]}, timeout=30
        )

        assert response.status_code == 400
        assert list(response.json()) == ["page_size"]


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
            if kind.name == "username" and threading.current_thread() is thread:
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
        reader = token_client(User.objects.create(username="r", email="r@example.com"))

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
        reader = token_client(User.objects.create(username="r", email="r@example.com"))

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
