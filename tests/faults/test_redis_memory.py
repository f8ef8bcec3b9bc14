"""A full Redis, through the API of the service under gunicorn.

Under the noeviction policy (Redis's default), a Redis at maxmemory refuses
every command that would add data (OOM) but still answers reads and deletes:
the service's fills, leases and token lookups fail, so it serves reads from
MySQL (BYPASS, the circuit breaker open), never a 5xx, and caches again once
memory is freed. Under allkeys-lru, the policy the compose file and
docs/deployment.md choose, Redis evicts the least recently used keys instead,
and the cache goes on working at maxmemory.
"""

import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from tests.helpers import database_url
from tests.servers import RedisServer, WebService
from users.cache import keys
from users.models import User

pytestmark = pytest.mark.slow

MAXMEMORY = "8mb"
FILLER_VALUE = b"x" * 16_384


@pytest.fixture
def users(transactional_db) -> list[User]:
    return [User.objects.create(username=f"u{n}", email=f"u{n}@example.com") for n in range(5)]


def _service_on(tmp_path, policy: str) -> Iterator[tuple[redis.Redis, WebService]]:
    redis_server = RedisServer(
        tmp_path, options=["--maxmemory", MAXMEMORY, "--maxmemory-policy", policy]
    )
    redis_server.start()
    web = WebService(
        tmp_path,
        database_url=database_url(),
        redis_url=redis_server.url,
        CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX,
    )
    try:
        web.prepare()
        web.start()
        yield redis_server.client(), web
    finally:
        web.stop()
        redis_server.stop()


@pytest.fixture
def noeviction(tmp_path):
    yield from _service_on(tmp_path, "noeviction")


@pytest.fixture
def allkeys_lru(tmp_path):
    yield from _service_on(tmp_path, "allkeys-lru")


def fill_up(client: redis.Redis) -> list[str]:
    """Writes filler keys until Redis refuses one for memory; returns their names."""
    keys = []
    for index in range(10_000):
        key = f"filler:{index}"
        try:
            client.set(key, FILLER_VALUE)
        except redis.exceptions.OutOfMemoryError:
            return keys
        keys.append(key)
    raise AssertionError("Redis never ran out of memory")


def read_until_hit(web: WebService, user_id: int, timeout: float = 15) -> list[str]:
    """The X-Cache of reads of one user until one is a hit; each read must be a 200."""
    sources = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, headers, _ = web.request("GET", f"/api/user/{user_id}")
        assert status == 200, (status, headers)
        sources.append(headers["x-cache"])
        if sources[-1] == "HIT":
            break
        time.sleep(0.1)
    return sources


def test_noeviction_full_reads_answer_from_mysql_and_fills_resume_once_freed(users, noeviction):
    client, web = noeviction
    fillers = fill_up(client)

    while_full = [web.request("GET", f"/api/user/{user.id}")[:2] for user in users * 3]
    cached_while_full = [client.exists(keys.user_key(user.id)) for user in users]
    client.delete(*fillers)
    once_freed = {user.id: read_until_hit(web, user.id) for user in users}

    assert [status for status, _ in while_full] == [200] * len(while_full)
    assert {headers["x-cache"] for _, headers in while_full} <= {"MISS", "BYPASS"}
    assert cached_while_full == [0] * len(users)
    assert all(sources[-1] == "HIT" for sources in once_freed.values()), once_freed


def test_allkeys_lru_at_maxmemory_evicts_and_the_cache_goes_on(users, allkeys_lru):
    client, web = allkeys_lru
    # Twice maxmemory in filler keys: Redis evicts to make room, it never refuses.
    for index in range(2 * int(MAXMEMORY.removesuffix("mb")) * 1024 * 1024 // len(FILLER_VALUE)):
        client.set(f"filler:{index}", FILLER_VALUE)
    assert client.info("stats")["evicted_keys"] > 0

    sources = {user.id: read_until_hit(web, user.id) for user in users}

    assert all(reads[-1] == "HIT" and "BYPASS" not in reads for reads in sources.values()), sources
