"""Redis down, paused or refusing: reads bypass the cache, writes commit, and the
invalidations Redis missed are replayed when it returns.

Each test runs its own ``redis-server`` on a free port and stops, pauses
(SIGSTOP keeps its data, like a stalled server) and resumes it.
"""

import time

import pytest
from rest_framework.authtoken.models import Token

from tests.helpers import cached_entry, database_url, one_server_caches, token_client
from tests.servers import RedisServer, WebService
from users import reads, services
from users.cache import keys, outbox, store, transport
from users.conf import user_cache_settings
from users.models import CacheInvalidation, User
from users.reads import USERS


def _serve_cache_from(server: RedisServer, settings):
    """Points the cache at ``server`` for one test, with a closed breaker before and after."""
    server.start()
    caches = one_server_caches(server.url)
    caches["default"]["OPTIONS"].update(SOCKET_CONNECT_TIMEOUT=0.25, SOCKET_TIMEOUT=0.25)
    settings.CACHES = caches
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path, settings):
    yield from _serve_cache_from(RedisServer(tmp_path), settings)


@pytest.fixture
def user(transactional_db) -> User:
    return User.objects.create(username="steady", email="steady@example.com", first_name="v1")


def _raw(own_redis):
    import redis

    return redis.Redis(port=own_redis.port)


def test_reads_bypass_a_stopped_redis(own_redis, user, django_assert_num_queries):
    own_redis.stop()

    with django_assert_num_queries(1):
        result = reads.user_get(user_id=user.id)

    assert result.source is reads.Source.BYPASS
    assert result.value["first_name"] == "v1"


def test_reads_bypass_a_paused_redis_and_never_write_back(own_redis, user):
    own_redis.pause()
    result = reads.user_get(user_id=user.id)
    own_redis.resume()

    assert result.source is reads.Source.BYPASS
    assert result.value["first_name"] == "v1"
    assert _raw(own_redis).exists(keys.user_key(user.id)) == 0


def test_the_api_answers_bypass_not_5xx(own_redis, user):
    client = token_client(user)
    own_redis.stop()

    response = client.get(f"/api/user/{user.id}")

    assert response.status_code == 200
    assert response["X-Cache"] == "BYPASS"


def test_the_breaker_opens_and_then_fails_fast(settings, own_redis, user):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "BREAKER_FAILURES": 2}
    own_redis.pause()
    try:
        for _ in range(2):
            with pytest.raises(transport.CacheUnavailable, match="Timeout"):
                store.read_many([(USERS, 1)])
        assert transport.breakers.is_open
        with pytest.raises(transport.CacheUnavailable, match="circuit breaker open"):
            store.read_many([(USERS, 1)])
    finally:
        own_redis.resume()


def test_the_breaker_closes_by_itself_when_redis_returns(settings, own_redis, user):
    settings.USERS_CACHE = {
        **settings.USERS_CACHE, "BREAKER_FAILURES": 1, "BREAKER_COOLDOWN_MS": 200
    }  # fmt: skip
    own_redis.stop()
    assert reads.user_get(user_id=user.id).source is reads.Source.BYPASS
    assert transport.breakers.is_open
    own_redis.start()

    deadline = time.monotonic() + 30
    sources = []
    while time.monotonic() < deadline:
        sources.append(reads.user_get(user_id=user.id).source)
        if sources[-1] is reads.Source.HIT:
            break
        time.sleep(0.05)
    assert sources[-1] is reads.Source.HIT
    assert not transport.breakers.is_open


def test_writes_during_an_outage_commit_and_are_acknowledged(own_redis, user):
    own_redis.stop()

    updated = services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})

    assert updated.first_name == "v2"
    assert User.objects.get(pk=user.id).first_name == "v2"
    assert CacheInvalidation.objects.count() == 1


def test_after_a_pause_reads_return_the_new_state(own_redis, user):
    """SIGSTOP keeps the old entry in Redis while the update commits."""
    reads.user_get(user_id=user.id)
    own_redis.pause()
    services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})
    assert CacheInvalidation.objects.count() == 1
    own_redis.resume()

    assert reads.user_get(user_id=user.id).value["first_name"] == "v2"


@pytest.fixture
def persistent_redis(tmp_path, settings):
    """A Redis whose data survives a restart, so the stale entry is still there after
    the outage and nothing but a replay can remove it."""
    yield from _serve_cache_from(RedisServer(tmp_path, persistent=True), settings)


