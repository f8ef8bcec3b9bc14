"""The Prometheus alert rules and the Grafana dashboard (deploy/prometheus,
deploy/grafana): promtool accepts every rule file, the alerts fire when they
should (promtool's unit tests, tests/prometheus/), the dashboard's queries are
PromQL, and every metric the rules and the dashboard name is on a real /metrics.

promtool is Debian's prometheus package's; the tests that need it are skipped
where it is not installed, except in CI (``CI`` set), where ``.ci/run``
installs it and a missing promtool is a failure.
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import MySQLdb
import pytest
import yaml
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import database_url
from tests.servers import (
    PROJECT_ROOT,
    BinlogFollower,
    RedisServer,
    WebService,
    project_python,
    service_stack,
)
from users import tokens
from users.cache import keys

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULE_FILES = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
RULES = ROOT / "deploy" / "prometheus" / "usersvc.rules.yml"
FOLLOWER_RULES = ROOT / "deploy" / "prometheus" / "binlog-follower.rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "usersvc.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "usersvc.json"
# The service's metrics are all named usersvc_...; the files above are the
# service's own (other files in deploy/prometheus watch other components). The
# dashboard also reads the processes' memory and CPU (process_...).
METRIC_NAME = re.compile(r"\b(?:usersvc|process)_[a-z0-9_]+")
# A dashboard query about the binary log follower, a process with metrics of its own.
FOLLOWER_JOB = "$follower_job"


@pytest.fixture
def promtool() -> str:
    if not os.access(PROMTOOL, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"CI checks the alert rules, but {PROMTOOL} is missing")
        pytest.skip("no promtool: apt-get install prometheus (CI installs it)")
    return PROMTOOL


def _promtool(promtool: str, *args: str | Path) -> None:
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_every_rule_file(promtool):
    assert RULES in RULE_FILES
    _promtool(promtool, "check", "rules", *RULE_FILES)


def test_the_alerts_fire_when_they_should_and_only_then(promtool):
    _promtool(promtool, "test", "rules", RULE_TESTS)


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboards_queries_are_promql(promtool, tmp_path):
    """Each panel's query, its Grafana variables given values, as a recording rule
    that promtool parses."""
    variables = {
        "$__rate_interval": "5m",
        "$job": ".+",
        "$instance": ".+",
        FOLLOWER_JOB: ".+",
    }
    rules = []
    for number, query in enumerate(_dashboard_queries()):
        for variable, value in variables.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    assert rules
    checked = tmp_path / "dashboard.rules.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    _promtool(promtool, "check", "rules", checked)


def test_the_dashboards_panels_have_their_own_ids_and_the_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def _named_metrics() -> tuple[set[str], set[str]]:
    """The metrics the rules and the dashboard name: the web service's, the follower's."""
    queries = _dashboard_queries()
    web = set(METRIC_NAME.findall(RULES.read_text()))
    follower = set(METRIC_NAME.findall(FOLLOWER_RULES.read_text()))
    for query in queries:
        (follower if FOLLOWER_JOB in query else web).update(METRIC_NAME.findall(query))
    return web, follower


@pytest.mark.slow
def test_every_metric_the_rules_and_the_dashboard_name_exists(tmp_path):
    """Scraped from the service under gunicorn and from the binary log follower, on
    a MariaDB and a Redis of their own, after reads that hit, miss, wait for another
    reader's lease, find a token entry edited in Redis, have their fill refused
    because a write took the lease meanwhile and, Redis stopped, bypass it; and a
    change in SQL that the follower cannot apply while Redis is down."""
    with service_stack(tmp_path, binlog=True) as (mariadb, redis_server, web):
        web.start()
        follower = BinlogFollower(tmp_path, web.env)
        follower.start()
        try:
            _exercise(mariadb, redis_server, web, follower)
            web_scraped = _scrape(web.port)
            follower_scraped = _scrape(follower.port)
        finally:
            follower.stop()

    web_named, follower_named = _named_metrics()
    assert {"usersvc_cache_breaker_open", "usersvc_outbox_oldest_age_seconds"} <= web_named
    assert {"usersvc_binlog_seconds_behind", "usersvc_binlog_errors_total"} <= follower_named
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= web_named
    assert web_named - web_scraped == set()
    assert follower_named - follower_scraped == set()


def _exercise(mariadb, redis_server: RedisServer, web: WebService, follower) -> None:
    redis = redis_server.client()
    with override_settings(USERS_CACHE={"KEY_PREFIX": web.env["CACHE_KEY_PREFIX"]}):
        project = keys.project_pattern()
        leases = {i: keys.lease_key(keys.user_key(i)) for i in (999_001, 999_002)}
        created = [
            web.request("POST", "/api/user", {"username": name, "email": f"{name}@example.com"})
            for name in ("scraped", "fill-refused")
        ]
        assert [status for status, _, _ in created] == [201, 201]
        user_id, refused_id = (body["id"] for _, _, body in created)
        entry = keys.user_key(refused_id)
        lease = keys.lease_key(entry)
    for path in (f"/api/user/{user_id}", "/api/user/999000", "/api/user/999000"):
        assert web.request("GET", path)[0] in (200, 404)
    # Another reader's lease on a missing entry: this read waits for it.
    redis.set(leases[999_001], "another-reader", px=2_000)
    assert web.request("GET", "/api/user/999001")[0] == 404

    # A token entry that someone edited in Redis: refused, and read from MySQL again.
    # Entries are hashes; a lease (the fills keep theirs until they expire) is not.
    token_entries = [
        key for key in redis.scan_iter(match=project, count=1000)
        if b":token:" in key and redis.type(key) == b"hash"
    ]  # fmt: skip
    assert token_entries
    for key in token_entries:
        redis.hset(key, tokens.USERNAME, "edited")
    assert web.request("GET", f"/api/user/{user_id}")[0] == 200

    # A read whose lease a write revokes while it loads from MySQL (paused meanwhile).
    redis.delete(entry)
    mariadb.pause()
    try:
        reads = []
        reader = threading.Thread(
            target=lambda: reads.append(web.request("GET", f"/api/user/{refused_id}"))
        )
        reader.start()
        _wait_until(lambda: redis.exists(lease), "the reader's lease")
        redis.delete(lease)
    finally:
        mariadb.resume()
    reader.join(timeout=60)
    assert [status for status, _, _ in reads] == [200]

    # Redis stopped: reads bypass it, and a change made in SQL waits in the follower.
    redis_server.stop()
    for _ in range(6):
        assert web.request("GET", f"/api/user/{user_id}")[0] == 200
    connection = MySQLdb.connect(
        host="127.0.0.1", port=mariadb.port, user="root", database="usersvc", autocommit=True
    )
    connection.cursor().execute("UPDATE users_user SET first_name = 'sql' WHERE id = %s", [user_id])
    connection.close()
    _wait_until(
        lambda: follower.metrics().get('usersvc_binlog_errors_total{store="redis"}', 0) > 0,
        "the follower's failed invalidation",
    )


def _wait_until(condition, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {within} s"
        time.sleep(0.02)


def _families(port: int) -> list:
    """The metric families of /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    assert response.status == 200
    return list(text_string_to_metric_families(body))


