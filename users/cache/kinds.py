"""The registry of cached kinds: every kind of entry this service keeps in Redis,
described once, and what every other part of the cache derives from it.

A kind (``CachedKind``) says, for one family of entries: how an entry is named
(``key``), what a valid one holds (``codec``: a malformed entry is a miss), how
a batch of them is loaded from MySQL (``load``), how long one lives (``ttl``),
whether an absence is remembered (``absent_ttl``), whether the process's near
cache holds it (``near``), and which rows it is made from (``sources``): for
each model, the columns whose change changes an entry and the entries a change
of those rows touches. From that one description:

* ``keys_of(changes)`` is the set of keys created, changed or deleted rows own,
  old values and new: the services, the model signals, the outbox, the binary
  log follower and ``flush_user_cache`` all drop exactly these;
* ``watched_tables()`` and ``watched_columns()`` tell the follower which row
  events matter;
* ``tracked_prefixes()`` are the key prefixes the near cache asks Redis to
  track, and ``kind_of_key`` tells a key's kind to the near cache, the flush,
  the check and the admin's overview;
* the kind's ``name`` labels its metrics.

Adding a kind is one ``register`` call, in the module that reads the kind's
entries (``users.reads``, ``users.lookups``, ``users.tokens``), which
``UsersConfig.ready`` imports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from django.db.models import Model

from . import keys

# A cached entry: a Redis hash of strings.
Entry = dict[str, str]

# Every entry's expiry, in whole seconds since the epoch, written with it: an
# entry read after it is a miss, whatever TTL Redis holds (a PERSIST, an
# invalidation lost in a failover).
EXPIRES = "z"
# An entry whose expiry is further away than its kind's TTL allows was not written
# by this service (a clock this far ahead of another host's is a fault of its own).
EXPIRY_SLACK_SECONDS = 2
# Present on an entry that records "no such row" (the negative cache): how a
# cached absence is told apart from a miss.
ABSENT = "x"
ABSENT_ENTRY: Entry = {ABSENT: "1"}


def is_absent(entry: Mapping[str, str]) -> bool:
    return ABSENT in entry


@dataclasses.dataclass(frozen=True, slots=True)
class RowChange:
    """One row of ``model`` created (``before`` is None), changed, or deleted
    (``after`` is None), as column -> value. A side that is not known (a save whose
    previous state was never loaded) is None on both: ``known_before`` says which."""

    model: type[Model]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    known_before: bool = True

    def values(self, column: str) -> list[Any]:
        """The column's distinct values over both images (one when it did not change)."""
        found = []
        for image in (self.before, self.after):
            if image is not None and column in image and image[column] not in found:
                found.append(image[column])
        return found

    def touches(self, columns: frozenset[str]) -> bool:
        """Whether the change can have changed an entry made from these columns."""
        if self.before is None or self.after is None or not self.known_before:
            return True
        return any(self.before.get(column) != self.after.get(column) for column in columns)


@dataclasses.dataclass(frozen=True, slots=True)
class MadeFrom:
    """A model a kind's entries are made from: the ``columns`` they read, and
    ``idents(changes)``, the idents of the entries some changes of its rows touch
    (it may query MySQL: a user's tokens)."""

    columns: frozenset[str]
    idents: Callable[[Sequence[RowChange]], Iterable[Hashable]]


@dataclasses.dataclass(frozen=True, slots=True)
class Codec:
    """What a valid entry of a kind holds. ``fields``: its exact field names (besides
    ``EXPIRES``); ``valid(ident, entry)``: whether their values are well formed;
    ``seal(ident, entry)``: what is added to an entry before it is stored (a
    signature), checked by ``valid``. An absent marker holds ``ABSENT`` alone."""

    fields: frozenset[str]
    valid: Callable[[Hashable, Entry], bool] = lambda ident, entry: True
    seal: Callable[[Hashable, Entry], Entry] = lambda ident, entry: entry

    def open(self, ident: Hashable, entry: Entry | None, now: float, latest: float) -> Entry | None:
        """The entry as read from Redis if it is one this service wrote and it has
        not expired, nor expires after ``latest`` (later than a fill made now could
        have set: written by someone else); None otherwise (a miss). Its expiry is
        kept: the near cache holds an entry no longer than it."""
        if entry is None:
            return None
        names = entry.keys() - {EXPIRES}
        if names == {ABSENT}:
            good = entry[ABSENT] == "1"
        else:
            good = names == self.fields and self.valid(ident, entry)
        expires = entry.get(EXPIRES, "")
        if not (good and expires.isascii() and expires.isdigit() and len(expires) <= 12):
            return None
        return entry if now <= int(expires) <= latest else None

    def close(self, ident: Hashable, entry: Entry, *, expires: float) -> Entry:
        """``entry`` as it is stored: with its expiry (``expires``, seconds since the
        epoch, rounded up), sealed."""
        expiry = str(int(expires) + 1)
        if is_absent(entry):
            return {ABSENT: "1", EXPIRES: expiry}
        return self.seal(ident, {**entry, EXPIRES: expiry})


@dataclasses.dataclass(frozen=True, slots=True)
class CachedKind:
    """One family of entries (see the module's docstring)."""

    # The metrics' label and the key family: ``<prefix>:v<schema>:<name>:{ident}``.
    name: str
    codec: Codec
    load: Callable[[list], Mapping[Hashable, Entry]]
    ttl: Callable[[], int]
    sources: Mapping[type[Model], MadeFrom]
    # Seconds an ident found nowhere is remembered as absent; None: never.
    absent_ttl: Callable[[], int] | None = None
    near: bool = False
    # The part of the key inside the hash tag: the ident itself, or a digest of it
    # when it can hold any character (a name) or is a credential (a token).
    tag: Callable[[Hashable], str] = str
    # The entry of a saved instance, for a write that stores its new state
    # (``UPDATE_STRATEGY`` write-through, and creates); None: writes only delete.
    entry_of: Callable[[Model], Entry] | None = None
    # The idents whose absence may be remembered, of those a load found nowhere
    # (None: all of them): what one client can make Redis hold must not grow
    # with the ids it can make up.
    absences_kept: Callable[[list], Iterable[Hashable]] | None = None

    def key(self, ident: Hashable) -> str:
        return keys.entry_key(self.name, self.tag(ident))

    def open(self, ident: Hashable, entry: Entry | None, now: float) -> Entry | None:
        """``codec.open``, with the latest expiry this kind's TTL allows."""
        if entry is None:
            return None
        seconds = self.absent_ttl() if is_absent(entry) and self.absent_ttl else self.ttl()
        return self.codec.open(ident, entry, now, now + seconds + EXPIRY_SLACK_SECONDS)

    def key_prefix(self) -> str:
        return keys.entry_key_prefix(self.name)


_kinds: dict[str, CachedKind] = {}
_listeners: list[Callable[[], None]] = []


def register(kind: CachedKind) -> CachedKind:
    """Adds a kind (or replaces the one of that name); returns it."""
    assert kind.name not in keys.RESERVED_FAMILIES, f"{kind.name!r} names another key family"
    _kinds[kind.name] = kind
    for listener in _listeners:
        listener()
    return kind


def unregister(name: str) -> None:
    _kinds.pop(name, None)
    for listener in _listeners:
        listener()


def on_change(listener: Callable[[], None]) -> None:
    """Calls ``listener`` whenever a kind is registered or removed (the near cache
    then tracks the new prefixes)."""
    _listeners.append(listener)


def registered() -> list[CachedKind]:
    return list(_kinds.values())


def get(name: str) -> CachedKind:
    return _kinds[name]


def keys_of(changes: Iterable[RowChange]) -> list[str]:
    """Every key the changed rows own, for every kind, in a stable order."""
    by_model: dict[type[Model], list[RowChange]] = {}
    for change in changes:
        by_model.setdefault(change.model, []).append(change)
    found: dict[str, None] = {}
    for kind in _kinds.values():
        for model, source in kind.sources.items():
            touching = [c for c in by_model.get(model, ()) if c.touches(source.columns)]
            if touching:
                found.update(dict.fromkeys(kind.key(i) for i in source.idents(touching)))
    return list(found)


def watched_columns(model: type[Model]) -> frozenset[str]:
    """The columns of ``model`` whose change changes some entry."""
    return frozenset(
        column
        for kind in _kinds.values()
        for source_model, source in kind.sources.items()
        if source_model is model
        for column in source.columns
    )


def watched_models() -> list[type[Model]]:
    return list(dict.fromkeys(model for kind in _kinds.values() for model in kind.sources))


def tracked_prefixes() -> list[str]:
    """The key prefixes of the kinds the near cache holds."""
    return [kind.key_prefix() for kind in _kinds.values() if kind.near]


def kind_of_key(key: str) -> CachedKind | None:
    """The kind whose entry ``key`` names (under the current schema); None for a
    lease or any other key."""
    family = keys.entry_family(key)
    return None if family is None else _kinds.get(family)


# What ``key_label`` calls the keys that are no kind's entries.
LEASES, OTHER = "leases", "other"


def key_label(key: str) -> str:
    """What a key under the project's prefix holds, whatever its schema version: a
    kind's name, ``LEASES``, or ``OTHER`` (rate-limit and login counters, Django's
    cache)."""
    family = keys.entry_family(key, any_schema=True)
    if family is not None and family in _kinds:
        return family
    return LEASES if keys.is_lease(key) else OTHER


def key_labels() -> list[str]:
    """Every label ``key_label`` gives, the kinds' first."""
    return [*_kinds, LEASES, OTHER]


def describe(label: str) -> str:
    """A label of ``key_label`` as operators read it: "user entries", "leases"."""
    return {LEASES: "leases", OTHER: "other keys"}.get(label, f"{label} entries")


