"""Users found by username or e-mail, through the cache: the name kinds of the
cache's registry, whose entries name an id (``NAME_ID``), whose user entry is
read as any user's (``users.reads``)."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable

from django.core.exceptions import ValidationError

from . import entries, identity, reads
from .cache import kinds, store
from .cache.keys import digest
from .cache.kinds import CachedKind, Codec, Entry, MadeFrom, RowChange
from .cache.readthrough import Source as ReadSource
from .cache.readthrough import load, overall, read_through
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings
from .models import User
from .reads import UserRead, user_read

# A username's or an e-mail's entry: the id of the user who holds it.
NAME_ID = "i"
LOOKUP_FIELDS = ("username", "email")


def lookup_value(field: str, value: str) -> str:
    """How a username or an e-mail is looked up: a username exactly as it is stored
    (NFKC, ``users.identity``), an e-mail in its canonical form compared
    case-insensitively, as its uniqueness is. Raises ``ValidationError`` for an
    e-mail whose domain is no valid domain name."""
    if field == "username":
        return identity.normalize_username(value)
    return identity.normalize_email(value).casefold()


def _name_kind(field: str) -> CachedKind:
    """Usernames or e-mails (``field``) and the id each names, as entries."""

    def load_names(values: list[str]) -> dict[Hashable, Entry]:
        rows = User.objects.filter(**{f"{field}__in": values}).values_list(field, "id")
        # The collation may match another spelling: only the value asked is its own.
        return {
            lookup_value(field, stored): {NAME_ID: str(user_id)}
            for stored, user_id in rows
            if lookup_value(field, stored) in values
        }

    def names_changed(changes: list[RowChange]) -> list[str]:
        found = []
        for change in changes:
            for value in change.values(field):
                # A value no lookup can ask for (an e-mail written by SQL with no
                # valid domain) has no entry.
                with contextlib.suppress(ValidationError):
                    found.append(lookup_value(field, value))
        return found

    return kinds.register(
        CachedKind(
            name=field,
            codec=Codec(
                fields=frozenset({NAME_ID}),
                valid=lambda value, entry: entry[NAME_ID].isascii() and entry[NAME_ID].isdigit(),
            ),
            load=load_names,
            ttl=lambda: user_cache_settings.TTL,
            absent_ttl=lambda: user_cache_settings.NEGATIVE_TTL,
            near=True,
            tag=digest,
            sources={User: MadeFrom(columns=frozenset({field}), idents=names_changed)},
        )
    )


NAME_KINDS = {field: _name_kind(field) for field in LOOKUP_FIELDS}


def user_by(*, field: str, value: str) -> UserRead:
    """The user whose ``field`` ("username" or "email") is ``value``.

    A lookup never answers with a user whose current value differs from the one
    asked (a rename or a delete raced it): the user's own entry is checked, and on
    a mismatch the value is looked up in MySQL and its entry dropped.
    Raises ``ValidationError`` for an e-mail with no valid domain.
    """
    kind = NAME_KINDS[field]
    asked = lookup_value(field, value)
    named = read_through(kind, [asked])[asked]
    if named.entry is None:
        return UserRead(value=None, source=named.source)
    user_id = int(named.entry[NAME_ID])
    read = read_through(reads.USERS, [user_id])[user_id]
    if read.entry is not None and _holds(field, read.entry, asked):
        return user_read(user_id, read.entry, overall([named.source, read.source]))
    with contextlib.suppress(CacheUnavailable):
        store.invalidate([kind.key(asked)])
    found = kind.load([asked]).get(asked)
    if found is None:
        return UserRead(value=None, source=ReadSource.MISS)
    user_id = int(found[NAME_ID])
    entry = load(reads.USERS, [user_id])[user_id]
    if entry is None or not _holds(field, entry, asked):
        return UserRead(value=None, source=ReadSource.MISS)
    return user_read(user_id, entry, ReadSource.MISS)


def _holds(field: str, entry: Entry, asked: str) -> bool:
    """Whether the user an entry describes holds the value asked now."""
    return lookup_value(field, entry[entries.NAME_OF[field]]) == asked
