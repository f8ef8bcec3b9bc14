"""Where the login limits meet Django's authentication: a backend that refuses
before any password is hashed, the signals that count failures and successes,
and the middleware that answers a refusal with 429.

``authenticate()`` asks the backends in order and stops at the first that raises
``PermissionDenied``: ``LoginLimitBackend``, first in ``AUTHENTICATION_BACKENDS``,
counts the attempt and raises when a limit refuses it, so the model backend
never hashes. The attempt stays with the request (``attempt_of``), where the
signal receivers find it (Django then sends ``user_login_failed`` for the
refusal too, which counts nothing) and the middleware turns the form's answer
into a 429 (``refused``). ``authenticate()`` called without a request (code, not a form) is
not limited: no client asked.
"""

from __future__ import annotations

import math

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.cache import add_never_cache_headers

from . import limits
from .addresses import client_address

ATTEMPT = "_usersvc_login_attempt"


def attempt_of(request: HttpRequest | None) -> limits.Attempt | None:
    """The attempt the limits counted for this request; None for any other."""
    return None if request is None else request.__dict__.get(ATTEMPT)


class LoginLimitBackend:
    """Authenticates nobody: counts the attempt and refuses it over a limit. No
    ``get_user``: a session is never this backend's (``force_login`` picks the
    first backend that has one)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None or username is None:
            return None
        attempt = limits.attempt_check(name=username, address=client_address(request))
        request.__dict__[ATTEMPT] = attempt
        if attempt.refusal is not None:
            raise PermissionDenied
        return None


def _count_failure(sender, credentials, request=None, **kwargs) -> None:
    attempt = attempt_of(request)
    if attempt is not None and attempt.refusal is None:
        limits.attempt_failed(attempt)


def _count_success(sender, request, user, **kwargs) -> None:
    """Only a login that went through the limits: ``force_login`` and the like did not."""
    attempt = attempt_of(request)
    if attempt is not None and attempt.refusal is None:
        limits.attempt_succeeded(attempt)


def refused(request: HttpRequest, attempt: limits.Attempt) -> HttpResponse:
    """The answer to a login the limits refused (``users.middleware.LoginLimitMiddleware``):
    a 429 page and Retry-After, in place of the form's "wrong password", which
    would be untrue."""
    retry_after = attempt.refusal.retry_after
    response = HttpResponse(
        render_to_string(
            "users/login_refused.html",
            {"minutes": math.ceil(retry_after / 60), "login": request.get_full_path()},
            request,
        ),
        status=429,
    )
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


def connect() -> None:
    limits.check_settings()
    user_login_failed.connect(_count_failure, dispatch_uid="users.logins.count_failure")
    user_logged_in.connect(_count_success, dispatch_uid="users.logins.count_success")
