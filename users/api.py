"""The HTTP API: ``/api/user``, ``/api/user/batch`` and ``/api/user/<id>``, each
action a call into the reads (``users.reads``) or the writes (``users.services``).

Query parameters are read as clients send them: ``ids``, a list, in every form a
client encodes one (repeated keys, commas, both); every other parameter takes
one value, and a second one is a 400 rather than a guess at which one was meant.

Before authentication runs, the view declares what its request reads: the users
the token lookup prefetches in its own round trip (``prefetch``), and what the
request costs against the caller's rate limit (``cost``: the users it reads or
renders), handed to the authenticator and the throttles it makes.
"""

import re
from datetime import UTC, datetime
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, QueryDict
from django.urls import reverse
from django.utils.http import parse_etags
from rest_framework import pagination, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from . import entries, lookups, reads, services
from .authentication import TokenAuthentication, prefetched
from .cache.readthrough import Source
from .models import User
from .permissions import IsStaffOrReadOnly
from .schema.operations import describe_user_viewset
from .serializers import MAX_ID, MAX_IDS, UserCreateSerializer, UserUpdateSerializer
from .throttling import RedisRateThrottle
from .tokens import TokenRead

# A positive BIGINT id: at most 19 digits (the URL pattern) and at most MAX_ID.
_ID_DIGITS = "[0-9]{1,19}"
_ID_PATTERN = re.compile(_ID_DIGITS)
# The query parameters that find users through the cache instead of paging.
_LOOKUPS = ("ids", *lookups.LOOKUP_FIELDS)
# When ``GET /api/user?ids=`` was deprecated for ``GET /api/user/batch?ids=``: its
# answers say so in RFC 9745's Deprecation header, an sf-date (``@`` Unix seconds).
IDS_ON_LIST_DEPRECATED = datetime(2026, 12, 7, tzinfo=UTC)


def one_value(query: QueryDict, name: str) -> str | None:
    """The value of a single-valued query parameter, None when absent; a 400 naming
    it when it is repeated, where ``QueryDict.get`` would silently take the last."""
    values = query.getlist(name)
    if len(values) > 1:
        raise ValidationError({name: [f"Give {name} once ({len(values)} values given)."]})
    return values[0] if values else None


class UserPagination(pagination.CursorPagination):
    ordering = "id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        """``page_size`` from 1 to ``max_page_size``, else a 400: DRF would clamp a
        larger one and quietly use the default for a malformed one, so a client
        would never learn that it was not given what it asked for."""
        return self.page_size_of(request.query_params)

    def page_size_of(self, query: QueryDict) -> int:
        raw = one_value(query, self.page_size_query_param)
        if raw is None:
            return self.page_size
        # ASCII digits only: int() would also take " 5", "+5" and other scripts' digits.
        if not _ID_PATTERN.fullmatch(raw) or not 1 <= int(raw) <= self.max_page_size:
            message = f"A whole number from 1 to {self.max_page_size}: {raw[:40]!r}."
            raise ValidationError({self.page_size_query_param: [message]})
        return int(raw)

    def decode_cursor(self, request: Request) -> pagination.Cursor | None:
        """DRF's decoding, and a position that can be an id: any other position a
        crafted cursor carries is the same 404 as an unreadable cursor."""
        one_value(request.query_params, self.cursor_query_param)
        cursor = super().decode_cursor(request)
        position = None if cursor is None else cursor.position
        if position is not None and not _ID_PATTERN.fullmatch(position):
            raise NotFound(self.invalid_cursor_message)
        return cursor

    def get_schema_operation_parameters(self, view) -> list[dict]:
        """DRF's parameters, with what ``get_page_size`` and ``decode_cursor`` hold
        clients to."""
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(
                    minimum=1, maximum=self.max_page_size, default=self.page_size
                )
                parameter["description"] = (
                    f"Users per page, 1 to {self.max_page_size} (default {self.page_size}); "
                    "anything else is a 400."
                )
            elif parameter["name"] == self.cursor_query_param:
                parameter["description"] = (
                    "Where the page starts: the cursor of a `next` or `previous` link. "
                    "Any other is a 404."
                )
        return parameters


class TokenRequestNegotiation(DefaultContentNegotiation):
    """JSON for token requests, whatever ``?format=`` or ``Accept`` ask: the browsable
    API is for browsers, which log in with a session, and rendering it costs many
    times what a request counts against its client's rate."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if isinstance(request.auth, TokenRead):
            json = next(r for r in renderers if not isinstance(r, BrowsableAPIRenderer))
            return json, json.media_type
        return super().select_renderer(request, renderers, format_suffix)


