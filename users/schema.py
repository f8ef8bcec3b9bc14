"""The pieces of the API's OpenAPI description (drf-spectacular) that ``users.api``
puts together: the response shapes, the error answers, the headers, and the
token scheme. The API returns plain dicts from the services, so these shapes
exist for the description only; ``tests/test_openapi.py`` holds them to the API.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers


class UserSerializer(serializers.Serializer):
    """A user as every response shows it (``services.PUBLIC_FIELDS``)."""

    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField()
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    is_active = serializers.BooleanField()
    date_joined = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


FIELD_ERRORS = OpenApiResponse(
    {
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
                "example": {"email": ["A user with that email already exists."]},
            },
            {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
                "example": {"detail": "JSON parse error - Expecting value"},
            },
        ]
    },
    description="Invalid input: a list of messages per field (or `non_field_errors`); "
    "a body that is not valid JSON gets a `detail` instead.",
)
UNAUTHENTICATED = _error(
    "No credentials, a token that is not 40 lowercase hex digits or is unknown, or an "
    "inactive user."
)
FORBIDDEN = _error(
    "Writing needs staff status and the model permission (add_user, change_user, "
    "delete_user), and only a superuser may change a superuser or another staff account "
    "(or the session's CSRF check failed)."
)
NOT_FOUND = _error("No user with this id (also for an id that is not a positive integer).")
INVALID_CURSOR = _error("The `cursor` is not one this API handed out.")
CONFLICT = _error("The user kept being changed concurrently; retry the request.")
TOO_LARGE = _error("The request body is over the limit (`MAX_REQUEST_BODY_BYTES`).")
UNSUPPORTED_MEDIA_TYPE = _error("The request body is not JSON.")
THROTTLED = _error("Too many requests; retry after `Retry-After` seconds.")
UNAVAILABLE = _error(
    "MySQL does not answer (cached reads still succeed); retry after `Retry-After`."
)

USER_ID = OpenApiParameter(
    "id",
    OpenApiTypes.INT,
    OpenApiParameter.PATH,
    description="The user's id, 1 to 2^63 - 1. Anything else answers 404.",
)
X_CACHE = OpenApiParameter(
    "X-Cache",
    str,
    OpenApiParameter.HEADER,
    response=[200, 404],
    enum=["HIT", "MISS", "BYPASS"],
    description="Where the answer came from: HIT (Redis, no SQL), MISS (MySQL, now "
    "cached) or BYPASS (Redis unavailable, MySQL answered). A 404 can be a HIT too: "
    "unknown ids are cached as absent for a short while.",
)
LOCATION = OpenApiParameter(
    "Location",
    str,
    OpenApiParameter.HEADER,
    response=[201],
    description="The new user's URL.",
)
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    int,
    OpenApiParameter.HEADER,
    response=[429, 503],
    description="Seconds to wait before retrying.",
)


class TokenScheme(OpenApiAuthenticationExtension):
    """``TokenAuthentication`` takes DRF's tokens, looked up through the cache."""

    target_class = "users.access.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "A DRF token with its prefix: `Token <key>`. "
            "`manage.py drf_create_token <username>` makes one.",
        }
