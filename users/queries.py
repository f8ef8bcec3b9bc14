"""Query parameters as clients send them, for ``users.api``.

``ids``, a list, is read in every form a client encodes one (repeated keys,
commas, both); every other parameter takes one value, and a second one is a 400
rather than a guess at which one was meant. The list's page size and cursor are
held to what the API documents.
"""

import re

from django.http import QueryDict
from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request

from .serializers import MAX_ID, MAX_IDS

# A positive BIGINT id: at most 19 digits (the URL pattern) and at most MAX_ID.
ID_DIGITS = "[0-9]{1,19}"
ID_PATTERN = re.compile(ID_DIGITS)


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
        if not ID_PATTERN.fullmatch(raw) or not 1 <= int(raw) <= self.max_page_size:
            message = f"A whole number from 1 to {self.max_page_size}: {raw[:40]!r}."
            raise ValidationError({self.page_size_query_param: [message]})
        return int(raw)

    def decode_cursor(self, request: Request) -> pagination.Cursor | None:
        """DRF's decoding, and a position that can be an id: any other position a
        crafted cursor carries is the same 404 as an unreadable cursor."""
        one_value(request.query_params, self.cursor_query_param)
        cursor = super().decode_cursor(request)
        position = None if cursor is None else cursor.position
        if position is not None and not ID_PATTERN.fullmatch(position):
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


def parse_ids(query: QueryDict) -> list[int]:
    """``ids`` in every form clients send a list: repeated (``?ids=1&ids=2``, what
    ``requests`` and generated clients send), comma-separated (``?ids=1,2``), or
    both. Up to ``MAX_IDS`` distinct positive ids, duplicates collapsed in the order
    first given; any part that is not an id (an empty one too) is a 400 naming
    ``ids``, so that no id is ever dropped."""
    values = query.getlist("ids")
    parts = [part.strip() for value in values for part in value.split(",")]
    if parts in ([], [""]):
        raise ValidationError({"ids": ["Give at least one id."]})
    bad = [part for part in parts if not ID_PATTERN.fullmatch(part) or not 1 <= int(part) <= MAX_ID]
    if bad:
        raise ValidationError({"ids": [f"Not a user id (1 to {MAX_ID}): {bad[0][:40]!r}."]})
    ids = list(dict.fromkeys(int(part) for part in parts))
    if len(ids) > MAX_IDS:
        raise ValidationError({"ids": [f"At most {MAX_IDS} ids; {len(ids)} given."]})
    return ids
