"""A Redis primary killed under load, on a Redis Cluster and behind Sentinel.

These run when the whole run's cache is a cluster or a Sentinel group of its own
(``USERSVC_TEST_REDIS=cluster`` or ``sentinel``, as ``.ci/run`` does), and are
skipped on the shared single server, which has no replica to take over.

While the primary is down and until a replica has taken over, every request
still gets its answer: reads are HIT, MISS or BYPASS (the breaker and the
bypass at work), writes commit, and nothing is a 5xx. Once the replica serves,
reads return to HIT and writes reach the cache again. On a cluster, the other
shards go on meanwhile: their writes reach Redis at once. And an invalidation
the dying primary acknowledged but never passed on to its replica is not lost:
it was not confirmed, so the outbox replays it on the new primary.
"""

import collections
import concurrent.futures
import contextlib
import random
import threading
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from django_redis import get_redis_connection
from redis.cluster import RedisCluster
from redis.sentinel import SentinelConnectionPool

from tests.helpers import cached_entry, token_client
from tests.servers import RedisClusterServers, RedisServer
from users import reads, services
from users.cache import keys, outbox, store, transport
from users.models import CacheInvalidation, User

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
        client = token_client(self.staff)
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
    client = token_client(staff)
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


@pytest.fixture
def cluster(topology):
    if not isinstance(topology, RedisClusterServers):
        pytest.skip("a shard fails on its own only on a cluster")
    return topology


def _users_by_primary(topology, count: int) -> dict[RedisServer, list[User]]:
    made = collections.defaultdict(list)
    for n in range(count):
        user = User.objects.create(
            username=f"shard{n}", email=f"shard{n}@example.com", first_name="before"
        )
        made[topology.primary_for(keys.user_key(user.id))].append(user)
    return made


def _until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def test_a_failing_shard_holds_back_no_other_shards_invalidations(
    cluster, settings, transactional_db, redis_client
):
    """One primary down, its breaker open (for the whole test: its cooldown is ten
    minutes): a write to a key another primary serves is applied at once and read
    from the cache, and a replay of keys on both shards drops the healthy one's
    and keeps the failing one's for later."""
    settings.USERS_CACHE = {**settings.USERS_CACHE, "BREAKER_COOLDOWN_MS": 600_000}
    by_primary = _users_by_primary(cluster, 15)
    killed = next(primary for primary, users in by_primary.items() if users)
    doomed = by_primary[killed][0]
    written, replayed = [user for primary, users in by_primary.items() if primary is not killed
                         for user in users][:2]  # fmt: skip
    doomed_key, written_key, replayed_key = (
        keys.user_key(user.id) for user in (doomed, written, replayed)
    )
    for user in (doomed, written, replayed):
        reads.user_get(user_id=user.id)
    assert all(redis_client.exists(key) for key in (doomed_key, written_key, replayed_key))

    killed.kill()
    try:
        def shard_down() -> bool:
            with contextlib.suppress(transport.CacheUnavailable):
                store.take_lease(doomed_key, "probe")
            return transport.breakers.is_open

        _until(shard_down, "this process's breaker of the killed primary opens")

        services.user_update(actor=None, user_id=written.id, data={"first_name": "after"})
        assert not redis_client.exists(written_key), "the healthy shard took the write at once"
        read = reads.user_get(user_id=written.id)
        assert (read.source, read.value["first_name"]) == (reads.Source.MISS, "after")

        CacheInvalidation.objects.create(keys=[replayed_key, doomed_key])
        with contextlib.suppress(transport.CacheUnavailable):  # unless the shard is back
            outbox.outbox.replay()
        assert not redis_client.exists(replayed_key), "the healthy shard's keys were replayed"
        assert {key for row in CacheInvalidation.objects.all() for key in row.keys} <= {doomed_key}

        cluster.wait_for_failover(killed, doomed_key)

        def replayed_whole() -> bool:
            with contextlib.suppress(transport.CacheUnavailable):
                outbox.outbox.replay()
            return not CacheInvalidation.objects.exists()

        _until(replayed_whole, "the failing shard's keys are replayed once it is back")
        assert not redis_client.exists(doomed_key)
    finally:
        cluster.recover(killed)


# How much a paused replica is sent before its primary's writes stay in the
# primary's own memory: more than the kernel buffers of the link can hold.
def _link_buffers() -> int:
    try:
        return sum(
            int(Path(f"/proc/sys/net/ipv4/tcp_{side}").read_text().split()[2])
            for side in ("rmem", "wmem")
        )
    except (OSError, IndexError, ValueError):
        return 64 * 2**20


@contextlib.contextmanager
def replication_held(topology, primary: RedisServer, tag: int):
    """The primary's replica paused, and its link filled with more than its
    buffers hold (keys in the slot of ``tag``'s user): whatever the primary
    writes now stays in its own memory, lost if it dies before the replica
    reads again. The replica resumes when the block ends."""
    replica = topology.replica_of(primary)
    raw = redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=60)
    assert raw.execute_command("WAIT", 1, 30_000) == 1, "the replica has everything so far"
    replica.pause()
    try:
        chunk = b"x" * 2**20
        with raw.pipeline(transaction=False) as pipe:
            for n in range(_link_buffers() // len(chunk) + 8):
                pipe.set(f"{settings.TEST_RUN_PREFIX}:held:{{{tag}}}:{n}", chunk)
            pipe.execute()
        yield
    finally:
        raw.close()
        replica.resume()


def _stale(redis_client, acknowledged: dict[int, str]) -> list[int]:
    """The users whose entry in Redis is older than their acknowledged write."""
    try:
        entries = {user_id: cached_entry(redis_client, user_id) for user_id in acknowledged}
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return list(acknowledged)  # the cache does not answer yet: nothing is known fresh
    return [
        user_id for user_id, entry in entries.items()
        if entry and entry.get("first_name") != acknowledged[user_id]
    ]  # fmt: skip


def _write_all(acknowledged: dict[int, str]) -> None:
    """Each write at once, from threads of their own (each waits for the replica)."""

    def write(user_id: int, name: str) -> None:
        try:
            services.user_update(actor=None, user_id=user_id, data={"first_name": name})
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(len(acknowledged)) as pool:
        for done in [pool.submit(write, *item) for item in acknowledged.items()]:
            done.result()


def test_invalidations_a_dying_primary_acknowledged_survive_its_failover(
    topology, transactional_db, redis_client
):
    """A burst of writes acknowledged by a primary whose replica has not had them
    (it is held back), then the primary killed: the replica that takes over holds
    the old entries. Each write waited for a replica to confirm its invalidation,
    none did, so each left it to the outbox, which replays it on the new primary:
    no entry older than an acknowledged write survives the failover."""
    by_primary = _users_by_primary(topology, 12)
    primary, users = max(by_primary.items(), key=lambda item: len(item[1]))
    users = users[:4]
    for user in users:
        assert reads.user_get(user_id=user.id).source is reads.Source.MISS
    acknowledged = {user.id: f"after-{user.id}" for user in users}

    with replication_held(topology, primary, users[0].id):
        _write_all(acknowledged)
        primary.kill()
    try:
        topology.wait_for_failover(primary, keys.user_key(users[0].id))
        _until(lambda: not _stale(redis_client, acknowledged), "the lost invalidations replayed")
    finally:
        topology.recover(primary)
