"""What each operation of ``users.api.UserViewSet`` answers, and how a client
authenticates: the viewset is decorated with ``describe_user_viewset``, and
``TokenScheme`` tells drf-spectacular what ``TokenAuthentication`` takes."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view

from ..serializers import UserCreateSerializer, UserUpdateSerializer
from .components import (
    BAD_QUERY,
    CONFLICT,
    EMAIL,
    ETAG,
    FIELD_ERRORS,
    FORBIDDEN,
    IDS,
    IF_MATCH,
    IF_NONE_MATCH,
    INVALID_CURSOR,
    LOCATION,
    NOT_FOUND,
    NOT_MODIFIED,
    PRECONDITION_FAILED,
    PRECONDITION_REQUIRED,
    RETRY_AFTER,
    THROTTLED,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    USER_ID,
    USERNAME,
    X_CACHE,
    UserBatchSerializer,
    UserPageSerializer,
    UserSerializer,
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
