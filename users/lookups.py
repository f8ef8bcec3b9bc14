"""Users found by username or e-mail, through the cache: a value's entry names an
id (``users.entries.NAME_ID_FIELD``), whose user entry is read as any user's
(``users.reads``)."""

from __future__ import annotations

import contextlib

from . import entries
from .cache import store
from .cache.keys import name_key
from .cache.transport import CacheUnavailable
from .models import User
from .reads import USERS, Entry, EntryKind, Source, UserRead, load, overall, read_through, user_read


def _name_kind(field: str) -> EntryKind:
    """Usernames or e-mails (``field``) and the id each names, as entries."""

    def load_names(values: list[str]) -> dict[str, Entry]:
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
        load=load_names,
        ttl=USERS.ttl,
    )


_NAME_KINDS = {field: _name_kind(field) for field in entries.LOOKUP_FIELDS}


def user_by(*, field: str, value: str) -> UserRead:
    """The user whose ``field`` ("username" or "email") is ``value``.

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
        return user_read(user_id, read.entry, overall([named.source, read.source]))
    with contextlib.suppress(CacheUnavailable):
        store.invalidate([name_key(field, asked)])
    found = _NAME_KINDS[field].load([asked]).get(asked)
    if found is None:
        return UserRead(value=None, source=Source.MISS)
    user_id = int(found[entries.NAME_ID_FIELD])
    entry = load(USERS, [user_id])[user_id]
    if entry is None or not _holds(field, entry, asked):
        return UserRead(value=None, source=Source.MISS)
    return user_read(user_id, entry, Source.MISS)


def _holds(field: str, entry: Entry, asked: str) -> bool:
    """Whether the user an entry describes holds the value asked now."""
    return entries.lookup_value(field, entry[entries.NAME_OF[field]]) == asked
