"""Prometheus metrics: each is recorded where the spec says, the hit path gains no
round trip, and under gunicorn the counts of every worker add up."""

import datetime
import fcntl
import os
import platform
import re
import subprocess
import threading
import time
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from config import metrics_files
from tests.helpers import database_url, one_server_caches, pausing_fills, redis_environment
from tests.servers import RedisServer, WebService, project_python
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


def test_lookups_are_counted_by_result(user, deleted_id):
    with _lookups("miss") as miss, _lookups("hit") as hit, _lookups("negative_hit") as negative:
        reads.user_get(user_id=user.id)
        reads.user_get(user_id=user.id)
        reads.user_get(user_id=deleted_id)
        reads.user_get(user_id=deleted_id)
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
    redis_client.set(keys.lease_key(keys.user_key(user.id)), "someone-else", px=2000)
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
    """A Redis of the test's own, stopped; stopped again at the end, should the test
    have started it (it would otherwise outlive the run)."""
    server = RedisServer(tmp_path)
    server.start()
    settings.CACHES = one_server_caches(server.url)
    server.stop()
    yield server
    server.stop()


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
    node = {"node": transport.SERVER}
    with Delta("usersvc_cache_breaker_openings_total", **node) as openings:
        while not transport.breakers.is_open:
            reads.user_get(user_id=user.id)
        open_while_down = _sample("usersvc_cache_breaker_open", **node)
        for _ in range(3):  # fail at once while open; no new opening
            reads.user_get(user_id=user.id)

        stopped_redis.start()
        time.sleep(0.1)  # past the cooldown: the next read probes Redis and closes it
        assert reads.user_get(user_id=user.id).source is reads.Source.MISS
    assert (open_while_down, _sample("usersvc_cache_breaker_open", **node), openings.value) == (
        1, 0, 1
    )  # fmt: skip


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
        # The exited workers' counts in the archives, their own files gone.
        _wait_for(lambda: _writers(metrics_dir) <= _children(web.process.pid))
        recycled = (tmp_path / "web.log").read_text().count("Booting worker") - 3
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
    assert recycled >= 3, "workers should have been recycled"
    assert (metrics_dir / "counter_archive.db").exists()


@pytest.mark.slow
def test_each_gunicorn_worker_reports_its_memory_and_cpu(tmp_path, transactional_db):
    """Multiprocess mode has no process collector: the worker that answers reports
    every live worker, each by its pid, whichever answers."""
    web = WebService(
        tmp_path, database_url=database_url(), **redis_environment(),
        CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX, WEB_CONCURRENCY="3",
    )  # fmt: skip
    web.prepare()
    web.start()
    try:
        _wait_for(lambda: len(_children(web.process.pid)) == 3)
        workers = _children(web.process.pid)
        scrapes = [_scrape(web) for _ in range(6)]
        resident = {
            pid: int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) * 1024
            for pid in workers
        }
    finally:
        web.stop()

    for scraped in scrapes:
        memory = _by_pid(scraped, "process_resident_memory_bytes")
        cpu = _by_pid(scraped, "process_cpu_seconds_total")
        assert set(memory) == set(cpu) == workers
        for pid, value in memory.items():
            # An application worker, and what the kernel says it holds, give or take
            # what it allocated between the scrape and the read.
            assert 20 * 2**20 < value < 2 * resident[pid]
        assert all(value > 0 for value in cpu.values())


def _by_pid(scraped: dict[str, float], name: str) -> dict[int, float]:
    return {
        int(re.search(r'pid="(\d+)"', sample)[1]): value
        for sample, value in scraped.items()
        if sample.startswith(name + "{")
    }


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


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.1)


def _writers(metrics_dir: Path) -> set[int]:
    """The processes whose own metric files are in the folder."""
    return {
        int(match[1])
        for path in metrics_dir.iterdir()
        if (match := re.fullmatch(r"[a-z_]+_(\d+)\.db", path.name))
    }


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@pytest.mark.slow
def test_a_damaged_metrics_file_does_not_stop_the_master(tmp_path, transactional_db):
    """Archiving runs in gunicorn's master, where an exception would stop the server:
    a file it cannot read is logged, and the files wait for the next exit."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    web = WebService(
        tmp_path, database_url=database_url(), **redis_environment(),
        CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX, WEB_CONCURRENCY="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        GUNICORN_CMD_ARGS="--max-requests 2 --max-requests-jitter 0",
    )  # fmt: skip
    web.prepare()
    web.start()
    try:
        # A header that says more is used than the file holds.
        (metrics_dir / "counter_1.db").write_bytes((10**6).to_bytes(4, "little") + bytes(60))
        for _ in range(2):  # past max_requests: the worker is recycled
            assert web.request("GET", "/healthz", token=None)[0] == 200
        _wait_for(lambda: "could not archive" in (tmp_path / "web.log").read_text())
        (metrics_dir / "counter_1.db").unlink()
        for _ in range(2):  # past max_requests: the worker is recycled
            assert web.request("GET", "/healthz", token=None)[0] == 200
        _wait_for(lambda: _writers(metrics_dir) <= _children(web.process.pid))
        assert web.process.poll() is None
    finally:
        web.stop()


@pytest.mark.slow
def test_gunicorn_with_preload_refuses_to_start(tmp_path, transactional_db):
    """--preload loads the application in the master, which is no worker: its
    workers would inherit a prometheus_client counting in memory, each its own."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    web = WebService(
        tmp_path, database_url=database_url(), **redis_environment(),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), GUNICORN_CMD_ARGS="--preload",
    )  # fmt: skip

    result = subprocess.run(
        web.command(), cwd=web.root, env=web.env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode != 0
    assert "usersvc.E002" in result.stderr
    assert "without --preload" in result.stderr


_RECORD_IN_A_SCRIPT = """
import django
django.setup()
from users import metrics
metrics.BREAKER_OPEN.labels("server").set(1)
metrics.count_lookup("user", "MISS", found=True)
print(metrics.REGISTRY.get_sample_value("usersvc_cache_breaker_open", {"node": "server"}))
"""


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(["-c", _RECORD_IN_A_SCRIPT], id="a script calling django.setup()"),
        pytest.param(["manage.py", "shell", "-c", _RECORD_IN_A_SCRIPT], id="manage.py shell"),
        pytest.param(["manage.py", "follow_binlog", "--check"], id="the binlog follower"),
    ],
)
def test_only_gunicorns_workers_write_to_the_shared_metrics_folder(arguments, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR in the environment every process shares: a process
    other than the web service's workers counts in its own memory, and leaves the
    folder (the web service's) as it found it."""
    result = subprocess.run(
        [project_python(), *arguments],
        cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=120,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "prometheus_multiproc_dir": str(tmp_path),
        },
    )  # fmt: skip

    assert list(tmp_path.iterdir()) == [], result.stderr
    if arguments[-1] == _RECORD_IN_A_SCRIPT:
        assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "1.0"), result.stderr


