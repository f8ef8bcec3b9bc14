"""MySQL down: cached users are still served; misses and writes get a 503 with a
JSON body; and the service recovers without a restart once MySQL is back.

The test runs its own mariadbd and redis-server, and the service itself under
gunicorn with the production settings, then stops and restarts mariadbd.
"""

import time

import pytest

from tests.servers import WebService, service_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path):
    with service_stack(tmp_path) as (mariadb, _redis_server, web):
        web.start()
        yield mariadb, web


def _create(web: WebService, name: str) -> dict:
    status, _, body = web.request("POST", "/api/user", {"username": name, "email": f"{name}@x.io"})
    assert status == 201, body
    return body


def test_mysql_outage_serves_hits_refuses_the_rest_and_recovers(stack):
    mariadb, web = stack
    cached = _create(web, "cached")
    uncached = _create(web, "uncached")
    assert web.request("GET", f"/api/user/{cached['id']}")[1]["x-cache"] == "HIT"
    assert web.request("DELETE", f"/api/user/{uncached['id']}")[0] == 204
    other = _create(web, "other")
    web.manage(
        "shell",
        "-c",
        f"from users.cache import keys, store; store.invalidate([keys.user_key({other['id']})])",
    )

    mariadb.stop()

    for _ in range(4):  # every worker process, each with its own connections
        status, headers, body = web.request("GET", f"/api/user/{cached['id']}")
        assert (status, headers["x-cache"], body) == (200, "HIT", cached)
    status, headers, body = web.request("GET", f"/api/user/{other['id']}")
    assert status == 503 and "detail" in body
    assert headers["content-type"] == "application/json"
    assert web.request("POST", "/api/user", {"username": "n", "email": "n@x.io"})[0] == 503
    assert web.request("PATCH", f"/api/user/{cached['id']}", {"first_name": "x"})[0] == 503
    assert web.request("GET", "/api/user")[0] == 503

    mariadb.start()

    status, headers, body = web.request("GET", f"/api/user/{other['id']}")
    assert (status, headers["x-cache"], body) == (200, "MISS", other)
    assert web.request("POST", "/api/user", {"username": "n", "email": "n@x.io"})[0] == 201
    patched = web.request("PATCH", f"/api/user/{cached['id']}", {"first_name": "back"})
    assert patched[0] == 200
    assert web.request("GET", f"/api/user/{cached['id']}")[2]["first_name"] == "back"


def test_a_pending_invalidation_does_not_make_cached_reads_need_mysql(tmp_path):
    """A write whose invalidation Redis missed leaves it pending in its process; that
    process drops the entry before its next cached read, and must manage without
    MySQL, or a read Redis can answer becomes a 503 while MySQL is away."""
    with service_stack(tmp_path, WEB_CONCURRENCY="1") as (mariadb, redis_server, web):
        web.start()
        changed, untouched = _create(web, "changed"), _create(web, "untouched")
        for user in (changed, untouched):
            assert web.request("GET", f"/api/user/{user['id']}")[1]["x-cache"] == "HIT"

        redis_server.pause()
        try:
            patched = web.request("PATCH", f"/api/user/{changed['id']}", {"first_name": "new"})
            assert patched[0] == 200  # committed; the invalidation is pending
            mariadb.stop()
        finally:
            redis_server.resume()
        time.sleep(1)  # past the circuit breaker's cooldown

        status, headers, body = web.request("GET", f"/api/user/{untouched['id']}")
        assert (status, headers.get("x-cache"), body) == (200, "HIT", untouched)
        # The changed user's stale entry is gone: without MySQL there is no answer.
        assert web.request("GET", f"/api/user/{changed['id']}")[0] == 503

        mariadb.start()
        status, _, body = web.request("GET", f"/api/user/{changed['id']}")
        assert (status, body["first_name"]) == (200, "new")
