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


class RedisRateThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        ident = self.get_ident_for(request)
        if ident is None:
            return True
        try:
            count, ms_left = cache.count_in_window(
                cache.throttle_key(self.scope, ident), self.duration * 1000
            )
        except cache.CacheUnavailable:
            return True
        self.seconds_left = max(ms_left, 0) / 1000
        return count <= self.num_requests

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
    """Authenticated requests, per user."""

    scope = "user"

    def get_ident_for(self, request) -> str | None:
        if request.user and request.user.is_authenticated:
            return str(request.user.pk)
        return None


class AuthFailureThrottle(RedisRateThrottle):
    """Failed token checks, per client address: each guess costs a MySQL query and
    a negative cache entry, so guessing is capped. Authentication calls it only
    when a check fails, so it costs nothing on the success path."""

    scope = "auth_failure"

    def get_ident_for(self, request) -> str | None:
        return self.get_ident(request)
