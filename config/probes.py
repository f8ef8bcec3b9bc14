"""``/healthz``, ``/readyz`` and ``/metrics``: what orchestrators and Prometheus call.

They are answered by a middleware ahead of all the others: probes and scrapers
address a pod by its IP, which ``ALLOWED_HOSTS`` does not list, and need neither
sessions nor authentication. None of the three shows user data. Keep them off
the public ingress all the same.
"""

import logging
import time

from django.db import DatabaseError, connection
from django.http import HttpResponse, JsonResponse

from users import cache, metrics

logger = logging.getLogger(__name__)


def healthz(request) -> HttpResponse:
    """Liveness: the process answers. No I/O, so a store's outage never restarts it."""
    return JsonResponse({"status": "ok"})


def readyz(request) -> HttpResponse:
    """Readiness, per dependency. MySQL down: 503, take the instance out of rotation.
    Redis down: 200 "degraded", since reads bypass the cache and writes still commit."""
    checks = {"mysql": _check(_ping_mysql), "redis": _check(cache.ping)}
    if checks["mysql"]["status"] != "ok":
        status, http_status = "unavailable", 503
    elif checks["redis"]["status"] != "ok":
        status, http_status = "degraded", 200
    else:
        status, http_status = "ok", 200
    return JsonResponse({"status": status, "checks": checks}, status=http_status)


def metrics_view(request) -> HttpResponse:
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


def _ping_mysql() -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return time.perf_counter() - started


def _check(ping) -> dict:
    try:
        seconds = ping()
    except (DatabaseError, cache.CacheUnavailable) as exc:
        logger.warning("readiness check failed: %s", exc)
        # The error's class only: the message can name hosts and this answer is
        # unauthenticated. For Redis, the class of redis-py's error underneath.
        return {"status": "unavailable", "error": type(exc.__cause__ or exc).__name__}
    return {"status": "ok", "latency_ms": round(seconds * 1000, 3)}


class ProbesMiddleware:
    """Answers GET and HEAD on the three paths before any other middleware runs."""

    routes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_view}

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        view = self.routes.get(request.path_info)
        if view is None or request.method not in ("GET", "HEAD"):
            return self.get_response(request)
        return view(request)
