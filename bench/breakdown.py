"""Where a request's time goes: ``./scripts/bench --breakdown``.

Runs requests through Django's WSGI handler in this process, as a gunicorn worker
does once gunicorn has parsed the request: a token-authenticated hot
``GET /api/user/<id>`` (the near cache holding the token and the user), the
authenticated floor and the true floor. Each stage is timed by a wrapper put
around the code that does it, from here, by monkeypatching (nothing in the
service knows): every middleware (Django builds the chain through
``convert_exception_to_response``, which is wrapped to time each layer), DRF's
steps, the near-cache read, the token's HMACs, rendering, the ETag, the access
log line and the Prometheus calls. Each stage's time is its own, without the
stages it calls, so a column adds up to the request's total.

The wrappers cost time of their own: the same requests are timed without them
first, and the table shows both totals. gunicorn's own work (reading and parsing
the request, writing the response to the socket) is outside this table.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from django.core import signals
from django.core.handlers import base
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application

_REQUESTS = 20_000
_QUICK_REQUESTS = 2_000
_USERS = 2_000
_HOT_USERS = 1_000


class Stages:
    """Exclusive time per stage, on the measuring thread only: the service's
    background threads (tracking, rate sync, outbox) call some of the same code."""

    def __init__(self) -> None:
        self.exclusive_ns: collections.Counter[str] = collections.Counter()
        self._stack: list[list[int]] = []
        self._thread = threading.get_ident()

    def wrap(self, stage: str | Callable[[], str], function: Callable) -> Callable:
        stages = self

        @functools.wraps(function)
        def timed(*args, **kwargs):
            if threading.get_ident() != stages._thread:
                return function(*args, **kwargs)
            children = [0]
            stages._stack.append(children)
            start = time.perf_counter_ns()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter_ns() - start
                stages._stack.pop()
                stages.exclusive_ns[stage] += elapsed - children[0]
                if stages._stack:
                    stages._stack[-1][0] += elapsed

        return timed

    def reset(self) -> None:
        self.exclusive_ns.clear()


@contextlib.contextmanager
def _patched(stages: Stages) -> Iterator[None]:
    """Installs the wrappers; takes them off on leaving."""
    from prometheus_client import metrics as prometheus
    from rest_framework.renderers import JSONRenderer
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from bench.views import FrameworkFloorView, TrueFloorView
    from users import entries, middleware, reads, tokens
    from users.api import UserViewSet
    from users.cache import counters
    from users.cache.near import near
    from users.cache.outbox import outbox

    undo: list[Callable[[], None]] = []

    def patch(owner, name: str, stage: str) -> None:
        """Wraps ``owner.name`` (a class's, an object's or a module's), until undone."""
        own = name in vars(owner)
        original = vars(owner)[name] if own else getattr(owner, name)
        setattr(owner, name, stages.wrap(stage, original))
        undo.append(
            functools.partial(setattr, owner, name, original)
            if own
            else functools.partial(delattr, owner, name)
        )

    original_convert = base.convert_exception_to_response

    def convert(get_response):
        owner = getattr(get_response, "__self__", None)
        if owner is not None and isinstance(owner, base.BaseHandler):
            stage = "Django: the view's call (response render, checks)"
        else:
            stage = f"middleware: {type(get_response).__name__}"
        return stages.wrap(stage, original_convert(get_response))

    base.convert_exception_to_response = convert
    undo.append(lambda: setattr(base, "convert_exception_to_response", original_convert))
    patch(base.BaseHandler, "resolve_request", "Django: URL resolving")
    patch(signals.request_started, "send", "Django: request_started, request_finished")
    patch(signals.request_finished, "send", "Django: request_started, request_finished")
    patch(APIView, "dispatch", "DRF: dispatch, the rest")
    patch(APIView, "initialize_request", "DRF: Request wrapping, parsers")
    patch(UserViewSet, "initialize_request", "DRF: Request wrapping, parsers")
    patch(APIView, "initial", "DRF: initial, the rest (versioning, the id)")
    patch(UserViewSet, "initial", "DRF: initial, the rest (versioning, the id)")
    # The authenticators' run, wherever it is first asked for (content negotiation
    # asks for request.auth).
    patch(Request, "_authenticate", "authentication (token lookup)")
    patch(APIView, "check_permissions", "permission")
    patch(APIView, "check_throttles", "throttling (the check)")
    patch(APIView, "perform_content_negotiation", "DRF: content negotiation")
    patch(UserViewSet, "perform_content_negotiation", "DRF: content negotiation")
    patch(APIView, "finalize_response", "DRF: finalize_response (headers, Vary)")
    patch(UserViewSet, "retrieve", "view")
    patch(FrameworkFloorView, "get", "view")
    patch(TrueFloorView, "get", "view")
    patch(near, "get_many", "near-cache read")
    patch(counters.local_windows, "count", "throttling: the count, in process")
    patch(outbox, "before_cached_read", "outbox check before a cached read")
    patch(tokens, "token_mac", "authentication: token's name (HMAC)")
    patch(entries, "to_public", "view: the user's public shape")
    patch(reads, "user_get", "view: users.reads.user_get, its own time")
    patch(Response, "__init__", "DRF: the Response object")
    patch(entries, "etag", "ETag")
    patch(JSONRenderer, "render", "rendering (JSON)")
    patch(middleware.access_log, "makeRecord", "access log")
    patch(middleware.access_log, "handle", "access log")
    patch(prometheus.MetricWrapperBase, "labels", "metrics")
    patch(prometheus.Counter, "inc", "metrics")
    patch(prometheus.Histogram, "observe", "metrics")
    patch(prometheus.Gauge, "set", "metrics")
    try:
        yield
    finally:
        for step in reversed(undo):
            step()


def _environ(path: str, token: str | None) -> dict:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        # As the TLS-terminating proxy in front of production says.
        "HTTP_X_FORWARDED_PROTO": "https",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Token {token}"
    return environ


def _request(application, environ: dict) -> str | None:
    """One request, its body read and the response closed as a WSGI server does;
    returns ``X-Cache``."""
    answer: dict = {}

    def start_response(status: str, headers: list, exc_info=None) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    result = application({**environ, "wsgi.input": io.BytesIO(b"")}, start_response)
    try:
        b"".join(result)
    finally:
        result.close()
    if not answer["status"].startswith("200"):
        raise RuntimeError(f"{environ['PATH_INFO']}: {answer['status']}")
    return answer["headers"].get("X-Cache")


def _application(log_file):
    """Django's WSGI application, its log lines going to ``log_file``, as a gunicorn
    worker's go to the file the bench gives it (setting Django up configures the
    logging afresh, so this comes after)."""
    application = get_wsgi_application()
    for handler in logging.getLogger().handlers:
        if hasattr(handler, "setStream"):
            handler.setStream(log_file)
    return application


def _paths(token: str) -> dict[str, tuple[Callable[[int], str], str | None, str | None]]:
    """Each column: the path of its i-th request, the token it sends, the X-Cache
    it must answer with."""
    return {
        "hot GET, token, near cache": (lambda i: f"/api/user/{1 + i % _HOT_USERS}", token, "HIT"),
        "authenticated floor": (lambda i: "/bench/floor", token, None),
        "true floor": (lambda i: "/bench/true-floor", None, None),
    }


def _run(application, path_of, token, x_cache, count: int) -> int:
    """``count`` requests, checked; returns their total nanoseconds."""
    environs = [_environ(path_of(i), token) for i in range(_HOT_USERS)]
    total = 0
    for i in range(count):
        environ = environs[i % len(environs)]
        start = time.perf_counter_ns()
        answered = _request(application, environ)
        total += time.perf_counter_ns() - start
        if answered != x_cache:
            raise RuntimeError(f"{environ['PATH_INFO']}: X-Cache {answered}, not {x_cache}")
    return total


def main(quick: bool, say) -> int:
    from bench import dataset, keys
    from users.cache.near import near

    count = _QUICK_REQUESTS if quick else _REQUESTS
    say(f"loading {_USERS:,} users, cached")
    dataset.recreate_database()
    dataset.load_users(1, _USERS)
    token = dataset.create_staff_token()
    call_command("warm_user_cache", "--all", verbosity=0)
    near.forget()
    columns = _paths(token)
    totals: collections.Counter[str] = collections.Counter()
    commands: dict[str, float] = {}
    stages = Stages()
    by_column: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryFile(mode="w") as log_file:
        application = _application(log_file)
        # Its middleware chain is built with every layer wrapped; the wrappers of the
        # rest go on and off with _patched, around the blocks this one serves.
        with _patched(stages):
            wrapped = stages.wrap(
                "WSGI handler: request and response objects", _application(log_file)
            )
        for name, (path_of, sent, x_cache) in columns.items():
            # A first round fills the near cache with the token and the users.
            for i in range(_HOT_USERS):
                _request(application, _environ(path_of(i), sent))
            before = keys.commands_processed()
            _run(application, path_of, sent, x_cache, _HOT_USERS)
            commands[name] = (keys.commands_processed() - before) / _HOT_USERS
            stages.reset()
            # Blocks with and without the wrappers in turn, so that a slow spell of
            # the shared machine reaches both.
            for _ in range(count // _HOT_USERS):
                totals[name] += _run(application, path_of, sent, x_cache, _HOT_USERS)
                with _patched(stages):
                    _run(wrapped, path_of, sent, x_cache, _HOT_USERS)
            measured = count // _HOT_USERS * _HOT_USERS
            totals[name] /= measured
            by_column[name] = {stage: ns / measured for stage, ns in stages.exclusive_ns.items()}
    print(_markdown(by_column, totals, commands, count // _HOT_USERS * _HOT_USERS))
    return 0


def _markdown(by_column, totals, commands, count: int) -> str:
    names = list(by_column)
    stages = sorted(
        {stage for column in by_column.values() for stage in column},
        key=lambda stage: -max(column.get(stage, 0) for column in by_column.values()),
    )
    rows = [
        [stage, *(f"{by_column[name].get(stage, 0) / 1000:.1f}" for name in names)]
        for stage in stages
    ]
    rows.append(
        ["**total, with the wrappers**",
         *(f"**{sum(by_column[name].values()) / 1000:.1f}**" for name in names)]
    )  # fmt: skip
    rows.append(["total, without them", *(f"{totals[name] / 1000:.1f}" for name in names)])
    rows.append(["Redis commands per request", *(f"{commands[name]:.3f}" for name in names)])
    header = ["stage (µs per request, its own time)", *names]
    lines = [
        f"Mean over {count:,} requests of each, in process (bench/breakdown.py).",
        "",
        "| " + " | ".join(header) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)
