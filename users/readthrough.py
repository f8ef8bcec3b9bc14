"""The cache-aside read, written once.

``read_through`` reads a batch of entries: one Redis round trip for all of them;
for the misses, their leases in one more, their rows in one query, their fills
under the leases in one more. Reading one user is a batch of one; the token
lookup (``users.tokens``) and the operators' warm and repair
(``users.maintenance``) use the same steps, so the algorithm exists once:

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
from collections.abc import Callable, Hashable, Sequence

from . import entries, metrics
from .cache import scripts, store
from .cache.near import near
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings
from .outbox import outbox

logger = logging.getLogger(__name__)

Entry = dict[str, str]


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
    entries in the process's near cache (``users.cache.near``: only for keys its
    tracking covers)."""

    entity: str
    key: Callable[[Hashable], str]
    load: Callable[[list], dict[Hashable, Entry]]
    ttl: Callable[[], int]
    cache_absent: bool = True
    trusted: Callable[[Entry], bool] | None = None
    near: bool = False


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
            first = _first_read(kind, ids)
        answers = {
            i: Read(entry, Source.HIT)
            for i in ids
            if (entry := first.get(i)) is not None and _trusted(kind, i, entry)
        }
        missing = [i for i in ids if i not in answers]
        if missing:
            answers |= _read_misses(kind, missing)
    except CacheUnavailable:
        answers = {i: Read(entry, Source.BYPASS) for i, entry in _load(kind, ids).items()}
    results = {}
    for i, read in answers.items():
        found = read.entry is not None and not entries.is_absent(read.entry)
        metrics.count_lookup(kind.entity, read.source.value, found=found)
        results[i] = read if found or read.entry is None else Read(None, read.source)
    return results


def _first_read(kind: EntryKind, ids: Sequence[Hashable]) -> dict[Hashable, Entry | None]:
    """Each id's entry from the near cache, else from Redis in one round trip."""
    entry_keys = {i: kind.key(i) for i in ids}
    held = near.get_many(entry_keys.values()) if kind.near else {}
    rest = [i for i in ids if entry_keys[i] not in held]
    if not rest:
        return {i: held[entry_keys[i]] for i in ids}
    stamp = near.stamp() if kind.near else None
    read = dict(zip(rest, store.read_many([entry_keys[i] for i in rest]), strict=True))
    if kind.near:
        near.count_miss(len(rest))
        near.put_many({entry_keys[i]: entry for i, entry in read.items() if entry}, stamp)
    return {i: held.get(entry_keys[i], read.get(i)) for i in ids}


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
            answers |= {i: Read(entry, Source.MISS) for i, entry in _load(kind, busy).items()}
            busy = []
        elif busy:
            time.sleep(user_cache_settings.LEASE_POLL_MS / 1000)
        waiting, waited = busy, True
    if leased:
        try:
            loaded = _load(kind, leased)
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


def _load(kind: EntryKind, ids: Sequence[Hashable]) -> dict[Hashable, Entry | None]:
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
    stamp = near.stamp() if kind.near else None
    for names, batch in batches.items():
        stored = store.fill_many(batch)
        done = sum(stored)
        if stamp is not None:
            kept = [i for i, ok in enumerate(stored) if ok]
            near.put_many(
                {batch.keys[i]: dict(zip(names, batch.rows[i], strict=True)) for i in kept},
                stamp,
            )
        refused = len(batch.keys) - done
        if entries.ABSENT_FIELD in names:
            filled.absent += done
        else:
            filled.stored += done
        filled.refused += refused
        if refused:
            metrics.STALE_SETS_REJECTED.labels(kind.entity).inc(refused)
    return filled


@dataclasses.dataclass(frozen=True, slots=True)
class Pending:
    """A batch between its load and its fill (``lease_and_load``): the entries of the
    ids whose leases ``token`` holds, and how many ids were left alone."""

    kind: EntryKind
    token: str
    loaded: dict[Hashable, Entry | None]
    skipped: int

    def fill(self) -> Filled:
        return fill(self.kind, self.token, self.loaded)


def lease_and_load(kind: EntryKind, ids: Sequence[Hashable], *, mode: str) -> Pending:
    """The first half of a read-through for a bulk run: the batch's leases in one
    round trip (``mode`` "missing" leaves present entries and entries another
    reader is filling alone; "refresh" takes every lease, so the fill replaces
    present entries), then the leased ids' rows in one query. Raises
    ``CacheUnavailable`` when Redis does not answer."""
    token = store.new_lease_token()
    states = store.lease_many(
        [kind.key(i) for i in ids], token, user_cache_settings.LEASE_TTL_MS, mode=mode
    )
    leased = [i for i, (state, _) in zip(ids, states, strict=True) if state == scripts.LEASED]
    loaded = _load(kind, leased) if leased else {}
    return Pending(kind=kind, token=token, loaded=loaded, skipped=len(ids) - len(leased))
