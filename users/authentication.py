"""Token authentication answered from the token cache.

DRF's ``TokenAuthentication`` runs one SQL query per request; this subclass
resolves the token through ``users.services`` instead, so a request whose token
and user are cached runs no SQL at all. The same Redis call counts the request
against the per-user rate limit (``UserRedisThrottle``), so a cached read costs
two round trips: this one and the user's.
"""

from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

from .cache import WindowCount
from .services import Principal, token_digest, token_principal_get
from .throttling import AuthFailureThrottle, UserRedisThrottle


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate(self, request):
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            throttle = AuthFailureThrottle()
            if not throttle.allow_request(request, None):
                raise Throttled(wait=throttle.wait()) from None
            raise

    def authenticate_credentials(self, key: str) -> tuple[Principal, WindowCount | None]:
        counter = UserRedisThrottle().counter_for_token(token_digest(key))
        principal, counted = token_principal_get(key=key, counter=counter)
        if principal is None:
            raise AuthenticationFailed("Invalid token.")
        if not principal.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        # request.auth: the request's count for the throttle, never the credential.
        return principal, counted
