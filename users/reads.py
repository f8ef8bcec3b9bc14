"""The reads of users, through the read-through (``users.readthrough``): one user by
id, many by ids, one by username or e-mail, and every user from MySQL for the
paginated list."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence

from django.db.models import QuerySet

from . import entries
from .cache import store
from .cache.keys import name_key, user_key
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings
from .models import User
from .readthrough import Entry, EntryKind, Source, read_through

__all__ = ["Source", "UserRead", "UsersRead", "user_by", "user_get", "user_list", "users_get"]

logger = logging.getLogger(__name__)

USERS = EntryKind(
    entity="user",
    key=user_key,
    load=lambda ids: entries.load(User.objects.filter(id__in=ids)),
    ttl=lambda: user_cache_settings.TTL,
    near=True,
)


@dataclasses.dataclass(frozen=True, slots=True)
class UserRead:
    """A user's public shape and ETag (None when no such user exists) and where it
    came from."""

    value: dict | None
    source: Source
    etag: str | None = None


def user_get(*, user_id: int, first: dict[int, Entry | None] | None = None) -> UserRead:
    """One user by id, Redis first. ``first``: the user's entry as the token lookup
    of this request read it in its own round trip (``access.read_ahead``).

    Logs the lookup at DEBUG: a line per lookup at INFO would double the log volume
    of the busiest path for what ``X-Cache`` and the metrics already say; DEBUG
    (``LOG_LEVEL=DEBUG``) is for following single requests by their request id.
    """
    started = time.perf_counter()
    read = read_through(USERS, [user_id], first=first)[user_id]
    if logger.isEnabledFor(logging.DEBUG):
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        found = read.entry is not None
        logger.debug(
            "user lookup %s: %s%s in %.3f ms",
            user_id, read.source.value, "" if found else " (no such user)", duration_ms,
            extra={"user_id": user_id, "cache": read.source.value, "found": found,
                   "duration_ms": duration_ms},
        )  # fmt: skip
    return _user_read(user_id, read.entry, read.source)


def _user_read(user_id: int, entry: Entry | None, source: Source) -> UserRead:
    if entry is None:
        return UserRead(value=None, source=source)
    etag = entries.etag(entry[entries.VERSION.name])
    return UserRead(value=entries.to_public(user_id, entry), source=source, etag=etag)


@dataclasses.dataclass(frozen=True, slots=True)
class UsersRead:
    """Many users: those found, in the order asked, the ids found nowhere, and where
    the answer came from (HIT when every one came from Redis, BYPASS when Redis was
    skipped, else MISS)."""

    values: list[dict]
    missing: list[int]
    source: Source


def users_get(
    *, user_ids: Sequence[int], first: dict[int, Entry | None] | None = None
) -> UsersRead:
    """Distinct users by id in one batch: with every one cached, one Redis round trip
    (none when ``first`` has them all); else one query for all the misses."""
    reads = read_through(USERS, user_ids, first=first)
    source = _overall(read.source for read in reads.values())
    values = [entries.to_public(i, reads[i].entry) for i in user_ids if reads[i].entry is not None]
    missing = [i for i in user_ids if reads[i].entry is None]
    return UsersRead(values=values, missing=missing, source=source)


def _overall(sources: Iterable[Source]) -> Source:
    """One answer's source from its parts': BYPASS when Redis was skipped for any,
    MISS when MySQL answered any, HIT when Redis answered all."""
    seen = set(sources)
    return next((s for s in (Source.BYPASS, Source.MISS) if s in seen), Source.HIT)


def _name_kind(field: str) -> EntryKind:
    """Usernames or e-mails (``field``) and the id each names, as entries."""

    def load(values: list[str]) -> dict[str, Entry]:
        rows = User.objects.filter(**{f"{field}__in": values}).values_list(field, "id")
        # The collation may match another spelling: only the value asked is its own.
        return {
            entries.lookup_value(field, stored): {entries.NAME_ID_FIELD: str(user_id)}
            for stored, user_id in rows
            if entries.lookup_value(field, stored) in values
        }

    return EntryKind(
        entity=field,
        key=lambda value: name_key(field, value),
        load=load,
        ttl=lambda: user_cache_settings.TTL,
    )


_NAME_KINDS = {field: _name_kind(field) for field in entries.LOOKUP_FIELDS}


def user_by(*, field: str, value: str) -> UserRead:
    """The user whose ``field`` ("username" or "email") is ``value``, through the
    cache: the value's entry names an id, whose user entry is read as any user's.

    A lookup never answers with a user whose current value differs from the one
    asked (a rename or a delete raced it): the user's own entry is checked, and on
    a mismatch the value is looked up in MySQL and its entry dropped.
    Raises ``ValidationError`` for an e-mail with no valid domain.
    """
    asked = entries.lookup_value(field, value)
    named = read_through(_NAME_KINDS[field], [asked])[asked]
    if named.entry is None:
        return UserRead(value=None, source=named.source)
    user_id = int(named.entry[entries.NAME_ID_FIELD])
    read = read_through(USERS, [user_id])[user_id]
    if read.entry is not None and _holds(field, read.entry, asked):
        return _user_read(user_id, read.entry, _overall([named.source, read.source]))
    with contextlib.suppress(CacheUnavailable):
        store.invalidate([name_key(field, asked)])
    found = _NAME_KINDS[field].load([asked]).get(asked)
    if found is None:
        return UserRead(value=None, source=Source.MISS)
    user_id = int(found[entries.NAME_ID_FIELD])
    entry = entries.load(User.objects.filter(pk=user_id)).get(user_id)
    if entry is None or not _holds(field, entry, asked):
        return UserRead(value=None, source=Source.MISS)
    return _user_read(user_id, entry, Source.MISS)


def _holds(field: str, entry: Entry, asked: str) -> bool:
    """Whether the user an entry describes holds the value asked now."""
    return entries.lookup_value(field, entry[entries.NAME_OF[field]]) == asked


def user_list() -> QuerySet:
    """Every user's entry row, from MySQL, in id order (the API pages through it)."""
    return entries.select_entries(User.objects.order_by("id"))
