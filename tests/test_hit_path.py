"""What a cached GET costs, in counts: SQL queries and Redis round trips.

These lock in the hit path's budget, so a change that adds a query or a round
trip fails here rather than in a benchmark. Speed itself is measured by the
benchmark suite, not by tests.
"""


def test_a_cached_get_costs_no_sql_and_two_round_trips(
    reader_client, reader, django_assert_num_queries, redis_round_trips
):
    """The token lookup, which counts the request against the rate limit in the same
    call, and the user's hash."""
    reader_client.get(f"/api/user/{reader.id}")
    redis_round_trips.count = 0

    with django_assert_num_queries(0):
        response = reader_client.get(f"/api/user/{reader.id}")

    assert response["X-Cache"] == "HIT"
    assert redis_round_trips.count == 2


def test_without_rate_limits_a_cached_get_costs_two_round_trips(
    settings, reader_client, reader, redis_round_trips
):
    rest = {**settings.REST_FRAMEWORK}
    rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], "user": None}
    settings.REST_FRAMEWORK = rest
    reader_client.get(f"/api/user/{reader.id}")
    redis_round_trips.count = 0

    assert reader_client.get(f"/api/user/{reader.id}")["X-Cache"] == "HIT"
    assert redis_round_trips.count == 2


def test_a_miss_costs_one_query_for_the_user(
    reader_client, reader, make_user, django_assert_num_queries, redis_round_trips
):
    """Token hit and rate limit as above, then the user: HGETALL (miss), the lease,
    one SELECT, the fill."""
    other = make_user(username="other", email="other@example.com")
    reader_client.get(f"/api/user/{reader.id}")
    redis_round_trips.count = 0

    with django_assert_num_queries(1):
        response = reader_client.get(f"/api/user/{other.id}")

    assert response["X-Cache"] == "MISS"
    assert redis_round_trips.count == 4
