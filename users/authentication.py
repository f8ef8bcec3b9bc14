"""Token authentication through the token cache (DRF's ``authentication`` hook).

A token request whose token and user are cached costs one Redis round trip and
no SQL (none at all when the near cache holds both): ``TokenAuthentication``
reads the token's entry, counts the request against the per-token rate limit
and reads the users the view prefetches, all at once (``tokens.token_cached``).
The view says which users its request reads and what it costs before
authentication runs, by making its authenticator with them
(``UserViewSet.get_authenticators``); the result goes where DRF keeps
authentication's context, ``request.auth`` (a ``tokens.TokenRead``), where the
throttle finds the count and the view the prefetched users.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings

from . import tokens
from .throttling import AuthFailureThrottle, UserRateThrottle
from .tokens import Found, Principal, RateCount, TokenRead

# How many of the users a request declares are read in the token lookup's round
# trip, before the token is known to be good: enough for a single read and a
# small batch, and a bound on what a client without a valid token makes Redis
# do (a batch names up to 100). The view reads the rest once the token passed.
PREFETCHED_WITH_TOKEN = 8


@dataclasses.dataclass(frozen=True)
class TokenAuthentication(BaseAuthentication):
    """``Authorization: Token <40 lowercase hex digits>``, DRF's tokens, through the cache.

    Anything but exactly that shape is refused before any I/O (``users.tokens``).
    A well-formed key that is not cached passes the failed-guess limit
    (``AuthFailureThrottle``) before MySQL is asked, and each failure counts.
    ``prefetch``: the users the request will read (the first
    ``PREFETCHED_WITH_TOKEN`` of them are read with the token); ``cost``: what it
    counts against the caller's rate limit (``users.throttling``).
    """

    keyword = "Token"
    prefetch: Sequence[int] = ()
    cost: int = 1

    def authenticate(self, request: Request) -> tuple[Principal, TokenRead] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != b"token":
            return None
        key = header[1].decode("latin-1") if len(header) == 2 else ""
        if tokens.KEY_SHAPE.fullmatch(key) is None:
            raise AuthenticationFailed("Invalid token.")
        return self.authenticate_credentials(key, request)

    def authenticate_credentials(self, key: str, request: Request) -> tuple[Principal, TokenRead]:
        read = tokens.token_cached(
            key=key, prefetch=self.prefetch[:PREFETCHED_WITH_TOKEN], rate=_rate_count(self.cost)
        )
        if read.found is Found.CACHED and read.principal.is_active:
            return read.principal, read
        failures = AuthFailureThrottle()
        if read.found is not Found.CACHED:
            failures.refuse_if_over(request)
            read = tokens.token_loaded(read)
        if read.principal is None or not read.principal.is_active:
            if not failures.allow_request(request, None):
                raise Throttled(wait=failures.wait())
            if read.principal is None:
                raise AuthenticationFailed("Invalid token.")
            raise AuthenticationFailed("User inactive or deleted.")
        return read.principal, read

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def _rate_count(cost: int) -> RateCount | None:
    """What the token lookup counts this request against, in the token entry's hash
    slot: ``UserRateThrottle``'s scope and window, and the request's cost, never
    more than a window's budget (as the throttle counts it); None while the scope
    is off. The throttle then finds the count in ``request.auth``."""
    rate = api_settings.DEFAULT_THROTTLE_RATES.get(UserRateThrottle.scope)
    if rate is None:
        return None
    requests, seconds = _parsed_rate(rate)
    return RateCount(UserRateThrottle.scope, seconds * 1000, max(1, min(cost, requests)))


@functools.cache
def _parsed_rate(rate: str) -> tuple[int, int]:
    """DRF's ``"<requests>/<period>"`` as (requests, seconds), parsed once per rate
    (DRF's parser reads nothing of the throttle it is a method of)."""
    return UserRateThrottle.parse_rate(None, rate)
