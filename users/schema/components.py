"""The shapes the description names: the answers (users, pages, errors) and the
parameters and headers of the operations. What clients send is
``users.serializers``'; ``users.schema.operations`` puts these on the operations.
"""

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema_serializer,
)
from rest_framework import serializers

from ..serializers import MAX_ID, MAX_IDS

# Responses.


@extend_schema_serializer(
    description="A user as every answer shows it; the password is never shown."
)
class UserSerializer(serializers.Serializer):
    """``users.entries.PUBLIC_FIELDS``; tests/api/test_openapi.py holds the two together."""

    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField()
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    is_active = serializers.BooleanField()
    date_joined = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


# One answer, never a list of them: a list action's answer would otherwise be
# documented as a page of answers.
@extend_schema_serializer(many=False)
class UserPageSerializer(serializers.Serializer):
    """A page of users: the list, or the 0 or 1 users a username or e-mail names."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = UserSerializer(many=True)


class UserBatchSerializer(serializers.Serializer):
    """The users asked for, in the order first asked, and the ids found nowhere."""

    results = UserSerializer(many=True)
    missing = serializers.ListField(child=serializers.IntegerField())


class ErrorSerializer(serializers.Serializer):
    """An error, in words: every 4xx and 5xx but the per-field 400s."""

    detail = serializers.CharField()


class FieldErrorsSerializer(serializers.Serializer):
    """Described by ``FieldErrorsSchema``: DRF's per-field messages, keyed by the
    field or query parameter they are about."""


class FieldErrorsSchema(OpenApiSerializerExtension):
    """Per-field messages as an object of string arrays that never has a ``detail``
    (no field or query parameter of this API is called that): a body is an
    ``Error`` or ``FieldErrors``, never both."""

    target_class = FieldErrorsSerializer

    def map_serializer(self, auto_schema, direction) -> dict:
        return {
            "type": "object",
            "description": "Messages per field or query parameter (or `non_field_errors`).",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "not": {"required": ["detail"]},
            "example": {"email": ["A user with that email already exists."]},
        }


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


# Error first: client generators try the shapes of a oneOf in order and keep the
# first that parses, and only Error requires a key of its own.
FIELD_ERRORS = OpenApiResponse(
    PolymorphicProxySerializer(
        component_name="BadRequest",
        serializers=[ErrorSerializer, FieldErrorsSerializer],
        resource_type_field_name=None,
        many=False,
    ),
    description="Invalid input: `FieldErrors`, messages per field (or "
    "`non_field_errors`); a body that is not valid JSON gets an `Error` instead.",
)
BAD_QUERY = OpenApiResponse(
    FieldErrorsSerializer,
    description="A query parameter is not valid, or a parameter that takes one value "
    "was given more than once; the messages name the parameter.",
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
NOT_MODIFIED = OpenApiResponse(
    description="The user's current ETag is among those in `If-None-Match`: no body."
)
PRECONDITION_FAILED = _error("`If-Match` names no current ETag of the user: nothing written.")
PRECONDITION_REQUIRED = _error("Writes need `If-Match` here (`REQUIRE_IF_MATCH`).")

# Parameters and headers.

USER_ID = OpenApiParameter(
    "id",
    OpenApiTypes.INT,
    OpenApiParameter.PATH,
    description="The user's id, 1 to 2^63 - 1. Anything else answers 404.",
)
IDS = OpenApiParameter(
    "ids",
    {
        "type": "array",
        "items": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID},
        "minItems": 1,
        "maxItems": MAX_IDS,
    },
    required=True,
    style="form",
    explode=True,
    description=f"Up to {MAX_IDS} user ids, as repeated keys (`ids=1&ids=2&ids=3`, what "
    "client libraries send for a list), comma-separated (`ids=1,2,3`), or both. "
    "Duplicates are collapsed; the limit counts distinct ids. An id that is not a "
    "positive integer is a 400, never skipped.",
)
USERNAME = OpenApiParameter("username", str, description="The user with exactly this username.")
EMAIL = OpenApiParameter(
    "email", str, description="The user with this e-mail, compared case-insensitively."
)
X_CACHE = OpenApiParameter(
    "X-Cache",
    str,
    OpenApiParameter.HEADER,
    response=[200, 304, 404],
    enum=["HIT", "MISS", "BYPASS"],
    description="Where the answer came from: HIT (Redis, no SQL), MISS (MySQL, now "
    "cached) or BYPASS (Redis unavailable, MySQL answered). A 404 can be a HIT too: "
    "unknown ids are cached as absent for a short while. Sent to staff callers only "
    "unless the service's CACHE_STATUS_HEADER says otherwise.",
)
ETAG = OpenApiParameter(
    "ETag",
    str,
    OpenApiParameter.HEADER,
    response=[200, 201, 304],
    description="The user's strong ETag (its row version), for If-None-Match and If-Match.",
)
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    str,
    OpenApiParameter.HEADER,
    description="ETags the client holds: 304 without a body when one is current.",
)
IF_MATCH = OpenApiParameter(
    "If-Match",
    str,
    OpenApiParameter.HEADER,
    description="The ETag the change is based on (or `*`): 412 and nothing written when "
    "the user changed since.",
)
LOCATION = OpenApiParameter(
    "Location", str, OpenApiParameter.HEADER, response=[201], description="The new user's URL."
)
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    int,
    OpenApiParameter.HEADER,
    response=[429, 503],
    description="Seconds to wait before retrying.",
)
