"""``/healthz``, ``/readyz`` and ``/metrics``: what orchestrators and Prometheus call.

They are answered by a middleware ahead of all the others
(``users.middleware.ProbesMiddleware``): probes and scrapers
address a pod by its IP, which ``ALLOWED_HOSTS`` does not list, and need neither
sessions nor authentication. None of the three shows user data, but the metrics
and the readiness details describe the service's insides (traffic, error
rates, which store is failing), so they answer only operators: a request
straight from ``METRICS_ALLOWED_NETWORKS`` (loopback by default) that no proxy
forwarded, or one with ``Authorization: Bearer <METRICS_TOKEN>``. Anyone else gets
403 for ``/metrics`` and only the status of ``/readyz``; ``/healthz`` is for anyone.

Each probe has a request id, as every request does (``users.middleware``):
in its ``X-Request-ID`` and on the lines it logs (a failed readiness check), not
the id of the request the thread served before. It writes no access line: probes
come every few seconds and would drown the rest.
"""

import hmac
import ipaddress
import logging
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpResponse, JsonResponse

from . import metrics
from .cache import cluster
from .cache.outbox import BacklogCollector
from .cache.transport import CacheUnavailable

logger = logging.getLogger(__name__)


def healthz(request) -> HttpResponse:
    """Liveness: the process answers. No I/O, so a store's outage never restarts it."""
    return JsonResponse({"status": "ok"})


def readyz(request) -> HttpResponse:
    """Readiness, per dependency. MySQL down: 503, take the instance out of rotation.
    Redis down: 200 "degraded", since reads bypass the cache and writes still commit."""
    checks = {"mysql": _check(_ping_mysql), "redis": _check(cluster.ping)}
    if checks["mysql"]["status"] != "ok":
        status, http_status = "unavailable", 503
    elif checks["redis"]["status"] != "ok":
        status, http_status = "degraded", 200
    else:
        status, http_status = "ok", 200
    body = {"status": status, "checks": checks} if is_operator(request) else {"status": status}
    return JsonResponse(body, status=http_status)


def metrics_view(request) -> HttpResponse:
    if not is_operator(request):
        detail = "Metrics are for operators: see METRICS_ALLOWED_NETWORKS and METRICS_TOKEN."
        return JsonResponse({"detail": detail}, status=403)
    body, content_type = metrics.exposition(BacklogCollector())
    return HttpResponse(body, content_type=content_type)


# Headers a proxy adds; a request that carries one came through a proxy, whose own
# address (often loopback) says nothing about the client's.
_FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def is_operator(request) -> bool:
    """A scraper with the metrics token, or a direct peer on an allowed network."""
    token = settings.METRICS_TOKEN
    authorization = request.META.get("HTTP_AUTHORIZATION", "")
    if token and authorization.startswith("Bearer "):
        return hmac.compare_digest(authorization[len("Bearer ") :].encode(), token.encode())
    if any(header in request.META for header in _FORWARDED):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


def _ping_mysql() -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return time.perf_counter() - started


def _check(ping) -> dict:
    try:
        seconds = ping()
    except (DatabaseError, CacheUnavailable) as exc:
        logger.warning("readiness check failed: %s", exc)
        # The error's class only: the message can name hosts and this answer is
        # unauthenticated. For Redis, the class of redis-py's error underneath.
        return {"status": "unavailable", "error": type(exc.__cause__ or exc).__name__}
    return {"status": "ok", "latency_ms": round(seconds * 1000, 3)}

