"""The HTTP API: ``/api/user`` and ``/api/user/<id>``, each action a call into the
reads (``users.reads``) or the writes (``users.services``)."""

import re

from django.contrib.auth.validators import UnicodeUsernameValidator
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import pagination, permissions, serializers, status, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from . import access, entries, reads, services
from .permissions import IsStaffOrReadOnly
from .schema import (
    CONFLICT,
    FIELD_ERRORS,
    FORBIDDEN,
    INVALID_CURSOR,
    LOCATION,
    NOT_FOUND,
    RETRY_AFTER,
    THROTTLED,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    USER_ID,
    X_CACHE,
    UserSerializer,
)

# A positive BIGINT id: at most 19 digits (the URL pattern) and at most 2**63 - 1.
_ID_DIGITS = "[0-9]{1,19}"
_ID_PATTERN = re.compile(_ID_DIGITS)
_MAX_ID = 2**63 - 1


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


class UserPagination(pagination.CursorPagination):
    ordering = "id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request: Request) -> pagination.Cursor | None:
        """DRF's decoding, and a position that can be an id: any other position a
        crafted cursor carries is the same 404 as an unreadable cursor."""
        cursor = super().decode_cursor(request)
        position = None if cursor is None else cursor.position
        if position is not None and not _ID_PATTERN.fullmatch(position):
            raise NotFound(self.invalid_cursor_message)
        return cursor


# Every status each operation answers; 429 comes from the throttles, 503 from
# config.exceptions when MySQL does not answer.
_ANY = {401: UNAUTHENTICATED, 429: THROTTLED, 503: UNAVAILABLE}
_STAFF_ONLY = {**_ANY, 403: FORBIDDEN, 409: CONFLICT}
_WITH_BODY = {**_STAFF_ONLY, 400: FIELD_ERRORS, 413: TOO_LARGE, 415: UNSUPPORTED_MEDIA_TYPE}
_USER = OpenApiResponse(UserSerializer, description="The user.")


@extend_schema_view(
    list=extend_schema(
        summary="List users",
        description="Users in id order, from MySQL, a cursor-paginated page at a time.",
        responses={200: UserSerializer(many=True), 404: INVALID_CURSOR, **_ANY},
        parameters=[RETRY_AFTER],
    ),
    retrieve=extend_schema(
        summary="Get a user",
        description="Redis first; `X-Cache` says where the answer came from.",
        responses={200: _USER, 404: NOT_FOUND, **_ANY},
        parameters=[USER_ID, X_CACHE, RETRY_AFTER],
    ),
    create=extend_schema(
        summary="Create a user (staff)",
        request=UserCreateSerializer,
        responses={201: OpenApiResponse(UserSerializer, description="Created."), **_WITH_BODY},
        parameters=[LOCATION, RETRY_AFTER],
    ),
    update=extend_schema(
        summary="Replace a user's fields (staff)",
        request=UserUpdateSerializer,
        responses={200: _USER, 404: NOT_FOUND, **_WITH_BODY},
        parameters=[USER_ID, RETRY_AFTER],
    ),
    partial_update=extend_schema(
        summary="Change some of a user's fields (staff)",
        request=UserUpdateSerializer,
        responses={200: _USER, 404: NOT_FOUND, **_WITH_BODY},
        parameters=[USER_ID, RETRY_AFTER],
    ),
    destroy=extend_schema(
        summary="Delete a user (staff)",
        responses={204: OpenApiResponse(description="Deleted."), 404: NOT_FOUND, **_STAFF_ONLY},
        parameters=[USER_ID, RETRY_AFTER],
    ),
)
class UserViewSet(viewsets.ViewSet):
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]
    # Anything but digits is no user id: the URL does not match, a JSON 404.
    lookup_value_regex = _ID_DIGITS
    pagination_class = UserPagination
    # Token authentication reads the user this URL keyword names in the token's own
    # Redis round trip (users.access), so that a cached GET costs one round trip.
    read_ahead_kwarg = "pk"

    def initial(self, request: Request, *args, **kwargs) -> None:
        """Makes the URL's id an int, once, before authentication reads it ahead:
        ``self.kwargs`` is the dict the action is called with."""
        if "pk" in self.kwargs:
            user_id = int(self.kwargs["pk"])
            if not 1 <= user_id <= _MAX_ID:
                raise NotFound("No user with this id.")
            self.kwargs["pk"] = user_id
        super().initial(request, *args, **kwargs)

    def list(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(reads.user_list(), request, view=self)
        users = [entries.to_public(row["id"], entries.entry_of(row)) for row in page]
        return paginator.get_paginated_response(users)

    def retrieve(self, request: Request, pk: int) -> Response:
        result = reads.user_get(user_id=pk, first=access.read_ahead(request, pk))
        headers = {"X-Cache": result.source.value}
        if result.value is None:
            return Response({"detail": "No user with this id."}, status=404, headers=headers)
        return Response(result.value, headers=headers)

    def create(self, request: Request) -> Response:
        serializer = UserCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_create(actor=request.user, **serializer.validated_data)
        location = reverse("user-detail", kwargs={"pk": user["id"]})
        return Response(user, status=status.HTTP_201_CREATED, headers={"Location": location})

    def update(self, request: Request, pk: int) -> Response:
        return self._update(request, pk, partial=False)

    def partial_update(self, request: Request, pk: int) -> Response:
        return self._update(request, pk, partial=True)

    def destroy(self, request: Request, pk: int) -> Response:
        services.user_delete(actor=request.user, user_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _update(self, request: Request, pk: int, *, partial: bool) -> Response:
        serializer = UserUpdateSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        user = services.user_update(actor=request.user, user_id=pk, data=serializer.validated_data)
        return Response(user)
