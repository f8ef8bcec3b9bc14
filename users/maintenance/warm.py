"""Warm: users loaded from MySQL into Redis, a batch at a time, under leases.

The read-through's own steps (``users.cache.readthrough``), split in two: a batch's leases in
one round trip and its rows in one query (``lease_and_load``), then its fill,
one round trip per kind of entry (users, absent ids). A batch's fill runs in a
second thread while the next batch's leases and rows are taken, so at most two
batches are held and memory stays flat however many users there are.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence

from django.db.models import QuerySet

from .. import entries, reads
from ..cache import readthrough, scripts, store
from ..cache.bulk import retrying
from ..cache.kinds import CachedKind, Entry
from ..models import User

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000


# The users a warm fills. Not held in this process's near cache: a command's
# process never reads them, and the web process's copies are dropped by the
# invalidations the fills cause, as any process's are.
_USERS = dataclasses.replace(reads.USERS, near=False)
# A keyset batch of all users holds every id between its first and last, which
# MySQL serves faster as a primary-key range than as an IN list.
_USERS_BY_RANGE = dataclasses.replace(
    _USERS, load=lambda ids: entries.load(User.objects.filter(id__range=(ids[0], ids[-1])))
)


@dataclasses.dataclass(slots=True)
class WarmReport:
    """What a warm did with the ids it went through."""

    # Ids gone through: the users selected, plus any given id with no row.
    examined: int = 0
    # Entries written from a MySQL row.
    filled: int = 0
    # Given ids with no row, now cached as absent (as a read would).
    absent: int = 0
    # Left alone: already cached (``missing_only``), or a reader was filling them.
    skipped: int = 0
    # Fills refused because the lease was gone: a write changed the user meanwhile
    # (its own cache change stands, which is why these need no second attempt), or,
    # after Redis failed a fill and it was retried, the lease ran out (the next
    # read fills the entry).
    refused: int = 0

    def add(self, other: WarmReport) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def cache_warm(
    *,
    user_ids: Iterable[int] | None = None,
    since: datetime.datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    missing_only: bool = False,
    on_batch: Callable[[WarmReport], None] | None = None,
) -> WarmReport:
    """Loads users from MySQL into Redis, ``batch_size`` at a time.

    Selects ``user_ids`` when given (ids with no row get the absent marker), else
    every user updated at or after ``since``, else every user. ``missing_only``
    leaves present entries alone; otherwise present entries are refreshed.
    ``on_batch`` gets each batch's report, for progress. Idempotent.
    """
    assert 1 <= batch_size <= MAX_BATCH_SIZE, f"batch_size must be 1..{MAX_BATCH_SIZE}"
    report = WarmReport()
    if user_ids is not None:
        batches, kind = _chunks(sorted(set(user_ids)), batch_size), _USERS
    else:
        batches = _keyset_batches(_warm_selection(since), batch_size)
        kind = _USERS if since is not None else _USERS_BY_RANGE
    mode = "missing" if missing_only else "refresh"

    def settle(filled: concurrent.futures.Future) -> None:
        batch_report = filled.result()
        report.add(batch_report)
        if on_batch is not None:
            on_batch(batch_report)

    # A batch's fill runs in a second thread while this one takes the next batch's
    # leases and loads its rows: Redis spends about as long on a fill as this
    # process and MySQL on a load, so the two overlap. Only this thread uses the
    # database connection. A fill Redis failed is retried under the same leases,
    # which still refuse it if a write came in between.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="warm") as filler:
        in_flight = None
        for batch in batches:
            pending = retrying(lambda batch=batch: lease_and_load(kind, batch, mode=mode))
            if in_flight is not None:
                settle(in_flight)
            in_flight = filler.submit(retrying, lambda pending=pending: _fill(pending))
        if in_flight is not None:
            settle(in_flight)
    return report


def warm_ids(user_ids: Sequence[int]) -> WarmReport:
    """One batch of given ids, refreshed: how ``check --fix`` rewrites what it found."""
    pending = retrying(lambda: lease_and_load(_USERS, user_ids, mode="refresh"))
    return _fill(pending)


def _fill(pending: Pending) -> WarmReport:
    filled = pending.fill()
    return WarmReport(
        examined=len(pending.loaded) + pending.skipped,
        filled=filled.stored,
        absent=filled.absent,
        skipped=pending.skipped,
        refused=filled.refused,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Pending:
    """A batch between its load and its fill: the entries of the ids whose leases
    ``token`` holds, and how many ids were left alone."""

    kind: CachedKind
    token: str
    loaded: dict[Hashable, Entry | None]
    skipped: int

    def fill(self) -> readthrough.Filled:
        return readthrough.fill(self.kind, self.token, self.loaded, release=True)


def lease_and_load(kind: CachedKind, ids: Sequence[Hashable], *, mode: str) -> Pending:
    """A batch's leases in one round trip (``mode`` "missing" leaves present entries
    and entries another reader is filling alone; "refresh" takes every lease, so
    the fill replaces present entries), then the leased ids' rows in one query.
    Raises ``CacheUnavailable`` when Redis does not answer."""
    token = store.new_lease_token()
    states = store.lease_many(kind, ids, token, mode=mode)
    leased = [i for i, (state, _) in zip(ids, states, strict=True) if state == scripts.LEASED]
    loaded = readthrough.load_to_fill(kind, leased) if leased else {}
    return Pending(kind=kind, token=token, loaded=loaded, skipped=len(ids) - len(leased))


def cache_warm_count(
    *, user_ids: Iterable[int] | None = None, since: datetime.datetime | None = None
) -> int:
    """How many ids ``cache_warm`` with the same selection will go through (one COUNT)."""
    if user_ids is not None:
        return len(set(user_ids))
    return _warm_selection(since).count()


def _warm_selection(since: datetime.datetime | None) -> QuerySet:
    users = User.objects.all()
    return users if since is None else users.filter(updated_at__gte=since)


def _keyset_batches(users: QuerySet, batch_size: int) -> Iterator[list[int]]:
    """The selected ids in id order, a batch per query: ``id > last ORDER BY id LIMIT n``
    on the primary key, which costs the same on page 1 and page 10,000 and does not
    care how large the gaps between ids are (TiDB allocates ids in ranges)."""
    last_id = 0
    while batch := list(
        users.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:batch_size]
    ):
        yield batch
        last_id = batch[-1]


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
