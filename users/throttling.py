"""Rate limits on DRF's throttle interface, counted in Redis in one round trip.

DRF's own ``SimpleRateThrottle`` keeps a list of request timestamps per client
in the cache and reads and rewrites it on every request: two round trips and a
pickled list as long as the rate. These count in a fixed window instead (one
Lua call: INCR, and PEXPIRE on the first request), which is the usual trade:
a client can send up to twice its rate across a window boundary.

Rates come from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` by scope, read when
the throttle is made, so a changed setting applies at once. A rate of None
turns a scope off. If Redis does not answer, requests are let through: an
outage of the cache must not become an outage of the API.
"""

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from . import cache
from .services import TokenLookup


class RedisRateThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        ident = self.get_ident_for(request)
        if ident is None:
            return True
        counted = self.counted_already(request)
        if counted is None:
            try:
                counted = cache.count_in_window(
                    cache.throttle_key(self.scope, ident), self.duration * 1000
                )
            except cache.CacheUnavailable:
                return True
        self.seconds_left = max(counted.ms_left, 0) / 1000
        return counted.count <= self.num_requests

    def counted_already(self, request) -> cache.WindowCount | None:
        """This request's count, when authentication took it on its way."""
        return None

    def get_ident_for(self, request) -> str | None:
        """Who the request counts against, or None when this throttle skips it."""
        raise NotImplementedError

    def wait(self) -> float:
        return self.seconds_left


class AnonRedisThrottle(RedisRateThrottle):
    """Unauthenticated requests, per client address."""

    scope = "anon"

    def get_ident_for(self, request) -> str | None:
        if request.user and request.user.is_authenticated:
            return None
        return self.get_ident(request)


class UserRedisThrottle(RedisRateThrottle):
    """Authenticated requests: per token when a token authenticated them, else per user.

    Token authentication counts the request in the same Redis call that looks
    the token up (``counter_for_token``) and hands the count on in
    ``request.auth``, which saves a cached read a round trip. DRF gives a user at
    most one token, so per token is per user; rotating the token starts a new
    window, and session logins of the same user count apart.
    """

    scope = "user"

    def get_ident_for(self, request) -> str | None:
        if isinstance(request.auth, TokenLookup):
            return request.auth.token_mac
        if request.user and request.user.is_authenticated:
            return str(request.user.pk)
        return None

    def counted_already(self, request) -> cache.WindowCount | None:
        return request.auth.counted if isinstance(request.auth, TokenLookup) else None

    def counter_for_token(self, token_mac: str) -> tuple[str, int] | None:
        """The counter key (in the token entry's hash slot) and window (ms) for requests
        made with the token of this name (``tokens.token_mac``); None while the scope
        is off."""
        if self.rate is None:
            return None
        return cache.throttle_key(self.scope, token_mac), self.duration * 1000


class AuthFailureThrottle(RedisRateThrottle):
    """Failed token checks, per client address: each guess costs a MySQL query, so
    guessing is capped. Authentication counts a failure here only when a check
    fails, and asks ``is_over`` before it queries MySQL for a token that is not
    cached, so a client over the limit costs no query at all."""

    scope = "auth_failure"

    def get_ident_for(self, request) -> str | None:
        return self.get_ident(request)

    def is_over(self, request) -> bool:
        """Whether this client has used up its failures, without counting one."""
        ident = None if self.rate is None else self.get_ident_for(request)
        if ident is None:
            return False
        try:
            counted = cache.window_count(cache.throttle_key(self.scope, ident))
        except cache.CacheUnavailable:
            return False
        self.seconds_left = max(counted.ms_left, 0) / 1000
        return counted.count >= self.num_requests
