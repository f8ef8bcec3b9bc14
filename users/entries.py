"""A cached user, described once: its fields (``FIELDS``), and everything derived from
them: the entry of a saved user, the entries of a query (the database converts
the values, for bulk loads), the API's shape of an entry, and what a valid entry
holds (the user kind of the cache's registry is ``users.reads.USERS``). Adding a field to
the projection is a line in ``FIELDS`` and a bump of
``users.cache.keys.SCHEMA_VERSION``, beside the model and its migration and the
API schema.

Every byte of a cached entry is paid once per cached user, so the hash is
compact: one-letter field names, no id (the key has it), booleans as "1"/"0"
and timestamps as integer microseconds since the epoch, which Redis stores as
8-byte integers. A user then stays in the hash's small listpack encoding.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable

from django.db.models import BigIntegerField, Case, CharField, F, Func, QuerySet, Value, When

from .cache.kinds import Entry

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _format_epoch_us(value: str) -> str:
    """ISO 8601 in UTC with microseconds, e.g. ``2026-11-25T23:41:48.463201Z``."""
    seconds, micro = divmod(int(value), 1_000_000)
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (the fastest way)
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, micro,
    )  # fmt: skip


class _EpochMicroseconds(Func):
    """A stored (UTC) datetime as integer microseconds since the epoch, in SQL: plain
    calendar arithmetic, so the session's time zone does not enter into it. MySQL,
    MariaDB and TiDB all have TIMESTAMPDIFF. Parsing DATETIME columns in mysqlclient
    costs more than the rest of a row, and a warm reads millions of rows."""

    template = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', %(expressions)s)"
    output_field = BigIntegerField()


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """How a column's value is stored in an entry and shown in the API."""

    encode: Callable[[object], str]
    decode: Callable[[str], object]
    # The column as the database should select it for a bulk load.
    select: Callable[[str], object]


TEXT = Kind(encode=str, decode=str, select=F)
FLAG = Kind(
    encode=lambda value: "1" if value else "0",
    decode=lambda stored: stored == "1",
    select=lambda column: Case(
        When(**{column: True}, then=Value("1")), default=Value("0"), output_field=CharField()
    ),
)
TIMESTAMP = Kind(
    encode=lambda value: str((value - _EPOCH) // _MICROSECOND),
    decode=_format_epoch_us,
    select=_EpochMicroseconds,
)
INTEGER = Kind(encode=str, decode=int, select=F)


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    column: str
    # The name in the Redis hash.
    name: str
    kind: Kind


# The public projection, in the API's order after the id.
FIELDS = (
    Field("username", "u", TEXT),
    Field("email", "e", TEXT),
    Field("first_name", "f", TEXT),
    Field("last_name", "l", TEXT),
    Field("is_active", "a", FLAG),
    Field("date_joined", "j", TIMESTAMP),
    Field("updated_at", "t", TIMESTAMP),
)
# The row version the entry was made from: the ETag, and how check_user_cache
# tells an entry's age. Not part of the API's shape.
VERSION = Field("version", "v", INTEGER)

PUBLIC_FIELDS = ("id", *(field.column for field in FIELDS))
_STORED = (*FIELDS, VERSION)
# The fields of an entry, by name; every user entry has exactly these.
ENTRY_NAMES = tuple(field.name for field in _STORED)
COLUMN_OF = {field.name: field.column for field in _STORED}
NAME_OF = {field.column: field.name for field in _STORED}
_FLAG_FIELD = NAME_OF["is_active"]
# The largest value each number field may hold: the end of year 9999 in µs for a
# time (what ISO 8601 with four digits can show), a BIGINT for the version.
_LARGEST = {
    field.name: 253_402_300_799_999_999 if field.kind is TIMESTAMP else 2**63 - 1
    for field in _STORED
    if field.kind in (TIMESTAMP, INTEGER)
}


def etag(version: int | str) -> str:
    """The strong ETag of a user's representation: its row version, which grows
    with every save that changes a field of the projection (``User.save``)."""
    return f'"{version}"'


def encode(user) -> dict[str, str]:
    """The entry of a saved ``User`` instance."""
    return {field.name: field.kind.encode(getattr(user, field.column)) for field in _STORED}


def select_entries(users: QuerySet) -> QuerySet:
    """``users`` as rows of their id and their entry's values, converted by the
    database (``entry_of`` makes each an entry)."""
    selected = {f"_{field.name}": field.kind.select(field.column) for field in _STORED}
    return users.annotate(**selected).values("id", *selected)


def entry_of(row: dict) -> dict[str, str]:
    """The entry of a row of ``select_entries``."""
    return {name: str(row[f"_{name}"]) for name in ENTRY_NAMES}


def load(users: QuerySet) -> dict[int, dict[str, str]]:
    """The entries of ``users`` by id, in one query."""
    return {row["id"]: entry_of(row) for row in select_entries(users)}


def to_public(user_id: int, entry: dict[str, str]) -> dict:
    """The API's shape of a user's entry."""
    public = {"id": user_id}
    for field in FIELDS:
        public[field.column] = field.kind.decode(entry[field.name])
    return public


def valid(user_id: int, entry: Entry) -> bool:
    """Whether a cached entry's values are what ``encode`` writes: every read of it
    must be able to shape it for the API."""
    return entry[_FLAG_FIELD] in ("0", "1") and all(
        value.isascii() and value.isdigit() and len(value) <= 19 and int(value) <= largest
        for name, largest in _LARGEST.items()
        if (value := entry[name]) is not None
    )