class TestInvalidationsSurviveAnOutage:
    def _update_during_outage(self, redis_server, user) -> None:
        assert reads.user_get(user_id=user.id).source is reads.Source.MISS
        assert _raw(redis_server).exists(keys.user_key(user.id))
        redis_server.stop()
        services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})
        assert CacheInvalidation.objects.count() == 1
        assert outbox.outbox.pending
        redis_server.start()

    def test_the_writing_process_replays_before_its_next_cached_read(
        self, settings, persistent_redis, user
    ):
        """The background retry is pushed far away, so only the read can drop the
        entry: from the keys this process kept, with no query; the outbox row stays
        for the background replay."""
        settings.USERS_CACHE = {**settings.USERS_CACHE, "OUTBOX_RETRY_MS": 60_000}
        self._update_during_outage(persistent_redis, user)
        stale = cached_entry(_raw(persistent_redis), user.id).get("first_name")
        assert stale == "v1", "the restarted Redis should still hold the old entry"

        result = reads.user_get(user_id=user.id)

        assert result.value["first_name"] == "v2"
        assert result.source is reads.Source.MISS
        assert CacheInvalidation.objects.count() == 1

    def test_the_background_replay_clears_it_for_every_process(
        self, settings, persistent_redis, user
    ):
        """No read from this process: the outbox thread alone must remove the stale
        entry (the test above shows the restarted Redis holds it), and it does not
        wait for the breaker, whose cooldown here outlasts the test: the replay
        asks Redis whatever the breaker says, one retry after Redis is back."""
        settings.USERS_CACHE = {
            **settings.USERS_CACHE, "BREAKER_FAILURES": 1, "BREAKER_COOLDOWN_MS": 600_000
        }  # fmt: skip
        self._update_during_outage(persistent_redis, user)
        key = keys.user_key(user.id)

        def replayed() -> bool:
            return not _raw(persistent_redis).exists(key) and not CacheInvalidation.objects.exists()

        deadline = time.monotonic() + 30
        while not replayed() and time.monotonic() < deadline:
            time.sleep(0.02)

        assert _raw(persistent_redis).exists(key) == 0
        assert CacheInvalidation.objects.count() == 0
        assert not transport.breakers.is_open, "the replay's success closes the breaker"

    def test_a_create_during_the_outage_clears_the_cached_absence(
        self, persistent_redis, transactional_db
    ):
        probe = User.objects.create(username="probe", email="probe@example.com")
        next_id = probe.id + 1
        probe.delete()
        assert reads.user_get(user_id=next_id).value is None
        persistent_redis.stop()
        created = services.user_create(actor=None, username="during", email="during@example.com")
        persistent_redis.start()

        assert created.id == next_id
        assert reads.user_get(user_id=next_id).value["username"] == created.username


def test_a_process_sweep_replays_what_a_crashed_writer_left(settings, own_redis, user):
    """A row left in the outbox with no process pending on it (its writer died) is
    replayed by the periodic sweep of any process."""
    reads.user_get(user_id=user.id)
    key = keys.user_key(user.id)
    CacheInvalidation.objects.create(keys=[key])
    settings.USERS_CACHE = {**settings.USERS_CACHE, "OUTBOX_SWEEP_SECONDS": 0.2}

    outbox.Outbox().before_cached_read()  # a process of its own, whose thread sweeps
    deadline = time.monotonic() + 30
    while CacheInvalidation.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert not CacheInvalidation.objects.exists()
    assert _raw(own_redis).exists(key) == 0


@pytest.mark.slow
def test_a_write_acknowledged_as_redis_returns_is_never_read_stale_elsewhere(
    tmp_path, settings, own_redis, transactional_db, staff
):
    """Two processes on one Redis: this one writes, a gunicorn service reads. Each
    round, Redis pauses long enough to open this process's breaker, then answers
    again, and this process at once acknowledges a write while its breaker still
    cools down (for ten minutes here: the write cannot wait it out). The write's
    invalidation goes to Redis whatever the breaker says, so the other process
    reads the new state the moment the write is acknowledged, never the old."""
    settings.USERS_CACHE = {**settings.USERS_CACHE, "BREAKER_COOLDOWN_MS": 600_000}
    changed = User.objects.create(username="shared", email="shared@example.com", first_name="v0")
    reader = WebService(
        tmp_path, database_url=database_url(), redis_url=own_redis.url, WEB_CONCURRENCY="1",
        CACHE_KEY_PREFIX=user_cache_settings.KEY_PREFIX,
    )  # fmt: skip
    reader.token = Token.objects.get_or_create(user=staff)[0].key
    reader.start()
    try:
        url = f"/api/user/{changed.id}"
        seen = []
        for round_number in range(1, 4):
            for _ in range(2):  # the entry in Redis, and held by the reader's near cache
                assert reader.request("GET", url)[2]["first_name"] == f"v{round_number - 1}"
            own_redis.pause()
            try:
                _open_the_breaker()
            finally:
                own_redis.resume()
            assert _raw(own_redis).ping()

            services.user_update(
                actor=None, user_id=changed.id, data={"first_name": f"v{round_number}"}
            )

            status, headers, body = reader.request("GET", url)
            seen.append((round_number, status, body.get("first_name"), headers.get("x-cache")))
            if body.get("first_name") != f"v{round_number}":
                break
    finally:
        reader.stop()

    assert [(round_number, status, name) for round_number, status, name, _ in seen] == [
        (round_number, 200, f"v{round_number}") for round_number in range(1, 4)
    ], seen


def _open_the_breaker() -> None:
    """Calls Redis until the breaker opens: each times out on the paused server."""
    for _ in range(user_cache_settings.BREAKER_FAILURES):
        with pytest.raises(transport.CacheUnavailable, match="Timeout"):
            transport.call(lambda redis: redis.ping())
    assert transport.breakers.is_open
