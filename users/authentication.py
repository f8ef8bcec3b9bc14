"""Token authentication answered from the token cache.

DRF's ``TokenAuthentication`` runs one SQL query per request; this subclass
resolves the token through ``users.services`` instead, so a request whose token
and user are cached runs no SQL at all.
"""

from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

from .services import Principal, token_principal_get
from .throttling import AuthFailureThrottle


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate(self, request):
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            throttle = AuthFailureThrottle()
            if not throttle.allow_request(request, None):
                raise Throttled(wait=throttle.wait()) from None
            raise

    def authenticate_credentials(self, key: str) -> tuple[Principal, None]:
        principal = token_principal_get(key=key)
        if principal is None:
            raise AuthenticationFailed("Invalid token.")
        if not principal.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        # request.auth stays None: the credential is not handed on to views.
        return principal, None
