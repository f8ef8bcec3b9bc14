"""Django's session, authentication and messages middleware, standing aside for
token-authenticated API requests.

They serve the admin and the browsable API, which log in with a session. An API
request that carries ``Authorization: Token ...`` is authenticated by DRF
(``users.authentication``) and uses neither a session, ``request.user`` before
the view, nor messages; skipping the three saved about a tenth of
a cached read's time in process (measured side by side on the framework-floor
endpoint). Everything else, the admin included,
goes through them as usual, and Django's admin checks still find them (these
are subclasses). CSRF stays on for every request: DRF's views are exempt
anyway, and it guards the admin's forms.
"""

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware


def is_token_api_request(request) -> bool:
    """An API request that carries a DRF token (its scheme is case-insensitive)."""
    return (
        request.path_info.startswith(settings.TOKEN_API_PATH_PREFIXES)
        and request.META.get("HTTP_AUTHORIZATION", "")[:6].lower() == "token "
    )


class _StandAsideForTokens:
    def __call__(self, request):
        if is_token_api_request(request):
            return self.get_response(request)
        return super().__call__(request)


class BrowserSessionMiddleware(_StandAsideForTokens, SessionMiddleware):
    pass


class BrowserAuthenticationMiddleware(_StandAsideForTokens, AuthenticationMiddleware):
    pass


class BrowserMessageMiddleware(_StandAsideForTokens, MessageMiddleware):
    pass
