"""The first middleware: the request id, the request's duration, and its access line.

Every request gets an id (the caller's ``X-Request-ID`` when it looks like one,
else a new one: 32 hex digits, a random tag of the process and a count of its
requests, as unique as a UUID for a fraction of its cost), sent back in the
response's ``X-Request-ID`` and attached to every log record written while
the request runs (``config.logs``), so one request's lines can be found among
all the workers'. The probes, answered ahead of this middleware, take theirs
with ``begin_request`` too.

Each request that reaches it writes one access line (logger ``usersvc.access``,
INFO) with the route, status and duration the request metric records. The probes
and ``/metrics``, answered by the middleware ahead of it, write none: they come
every few seconds and would drown the rest.
"""

import functools
import itertools
import logging
import os
import re
import secrets
import time

from prometheus_client import Histogram

from .logs import request_id

access_log = logging.getLogger("usersvc.access")

HTTP_REQUEST_SECONDS = Histogram(
    "usersvc_http_request_seconds",
    "Duration of HTTP requests by method, route (URL name) and status code.",
    ["method", "route", "status"],
)

# Letters, digits and a few separators, as load balancers and tracers generate them;
# anything else (too long, spaces, control characters) is replaced, not logged.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# Methods outside this set share one label, so that made-up methods cannot grow
# the metric's label set without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ACCESS_LINE = "%(method)s %(path)s %(status)s %(duration_ms)s ms"


def _new_process() -> None:
    """A process's own tag and count: a forked worker must not repeat its parent's ids."""
    global _process_tag, _requests
    _process_tag, _requests = secrets.token_hex(8), itertools.count()


_new_process()
os.register_at_fork(after_in_child=_new_process)


@functools.cache
def _request_seconds(method: str, route: str, status: int) -> Histogram:
    """``HTTP_REQUEST_SECONDS`` for these labels, resolved once (``labels()`` takes a
    lock and builds its key on every call). Bounded: the methods are
    ``_METHODS``, the routes the URL names, the statuses those the code answers."""
    return HTTP_REQUEST_SECONDS.labels(method, route, str(status))


def begin_request(request) -> str:
    """Gives ``request`` its id and makes it the one every log record written from
    now on this thread carries; returns it, for the response's ``X-Request-ID``.

    Not reset when the request ends: Django logs 4xx and 5xx responses ("Not
    Found: ...") after the middleware has returned, and those lines need the id
    too. The next request on this thread sets its own."""
    # META, not request.headers: that builds a dict of every header on first use.
    incoming = request.META.get("HTTP_X_REQUEST_ID", "")
    if _SANE_REQUEST_ID.fullmatch(incoming):
        current = incoming
    else:
        current = f"{_process_tag}{next(_requests):016x}"
    request_id.set(current)
    return current


class RequestContextMiddleware:
    """First in the chain after the probes: sets the request id, times the request
    for the metrics, and writes its access line."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        current = begin_request(request)
        started = time.perf_counter()
        response = self.get_response(request)
        seconds = time.perf_counter() - started
        match = request.resolver_match
        method = request.method if request.method in _METHODS else "other"
        route = match.view_name if match else "unmatched"
        _request_seconds(method, route, response.status_code).observe(seconds)
        response["X-Request-ID"] = current
        # The path without its query string, which may hold what a user searched for.
        fields = {
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 3),
        }
        if access_log.isEnabledFor(logging.INFO):
            # Made and handled as Logger.info would, without its search of the stack
            # for the caller's file and line, which the line never shows.
            record = access_log.makeRecord(
                access_log.name, logging.INFO, __file__, 0, _ACCESS_LINE, fields, None,
                extra=fields,
            )  # fmt: skip
            access_log.handle(record)
        return response
