"""A Redis primary killed under load, on a Redis Cluster and behind Sentinel.

These run when the whole run's cache is a cluster or a Sentinel group of its own
(``USERSVC_TEST_REDIS=cluster`` or ``sentinel``, as ``.ci/run`` does), and are
skipped on the shared single server, which has no replica to take over.

While the primary is down and until a replica has taken over, every request
still gets its answer: reads are HIT, MISS or BYPASS (the breaker and the
bypass at work), writes commit, and nothing is a 5xx. Once the replica serves,
reads return to HIT and writes reach the cache again.
"""

import collections
import random
import threading
import time

import pytest
from django.db import connection
from django_redis import get_redis_connection
from redis.cluster import RedisCluster
from redis.sentinel import SentinelConnectionPool

from tests.conftest import _token_client
from tests.servers import RedisClusterServers
from users.cache import keys
from users.models import User

pytestmark = pytest.mark.slow

USERS = 30
READERS = 4


@pytest.fixture
def topology(redis_topology):
    if redis_topology is None:
        pytest.skip("needs a Redis Cluster or Sentinel group: USERSVC_TEST_REDIS (.ci/run)")
    return redis_topology


@pytest.fixture
def unthrottled(settings):
    """The load is far above the per-user rate limit, which is not under test here."""
    rest = {**settings.REST_FRAMEWORK}
    rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], "user": None}
    settings.REST_FRAMEWORK = rest


def test_the_cache_is_served_by_the_topology(topology):
    client = get_redis_connection("default")
    if isinstance(topology, RedisClusterServers):
        assert isinstance(client, RedisCluster)
        assert len(client.get_primaries()) == RedisClusterServers.PRIMARIES
        assert {node.name for node in client.get_nodes()} <= set(topology.seeds)
    else:
        assert isinstance(client.connection_pool, SentinelConnectionPool)
        assert client.connection_pool.service_name == topology.service


class Load:
    """Threads that GET random users and PATCH some, each through the API with its
    own client and database connection, keeping every answer."""

    def __init__(self, staff: User, user_ids: list[int]) -> None:
        self.staff = staff
        self.user_ids = user_ids
        self.answers: list[tuple[str, int, str | None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(seed, seed == 0)) for seed in range(READERS)
        ]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, seed: int, writes: bool) -> None:
        rng = random.Random(seed)
        client = _token_client(self.staff)
        try:
            while not self._stop.is_set():
                user_id = rng.choice(self.user_ids)
                if writes and rng.random() < 0.3:
                    response = client.patch(
                        f"/api/user/{user_id}", {"first_name": f"w{rng.random()}"}, format="json"
                    )
                    answer = ("PATCH", response.status_code, None)
                else:
                    response = client.get(f"/api/user/{user_id}")
                    answer = ("GET", response.status_code, response.get("X-Cache"))
                with self._lock:
                    self.answers.append(answer)
        finally:
            connection.close()


def _read_until_hit(client, user_id: int, timeout: float = 15.0) -> list[str]:
    sources = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/api/user/{user_id}")
        assert response.status_code == 200
        sources.append(response["X-Cache"])
        if sources[-1] == "HIT":
            break
        time.sleep(0.05)
    return sources


def test_a_primary_killed_under_load(topology, unthrottled, transactional_db, staff):
    user_ids = [
        User.objects.create(username=f"load{n}", email=f"load{n}@example.com").id
        for n in range(USERS)
    ]
    client = _token_client(staff)
    for user_id in user_ids:
        client.get(f"/api/user/{user_id}")
    watched_key = keys.user_key(user_ids[0])

    with Load(staff, user_ids) as load:
        time.sleep(0.3)
        killed = topology.primary_for(watched_key)
        killed.kill()
        topology.wait_for_failover(killed, watched_key)
        after_failover = len(load.answers)
        time.sleep(1.5)
    answers = load.answers

    try:
        statuses = collections.Counter(status for _, status, _ in answers)
        sources = collections.Counter(source for method, _, source in answers if method == "GET")
        assert set(statuses) == {200}, statuses
        assert set(sources) <= {"HIT", "MISS", "BYPASS"}, sources
        assert sources["BYPASS"] > 0, f"the outage should have been felt: {sources}"
        assert any(source == "HIT" for _, _, source in answers[after_failover:]), (
            "reads should hit the promoted replica"
        )

        for user_id in user_ids:
            assert _read_until_hit(client, user_id)[-1] == "HIT"
        patched = client.patch(f"/api/user/{user_ids[0]}", {"first_name": "after"}, format="json")
        assert patched.status_code == 200
        read_back = client.get(f"/api/user/{user_ids[0]}")
        assert read_back.json()["first_name"] == "after"
        assert _read_until_hit(client, user_ids[0])[-1] == "HIT"
    finally:
        topology.recover(killed)
