"""The API's OpenAPI description (drf-spectacular): what it answers, put together
for ``users.api.UserViewSet`` by ``describe_user_viewset`` (what clients send is
``users.serializers``'). The API answers with
plain dicts from the reads and writes, so the response shapes exist for the
description only; ``tests/test_openapi.py`` holds them to the API, and
``tests/test_generated_client.py`` holds them to what a generated client can use:
one success shape per operation, and error shapes a client tells apart by trying
them in the order given.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
)
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from .serializers import MAX_ID, MAX_IDS, UserCreateSerializer, UserUpdateSerializer

# Responses.


@extend_schema_serializer(
    description="A user as every answer shows it; the password is never shown."
)
class UserSerializer(serializers.Serializer):
    """``users.entries.PUBLIC_FIELDS``; tests/test_openapi.py holds the two together."""

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

# Every operation says how to authenticate: the token's header is an apiKey scheme,
# whose value (prefix included) OpenAPI cannot spell out, and generated clients
# default to `Bearer`. (An http scheme named `Token` would say it to a machine, but
# Swagger UI's Authorize offers basic and bearer only.)
_AUTH = (
    "Authenticate with the header `Authorization: Token <key>`: the word `Token`, a "
    "space, the 40 lowercase hex digits of the key (not `Bearer`)."
)


def _described(text: str) -> str:
    return f"{text}\n\n{_AUTH}"


# Every status each operation answers; 429 comes from the throttles, 503 from
# config.exceptions when MySQL does not answer.
_ANY = {401: UNAUTHENTICATED, 429: THROTTLED, 503: UNAVAILABLE}
_STAFF_ONLY = {**_ANY, 403: FORBIDDEN, 409: CONFLICT}
_WITH_BODY = {**_STAFF_ONLY, 400: FIELD_ERRORS, 413: TOO_LARGE, 415: UNSUPPORTED_MEDIA_TYPE}
_CONDITIONAL = {412: PRECONDITION_FAILED, 428: PRECONDITION_REQUIRED}
_USER = OpenApiResponse(UserSerializer, description="The user.")

describe_user_viewset = extend_schema_view(
    list=extend_schema(
        summary="List users, or find one by username or e-mail",
        description=_described(
            "Without a query: users in id order, from MySQL, a cursor-paginated page at "
            "a time (follow `next`). With `username` or `email` (one of them): a page of "
            "0 or 1 users, through the cache, `X-Cache` saying where the answer came "
            "from. Many users by id: `user_batch`."
        ),
        responses={200: UserPageSerializer, 400: BAD_QUERY, 404: INVALID_CURSOR, **_ANY},
        parameters=[USERNAME, EMAIL, X_CACHE, RETRY_AFTER],
    ),
    batch=extend_schema(
        operation_id="user_batch",
        summary="Get many users by id",
        description=_described(
            "Redis first, in one batch, the misses from MySQL in one query: the users "
            "in the order first asked, and the ids found nowhere. `X-Cache` is HIT "
            "when every one came from Redis."
        ),
        responses={200: UserBatchSerializer, 400: BAD_QUERY, **_ANY},
        parameters=[IDS, X_CACHE, RETRY_AFTER],
    ),
    retrieve=extend_schema(
        summary="Get a user",
        description=_described("Redis first; `X-Cache` says where the answer came from."),
        responses={200: _USER, 304: NOT_MODIFIED, 404: NOT_FOUND, **_ANY},
        parameters=[USER_ID, IF_NONE_MATCH, X_CACHE, ETAG, RETRY_AFTER],
    ),
    create=extend_schema(
        summary="Create a user (staff)",
        description=_described("Staff with `add_user`; the answer's `Location` is its URL."),
        request=UserCreateSerializer,
        responses={201: OpenApiResponse(UserSerializer, description="Created."), **_WITH_BODY},
        parameters=[LOCATION, ETAG, RETRY_AFTER],
    ),
    update=extend_schema(
        summary="Replace a user's fields (staff)",
        description=_described(
            "Staff with `change_user`; `username` and `email` are required, omitted "
            "fields keep their value."
        ),
        request=UserUpdateSerializer,
        responses={200: _USER, 404: NOT_FOUND, **_CONDITIONAL, **_WITH_BODY},
        parameters=[USER_ID, IF_MATCH, ETAG, RETRY_AFTER],
    ),
    partial_update=extend_schema(
        summary="Change some of a user's fields (staff)",
        description=_described("Staff with `change_user`; omitted fields keep their value."),
        request=UserUpdateSerializer,
        responses={200: _USER, 404: NOT_FOUND, **_CONDITIONAL, **_WITH_BODY},
        parameters=[USER_ID, IF_MATCH, ETAG, RETRY_AFTER],
    ),
    destroy=extend_schema(
        summary="Delete a user (staff)",
        description=_described("Staff with `delete_user`."),
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
            "description": "The header's value is `Token <key>`: the word `Token` (not "
            "`Bearer`), a space, and the key, 40 lowercase hex digits. In a generated "
            "client, set the prefix to `Token`. `manage.py drf_create_token <username>` "
            "makes a key.",
        }


class SchemaView(SpectacularAPIView):
    """``/api/schema/``, whose errors (a 401 for a caller without credentials) are
    JSON like every other error of the API: drf-spectacular's YAML renderer, the
    default here, writes DRF's ``ErrorDetail`` as a mapping of ``string`` and
    ``code`` instead of the message."""

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response