def _scrape(port: int) -> set[str]:
    """The metric families' and the samples' names of /metrics."""
    families = _families(port)
    return {family.name for family in families} | {
        sample.name for family in families for sample in family.samples
    }


def _samples(port: int) -> list:
    """Every sample of /metrics."""
    return [sample for family in _families(port) for sample in family.samples]


@pytest.mark.slow
def test_a_failing_command_leaves_nothing_in_the_web_services_metrics(tmp_path, transactional_db):
    """PROMETHEUS_MULTIPROC_DIR in the environment the service and its commands
    share (a pod's env, a systemd EnvironmentFile): warm_user_cache against a Redis
    that refuses, its breaker open when it exits, then a scrape of the service."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    web = WebService(
        tmp_path,
        database_url=database_url(),
        redis_url=redis_server.url,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    try:
        web.prepare()
        web.start()
        assert web.request("GET", "/api/user/1")[0] in (200, 404)
        with socket.socket() as refused:
            refused.bind(("127.0.0.1", 0))
            command = subprocess.Popen(
                [project_python(), "manage.py", "warm_user_cache", "--all"],
                cwd=PROJECT_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={**web.env, "REDIS_URL": f"redis://127.0.0.1:{refused.getsockname()[1]}/0"},
            )  # fmt: skip
            _, stderr = command.communicate(timeout=120)
        samples = _samples(web.port)
    finally:
        web.stop()
        redis_server.stop()

    assert command.returncode == 1, stderr
    assert "Redis is unavailable" in stderr
    assert list(metrics_dir.glob(f"*_{command.pid}.db")) == []
    assert [s for s in samples if s.labels.get("pid") == str(command.pid)] == []
    # The service's own Redis answered all along: any error or opening is the command's.
    failures = ("usersvc_redis_errors_total", "usersvc_cache_breaker_openings_total")
    assert [s for s in samples if s.name in failures and s.value] == []
    assert {s.value for s in samples if s.name == "usersvc_cache_breaker_open"} == {0}
