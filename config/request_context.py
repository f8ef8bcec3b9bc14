"""The first middleware: the request id, the request's duration, and its access line.

Every request gets an id (the caller's ``X-Request-ID`` when it looks like one,
else a new UUID), sent back in the response's ``X-Request-ID`` and attached to
every log record written while the request runs (``config.logs``), so one
request's lines can be found among all the workers'.
"""

import re
import time
import uuid

from prometheus_client import Histogram

from .logs import request_id

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


class RequestContextMiddleware:
    """First in the chain: sets the request id, and times the request for the metrics."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        current = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        # Not reset on the way out: Django logs 4xx and 5xx responses ("Not Found:
        # ...") after the middleware has returned, and those lines need the id too.
        # The next request on this thread sets its own.
        request_id.set(current)
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        HTTP_REQUEST_SECONDS.labels(
            request.method if request.method in _METHODS else "other",
            match.view_name if match else "unmatched",
            str(response.status_code),
        ).observe(time.perf_counter() - started)
        response["X-Request-ID"] = current
        return response
