"""/healthz and /readyz: liveness without I/O, readiness per dependency."""

import logging

import pytest

from config.logs import RequestIdFilter
from tests.servers import RedisServer, WebService
from users.cache import transport
from users.conf import user_cache_settings


def test_healthz_does_no_io_and_answers_any_host(
    client, db, redis_round_trips, django_assert_num_queries
):
    with django_assert_num_queries(0):
        response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert redis_round_trips.count == 0


def test_readyz_reports_each_dependency(client, db):
    response = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")

    body = response.json()
    assert (response.status_code, body["status"]) == (200, "ok")
    assert body["checks"]["mysql"]["status"] == body["checks"]["redis"]["status"] == "ok"
    assert body["checks"]["mysql"]["latency_ms"] >= 0
    assert body["checks"]["redis"]["latency_ms"] >= 0


def test_readyz_asks_redis_itself_not_the_breaker(client, db):
    for _ in range(user_cache_settings.BREAKER_FAILURES):
        transport.breakers[transport.SERVER].record_failure()
    response = client.get("/readyz")
    assert response.json()["checks"]["redis"]["status"] == "ok"


def test_readyz_is_degraded_but_200_without_redis(client, db, redis_refused):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {
            "mysql": {
                "status": "ok",
                "latency_ms": response.json()["checks"]["mysql"]["latency_ms"],
            },
            "redis": {"status": "unavailable", "error": "ConnectionError"},
        },
    }


@pytest.mark.slow
def test_readyz_is_503_without_mysql_while_healthz_stays_200(tmp_path):
    """The service under gunicorn, its DATABASE_URL pointing where nothing listens."""
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    web = WebService(
        tmp_path, database_url="mysql://root@127.0.0.1:1/usersvc", redis_url=redis_server.url
    )
    web.start()
    try:
        ready_status, _, ready = web.request("GET", "/readyz", token=None)
        live_status, _, live = web.request("GET", "/healthz", token=None)
    finally:
        web.stop()
        redis_server.stop()

    assert (ready_status, ready["status"]) == (503, "unavailable")
    assert ready["checks"]["mysql"] == {"status": "unavailable", "error": "OperationalError"}
    assert ready["checks"]["redis"]["status"] == "ok"
    assert (live_status, live) == (200, {"status": "ok"})


class TestRequestIds:
    """Answered ahead of the request-id middleware, the probes still have ids of
    their own: in the response, and on the lines they log."""

    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
    def test_each_probe_answers_with_its_request_id(self, client, db, path):
        mine = client.get(path, HTTP_X_REQUEST_ID="probe-1")
        fresh = client.get(path, HTTP_HOST="10.1.2.3:8000")

        assert mine["X-Request-ID"] == "probe-1"
        assert len(fresh["X-Request-ID"]) == 32 and fresh["X-Request-ID"] != "probe-1"

    def test_a_probes_lines_carry_its_id_not_the_previous_requests(
        self, client, db, redis_refused, caplog
    ):
        client.get("/api/user", HTTP_X_REQUEST_ID="req-before")
        caplog.clear()
        caplog.handler.addFilter(RequestIdFilter())
        with caplog.at_level(logging.DEBUG):
            response = client.get("/readyz", HTTP_X_REQUEST_ID="probe-readyz")

        [line] = [r for r in caplog.records if r.getMessage().startswith("readiness check failed")]
        assert line.request_id == "probe-readyz"
        assert response["X-Request-ID"] == "probe-readyz"
        assert not [r for r in caplog.records if r.name == "usersvc.access"]
