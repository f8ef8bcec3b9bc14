"""The project's middleware, in the order ``MIDDLEWARE`` runs them, in one module.

* ``ProbesMiddleware``: ``/healthz``, ``/readyz`` and ``/metrics`` (``users.probes``),
  answered ahead of everything else, the host check included.
* ``RequestContextMiddleware``: the request id, the request's duration, its
  access line.
* ``ContentSecurityPolicyMiddleware``: django-csp's, its policy built once.
* ``Browser*Middleware``: Django's session, authentication and messages
  middleware, standing aside for token-authenticated API requests.
* ``LoginLimitMiddleware``: a refused login answered with 429 (``users.logins``).

What a request passes through on its way back is written inline in each
``__call__``, so that a reader following a request meets this module once on the
way in and not again on the way out.

**Request ids.** Every request gets an id (the caller's ``X-Request-ID`` when it
looks like one, else a new one: 32 hex digits, a random tag of the process and a
count of its requests, as unique as a UUID for a fraction of its cost), sent back
in the response's ``X-Request-ID`` and attached to every log record written while
the request runs (``config.logs``), so one request's lines can be found among all
the workers'. Each request that reaches ``RequestContextMiddleware`` writes one
access line (logger ``usersvc.access``, INFO) with the route, status and duration
the request metric records; the probes and ``/metrics`` write none: they come
every few seconds and would drown the rest.

**Browsers only.** The session, authentication and messages middleware serve the
admin and the browsable API, which log in with a session. An API request that
carries ``Authorization: Token ...`` is authenticated by DRF
(``users.authentication``) and uses neither a session, ``request.user`` before the
view, nor messages; skipping the three saved about a tenth of a cached read's time
in process (measured side by side on the framework-floor endpoint). Everything
else, the admin included, goes through them as usual, and Django's admin checks
still find them (these are subclasses). CSRF stays on for every request: DRF's
views are exempt anyway, and it guards the admin's forms.
"""

import functools
import itertools
import logging
import os
import re
import secrets
import time

from csp.constants import HEADER
from csp.middleware import CheckableLazyObject, CSPMiddleware
from csp.utils import build_policy
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.signals import setting_changed
from django.dispatch import receiver
from prometheus_client import Histogram

from config.logs import request_id

from . import probes
from .logins import guard

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


class ProbesMiddleware:
    """Answers GET and HEAD on the three probe paths before any other middleware
    runs, each with a request id of its own and no access line."""

    routes = {"/healthz": probes.healthz, "/readyz": probes.readyz, "/metrics": probes.metrics_view}

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        view = self.routes.get(request.path_info)
        if view is None or request.method not in ("GET", "HEAD"):
            return self.get_response(request)
        current = begin_request(request)
        response = view(request)
        response["X-Request-ID"] = current
        return response


class RequestContextMiddleware:
    """Second, after the probes: sets the request id, times the request
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


def is_token_api_request(request) -> bool:
    """An API request that carries a DRF token (its scheme is case-insensitive)."""
    return (
        request.path_info.startswith(settings.TOKEN_API_PATH_PREFIXES)
        and request.META.get("HTTP_AUTHORIZATION", "")[:6].lower() == "token "
    )


class _StandAsideForTokens:
    def __call__(self, request):
        if is_token_api_request(request):
            return self.get_response(request)
        return super().__call__(request)


class BrowserSessionMiddleware(_StandAsideForTokens, SessionMiddleware):
    pass


class BrowserAuthenticationMiddleware(_StandAsideForTokens, AuthenticationMiddleware):
    pass


class BrowserMessageMiddleware(_StandAsideForTokens, MessageMiddleware):
    pass


# What django-csp's decorators set on a response that has a policy of its own.
_OWN_POLICY = tuple(
    f"_csp_{part}{suffix}"
    for part in ("config", "update", "replace", "exempt")
    for suffix in ("", "_ro")
)


@functools.cache
def _settings_policy() -> str | None:
    """The policy every response gets from the settings; None when the settings
    ask for more than one policy for all (a report-only one, excluded prefixes)."""
    policy = getattr(settings, "CONTENT_SECURITY_POLICY", None) or {}
    if policy.get("EXCLUDE_URL_PREFIXES") or getattr(
        settings, "CONTENT_SECURITY_POLICY_REPORT_ONLY", None
    ):
        return None
    return build_policy()


@receiver(setting_changed)
def _forget_the_policy(*, setting: str, **kwargs) -> None:
    if setting.startswith("CONTENT_SECURITY_POLICY"):
        _settings_policy.cache_clear()


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, the settings' policy built once: django-csp builds it
    from the settings twice a response (the policy and the report-only one). A
    response with a policy of its own, a request that took a nonce, and a debug
    page go through django-csp's own code. Synchronous only: its ``__call__``
    reads the response it gets back, which under ASGI could be a coroutine."""

    async_capable = False

    def __call__(self, request):
        self.process_request(request)
        response = self.get_response(request)
        for name in _OWN_POLICY:
            if hasattr(response, name):
                return super().process_response(request, response)
        policy = _settings_policy()
        if (
            policy is None
            or getattr(request, "_csp_nonce", None) is not None
            or (settings.DEBUG and response.status_code in (404, 500))
        ):
            return super().process_response(request, response)
        if policy and HEADER not in response:
            response[HEADER] = policy
        # As django-csp does: a nonce asked for after the header was written is an error.
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response


class LoginLimitMiddleware:
    """Answers a refused login with a 429 page and Retry-After, in place of the
    form's "wrong password", which would be untrue (``users.logins.guard``)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        attempt = request.__dict__.get(guard.ATTEMPT)
        if attempt is None or attempt.refusal is None:
            return response
        return guard.refused(request, attempt)
