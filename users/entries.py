"""A cached user entry, described once: its fields, how a row or an instance becomes
one (in Python, and in SQL for bulk loads), how one becomes the API's shape, and
the marker of an absent user.

Every byte of a cached entry is paid once per cached user, so the hash is
compact: one-letter field names, no id (the key has it), and both timestamps as
integer microseconds since the epoch, which Redis stores as 8-byte integers.
A user then stays in the hash's small listpack encoding.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

from django.db.models import BigIntegerField, Func, QuerySet

# The public projection: the API representation and what a cached entry holds.
PUBLIC_FIELDS = (
    "id",
    "username",
    "email",
    "first_name",
    "last_name",
    "is_active",
    "date_joined",
    "updated_at",
)
# The columns an entry is made from.
CACHE_ROW_COLUMNS = (*PUBLIC_FIELDS, "version")

# Metadata fields: the row version the entry was made from, and the mark of an
# entry that records "no such row" (the negative cache).
VERSION_FIELD = "v"
ABSENT_FIELD = "x"
# A cached user's fields by column: one letter each, since the names are stored
# in every entry.
USER_FIELD_NAMES = {
    "username": "u",
    "email": "e",
    "first_name": "f",
    "last_name": "l",
    "is_active": "a",
    "date_joined": "j",
    "updated_at": "t",
}
USER_ENTRY_FIELDS = frozenset({*USER_FIELD_NAMES.values(), VERSION_FIELD})
# The names of an entry's fields, in the order of ``bulk_entry_values``.
ENTRY_NAMES = (*USER_FIELD_NAMES.values(), VERSION_FIELD)
ABSENT_ENTRY = {ABSENT_FIELD: "1", VERSION_FIELD: "0"}

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _epoch_us(value: datetime.datetime) -> str:
    return str((value - _EPOCH) // _MICROSECOND)


def _format_epoch_us(value: str) -> str:
    """ISO 8601 in UTC with microseconds, e.g. ``2026-11-25T23:41:48.463201Z``."""
    seconds, micro = divmod(int(value), 1_000_000)
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (the fastest way)
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, micro,
    )  # fmt: skip


def row_to_cache_fields(row: dict) -> dict[str, str]:
    """The cached entry of a row with ``CACHE_ROW_COLUMNS``: strings, and the version."""
    return {
        "u": row["username"],
        "e": row["email"],
        "f": row["first_name"],
        "l": row["last_name"],
        "a": "1" if row["is_active"] else "0",
        "j": _epoch_us(row["date_joined"]),
        "t": _epoch_us(row["updated_at"]),
        VERSION_FIELD: str(row["version"]),
    }


def instance_fields(user) -> dict[str, str]:
    """The cached entry of a saved ``User``."""
    return row_to_cache_fields({name: getattr(user, name) for name in CACHE_ROW_COLUMNS})


def fields_to_user(user_id: int, fields: dict[str, str]) -> dict:
    """The API representation of a cached entry."""
    return {
        "id": user_id,
        "username": fields["u"],
        "email": fields["e"],
        "first_name": fields["f"],
        "last_name": fields["l"],
        "is_active": fields["a"] == "1",
        "date_joined": _format_epoch_us(fields["j"]),
        "updated_at": _format_epoch_us(fields["t"]),
    }


def user_row_projection(row: dict) -> dict:
    """The public representation of a row with ``CACHE_ROW_COLUMNS`` (never its password)."""
    return fields_to_user(row["id"], row_to_cache_fields(row))


def is_absent(fields: dict[str, str]) -> bool:
    return ABSENT_FIELD in fields


class _EpochMicroseconds(Func):
    """A stored (UTC) datetime as integer microseconds since the epoch, as
    ``_epoch_us`` computes it; plain calendar arithmetic, so the session's time zone
    does not enter into it. MySQL, MariaDB and TiDB all have TIMESTAMPDIFF."""

    template = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', %(expressions)s)"
    output_field = BigIntegerField()


def bulk_entry_values(users: QuerySet) -> Iterator[tuple[int, tuple]]:
    """``(id, values of ENTRY_NAMES)`` for each of ``users``, for bulk fills.

    The same entry as ``row_to_cache_fields``, but the database converts the
    timestamps: parsing two DATETIME columns per row in mysqlclient costs more than
    the rest of the row, and a warm of a million users reads a million rows.
    """
    rows = users.annotate(
        _joined_us=_EpochMicroseconds("date_joined"), _updated_us=_EpochMicroseconds("updated_at")
    ).values_list(
        "id", "username", "email", "first_name", "last_name", "is_active",
        "_joined_us", "_updated_us", "version",
    )  # fmt: skip
    for user_id, username, email, first, last, active, joined, updated, version in rows:
        yield (
            user_id,
            (username, email, first, last, "1" if active else "0", joined, updated, version),
        )