class PreconditionRequired(APIException):
    status_code = status.HTTP_428_PRECONDITION_REQUIRED
    default_detail = "Send If-Match with the ETag the change is based on (or *)."
    default_code = "precondition_required"


def _parse_ids(query: QueryDict) -> list[int]:
    """``ids`` in every form clients send a list: repeated (``?ids=1&ids=2``, what
    ``requests`` and generated clients send), comma-separated (``?ids=1,2``), or
    both. Up to ``MAX_IDS`` distinct positive ids, duplicates collapsed in the order
    first given; any part that is not an id (an empty one too) is a 400 naming
    ``ids``, so that no id is ever dropped."""
    values = query.getlist("ids")
    parts = [part.strip() for value in values for part in value.split(",")]
    if parts in ([], [""]):
        raise ValidationError({"ids": ["Give at least one id."]})
    bad = [
        part for part in parts if not _ID_PATTERN.fullmatch(part) or not 1 <= int(part) <= MAX_ID
    ]
    if bad:
        raise ValidationError({"ids": [f"Not a user id (1 to {MAX_ID}): {bad[0][:40]!r}."]})
    ids = list(dict.fromkeys(int(part) for part in parts))
    if len(ids) > MAX_IDS:
        raise ValidationError({"ids": [f"At most {MAX_IDS} ids; {len(ids)} given."]})
    return ids


