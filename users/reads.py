"""The user kind of the cache's registry (``USERS``: a user's entry by id), and the
reads of users: one user, many users, and the list, each through the cache's
read-through (``users.cache.readthrough``) where the cache serves it.

A user read with a token may have been prefetched: the token lookup of the same
request read the user's entry in its own round trip (``users.authentication``),
and hands it over as ``prefetched``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence

from django.db.models import Max, QuerySet

from . import entries
from .cache import kinds
from .cache.kinds import CachedKind, Codec, Entry, MadeFrom, RowChange
from .cache.readthrough import Source, overall, read_through
from .conf import user_cache_settings
from .models import User

logger = logging.getLogger(__name__)


def _user_ids(changes: list[RowChange]) -> list[int]:
    return [user_id for change in changes for user_id in change.values("id")]


def _below_largest_id(user_ids: list[int]) -> list[int]:
    """Of ids found nowhere, those no larger than the largest id in the table: the
    gaps deletes leave, whose number the table bounds. An id above it is not
    remembered, however many a client makes up (one indexed query, on a miss)."""
    largest = User.objects.aggregate(largest=Max("id"))["largest"] or 0
    return [user_id for user_id in user_ids if user_id <= largest]


USERS = kinds.register(
    CachedKind(
        name="user",
        codec=Codec(fields=frozenset(entries.ENTRY_NAMES), valid=entries.valid),
        load=lambda user_ids: entries.load(User.objects.filter(id__in=user_ids)),
        ttl=lambda: user_cache_settings.TTL,
        absent_ttl=lambda: user_cache_settings.NEGATIVE_TTL,
        absences_kept=_below_largest_id,
        near=True,
        sources={
            User: MadeFrom(columns=frozenset(entries.COLUMN_OF.values()), idents=_user_ids)
        },
        entry_of=entries.encode,
    )
)


@dataclasses.dataclass(frozen=True, slots=True)
class UserRead:
    """A user's public shape and ETag (None when no such user exists) and where it
    came from."""

    value: dict | None
    source: Source
    etag: str | None = None


def user_get(*, user_id: int, prefetched: Mapping[int, Entry | None] | None = None) -> UserRead:
    """One user by id, Redis first.

    Logs at DEBUG (``LOG_LEVEL=DEBUG``, to follow single requests by their id): a
    line per lookup at INFO would double the busiest path's log volume for what
    ``X-Cache`` and the metrics already say.
    """
    started = time.perf_counter()
    read = read_through(USERS, [user_id], prefetched=prefetched)[user_id]
    if logger.isEnabledFor(logging.DEBUG):
        ms, found = round((time.perf_counter() - started) * 1000, 3), read.entry is not None
        logger.debug(
            "user lookup %s: %s%s in %.3f ms", user_id, read.source.value,
            "" if found else " (no such user)", ms,
            extra={"user_id": user_id, "cache": read.source.value, "found": found,
                   "duration_ms": ms},
        )  # fmt: skip
    return user_read(user_id, read.entry, read.source)


def user_read(user_id: int, entry: Entry | None, source: Source) -> UserRead:
    if entry is None:
        return UserRead(value=None, source=source)
    etag = entries.etag(entry[entries.VERSION.name])
    return UserRead(value=entries.to_public(user_id, entry), source=source, etag=etag)


@dataclasses.dataclass(frozen=True, slots=True)
class UsersRead:
    """Many users: those found, in the order asked, the ids found nowhere, and where
    the answer came from (``overall``)."""

    values: list[dict]
    missing: list[int]
    source: Source


def users_get(
    *, user_ids: Sequence[int], prefetched: Mapping[int, Entry | None] | None = None
) -> UsersRead:
    """Distinct users by id in one batch: with every one cached, one Redis round trip
    (none when ``prefetched`` has them all); else one query for all the misses."""
    found = read_through(USERS, user_ids, prefetched=prefetched)
    values = [entries.to_public(i, found[i].entry) for i in user_ids if found[i].entry]
    missing = [i for i in user_ids if found[i].entry is None]
    return UsersRead(values, missing, overall(read.source for read in found.values()))


def user_list() -> QuerySet:
    """Every user's entry row, from MySQL, in id order (the API pages through it)."""
    return entries.select_entries(User.objects.order_by("id"))
