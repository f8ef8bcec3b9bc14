"""Limits on password guessing at the login forms (django-axes), and their metrics.

``/admin/login/`` and ``/api-auth/login/`` each cost a password hash per attempt,
so unlimited attempts are both a way to guess passwords and a way to tie up the
server. django-axes counts failures in Redis (Django's cache) per account and per
client address and refuses further attempts, before any hash is computed, for
``LOGIN_LOCKOUT_MINUTES``. The account limit lets anyone lock a known account
out for that long: a lockout that expires by itself is the usual price of
stopping a guesser who spreads attempts over many addresses.

Failures are counted under the name the login forms look a user up by, which
is the NFKC form compared case-insensitively: "ROOT", "Root" and "root" are one
account to the database, so they are one account to the limit. Client addresses
come from ``X-Forwarded-For`` behind ``NUM_PROXIES`` proxies, as the API's rate
limits read them. ``manage.py unlock_login`` lifts a lockout.
"""

from django.contrib.auth.signals import user_login_failed
from rest_framework.throttling import BaseThrottle

from . import identity, metrics


def login_name(request, credentials: dict | None) -> str | None:
    """``AXES_USERNAME_CALLABLE``: the name as the database compares it."""
    username = (credentials or {}).get("username")
    if username is None and request is not None:
        username = request.POST.get("username")
    return None if username is None else account_key(username)


def account_key(username: str) -> str:
    return identity.normalize_username(username).casefold()


def client_address(request) -> str | None:
    """``AXES_CLIENT_IP_CALLABLE``: the address the API's throttles count by."""
    return BaseThrottle().get_ident(request)


def _count_failure(sender, **kwargs) -> None:
    metrics.LOGIN_FAILURES.inc()


def _count_lockout(sender, **kwargs) -> None:
    metrics.LOGIN_LOCKOUTS.inc()


def connect() -> None:
    from axes.signals import user_locked_out

    user_login_failed.connect(_count_failure, dispatch_uid="users.count_login_failure")
    user_locked_out.connect(_count_lockout, dispatch_uid="users.count_login_lockout")