@describe_user_viewset
class UserViewSet(viewsets.ViewSet):
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]
    # Anything but digits is no user id: the URL does not match, a JSON 404.
    lookup_value_regex = _ID_DIGITS
    pagination_class = UserPagination
    content_negotiation_class = TokenRequestNegotiation
    # What the request reads, declared from its URL before authentication: the
    # users the token lookup reads in its own round trip (so that a cached read
    # costs one round trip in all), and its cost against the rate limit.
    prefetch: tuple[int, ...] = ()
    cost: int = 1

    def initialize_request(self, request: HttpRequest, *args, **kwargs) -> Request:
        action = self.action_map.get(request.method.lower())
        self.prefetch, self.cost = _declared_reads(action, request.GET, kwargs)
        return super().initialize_request(request, *args, **kwargs)

    def get_authenticators(self) -> list:
        return [
            auth(prefetch=self.prefetch, cost=self.cost)
            if issubclass(auth, TokenAuthentication)
            else auth()
            for auth in self.authentication_classes
        ]

    def get_throttles(self) -> list:
        return [
            throttle(cost=self.cost) if issubclass(throttle, RedisRateThrottle) else throttle()
            for throttle in self.throttle_classes
        ]

    def initial(self, request: Request, *args, **kwargs) -> None:
        """The id in the URL becomes an int in ``self.kwargs`` (the dict the action is
        called with), or a 404 when it is out of range."""
        if "pk" in self.kwargs:
            user_id = int(self.kwargs["pk"])
            if not 1 <= user_id <= MAX_ID:
                raise NotFound("No user with this id.")
            self.kwargs["pk"] = user_id
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request: Request, response: Response, *args, **kwargs) -> Response:
        """``GET /api/user?ids=``, the batch read before it had a path of its own,
        answers as it always did, marked deprecated (RFC 9745) and linked to its
        successor (RFC 8288), errors included. The link carries the ids as they
        came, percent-encoded, so that it answers alike."""
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.action == "list" and "ids" in request.query_params:
            query = "&".join(
                "ids=" + quote(value, safe=",") for value in request.query_params.getlist("ids")
            )
            response["Deprecation"] = f"@{int(IDS_ON_LIST_DEPRECATED.timestamp())}"
            response["Link"] = f'<{reverse("user-batch")}?{query}>; rel="successor-version"'
        return response

    def list(self, request: Request) -> Response:
        asked = [name for name in _LOOKUPS if name in request.query_params]
        if len(asked) > 1:
            raise ValidationError({name: ["Give one of ids, username, email."] for name in asked})
        if asked == ["ids"]:
            return self.batch(request)
        if asked:
            field = asked[0]
            found = self._user_by(field, one_value(request.query_params, field))
            body = {"next": None, "previous": None, "results": [found.value] if found.value else []}
            return Response(body, headers=_cache_status(request, found.source))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(reads.user_list(), request, view=self)
        users = [entries.to_public(row["id"], entries.entry_of(row)) for row in page]
        return paginator.get_paginated_response(users)

    @action(detail=False, methods=["get"])
    def batch(self, request: Request) -> Response:
        ids = _parse_ids(request.query_params)
        found = reads.users_get(user_ids=ids, prefetched=prefetched(request))
        body = {"results": found.values, "missing": found.missing}
        return Response(body, headers=_cache_status(request, found.source))

    @staticmethod
    def _user_by(field: str, value: str) -> reads.UserRead:
        try:
            return lookups.user_by(field=field, value=value)
        except DjangoValidationError as exc:
            raise ValidationError({field: exc.messages}) from exc

    def retrieve(self, request: Request, pk: int) -> Response:
        result = reads.user_get(user_id=pk, prefetched=prefetched(request))
        headers = _cache_status(request, result.source)
        if result.value is None:
            return Response({"detail": "No user with this id."}, status=404, headers=headers)
        headers["ETag"] = result.etag
        held = parse_etags(request.headers.get("If-None-Match", ""))
        if "*" in held or result.etag in (tag.removeprefix("W/") for tag in held):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(result.value, headers=headers)

    def create(self, request: Request) -> Response:
        serializer = UserCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_create(actor=request.user, **serializer.validated_data)
        location = reverse("user-detail", kwargs={"pk": user.pk})
        return self._written(user, status.HTTP_201_CREATED, Location=location)

    def update(self, request: Request, pk: int) -> Response:
        return self._update(request, pk, partial=False)

    def partial_update(self, request: Request, pk: int) -> Response:
        return self._update(request, pk, partial=True)

    def destroy(self, request: Request, pk: int) -> Response:
        services.user_delete(actor=request.user, user_id=pk, if_match=self._if_match(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _update(self, request: Request, pk: int, *, partial: bool) -> Response:
        serializer = UserUpdateSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        user = services.user_update(
            actor=request.user,
            user_id=pk,
            data=serializer.validated_data,
            if_match=self._if_match(request),
        )
        return self._written(user, status.HTTP_200_OK)

    @staticmethod
    def _if_match(request: Request) -> str | None:
        if_match = request.headers.get("If-Match")
        if if_match is None and settings.REQUIRE_IF_MATCH:
            raise PreconditionRequired()
        return if_match

    @staticmethod
    def _written(user: User, code: int, **headers: str) -> Response:
        body = entries.to_public(user.pk, entries.encode(user))
        return Response(body, status=code, headers={"ETag": entries.etag(user.version), **headers})


def _declared_reads(
    action: str | None, query: QueryDict, kwargs: dict
) -> tuple[tuple[int, ...], int]:
    """The users a request reads (to prefetch) and its cost, from its URL alone; what
    is malformed there is reported by the action, and reads nothing ahead."""
    try:
        if action == "retrieve" and "pk" in kwargs:
            user_id = int(kwargs["pk"])
            return ((user_id,) if 1 <= user_id <= MAX_ID else ()), 1
        if action == "batch" or (action == "list" and "ids" in query):
            ids = _parse_ids(query)
            return tuple(ids), len(ids)
        if action == "list" and not any(name in query for name in lookups.LOOKUP_FIELDS):
            return (), UserPagination().page_size_of(query)
    except ValidationError:
        pass
    return (), 1


def _cache_status(request: Request, source: Source) -> dict[str, str]:
    """``X-Cache``, for whom ``CACHE_STATUS_HEADER`` says: a hit tells that someone
    read the same user, username or e-mail (or found it absent) a short while ago,
    which is the reader's business only where readers are trusted to see the
    cache's traffic."""
    shown = settings.CACHE_STATUS_HEADER
    if shown == "all" or (shown == "staff" and request.user.is_staff):
        return {"X-Cache": source.value}
    return {}
