"""The API's shapes: the serializers that validate what clients send, and the
OpenAPI description (drf-spectacular) of what it answers, put together for
``users.api.UserViewSet`` by ``describe_user_viewset``. The API answers with
plain dicts from the reads and writes, so the response shapes exist for the
description only; ``tests/test_openapi.py`` holds them to the API.
"""

from django.contrib.auth.validators import UnicodeUsernameValidator
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers

# Requests.


class UserCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
    email = serializers.EmailField(max_length=254)
    # Spaces are part of a password, as Django's own forms keep them.
    password = serializers.CharField(
        required=False,
        write_only=True,
        max_length=128,
        trim_whitespace=False,
        style={"input_type": "password"},
    )
    first_name = serializers.CharField(required=False, allow_blank=True, max_length=150)
    last_name = serializers.CharField(required=False, allow_blank=True, max_length=150)


class UserUpdateSerializer(UserCreateSerializer):
    """PUT needs username and email; PATCH any subset. Omitted fields keep their value."""

    is_active = serializers.BooleanField(required=False)


# Responses.


class UserSerializer(serializers.Serializer):
    """A user as every response shows it (``users.entries.FIELDS``)."""

    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField()
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    is_active = serializers.BooleanField()
    date_joined = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class UserPageSerializer(serializers.Serializer):
    """A page of users: the list, or the 0 or 1 users a username or e-mail names."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = UserSerializer(many=True)


class UsersByIdSerializer(serializers.Serializer):
    """The users ``?ids=`` asked for, in the order asked, and the ids found nowhere."""

    results = UserSerializer(many=True)
    missing = serializers.ListField(child=serializers.IntegerField())


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
BAD_QUERY = OpenApiResponse(
    {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    description="A query parameter is not valid (`ids`, `username`, `email`), or more "
    "than one of them was given; the messages name the parameter.",
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
    str,
    description="Up to 100 user ids, comma-separated (`1,2,3`): the users are read "
    "through the cache in one batch. Duplicates are collapsed.",
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
    "unknown ids are cached as absent for a short while.",
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

# Every status each operation answers; 429 comes from the throttles, 503 from
# config.exceptions when MySQL does not answer.
_ANY = {401: UNAUTHENTICATED, 429: THROTTLED, 503: UNAVAILABLE}
_STAFF_ONLY = {**_ANY, 403: FORBIDDEN, 409: CONFLICT}
_WITH_BODY = {**_STAFF_ONLY, 400: FIELD_ERRORS, 413: TOO_LARGE, 415: UNSUPPORTED_MEDIA_TYPE}
_CONDITIONAL = {412: PRECONDITION_FAILED, 428: PRECONDITION_REQUIRED}
_USER = OpenApiResponse(UserSerializer, description="The user.")
# One answer, never a list of them: each shape carries its own list of users
# (without many=False, a list action's answer is documented as a page of answers).
_LIST = PolymorphicProxySerializer(
    component_name="UserListAnswer",
    serializers=[UserPageSerializer, UsersByIdSerializer],
    resource_type_field_name=None,
    many=False,
)

describe_user_viewset = extend_schema_view(
    list=extend_schema(
        summary="List users, or find them by ids, username or e-mail",
        description="Without a query: users in id order, from MySQL, a cursor-paginated "
        "page at a time. With `ids`, `username` or `email` (one of them): through the "
        "cache, `X-Cache` saying where the answer came from.",
        responses={200: _LIST, 400: BAD_QUERY, 404: INVALID_CURSOR, **_ANY},
        parameters=[IDS, USERNAME, EMAIL, X_CACHE, RETRY_AFTER],
    ),
    retrieve=extend_schema(
        summary="Get a user",
        description="Redis first; `X-Cache` says where the answer came from.",
        responses={200: _USER, 304: NOT_MODIFIED, 404: NOT_FOUND, **_ANY},
        parameters=[USER_ID, IF_NONE_MATCH, X_CACHE, ETAG, RETRY_AFTER],
    ),
    create=extend_schema(
        summary="Create a user (staff)",
        request=UserCreateSerializer,
        responses={201: OpenApiResponse(UserSerializer, description="Created."), **_WITH_BODY},
        parameters=[LOCATION, ETAG, RETRY_AFTER],
    ),
    update=extend_schema(
        summary="Replace a user's fields (staff)",
        request=UserUpdateSerializer,
        responses={200: _USER, 404: NOT_FOUND, **_CONDITIONAL, **_WITH_BODY},
        parameters=[USER_ID, IF_MATCH, ETAG, RETRY_AFTER],
    ),
    partial_update=extend_schema(
        summary="Change some of a user's fields (staff)",
        request=UserUpdateSerializer,
        responses={200: _USER, 404: NOT_FOUND, **_CONDITIONAL, **_WITH_BODY},
        parameters=[USER_ID, IF_MATCH, ETAG, RETRY_AFTER],
    ),
    destroy=extend_schema(
        summary="Delete a user (staff)",
        responses={
            204: OpenApiResponse(description="Deleted."),
            404: NOT_FOUND,
            **_CONDITIONAL,
            **_STAFF_ONLY,
        },
        parameters=[USER_ID, IF_MATCH, RETRY_AFTER],
    ),
)


class TokenScheme(OpenApiAuthenticationExtension):
    """``TokenAuthentication`` takes DRF's tokens, looked up through the cache."""

    target_class = "users.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "A DRF token with its prefix: `Token <key>`. "
            "`manage.py drf_create_token <username>` makes one.",
        }
