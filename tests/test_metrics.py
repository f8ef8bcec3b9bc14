"""Prometheus metrics: each is recorded where the spec says, the hit path gains no
round trip, and under gunicorn the counts of every worker add up."""

import datetime
import platform
import re
import subprocess
import threading
import time

import django
import pytest
from django.conf import settings
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import database_url, one_server_caches, pausing_fills, redis_environment
from tests.servers import RedisServer, WebService
from users import metrics, reads, services
from users.cache import keys, transport
from users.models import CacheInvalidation, User


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """A metric sample's growth over a block."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels

    def __enter__(self) -> "Delta":
        self.before = _sample(self.name, **self.labels)
        return self

    def __exit__(self, *exc_info) -> None:
        self.value = _sample(self.name, **self.labels) - self.before


def _lookups(result: str, entity: str = "user") -> Delta:
    return Delta("usersvc_cache_lookups_total", entity=entity, result=result)


@pytest.fixture
def user(make_user) -> User:
    return make_user(username="measured", email="measured@example.com")


def test_lookups_are_counted_by_result(user):
    with _lookups("miss") as miss, _lookups("hit") as hit, _lookups("negative_hit") as negative:
        reads.user_get(user_id=user.id)
        reads.user_get(user_id=user.id)
        reads.user_get(user_id=999_999)
        reads.user_get(user_id=999_999)
    assert (miss.value, hit.value, negative.value) == (2, 1, 1)


def test_token_lookups_have_their_own_label(reader_client, reader):
    with _lookups("miss", entity="token") as miss, _lookups("hit", entity="token") as hit:
        reader_client.get(f"/api/user/{reader.id}")
        reader_client.get(f"/api/user/{reader.id}")
    assert (miss.value, hit.value) == (1, 1)


def test_cache_and_database_latencies_are_observed(user, settings):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "NEAR_CACHE_SIZE": 0}
    with (
        Delta("usersvc_redis_call_seconds_count") as redis_calls,
        Delta("usersvc_database_load_seconds_count", entity="user") as loads,
    ):
        reads.user_get(user_id=user.id)  # read, read-or-lease, fill
        reads.user_get(user_id=user.id)  # read
    assert (redis_calls.value, loads.value) == (4, 1)


def test_a_hit_is_one_round_trip_and_no_query(
    user, settings, redis_round_trips, django_assert_num_queries
):
    """A hit in Redis (the near cache off: a hit there makes none)."""
    settings.USERS_CACHE = {**settings.USERS_CACHE, "NEAR_CACHE_SIZE": 0}
    reads.user_get(user_id=user.id)
    redis_round_trips.count = 0
    with django_assert_num_queries(0):
        reads.user_get(user_id=user.id)
    assert redis_round_trips.count == 1


def test_stampede_waits_are_counted(user, redis_client, settings):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "LEASE_WAIT_MS": 20}
    redis_client.set(keys.lease_key(keys.user_key(user.id)), "someone-else", px=5000)
    with Delta("usersvc_cache_stampede_waits_total", entity="user", outcome="timed_out") as waits:
        assert reads.user_get(user_id=user.id).source is reads.Source.MISS
    assert waits.value == 1


def test_rejected_stale_sets_are_counted(user, django_capture_on_commit_callbacks):
    def write_meanwhile(kind, loaded) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            services.user_update(actor=None, user_id=user.id, data={"first_name": "newer"})

    with (
        pausing_fills(write_meanwhile),
        Delta("usersvc_cache_stale_sets_rejected_total", entity="user") as rejected,
    ):
        reads.user_get(user_id=user.id)
    assert rejected.value == 1


@pytest.fixture
def stopped_redis(tmp_path, settings):
    server = RedisServer(tmp_path)
    server.start()
    settings.CACHES = one_server_caches(server.url)
    server.stop()
    yield server


def test_redis_errors_and_bypasses_are_counted(user, redis_refused):
    with (
        Delta("usersvc_redis_errors_total", error="ConnectionError") as errors,
        _lookups("bypass") as bypasses,
    ):
        reads.user_get(user_id=user.id)
    assert (errors.value, bypasses.value) == (1, 1)


def test_metrics_endpoint_serves_the_text_format(client, user):
    reads.user_get(user_id=user.id)
    response = client.get("/metrics", HTTP_HOST="10.1.2.3:8000")  # a pod IP, as scraped

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    body = response.content.decode()
    assert 'usersvc_cache_lookups_total{entity="user",result="miss"}' in body
    for name, kind in {
        "usersvc_cache_lookups": "counter",
        "usersvc_redis_call_seconds": "histogram",
        "usersvc_database_load_seconds": "histogram",
        "usersvc_redis_errors": "counter",
        "usersvc_cache_stampede_waits": "counter",
        "usersvc_cache_stale_sets_rejected": "counter",
        "usersvc_http_request_seconds": "histogram",
        "usersvc_cache_breaker_open": "gauge",
        "usersvc_cache_breaker_openings": "counter",
        "usersvc_build_info": "gauge",
        "usersvc_outbox_backlog": "gauge",
        "usersvc_outbox_oldest_age_seconds": "gauge",
    }.items():
        assert re.search(rf"^# TYPE {name}(_total)? {kind}$", body, re.MULTILINE), name


def test_the_breaker_state_and_its_openings(user, stopped_redis, settings):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "BREAKER_COOLDOWN_MS": 50}
    with Delta("usersvc_cache_breaker_openings_total") as openings:
        while not transport.breaker.is_open:
            reads.user_get(user_id=user.id)
        open_while_down = _sample("usersvc_cache_breaker_open")
        for _ in range(3):  # fail at once while open; no new opening
            reads.user_get(user_id=user.id)

        stopped_redis.start()
        time.sleep(0.1)  # past the cooldown: the next read probes Redis and closes it
        assert reads.user_get(user_id=user.id).source is reads.Source.MISS
    assert (open_while_down, _sample("usersvc_cache_breaker_open"), openings.value) == (1, 0, 1)


def _scrape_in_process(client) -> dict[str, float]:
    """/metrics as this process serves it: each sample's value by name."""
    body = client.get("/metrics").content.decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_the_outbox_backlog_and_the_age_of_its_oldest_row(client, db):
    empty = _scrape_in_process(client)
    rows = [CacheInvalidation.objects.create(keys=[f"key-{n}"]) for n in range(3)]
    ten_minutes_ago = timezone.now() - datetime.timedelta(minutes=10)
    CacheInvalidation.objects.filter(pk=rows[1].pk).update(created_at=ten_minutes_ago)
    waiting = _scrape_in_process(client)

    assert (empty["usersvc_outbox_backlog"], empty["usersvc_outbox_oldest_age_seconds"]) == (0, 0)
    assert waiting["usersvc_outbox_backlog"] == 3
    assert 600 <= waiting["usersvc_outbox_oldest_age_seconds"] < 3600


