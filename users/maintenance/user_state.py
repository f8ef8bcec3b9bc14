"""What the admin shows of one user's cache entries: the list's cache column
(``user_cache_entries``, a page in one round trip) and the change page's cache
section (``user_cache_state``: every entry the row owns, opened by its kind's
codec and held against MySQL). Apart from the overview page (``overview``),
which is about the whole cache, not a user.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import time
from collections.abc import Callable, Hashable, Sequence

from django.utils import timezone

from .. import entries, lookups, tokens
from ..cache import inspection, kinds, store
from ..cache.kinds import ABSENT, EXPIRES, CachedKind, Entry, RowChange
from ..cache.transport import CacheUnavailable
from ..conf import user_cache_settings
from ..models import User
from ..reads import USERS
from .overview import duration


def user_cache_entries(*, user_ids: Sequence[int]) -> dict[int, inspection.EntryInfo] | None:
    """Each user's entry (TTL, type, whether it is an absent marker), one round trip
    for all of them; None when Redis is unavailable."""
    keys = [USERS.key(user_id) for user_id in user_ids]
    try:
        infos = inspection.inspect_many(keys, fields=(ABSENT,))
    except CacheUnavailable:
        return None
    return dict(zip(user_ids, infos, strict=True))


# How an operator reads each kind's fields: the column each holds (a name lookup
# holds the id of the user who has the name), and how its value is shown.
_USER_FIELDS = (*entries.FIELDS, entries.VERSION)
_FIELD_COLUMNS: dict[str, dict[str, str]] = {
    USERS.name: {field.name: field.column for field in _USER_FIELDS},
    **{kind.name: {lookups.NAME_ID: "id"} for kind in lookups.NAME_KINDS.values()},
    tokens.TOKENS.name: {
        tokens.USER_ID: "user id",
        tokens.USERNAME: "username",
        tokens.ACTIVE: "is_active",
        tokens.STAFF: "is_staff",
        tokens.SIGNATURE: "signature",
    },
}
_FIELD_VALUES: dict[str, dict[str, Callable[[str], object]]] = {
    USERS.name: {field.name: field.kind.decode for field in _USER_FIELDS},
    tokens.TOKENS.name: {tokens.ACTIVE: entries.FLAG.decode, tokens.STAFF: entries.FLAG.decode},
}
# Why an entry whose fields are the right ones fails its codec, by kind.
_INVALID = {
    tokens.TOKENS.name: "its signature does not match: this service did not sign it for "
    "this token, or it was edited in Redis",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One field of an entry, as an operator reads it."""

    column: str
    value: str
    # What MySQL holds there, when it differs from the entry.
    mysql: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EntryState:
    """One entry a user's row owns: as Redis holds it, against what MySQL holds, and
    whether this process's near cache holds it."""

    kind: str
    key: str
    # "cached", "absent" (an id or a name cached as "no such row"), "not cached",
    # or "refused": an entry the codec refuses, which a read deletes and loads
    # from MySQL again (``problem`` says why).
    state: str
    # PTTL: milliseconds left, -1 without a TTL in Redis.
    ttl_ms: int = -2
    # The entry's own expiry (``z``): a read after it is a miss, whatever the TTL.
    expires_at: datetime.datetime | None = None
    problem: str = ""
    fields: tuple[Field, ...] = ()
    # How the entry stands against MySQL: "" when it agrees (or is not cached).
    mysql: str = ""
    # This process's near cache: None for a kind it never holds, else whether it
    # holds this entry, and whether what it holds is what Redis holds.
    held_here: bool | None = None
    held_as_in_redis: bool = True

    @property
    def differing(self) -> list[str]:
        return [field.column for field in self.fields if field.mysql is not None]

    @property
    def ttl_left(self) -> str:
        """The TTL Redis holds, as an operator reads it."""
        if self.ttl_ms == -2:
            return ""
        return "none" if self.ttl_ms == -1 else f"{duration(self.ttl_ms / 1000)} left"

    @property
    def expiry_left(self) -> str:
        """How far off the entry's own expiry is, or how long ago it passed."""
        if self.expires_at is None:
            return ""
        seconds = (self.expires_at - timezone.now()).total_seconds()
        return f"in {duration(seconds)}" if seconds >= 0 else f"passed {duration(-seconds)} ago"


@dataclasses.dataclass(frozen=True, slots=True)
class UserCacheState:
    """Every entry a user's row owns (``kinds.keys_of``'s, in the registry's order)."""

    reachable: bool
    error: str = ""
    entries: tuple[EntryState, ...] = ()
    # Whether this process's near cache is on (``NEAR_CACHE_SIZE``), and whether it
    # could be read now (it holds nothing while it is not tracking).
    near_cache_on: bool = False
    near_cache_readable: bool = False
    # Which process answered: each has a near cache of its own.
    process: str = ""


