"""What a cached GET costs, in counts: SQL queries and Redis round trips.

These lock in the hit path's budget, so a change that adds a query or a round
trip fails here rather than in a benchmark. Speed itself is measured by the
benchmark suite, not by tests.

On a Redis Cluster the token and the user live in different hash slots, so the
user's read is a round trip of its own there. The near cache is off here: these
are the costs of a read that Redis answers (a process's first read of a user, or
one the near cache let go); what a near-cache hit costs, none, is
tests/cache/test_near_cache.py's.
"""

import pytest
from django_redis import get_redis_connection
from redis.cluster import RedisCluster


@pytest.fixture(autouse=True)
def _near_cache_off(settings):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "NEAR_CACHE_SIZE": 0}


def _user_read_round_trips() -> int:
    """Round trips the user's HGETALL adds to the token lookup's: none, but one on a cluster."""
    return int(isinstance(get_redis_connection("default"), RedisCluster))


def test_a_cached_get_costs_no_sql_and_one_round_trip(
    reader_client, reader, django_assert_num_queries, redis_round_trips
):
    """The token lookup, which counts the request against the rate limit and reads
    the user's hash in the same round trip: two commands, EVALSHA and HGETALL."""
    reader_client.get(f"/api/user/{reader.id}")
    redis_round_trips.reset()

    with django_assert_num_queries(0):
        response = reader_client.get(f"/api/user/{reader.id}")

    assert response["X-Cache"] == "HIT"
    assert redis_round_trips.count == 1 + _user_read_round_trips()
    assert redis_round_trips.commands == 2


def test_without_rate_limits_a_cached_get_costs_one_round_trip(
    settings, reader_client, reader, redis_round_trips
):
    rest = {**settings.REST_FRAMEWORK}
    rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], "user": None}
    settings.REST_FRAMEWORK = rest
    reader_client.get(f"/api/user/{reader.id}")
    redis_round_trips.reset()

    assert reader_client.get(f"/api/user/{reader.id}")["X-Cache"] == "HIT"
    assert redis_round_trips.count == 1 + _user_read_round_trips()
    assert redis_round_trips.commands == 2  # the token's HGETALL and the user's


def test_a_miss_costs_one_query_for_the_user(
    reader_client, reader, make_user, django_assert_num_queries, redis_round_trips
):
    """Token hit, rate limit and the user's HGETALL (a miss) as above, then the
    lease, one SELECT, the fill."""
    other = make_user(username="other", email="other@example.com")
    reader_client.get(f"/api/user/{reader.id}")
    redis_round_trips.count = 0

    with django_assert_num_queries(1):
        response = reader_client.get(f"/api/user/{other.id}")

    assert response["X-Cache"] == "MISS"
    assert redis_round_trips.count == 3 + _user_read_round_trips()


def test_a_cached_absence_is_a_404_in_one_round_trip(
    reader_client, reader, make_user, django_assert_num_queries, redis_round_trips
):
    """The negative cache, read ahead like a user: an id below the largest, whose
    user was deleted."""
    gone = make_user(username="gone", email="gone@example.com")
    make_user(username="later", email="later@example.com")
    url = f"/api/user/{gone.id}"
    gone.delete()
    reader_client.get(url)
    redis_round_trips.count = 0

    with django_assert_num_queries(0):
        response = reader_client.get(url)

    assert (response.status_code, response["X-Cache"]) == (404, "HIT")
    assert redis_round_trips.count == 1 + _user_read_round_trips()


def test_a_read_ahead_is_not_served_to_a_caller_the_token_refuses(
    reader_client, reader, django_assert_num_queries
):
    """The user is read before the token is checked; a refused token sees none of it."""
    reader_client.get(f"/api/user/{reader.id}")
    reader_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)

    response = reader_client.get(f"/api/user/{reader.id}")

    assert response.status_code == 401
    assert reader.username not in response.content.decode()


# The batch read, and the list's ?ids= it took over from: the users' entries are
# read ahead in the token lookup's round trip like a single user's.
BATCH_PATHS = ["/api/user/batch", "/api/user"]


@pytest.fixture
def batch_ids(reader, make_user, deleted_id) -> list[int]:
    """Three users and the id of one deleted."""
    others = [make_user(username=f"b{n}", email=f"b{n}@example.com") for n in range(2)]
    return [reader.id, *(user.id for user in others), deleted_id]


def _batch_url(path: str, ids: list[int]) -> str:
    return f"{path}?ids={ids[0]}&ids={','.join(map(str, ids[1:]))}"


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_a_cached_batch_costs_no_sql_and_one_round_trip(
    reader_client, batch_ids, deleted_id, django_assert_num_queries, redis_round_trips, path
):
    """The token lookup: EVALSHA, and an HGETALL for each id, the absent one too."""
    url = _batch_url(path, batch_ids)
    reader_client.get(url)
    redis_round_trips.reset()

    with django_assert_num_queries(0):
        response = reader_client.get(url)

    assert response["X-Cache"] == "HIT"
    assert response.json()["missing"] == [deleted_id]
    assert redis_round_trips.count == 1 + len(batch_ids) * _user_read_round_trips()
    assert redis_round_trips.commands == 1 + len(batch_ids)


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_a_batch_of_misses_costs_one_query_for_them_all(
    reader_client, reader, batch_ids, django_assert_num_queries, redis_round_trips, path
):
    """The token and its reader cached, the other ids not: their reads, then the
    leases, one SELECT for them all (and one for the largest id, as an id was found
    nowhere), and one fill for every entry, as for a single user. On a cluster, the
    leases and fills are calls per hash slot, as many as the ids' slots happen to
    be: only the queries are pinned there."""
    reader_client.get(f"/api/user/{reader.id}")
    redis_round_trips.reset()

    with django_assert_num_queries(2):
        response = reader_client.get(_batch_url(path, batch_ids))

    assert response["X-Cache"] == "MISS"
    assert len(response.json()["results"]) == 3
    if not _user_read_round_trips():
        assert redis_round_trips.count == 3


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_a_batch_read_ahead_is_not_served_to_a_caller_the_token_refuses(
    reader_client, reader, batch_ids, path
):
    url = _batch_url(path, batch_ids)
    reader_client.get(url)
    reader_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)

    response = reader_client.get(url)

    assert response.status_code == 401
    assert reader.username not in response.content.decode()
