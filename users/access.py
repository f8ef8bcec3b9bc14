"""Who is calling and how often: token authentication through the token cache, and
the rate limits, counted in Redis.

A token request whose token and user are cached costs one Redis round trip and
no SQL: ``TokenAuthentication`` reads the token's entry, counts the request
against the per-token rate limit and reads the user the URL names, all at once
(``tokens.token_lookup``). A view says which users its request reads with
``read_ahead_ids``, set before authentication; what the lookup read stays with
the request (``token_read``), where ``UserRateThrottle`` takes the count and the
view the users (``read_ahead``).

The rate limits count in a fixed window (one Lua call: INCR, and PEXPIRE on the
first request), which is the usual trade against DRF's sliding log: a client
can send up to twice its rate across a window boundary. Rates come from
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` by scope, read when the throttle is
made; a rate of None turns a scope off. If Redis does not answer, requests are
let through: an outage of the cache must not become an outage of the API.
"""

from __future__ import annotations

from collections.abc import Iterable

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from . import tokens
from .cache import counters
from .cache.keys import throttle_key
from .cache.transport import CacheUnavailable
from .logins.addresses import client_address
from .reads import Entry
from .tokens import Principal, TokenRead

_SAFE_METHODS = frozenset({"GET", "HEAD"})


def token_read(request: Request) -> TokenRead | None:
    """What token authentication read for this request; None for any other request."""
    return request.__dict__.get("_usersvc_token_read")


def read_ahead(request: Request, user_ids: Iterable[int]) -> dict[int, Entry | None] | None:
    """The entries of ``user_ids`` as the token lookup read them, for
    ``reads.user_get(first=...)``; None unless it read every one of them."""
    read = token_read(request)
    if read is None or read.read_ahead is None:
        return None
    return read.read_ahead if all(i in read.read_ahead for i in user_ids) else None


class TokenAuthentication(BaseAuthentication):
    """``Authorization: Token <40 lowercase hex digits>``, DRF's tokens, through the cache.

    Anything but exactly that shape is refused before any I/O (``users.tokens``).
    A well-formed key that is not cached passes the failed-guess limit
    (``AuthFailureThrottle``) before MySQL is asked, and each failure counts.
    """

    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Principal, None] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != b"token":
            return None
        key = header[1].decode("latin-1") if len(header) == 2 else ""
        if not tokens.is_well_formed(key):
            raise AuthenticationFailed("Invalid token.")
        failures = AuthFailureThrottle()
        read = tokens.token_lookup(
            key=key,
            counter=UserRateThrottle().counter_for_token,
            read_ahead_ids=self._read_ahead_ids(request),
            before_load=lambda: failures.refuse_if_over(request),
        )
        request.__dict__["_usersvc_token_read"] = read
        if read.principal is None or not read.principal.is_active:
            if not failures.allow_request(request, None):
                raise Throttled(wait=failures.wait())
            if read.principal is None:
                raise AuthenticationFailed("Invalid token.")
            raise AuthenticationFailed("User inactive or deleted.")
        # request.auth stays None: the credential is not handed on.
        return read.principal, None

    def authenticate_header(self, request: Request) -> str:
        return self.keyword

    @staticmethod
    def _read_ahead_ids(request: Request) -> list[int]:
        """The users a read says it will read: its view's ``read_ahead_ids``, set from
        the URL before authentication runs (``users.api.UserViewSet.initial``)."""
        if request.method not in _SAFE_METHODS:
            return []
        view = (request.parser_context or {}).get("view")
        return list(getattr(view, "read_ahead_ids", None) or ())


class RedisRateThrottle(SimpleRateThrottle):
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
                counted = counters.count_in_window(key, window_ms)
            except CacheUnavailable:
                return True
        self.seconds_left = max(counted.ms_left, 0) / 1000
        return counted.count <= self.num_requests

    def counted_already(self, request: Request) -> counters.WindowCount | None:
        """This request's count, when authentication took it on its way."""
        return None

    def get_ident_for(self, request: Request) -> str | None:
        """Who the request counts against, or None when this throttle skips it."""
        raise NotImplementedError

    def wait(self) -> float:
        return self.seconds_left

    def get_ident(self, request: Request) -> str:
        """The client address as every per-address limit counts it: IPv6 by network."""
        return client_address(request)


class AnonRateThrottle(RedisRateThrottle):
    """Unauthenticated requests, per client address."""

    scope = "anon"

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
        read = token_read(request)
        if read is not None:
            return read.token_mac
        if request.user and request.user.is_authenticated:
            return str(request.user.pk)
        return None

    def counted_already(self, request: Request) -> counters.WindowCount | None:
        read = token_read(request)
        return None if read is None else read.counted

    def counter_for_token(self, token_mac: str) -> tuple[str, int] | None:
        """The counter key (in the token entry's hash slot) and window (ms) for the
        token of this name; None while the scope is off."""
        if self.rate is None:
            return None
        return throttle_key(self.scope, token_mac), self.duration * 1000


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
