"""Redis commands per request, as Redis counts them (``INFO commandstats``, a
script's own commands included: what ``./scripts/bench`` reports per request),
on a server of the test's own so that nothing else runs commands meanwhile.

The hit path's round trips are tests/cache/test_hit_path.py's; these pin what a miss
and a write cost Redis itself. The token is held by the near cache here, as it
is on a warm server, and the rate limits are off: their counters are the
throttle's (tests/cache/test_hit_path.py counts them with the token's read)."""

import pytest

from tests.helpers import one_server_caches
from tests.servers import RedisServer


@pytest.fixture
def own_redis(tmp_path, settings):
    server = RedisServer(tmp_path)
    server.start()
    settings.CACHES = one_server_caches(server.url)
    rest = {**settings.REST_FRAMEWORK}
    rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], "user": None}
    settings.REST_FRAMEWORK = rest
    yield server
    server.stop()


def _commands(server, action) -> dict[str, int]:
    """The commands Redis ran while ``action`` did, by name; the near cache's
    PINGs on its tracking connections left out."""
    client = server.client()

    def stats() -> dict[str, int]:
        found = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in found.items()}

    before = stats()
    action()
    after = stats()
    ran = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in ran.items() if calls and name not in ("info", "ping")}


def _hold_token(client, user) -> None:
    """Until the near cache holds the client's token (a first read fills it)."""
    for _ in range(2):
        client.get(f"/api/user/{user.id}")


def test_a_miss_costs_seven_commands(own_redis, reader_client, reader, make_user):
    """The user's HGETALL, its lease (SET NX), and the fill: EVALSHA, the lease's
    GET, HSET and PEXPIRE, then the PEXPIRE GT that spares the near cache the
    fill's own invalidation (users/cache/tracking.py)."""
    other = make_user(username="other", email="other@example.com")
    _hold_token(reader_client, reader)

    ran = _commands(own_redis, lambda: reader_client.get(f"/api/user/{other.id}"))

    assert ran == {"hgetall": 1, "set": 1, "evalsha": 1, "get": 1, "hset": 1, "pexpire": 2}


def test_the_next_read_of_a_filled_user_costs_none(own_redis, reader_client, reader, make_user):
    other = make_user(username="other", email="other@example.com")
    _hold_token(reader_client, reader)
    reader_client.get(f"/api/user/{other.id}")

    ran = _commands(own_redis, lambda: reader_client.get(f"/api/user/{other.id}"))

    assert ran == {}


def test_a_create_costs_six_commands(
    own_redis, staff_client, staff, django_capture_on_commit_callbacks
):
    """The new user's lease, inside the transaction; after the commit one DEL of
    the name keys and their leases, and the fill under the lease: EVALSHA, the
    lease's GET, HSET and PEXPIRE."""
    _hold_token(staff_client, staff)

    def create(name: str) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            body = {"username": name, "email": f"{name}@example.com"}
            assert staff_client.post("/api/user", body, format="json").status_code == 201

    create("first")  # Redis learns the script

    ran = _commands(own_redis, lambda: create("newcomer"))

    assert ran == {"set": 1, "del": 1, "evalsha": 1, "get": 1, "hset": 1, "pexpire": 1}


def test_a_patch_costs_one_command(
    own_redis, staff_client, staff, make_user, django_capture_on_commit_callbacks
):
    """Under the default strategy, "invalidate": one DEL of the user's entry, its
    lease and the names' keys."""
    other = make_user(username="other", email="other@example.com")
    _hold_token(staff_client, staff)

    def patch() -> None:
        with django_capture_on_commit_callbacks(execute=True):
            response = staff_client.patch(
                f"/api/user/{other.id}", {"first_name": "Changed"}, format="json"
            )
            assert response.status_code == 200

    ran = _commands(own_redis, patch)

    assert ran == {"del": 1}