# A worker as prometheus_client's multiprocess mode makes it: it records, says so,
# and exits when told (a line on stdin), after recording as much again.
_WORKER = """
import sys
from prometheus_client import Counter, Gauge, Histogram
lookups = Counter("t_lookups", "Lookups.", ["result"])
seconds = Histogram("t_seconds", "Durations.", buckets=(0.1, 1))
entries = Gauge("t_entries", "Entries.", multiprocess_mode="livesum")
def record():
    lookups.labels("hit").inc(3)
    lookups.labels("miss").inc()
    seconds.observe(0.05)
    seconds.observe(0.5)
    entries.set(2)
record()
print("recorded", flush=True)
if sys.argv[1] == "wait":
    sys.stdin.readline()
    record()
"""


class _Worker:
    def __init__(self, metrics_dir: Path, *, wait: bool) -> None:
        self.process = subprocess.Popen(
            [project_python(), "-c", _WORKER, "wait" if wait else "exit"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        )  # fmt: skip
        assert self.process.stdout.readline() == "recorded\n"

    def record_again_and_exit(self) -> None:
        self.process.communicate("\n", timeout=60)
        assert self.process.returncode == 0


def _collected(metrics_dir: Path) -> dict[tuple[str, str], float]:
    """What a scrape of the folder adds up: value by sample name and labels."""
    return {
        (sample.name, str(sorted(sample.labels.items()))): sample.value
        for family in metrics_files.WorkerFilesCollector(str(metrics_dir)).collect()
        for sample in family.samples
    }


def _counts(collected: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: value for key, value in collected.items() if key[0] != "t_entries"}


def test_exited_workers_files_are_archived_and_still_count(tmp_path):
    for _ in range(4):
        _Worker(tmp_path, wait=False).process.wait(timeout=60)
    live = _Worker(tmp_path, wait=True)
    before = _collected(tmp_path)

    assert metrics_files.archive_dead_workers(str(tmp_path), live={live.process.pid})

    after = _collected(tmp_path)
    assert _counts(after) == _counts(before)
    assert after[("t_entries", "[]")] == 2  # the live worker's gauge alone
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [
            "counter_archive.db", "histogram_archive.db", "scrape.lock",
            f"counter_{live.process.pid}.db", f"histogram_{live.process.pid}.db",
            f"gauge_livesum_{live.process.pid}.db",
        ]
    )  # fmt: skip

    # Then the last one records more and exits: added to the archive already there.
    live.record_again_and_exit()
    assert metrics_files.archive_dead_workers(str(tmp_path), live=())
    final = _collected(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "counter_archive.db", "histogram_archive.db", "scrape.lock"
    ]  # fmt: skip
    assert final[("t_lookups_total", "[('result', 'hit')]")] == 6 * 3
    assert final[("t_lookups_total", "[('result', 'miss')]")] == 6
    assert final[("t_seconds_count", "[]")] == 12
    assert final[("t_seconds_bucket", "[('le', '0.1')]")] == 6
    assert final[("t_seconds_bucket", "[('le', '1.0')]")] == 12
    assert final[("t_seconds_sum", "[]")] == pytest.approx(6 * 0.55)
    assert ("t_entries", "[]") not in final


def test_archiving_waits_for_no_scrape_and_leaves_everything_for_the_next_time(
    tmp_path, monkeypatch
):
    """A scrape that holds the folder past the wait: the files stay as they were,
    and the next call archives them."""
    _Worker(tmp_path, wait=False).process.wait(timeout=60)
    collected = _collected(tmp_path)
    before = sorted(path.name for path in tmp_path.iterdir())
    monkeypatch.setattr(metrics_files, "ARCHIVE_LOCK_WAIT", 0.2)
    scrape = os.open(tmp_path / "scrape.lock", os.O_RDONLY)
    try:
        fcntl.flock(scrape, fcntl.LOCK_SH)
        assert not metrics_files.archive_dead_workers(str(tmp_path), live=())
        assert sorted(path.name for path in tmp_path.iterdir()) == before
    finally:
        os.close(scrape)

    assert metrics_files.archive_dead_workers(str(tmp_path), live=())
    assert _counts(_collected(tmp_path)) == _counts(collected)
