"""The rate limits (DRF's ``throttling`` hook), counted in Redis.

They count in a fixed window (one Lua call: INCRBY, and PEXPIRE on the first
request), which is the usual trade against DRF's sliding log: a client can send
up to twice its rate across a window boundary. A request counts what it costs,
not one: the users it reads or renders (``UserViewSet.cost``), so a page of 500
users is 500 cached reads' worth of a client's budget, and a page of the
browsable API (a session's HTML) ``BROWSABLE_COST`` more than its JSON. A request
that hashes a password counts against a rate of its own as well
(``PasswordHashThrottle``), per client and per account. Rates come from
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` by scope, read when the throttle is
made; a rate of None turns a scope off. If Redis does not answer, requests are
let through: an outage of the cache must not become an outage of the API.
"""

from __future__ import annotations

from rest_framework.exceptions import Throttled
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from .cache import counters
from .cache.keys import throttle_key
from .cache.transport import CacheUnavailable
from .logins.addresses import client_address
from .tokens import TokenRead

# What a browsable API page counts against its client's rate on top of its JSON,
# in cached reads: the page also renders its forms and template, whatever the
# rows (docs/benchmarks.md, "Browsable API"). Tokens are always answered in JSON.
BROWSABLE_COST = 20


class RedisRateThrottle(SimpleRateThrottle):
    """A rate limit whose requests cost ``cost`` units each, and never more than a
    whole window's: the costliest request a client may make still gets through,
    once a window."""

    def __init__(self, *, cost: int = 1) -> None:
        super().__init__()
        self.cost = cost if self.rate is None else max(1, min(cost, self.num_requests))

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Request, view) -> bool:
        if self.rate is None:
            return True
        ident = self.get_ident_for(request)
        if ident is None:
            return True
        counted = self.counted_already(request)
        if counted is None:
            key, window_ms = throttle_key(self.scope, ident), self.duration * 1000
            try:
                counted = counters.count_in_window(key, window_ms, self.cost_of(request))
            except CacheUnavailable:
                return True
            if self.counts_in_process(request):
                counters.local_windows.seen(key, counted, window_ms)
        self.seconds_left = max(counted.ms_left, 0) / 1000
        return counted.count <= self.num_requests

    def cost_of(self, request: Request) -> int:
        """``cost``, and ``BROWSABLE_COST`` more for a browsable API page; never more
        than a window's budget."""
        renderer = getattr(request, "accepted_renderer", None)
        if isinstance(renderer, BrowsableAPIRenderer):
            return min(self.cost + BROWSABLE_COST, self.num_requests)
        return self.cost

    def counted_already(self, request: Request) -> counters.WindowCount | None:
        """This request's count, when authentication took it on its way."""
        return None

    def counts_in_process(self, request: Request) -> bool:
        """Whether this client's next requests may be counted in process (a token
        the near cache holds): they then continue from the count Redis gave."""
        return False

    def get_ident_for(self, request: Request) -> str | None:
        """Who the request counts against, or None when this throttle skips it."""
        raise NotImplementedError

    def wait(self) -> float:
        return self.seconds_left

    def get_ident(self, request: Request) -> str:
        """The client address as every per-address limit counts it: IPv6 by network."""
        return client_address(request)


class AnonRateThrottle(RedisRateThrottle):
    """Unauthenticated requests, per client address, one each: the API refuses them
    (a 401, whose browsable page a browser gets before it logs in), and the rate
    is low enough that their rendering costs little whatever its form."""

    scope = "anon"

    def cost_of(self, request: Request) -> int:
        return 1

    def get_ident_for(self, request: Request) -> str | None:
        if request.user and request.user.is_authenticated:
            return None
        return self.get_ident(request)


class UserRateThrottle(RedisRateThrottle):
    """Authenticated requests: per token when a token authenticated them (the count
    taken in the token lookup's round trip), else per user. DRF gives a user at
    most one token, so per token is per user; rotating the token starts a new
    window, and session logins of the same user count apart."""

    scope = "user"

    def get_ident_for(self, request: Request) -> str | None:
        if isinstance(request.auth, TokenRead):
            return request.auth.ref.mac
        if request.user and request.user.is_authenticated:
            return str(request.user.pk)
        return None

    def counted_already(self, request: Request) -> counters.WindowCount | None:
        return request.auth.counted if isinstance(request.auth, TokenRead) else None

    def counts_in_process(self, request: Request) -> bool:
        return isinstance(request.auth, TokenRead)


class AuthFailureThrottle(RedisRateThrottle):
    """Failed token checks, per client address: each guess costs a MySQL query, so
    guessing is capped. A failure is counted only when a check fails, and
    ``refuse_if_over`` runs before MySQL is asked about a token that is not
    cached, so a client over the limit costs no query at all."""

    scope = "auth_failure"

    def get_ident_for(self, request: Request) -> str | None:
        return self.get_ident(request)

    def refuse_if_over(self, request: Request) -> None:
        """Raises ``Throttled`` when this client has used up its failures (counting
        none); lets it through when the scope is off or Redis does not answer."""
        if self.rate is None:
            return
        try:
            counted = counters.window_count(throttle_key(self.scope, self.get_ident(request)))
        except CacheUnavailable:
            return
        if counted.count >= self.num_requests:
            raise Throttled(wait=max(counted.ms_left, 0) / 1000)


class PasswordHashThrottle(RedisRateThrottle):
    """Writes that hash a password (``POST``, ``PUT`` or ``PATCH`` with a
    ``password``), per client and per account written, each hash one unit
    whatever else the request costs (``cost`` is taken and not used): a hash is a
    quarter of a second of CPU, so one client's (or many clients' at one account)
    must not take the workers' time from everyone else's reads. Other requests
    pass untouched. The admin's password forms count the same (``users.admin``)."""

    scope = "password_hash"

    def __init__(self, *, cost: int = 1) -> None:
        super().__init__()

    def allow_request(self, request: Request, view) -> bool:
        if self.rate is None or not _hashes_password(request):
            return True
        account = getattr(view, "kwargs", {}).get("pk")
        self.seconds_left = self.hash_wait(request, account=account)
        return self.seconds_left is None

    def hash_wait(self, request: Request, *, account: object | None) -> float | None:
        """Counts a hash for ``request``'s client and for ``account`` (the id of the
        user whose password is set, None for a new user): None when both are
        within the rate (or Redis does not answer), else the seconds to wait."""
        if self.rate is None:
            return None
        subjects = [f"client:{self.get_ident_for(request)}"]
        if account is not None:
            subjects.append(f"account:{account}")
        waits = []
        for subject in subjects:
            key = throttle_key(self.scope, subject)
            try:
                counted = counters.count_in_window(key, self.duration * 1000)
            except CacheUnavailable:
                return None
            if counted.count > self.num_requests:
                waits.append(max(counted.ms_left, 0) / 1000)
        return max(waits) if waits else None

    def get_ident_for(self, request: Request) -> str:
        if isinstance(getattr(request, "auth", None), TokenRead):
            return f"token:{request.auth.ref.mac}"
        if request.user and request.user.is_authenticated:
            return f"user:{request.user.pk}"
        return f"address:{self.get_ident(request)}"


def _hashes_password(request: Request) -> bool:
    if request.method not in ("POST", "PUT", "PATCH"):
        return False
    data = request.data
    return hasattr(data, "get") and bool(data.get("password"))
