"""The cache-aside read, written once, for every kind (``users.cache.kinds``).

``read_through`` reads a batch of entries of one kind: one Redis round trip for
all of them (``users.cache.store``, where the process's near cache answers
first); for the misses, their leases in one more, their rows in one query, their
fills under the leases in one more:

* hit: served with no SQL;
* miss: take the entry's lease, load the row, fill the entry under the lease. Of
  many concurrent misses one loads while the others wait briefly for its fill; a
  write deletes or replaces the lease, so a load made before that write is never
  stored. An ident found nowhere is remembered as absent for the kind's
  ``absent_ttl``;
* Redis unavailable: served from MySQL, marked BYPASS, nothing written back.

Reading one user is a batch of one; the name lookups, the token lookup and the
operators' warm and repair use the same steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence

from .. import metrics
from ..conf import user_cache_settings
from . import scripts, store
from .kinds import ABSENT_ENTRY, CachedKind, Entry, is_absent
from .outbox import outbox
from .transport import CacheUnavailable


class Source(enum.StrEnum):
    """Where a read was answered from; the API sends it as ``X-Cache``."""

    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"


@dataclasses.dataclass(frozen=True, slots=True)
class Read:
    """One ident's answer: its entry (None when it does not exist, cached as absent
    or not) and where from."""

    entry: Entry | None
    source: Source


def overall(sources: Iterable[Source]) -> Source:
    """One answer's source from its parts': BYPASS when Redis was skipped for any,
    MISS when MySQL answered any, HIT when Redis answered all."""
    seen = set(sources)
    return next((s for s in (Source.BYPASS, Source.MISS) if s in seen), Source.HIT)


def read_through(
    kind: CachedKind,
    idents: Sequence[Hashable],
    *,
    prefetched: Mapping[Hashable, Entry | None] | None = None,
) -> dict[Hashable, Read]:
    """Each ident's entry, Redis first. ``prefetched``: entries the request's first
    round trip read already (``users.authentication``; None for a miss there),
    standing for this read's own."""
    try:
        first = dict(prefetched or {})
        if unread := [i for i in idents if i not in first]:
            outbox.before_cached_read()
            first |= zip(unread, store.read_many([(kind, i) for i in unread]).entries, strict=True)
        answers = {
            i: Read(entry, Source.HIT) for i in idents if (entry := first.get(i)) is not None
        }
        if missing := [i for i in idents if i not in answers]:
            answers |= _read_misses(kind, missing)
    except CacheUnavailable:
        answers = {i: Read(entry, Source.BYPASS) for i, entry in load(kind, idents).items()}
    results = {}
    for i, read in answers.items():
        found = read.entry is not None and not is_absent(read.entry)
        metrics.count_lookup(kind.name, read.source.value, found=found)
        results[i] = read if found or read.entry is None else Read(None, read.source)
    return results


def _read_misses(kind: CachedKind, idents: list[Hashable]) -> dict[Hashable, Read]:
    """Leases, loads and fills the entries Redis did not have; waits a little for
    those another reader is filling. What this reader leased it loads and fills
    before it waits for the rest: readers that split a batch's leases between
    them (their takes interleave, or land on different cluster nodes) would
    otherwise each wait for the others' fills until the bound, then all load."""
    token = store.new_lease_token()
    deadline = time.monotonic() + user_cache_settings.LEASE_WAIT_MS / 1000
    answers: dict[Hashable, Read] = {}
    # The idents were just read as missing: the first pass only takes their leases.
    waiting, waited, mode = idents, False, "take"
    while waiting:
        busy, leased = [], []
        for i, (state, entry) in zip(
            waiting, store.lease_many(kind, waiting, token, mode=mode), strict=True
        ):
            if state == scripts.PRESENT:
                _count_wait(kind, waited, "filled")
                answers[i] = Read(entry, Source.HIT)
            elif state == scripts.LEASED:
                _count_wait(kind, waited, "leased")
                leased.append(i)
            else:
                busy.append(i)
        if leased:
            answers |= _load_and_fill(kind, token, leased)
        if busy and time.monotonic() >= deadline:
            # The lease holders are slow or gone: answer from MySQL without filling.
            for _ in busy:
                _count_wait(kind, True, "timed_out")
            answers |= {i: Read(entry, Source.MISS) for i, entry in load(kind, busy).items()}
            busy = []
        elif busy:
            time.sleep(user_cache_settings.LEASE_POLL_MS / 1000)
        waiting, waited, mode = busy, True, "read"
    return answers


def _load_and_fill(kind: CachedKind, token: str, leased: list[Hashable]) -> dict[Hashable, Read]:
    """The rows of the entries ``token`` leased, from MySQL, stored under the leases
    (given back if the load fails)."""
    try:
        loaded = load_to_fill(kind, leased)
    except Exception:
        with contextlib.suppress(CacheUnavailable):
            store.release_many(kind, leased, token)
        raise
    with contextlib.suppress(CacheUnavailable):
        fill(kind, token, loaded)
    return {
        i: Read(None if entry is None or is_absent(entry) else entry, Source.MISS)
        for i, entry in loaded.items()
    }


def _count_wait(kind: CachedKind, waited: bool, outcome: str) -> None:
    if waited:
        metrics.STAMPEDE_WAITS.labels(kind.name, outcome).inc()


def load(kind: CachedKind, idents: Sequence[Hashable]) -> dict[Hashable, Entry | None]:
    """Every ident's entry from MySQL, None for an ident without a row: one query."""
    with metrics.DATABASE_SECONDS.labels(kind.name).time():
        found = kind.load(list(idents))
    return {i: found.get(i) for i in idents}


def load_to_fill(kind: CachedKind, idents: Sequence[Hashable]) -> dict[Hashable, Entry | None]:
    """``load``, with the idents found nowhere whose absence the kind remembers as
    ``ABSENT_ENTRY`` (``absent_ttl``, ``absences_kept``: asked here, on the loading
    thread, not by the fill, which may run on another), the others None."""
    loaded = load(kind, idents)
    gone = [i for i, entry in loaded.items() if entry is None]
    if gone and kind.absent_ttl is not None:
        kept = gone if kind.absences_kept is None else kind.absences_kept(gone)
        loaded |= dict.fromkeys(kept, ABSENT_ENTRY)
    return loaded


@dataclasses.dataclass(slots=True)
class Filled:
    """What a fill stored: entries, absent markers, and fills refused because a
    write took the lease after the load."""

    stored: int = 0
    absent: int = 0
    refused: int = 0


def fill(
    kind: CachedKind,
    token: str,
    loaded: Mapping[Hashable, Entry | None],
    *,
    release: bool = False,
) -> Filled:
    """Stores what ``load_to_fill`` loaded under the leases ``token`` holds, in one
    round trip: rows and remembered absences; the leases of the idents left None
    are given back, and with ``release`` (a bulk run's, which no reader waits
    on) the others too (``store.fill_many``)."""
    entries = {i: entry for i, entry in loaded.items() if entry is not None}
    if released := [i for i, entry in loaded.items() if entry is None]:
        store.release_many(kind, released, token)
    filled = Filled()
    if not entries:
        return filled
    for entry, stored in zip(
        entries.values(), store.fill_many(kind, token, entries, release=release), strict=True
    ):
        if not stored:
            filled.refused += 1
        elif is_absent(entry):
            filled.absent += 1
        else:
            filled.stored += 1
    if filled.refused:
        metrics.STALE_SETS_REJECTED.labels(kind.name).inc(filled.refused)
    return filled
