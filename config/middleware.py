"""Django's session, authentication and messages middleware, standing aside for
token-authenticated API requests; and django-csp's, its policy built once.

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

import functools

from csp.constants import HEADER
from csp.middleware import CheckableLazyObject, CSPMiddleware
from csp.utils import build_policy
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.signals import setting_changed
from django.dispatch import receiver


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


# What django-csp's decorators set on a response that has a policy of its own.
_OWN_POLICY = tuple(
    f"_csp_{part}{suffix}"
    for part in ("config", "update", "replace", "exempt")
    for suffix in ("", "_ro")
)


@functools.cache
def _settings_policy() -> str | None:
    """The policy every response gets from the settings; None when the settings
    ask for more than one policy for all (a report-only one, excluded prefixes)."""
    policy = getattr(settings, "CONTENT_SECURITY_POLICY", None) or {}
    if policy.get("EXCLUDE_URL_PREFIXES") or getattr(
        settings, "CONTENT_SECURITY_POLICY_REPORT_ONLY", None
    ):
        return None
    return build_policy()


@receiver(setting_changed)
def _forget_the_policy(*, setting: str, **kwargs) -> None:
    if setting.startswith("CONTENT_SECURITY_POLICY"):
        _settings_policy.cache_clear()


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, the settings' policy built once: django-csp builds it
    from the settings twice a response (the policy and the report-only one). A
    response with a policy of its own, a request that took a nonce, and a debug
    page go through django-csp's own code."""

    def process_response(self, request, response):
        policy = _settings_policy()
        if (
            policy is None
            or getattr(request, "_csp_nonce", None) is not None
            or any(hasattr(response, name) for name in _OWN_POLICY)
            or (settings.DEBUG and response.status_code in (404, 500))
        ):
            return super().process_response(request, response)
        if policy and HEADER not in response:
            response[HEADER] = policy
        # As django-csp does: a nonce asked for after the header was written is an error.
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response
