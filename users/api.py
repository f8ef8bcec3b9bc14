"""The HTTP API: ``/api/user``, ``/api/user/batch`` and ``/api/user/<id>``, each
action a call into the reads (``users.reads``) or the writes (``users.services``).

Query parameters are read as clients send them (``users.queries``).

Before authentication runs, the view declares what its request reads: the users
the token lookup prefetches in its own round trip (``prefetch``), and what the
request costs against the caller's rate limit (``cost``: the users it reads or
renders), handed to the authenticator and the throttles it makes.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, QueryDict
from django.urls import reverse
from django.utils.http import parse_etags
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from . import entries, lookups, reads, services
from .authentication import TokenAuthentication
from .cache.kinds import Entry
from .cache.readthrough import Source
from .models import User
from .permissions import IsStaffOrReadOnly
from .queries import ID_DIGITS, UserPagination, one_value, parse_ids
from .schema.operations import describe_user_viewset
from .serializers import MAX_ID, UserCreateSerializer, UserUpdateSerializer
from .throttling import PasswordHashThrottle, UserRateThrottle
from .tokens import TokenRead

# The query parameters that find users through the cache instead of paging.
_LOOKUPS = ("ids", *lookups.LOOKUP_FIELDS)
# What every token request is answered in (renderers keep no state between requests).
_JSON = JSONRenderer()
# When ``GET /api/user?ids=`` was deprecated for ``GET /api/user/batch?ids=``: its
# answers say so in RFC 9745's Deprecation header, an sf-date (``@`` Unix seconds).
IDS_ON_LIST_DEPRECATED = datetime(2026, 12, 7, tzinfo=UTC)


class PreconditionRequired(APIException):
    status_code = status.HTTP_428_PRECONDITION_REQUIRED
    default_detail = "Send If-Match with the ETag the change is based on (or *)."
    default_code = "precondition_required"


@describe_user_viewset
class UserViewSet(viewsets.ViewSet):
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]
    # Anything but digits is no user id: the URL does not match, a JSON 404.
    lookup_value_regex = ID_DIGITS
    pagination_class = UserPagination
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

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple:
        """JSON for token requests, whatever ``?format=`` or ``Accept`` ask, without
        negotiating: the browsable API is for browsers, which log in with a
        session, and rendering it costs many times what a request counts against
        its client's rate."""
        if isinstance(request.auth, TokenRead):
            return _JSON, _JSON.media_type
        return super().perform_content_negotiation(request, force)

    def get_throttles(self) -> list:
        """An authenticated request counts what it reads; an anonymous one counts
        one: it is refused, and reads nothing."""
        return [
            throttle(cost=self.cost) if issubclass(throttle, UserRateThrottle) else throttle()
            for throttle in self.throttle_classes
        ]

    def initial(self, request: Request, *args, **kwargs) -> None:
        """DRF's steps with the throttles ahead of the permissions: DRF checks the
        permissions first, so a request refused for want of credentials was never
        counted and an anonymous client had no limit. And the id in the URL becomes
        an int in ``self.kwargs`` (the dict the action is called with), or a 404
        when it is out of range."""
        if "pk" in self.kwargs:
            user_id = int(self.kwargs["pk"])
            if not 1 <= user_id <= MAX_ID:
                raise NotFound("No user with this id.")
            self.kwargs["pk"] = user_id
        self.format_kwarg = self.get_format_suffix(**kwargs)
        negotiated = self.perform_content_negotiation(request)
        request.accepted_renderer, request.accepted_media_type = negotiated
        version = self.determine_version(request, *args, **kwargs)
        request.version, request.versioning_scheme = version
        self.perform_authentication(request)
        self.check_throttles(request)
        self.check_permissions(request)
        self.check_password_hashes(request)

    def check_password_hashes(self, request: Request) -> None:
        """The rate of writes that hash a password, after the permissions: it counts
        per account too, and a client refused the write (anonymous, or without
        the permission) must not spend an account's budget, or anyone could
        stop that account's password from being changed."""
        if request.method not in ("POST", "PUT", "PATCH"):
            return
        throttle = PasswordHashThrottle()
        if not throttle.allow_request(request, self):
            self.throttled(request, throttle.wait())

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
        ids = parse_ids(request.query_params)
        found = reads.users_get(user_ids=ids, prefetched=_prefetched(request))
        body = {"results": found.values, "missing": found.missing}
        return Response(body, headers=_cache_status(request, found.source))

    @staticmethod
    def _user_by(field: str, value: str) -> reads.UserRead:
        try:
            return lookups.user_by(field=field, value=value)
        except DjangoValidationError as exc:
            raise ValidationError({field: exc.messages}) from exc

    def retrieve(self, request: Request, pk: int) -> Response:
        result = reads.user_get(user_id=pk, prefetched=_prefetched(request))
        headers = _cache_status(request, result.source)
        if result.value is None:
            return Response({"detail": "No user with this id."}, status=404, headers=headers)
        headers["ETag"] = result.etag
        held = parse_etags(request.META.get("HTTP_IF_NONE_MATCH", ""))
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
            ids = parse_ids(query)
            return tuple(ids), len(ids)
        if action == "list" and not any(name in query for name in lookups.LOOKUP_FIELDS):
            return (), UserPagination().page_size_of(query)
    except ValidationError:
        pass
    return (), 1


def _prefetched(request: Request) -> Mapping[int, Entry | None] | None:
    """The users the token lookup read for this request (``{id: entry or None}``),
    for ``users.reads``; None for any other request."""
    auth = request.auth
    return auth.prefetched if isinstance(auth, TokenRead) else None


def _cache_status(request: Request, source: Source) -> dict[str, str]:
    """``X-Cache``, for whom ``CACHE_STATUS_HEADER`` says: a hit tells that someone
    read the same user, username or e-mail (or found it absent) a short while ago,
    which is the reader's business only where readers are trusted to see the
    cache's traffic."""
    shown = settings.CACHE_STATUS_HEADER
    if shown == "all" or (shown == "staff" and request.user.is_staff):
        return {"X-Cache": source.value}
    return {}
