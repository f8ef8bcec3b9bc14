"""Token authentication answered from the token cache.

DRF's ``TokenAuthentication`` runs one SQL query per request; this subclass
resolves the token through ``users.services`` instead, so a request whose token
and user are cached runs no SQL at all. The same Redis round trip counts the
request against the per-user rate limit (``UserRedisThrottle``) and reads the
user a GET of one user asks for, so such a GET costs one round trip in all
when both are cached.

A key that is not exactly DRF's shape is refused before any I/O
(``users.tokens``). A well-formed key that is not cached passes the failed-guess
limit (``AuthFailureThrottle``) before MySQL is asked, and each failure counts
against it.
"""

from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled

from . import tokens
from .services import TokenLookup, token_principal_get
from .throttling import AuthFailureThrottle, UserRedisThrottle
from .tokens import Principal


class MalformedToken(AuthenticationFailed):
    default_detail = "Invalid token."


class CachedTokenAuthentication(TokenAuthentication):
    # The user to read in the token lookup's round trip, if the view names one.
    read_ahead_id: int | None = None

    def authenticate(self, request):
        # A view may name the user its request will read (UserViewSet, for a GET of
        # one user), to have it read in the token lookup's round trip.
        view = (request.parser_context or {}).get("view")
        user_to_read_ahead = getattr(view, "user_to_read_ahead", None)
        self.read_ahead_id = user_to_read_ahead() if user_to_read_ahead is not None else None
        self.request = request
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        # Anything but "Token <40 lowercase hex digits>" is refused here, at no cost.
        key = header[1].decode("latin-1") if len(header) == 2 else ""
        if not tokens.is_well_formed(key):
            raise MalformedToken()
        try:
            return self.authenticate_credentials(key)
        except AuthenticationFailed:
            throttle = AuthFailureThrottle()
            if not throttle.allow_request(request, None):
                raise Throttled(wait=throttle.wait()) from None
            raise

    def authenticate_credentials(self, key: str) -> tuple[Principal, TokenLookup]:
        lookup = token_principal_get(
            key=key,
            counter=UserRedisThrottle().counter_for_token,
            read_ahead_id=self.read_ahead_id,
            before_load=self._refuse_if_guessing,
        )
        if lookup.principal is None:
            raise AuthenticationFailed("Invalid token.")
        if not lookup.principal.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        # request.auth: what the lookup found for the throttle and the view, never
        # the credential.
        return lookup.principal, lookup

    def _refuse_if_guessing(self) -> None:
        """Before MySQL is asked about a token: a client over the failed-guess limit
        gets a 429 and costs no query."""
        throttle = AuthFailureThrottle()
        if throttle.is_over(self.request):
            raise Throttled(wait=throttle.wait())