def test_build_info_names_the_version_commit_python_and_django(client, db):
    body = client.get("/metrics").content.decode()
    [family] = [f for f in text_string_to_metric_families(body) if f.name == "usersvc_build_info"]
    [sample] = family.samples
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True
    ).stdout.strip()
    assert sample.value == 1
    assert sample.labels == {
        "version": "0.1.0",
        "commit": head or "unknown",
        "python": platform.python_version(),
        "django": django.get_version(),
    }


def test_build_commit_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("BUILD_COMMIT", "0123abcd")
    assert metrics.build_labels()["commit"] == "0123abcd"


def test_requests_are_timed_by_route_and_status(reader_client, reader):
    labels = {"method": "GET", "route": "user-detail", "status": "200"}
    with Delta("usersvc_http_request_seconds_count", **labels) as requests:
        reader_client.get(f"/api/user/{reader.id}")
    assert requests.value == 1


@pytest.mark.slow
def test_gunicorn_workers_add_up_and_recycled_ones_still_count(tmp_path, transactional_db):
    """Three workers, each recycled after 5 requests: 40 lookups spread over many
    processes, most of them gone by the scrape, must still add up to 40."""
    user = User.objects.create(username="counted", email="counted@example.com")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    web = WebService(
        tmp_path,
        database_url=database_url(),
        **redis_environment(),
        CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX,
        WEB_CONCURRENCY="3",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        GUNICORN_CMD_ARGS="--max-requests 5 --max-requests-jitter 0",
    )
    web.prepare()
    web.start()
    try:

        def read_users(count: int) -> None:
            for _ in range(count):
                assert web.request("GET", f"/api/user/{user.id}")[0] == 200

        threads = [threading.Thread(target=read_users, args=(10,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status, _, _ = web.request("GET", "/healthz")
        scraped = _scrape(web)
    finally:
        web.stop()

    assert status == 200
    user_lookups = sum(
        value
        for labels, value in scraped.items()
        if labels.startswith('usersvc_cache_lookups_total{entity="user"')
    )
    assert user_lookups == 40
    assert len(list(metrics_dir.glob("counter_*.db"))) > 3, "workers should have been recycled"


def _scrape(web: WebService) -> dict[str, float]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    connection.request("GET", "/metrics")
    body = connection.getresponse().read().decode()
    connection.close()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples
