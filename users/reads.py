"""The reads of users, and the cache-aside read they go through, written once.

``read_through`` reads a batch of entries: one Redis round trip for all of them
(``users.cache.store``, where the process's near cache answers first); for the
misses, their leases in one more, their rows in one query, their fills under
the leases in one more. Reading one user is a batch of one; the name lookups
(``users.lookups``), the token lookup (``users.tokens``) and the operators'
warm and repair (``users.maintenance``) use the same steps:

* hit: served with no SQL;
* miss: take the entry's lease, load the row, fill the entry under the lease. Of
  many concurrent misses one loads while the others wait briefly for its fill; a
  write deletes or replaces the lease, so a load made before that write is never
  stored. An id found nowhere is cached as absent for ``NEGATIVE_TTL``;
* Redis unavailable: served from MySQL, marked BYPASS, nothing written back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence

from django.db.models import QuerySet

from . import entries, metrics
from .cache import scripts, store
from .cache.keys import user_key
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings
from .entries import Entry
from .models import User
from .outbox import outbox

logger = logging.getLogger(__name__)


class Source(enum.StrEnum):
    """Where a read was answered from; the API sends it as ``X-Cache``."""

    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"


@dataclasses.dataclass(frozen=True, slots=True)
class EntryKind:
    """What ``read_through`` reads: ``entity`` labels the metrics; ``key`` names an
    id's entry; ``load`` reads the entries of some ids from MySQL in one query
    (an id it leaves out has no row); ``ttl`` is the entries' lifetime in seconds;
    ``trusted`` refuses an entry this service did not write (it is deleted and
    loaded again); ``cache_absent`` remembers ids found nowhere; ``near`` holds
    entries in the process's near cache (only for keys its tracking covers)."""

    entity: str
    key: Callable[[Hashable], str]
    load: Callable[[list], dict[Hashable, Entry]]
    ttl: Callable[[], int]
    cache_absent: bool = True
    trusted: Callable[[Entry], bool] | None = None
    near: bool = False


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

    Logs at DEBUG (``LOG_LEVEL=DEBUG``, to follow single requests by their id): a
    line per lookup at INFO would double the busiest path's log volume for what
    ``X-Cache`` and the metrics already say.
    """
    started = time.perf_counter()
    read = read_through(USERS, [user_id], first=first)[user_id]
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
    *, user_ids: Sequence[int], first: dict[int, Entry | None] | None = None
) -> UsersRead:
    """Distinct users by id in one batch: with every one cached, one Redis round trip
    (none when ``first`` has them all); else one query for all the misses."""
    found = read_through(USERS, user_ids, first=first)
    values = [entries.to_public(i, found[i].entry) for i in user_ids if found[i].entry]
    missing = [i for i in user_ids if found[i].entry is None]
    return UsersRead(values, missing, overall(read.source for read in found.values()))


def overall(sources: Iterable[Source]) -> Source:
    """One answer's source from its parts': BYPASS when Redis was skipped for any,
    MISS when MySQL answered any, HIT when Redis answered all."""
    seen = set(sources)
    return next((s for s in (Source.BYPASS, Source.MISS) if s in seen), Source.HIT)


def user_list() -> QuerySet:
    """Every user's entry row, from MySQL, in id order (the API pages through it)."""
    return entries.select_entries(User.objects.order_by("id"))


# The read-through.


@dataclasses.dataclass(frozen=True, slots=True)
class Read:
    """One id's answer: its entry (None when it does not exist, cached as absent or
    not) and where from."""

    entry: Entry | None
    source: Source


def read_through(
    kind: EntryKind, ids: Sequence[Hashable], *, first: dict[Hashable, Entry | None] | None = None
) -> dict[Hashable, Read]:
    """Each id's entry, Redis first. ``first`` stands for the first Redis read when
    another lookup of the request made it in its own round trip, after
    ``outbox.before_cached_read``."""
    try:
        if first is None:
            outbox.before_cached_read()
            read = store.read_many([kind.key(i) for i in ids], near_cache=kind.near)
            first = dict(zip(ids, read, strict=True))
        answers = {
            i: Read(entry, Source.HIT)
            for i in ids
            if (entry := first.get(i)) is not None and _trusted(kind, i, entry)
        }
        if missing := [i for i in ids if i not in answers]:
            answers |= _read_misses(kind, missing)
    except CacheUnavailable:
        answers = {i: Read(entry, Source.BYPASS) for i, entry in load(kind, ids).items()}
    results = {}
    for i, read in answers.items():
        found = read.entry is not None and not entries.is_absent(read.entry)
        metrics.count_lookup(kind.entity, read.source.value, found=found)
        results[i] = read if found or read.entry is None else Read(None, read.source)
    return results


def _read_misses(kind: EntryKind, ids: list[Hashable]) -> dict[Hashable, Read]:
    """Leases, loads and fills the entries Redis did not have; waits a little for
    those another reader is filling."""
    token = store.new_lease_token()
    deadline = time.monotonic() + user_cache_settings.LEASE_WAIT_MS / 1000
    answers: dict[Hashable, Read] = {}
    leased: list[Hashable] = []
    waiting, waited = ids, False
    while waiting:
        states = store.lease_many(
            [kind.key(i) for i in waiting], token, user_cache_settings.LEASE_TTL_MS, mode="read"
        )
        busy = []
        for i, (state, entry) in zip(waiting, states, strict=True):
            if state == scripts.PRESENT and _trusted(kind, i, entry):
                _count_wait(kind, waited, "filled")
                answers[i] = Read(entry, Source.HIT)
            elif state == scripts.LEASED:
                _count_wait(kind, waited, "leased")
                leased.append(i)
            else:
                busy.append(i)
        if busy and time.monotonic() >= deadline:
            # The lease holders are slow or gone: answer from MySQL without filling.
            for _ in busy:
                _count_wait(kind, True, "timed_out")
            answers |= {i: Read(entry, Source.MISS) for i, entry in load(kind, busy).items()}
            busy = []
        elif busy:
            time.sleep(user_cache_settings.LEASE_POLL_MS / 1000)
        waiting, waited = busy, True
    if leased:
        try:
            loaded = load(kind, leased)
        except Exception:
            with contextlib.suppress(CacheUnavailable):
                store.release_many([kind.key(i) for i in leased], token)
            raise
        with contextlib.suppress(CacheUnavailable):
            fill(kind, token, loaded)
        answers |= {i: Read(entry, Source.MISS) for i, entry in loaded.items()}
    return answers


def _count_wait(kind: EntryKind, waited: bool, outcome: str) -> None:
    if waited:
        metrics.STAMPEDE_WAITS.labels(kind.entity, outcome).inc()


def _trusted(kind: EntryKind, i: Hashable, entry: Entry) -> bool:
    """Whether a cached entry may be served; one that may not is deleted from Redis."""
    if kind.trusted is None or kind.trusted(entry):
        return True
    logger.warning("refused a cached %s entry that fails its check: %s", kind.entity, kind.key(i))
    metrics.ENTRIES_REFUSED.labels(kind.entity).inc()
    store.invalidate([kind.key(i)])
    return False


def load(kind: EntryKind, ids: Sequence[Hashable]) -> dict[Hashable, Entry | None]:
    """Every id's entry from MySQL, None for an id without a row: one query."""
    with metrics.DATABASE_SECONDS.labels(kind.entity).time():
        found = kind.load(list(ids))
    return {i: found.get(i) for i in ids}


@dataclasses.dataclass(slots=True)
class Filled:
    """What a fill stored: entries, absent markers, and fills refused because a
    write took the lease after the load."""

    stored: int = 0
    absent: int = 0
    refused: int = 0


def fill(kind: EntryKind, token: str, loaded: dict[Hashable, Entry | None]) -> Filled:
    """Stores loaded entries under the leases ``token`` holds: one round trip per
    shape of entry (a row's, an absent marker's). Ids without a row are cached as
    absent, or their leases given back when ``kind`` does not cache absence."""
    filled = Filled()
    batches: dict[tuple[str, ...], store.FillBatch] = {}
    gone = []
    for i, entry in loaded.items():
        if entry is None and not kind.cache_absent:
            gone.append(kind.key(i))
            continue
        stored, ttl = (
            (entry, kind.ttl())
            if entry is not None
            else (entries.ABSENT_ENTRY, user_cache_settings.NEGATIVE_TTL)
        )
        names = tuple(stored)
        batch = batches.setdefault(names, store.FillBatch(token=token, names=names))
        batch.add(kind.key(i), [stored[name] for name in names], store.jittered_ttl_ms(ttl))
    if gone:
        store.release_many(gone, token)
    for names, batch in batches.items():
        done = sum(store.fill_many(batch, near_cache=kind.near))
        refused = len(batch.keys) - done
        if entries.ABSENT_FIELD in names:
            filled.absent += done
        else:
            filled.stored += done
        filled.refused += refused
        if refused:
            metrics.STALE_SETS_REJECTED.labels(kind.entity).inc(refused)
    return filled