def user_cache_state(*, user_id: int) -> UserCacheState:
    """What the cache holds for one user: the entries the registry says its row owns
    (its entry, its username's and e-mail's, its tokens'), read raw in one round
    trip, each opened by its kind's codec (why one is refused, when it is) and
    compared with what its kind loads from MySQL (a query per kind), and whether
    this process's near cache holds it."""
    owned = _owned_entries(user_id)
    process = f"process {os.getpid()} on {socket.gethostname()}"
    near_on = bool(user_cache_settings.NEAR_CACHE_SIZE)
    refs = [kind.key(ident) for kind, ident in owned]
    try:
        infos = inspection.inspect_many(refs)
    except CacheUnavailable as exc:
        return UserCacheState(
            reachable=False, error=str(exc), near_cache_on=near_on, process=process
        )
    held = store.held_here([key for key, (kind, _) in zip(refs, owned, strict=True) if kind.near])
    in_mysql = _loaded(owned)
    now = time.time()
    states = tuple(
        _entry_state(kind, ident, info, in_mysql.get((kind.name, ident)), held, now)
        for (kind, ident), info in zip(owned, infos, strict=True)
    )
    return UserCacheState(
        reachable=True,
        entries=states,
        near_cache_on=near_on,
        near_cache_readable=held is not None,
        process=process,
    )


def _owned_entries(user_id: int) -> list[tuple[CachedKind, Hashable]]:
    """Each kind's idents the user's row names, as a delete of the row would drop
    them (``users.cache.flush``): the registry decides, for every kind."""
    row = User.objects.filter(pk=user_id).values().first() or {"id": user_id}
    change = [RowChange(User, row, None)]
    return [
        (kind, ident)
        for kind in kinds.registered()
        if User in kind.sources
        for ident in dict.fromkeys(kind.sources[User].idents(change))
    ]


def _loaded(owned: Sequence[tuple[CachedKind, Hashable]]) -> dict[tuple[str, Hashable], Entry]:
    """What each kind loads from MySQL for its idents: what a fill would store."""
    by_kind: dict[str, tuple[CachedKind, list]] = {}
    for kind, ident in owned:
        by_kind.setdefault(kind.name, (kind, []))[1].append(ident)
    return {
        (name, ident): entry
        for name, (kind, idents) in by_kind.items()
        for ident, entry in kind.load(idents).items()
    }


def _entry_state(
    kind: CachedKind,
    ident: Hashable,
    info: inspection.EntryInfo,
    mysql: Entry | None,
    held: dict[str, Entry] | None,
    now: float,
) -> EntryState:
    raw = info.fields
    common = {
        "kind": kind.name,
        "key": info.key,
        "ttl_ms": info.ttl_ms,
        "expires_at": _expiry(raw),
        "held_here": None if not kind.near or held is None else info.key in held,
        "held_as_in_redis": held is None or held.get(info.key) in (None, raw),
    }
    if not info.exists:
        return EntryState(state="not cached", **common)
    opened = None if raw is None else kind.open(ident, raw, now)
    if opened is None:
        problem = _why_refused(kind, ident, info, now)
        shown = tuple(
            _field(kind, name, value) for name, value in (raw or {}).items() if name != EXPIRES
        )
        return EntryState(state="refused", problem=problem, fields=shown, **common)
    if kinds.is_absent(opened):
        stale = "" if mysql is None else "MySQL has this row: the absence is stale"
        return EntryState(state="absent", mysql=stale, **common)
    fields = tuple(
        _field(kind, name, value, None if mysql is None else mysql.get(name))
        for name, value in opened.items()
        if name != EXPIRES
    )
    orphaned = "MySQL has no such row" if mysql is None else ""
    return EntryState(state="cached", fields=fields, mysql=orphaned, **common)


def _field(kind: CachedKind, name: str, value: str, mysql: str | None = None) -> Field:
    """A field by its column, its value decoded where it decodes; ``mysql``, MySQL's
    value of it, is kept only where it differs."""
    column = _FIELD_COLUMNS.get(kind.name, {}).get(name, name)
    decode = _FIELD_VALUES.get(kind.name, {}).get(name, str)

    def shown(stored: str) -> str:
        try:
            return str(decode(stored))
        except (ValueError, OverflowError, OSError):
            return stored

    differs = mysql is not None and mysql != value
    return Field(column, shown(value), shown(mysql) if differs else None)


def _expiry(raw: Entry | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromtimestamp(int(raw[EXPIRES]), datetime.UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


def _why_refused(kind: CachedKind, ident: Hashable, info: inspection.EntryInfo, now: float) -> str:
    """Why the codec refuses what is at ``info.key``, as told from outside it: the
    codec's verdict decides, this explains it."""
    raw = info.fields
    if raw is None:
        return f"a Redis {info.type}, not a hash"
    if EXPIRES not in raw:
        return f"no expiry field ({EXPIRES})"
    if _expiry(raw) is None:
        return f"its expiry ({EXPIRES}) is not a time: {raw[EXPIRES]!r}"
    names = raw.keys() - {EXPIRES}
    if names == {ABSENT}:
        if raw[ABSENT] != "1":
            return f"an absence marker holding {raw[ABSENT]!r}, not '1'"
    elif names != kind.codec.fields:
        columns = _FIELD_COLUMNS.get(kind.name, {})
        missing = sorted(columns.get(name, name) for name in kind.codec.fields - names)
        extra = sorted(columns.get(name, name) for name in names - kind.codec.fields)
        return f"fields missing: {', '.join(missing) or 'none'}; " + (
            f"unexpected: {', '.join(extra) or 'none'}"
        )
    elif not kind.codec.valid(ident, raw):
        return _INVALID.get(kind.name, "a value is not in the form this service writes")
    return "its own expiry has passed, though Redis still holds it"
