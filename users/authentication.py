"""Token authentication answered from the token cache.

DRF's ``TokenAuthentication`` runs one SQL query per request; this subclass
resolves the token through ``users.services`` instead, so a request whose token
and user are cached runs no SQL at all. The same Redis round trip counts the
request against the per-user rate limit (``UserRedisThrottle``) and reads the
user a GET of one user asks for, so such a GET costs one round trip in all
when both are cached.
"""

from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

from .services import Principal, TokenLookup, token_digest, token_principal_get
from .throttling import AuthFailureThrottle, UserRedisThrottle


class CachedTokenAuthentication(TokenAuthentication):
    # The user to read in the token lookup's round trip, if the view names one.
    read_ahead_id: int | None = None

    def authenticate(self, request):
        # A view may name the user its request will read (UserViewSet, for a GET of
        # one user), to have it read in the token lookup's round trip.
        view = (request.parser_context or {}).get("view")
        user_to_read_ahead = getattr(view, "user_to_read_ahead", None)
        self.read_ahead_id = user_to_read_ahead() if user_to_read_ahead is not None else None
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            throttle = AuthFailureThrottle()
            if not throttle.allow_request(request, None):
                raise Throttled(wait=throttle.wait()) from None
            raise

    def authenticate_credentials(self, key: str) -> tuple[Principal, TokenLookup]:
        lookup = token_principal_get(
            key=key,
            counter=UserRedisThrottle().counter_for_token(token_digest(key)),
            read_ahead_id=self.read_ahead_id,
        )
        if lookup.principal is None:
            raise AuthenticationFailed("Invalid token.")
        if not lookup.principal.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        # request.auth: what the lookup found for the throttle and the view, never
        # the credential.
        return lookup.principal, lookup
