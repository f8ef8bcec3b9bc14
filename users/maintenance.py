"""Operator work on the user cache: warm, flush and check it in bulk, and what the
admin shows of it.

The rules are the read path's (``users.services``): an entry is filled only
while its filler holds the entry's lease, taken before the MySQL load, and every
write deletes the lease; so a bulk fill running beside live traffic can never
store a state older than a concurrent write. Each batch costs a round trip to
take its leases, one or two queries, and a round trip for each kind of entry it
fills (users, absent ids); a batch's fill overlaps the next
batch's load, so at most two batches are held and memory stays flat however
many users there are.

The management commands ``warm_user_cache``, ``flush_user_cache`` and
``check_user_cache``, and the admin's actions, are thin wrappers around these.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import enum
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from django.db.models import QuerySet
from rest_framework.authtoken.models import Token

from . import cache, metrics
from .conf import user_cache_settings
from .entries import (
    ABSENT_ENTRY,
    ABSENT_FIELD,
    CACHE_ROW_COLUMNS,
    ENTRY_NAMES,
    USER_ENTRY_FIELDS,
    USER_FIELD_NAMES,
    VERSION_FIELD,
    bulk_entry_values,
    row_to_cache_fields,
)
from .models import User
from .tokens import token_mac

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
# Tries of one batch's step before a bulk run gives up on Redis.
REDIS_ATTEMPTS = 3

T = TypeVar("T")


def _retrying(step: Callable[[], T]) -> T:
    """Runs a batch's step again when Redis failed it, after the breaker's cooldown.

    A bulk run holds Redis to the API's short timeouts, and on a busy server one
    pipeline of a long run may miss them; each step is idempotent (a retried
    warm batch takes new leases and loads again), so a blip costs a retry rather
    than the run.
    """
    for attempt in range(1, REDIS_ATTEMPTS + 1):
        try:
            return step()
        except cache.CacheUnavailable:
            if attempt == REDIS_ATTEMPTS:
                raise
            time.sleep(user_cache_settings.BREAKER_COOLDOWN_MS / 1000 * attempt)
    raise AssertionError("unreachable")


# Warm.


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
    batches = (
        _chunks(sorted(set(user_ids)), batch_size)
        if user_ids is not None
        else _keyset_batches(_warm_selection(since), batch_size)
    )
    # A keyset batch of all users holds every id between its first and last.
    contiguous = user_ids is None and since is None

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
            loaded = _retrying(
                lambda batch=batch: _lease_and_load(
                    batch, missing_only=missing_only, contiguous=contiguous
                )
            )
            if in_flight is not None:
                settle(in_flight)
            in_flight = filler.submit(_retrying, lambda loaded=loaded: _fill(loaded))
        if in_flight is not None:
            settle(in_flight)
    return report


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


def _warm_batch(user_ids: list[int], *, missing_only: bool, contiguous: bool = False) -> WarmReport:
    """Lease, load, fill: the read path's three steps for a whole batch."""
    return _fill(_lease_and_load(user_ids, missing_only=missing_only, contiguous=contiguous))


@dataclasses.dataclass(frozen=True, slots=True)
class _LoadedBatch:
    """A batch between its load and its fill: what it found so far, and the entries
    to store (users found, and given ids without a row)."""

    report: WarmReport
    found: cache.FillBatch
    absent: cache.FillBatch


def _lease_and_load(user_ids: list[int], *, missing_only: bool, contiguous: bool) -> _LoadedBatch:
    """Takes the batch's leases, then loads its rows: a round trip and a query.

    The ids are known before the load (from the keyset query or the caller), so the
    leases are taken first, as a reader's is; a load made before the lease could
    not be told apart from one that a concurrent write made stale. ``contiguous``
    says the ids are every user between the first and the last, so the rows are
    read as a primary-key range, which MySQL serves faster than an IN list.
    """
    keys = [cache.user_cache_key(user_id) for user_id in user_ids]
    token = cache.new_lease_token()
    leased = cache.lease_many(
        keys, token, user_cache_settings.LEASE_TTL_MS, only_missing=missing_only
    )
    leased_ids = [user_id for user_id, taken in zip(user_ids, leased, strict=True) if taken]
    absent_fields = ABSENT_ENTRY
    loaded = _LoadedBatch(
        report=WarmReport(examined=len(user_ids), skipped=len(user_ids) - len(leased_ids)),
        found=cache.FillBatch(token=token, names=ENTRY_NAMES, keys=[], rows=[], ttls_ms=[]),
        absent=cache.FillBatch(
            token=token, names=list(absent_fields), keys=[], rows=[], ttls_ms=[]
        ),
    )
    if not leased_ids:
        return loaded
    users = (
        User.objects.filter(id__range=(leased_ids[0], leased_ids[-1]))
        if contiguous
        else User.objects.filter(id__in=leased_ids)
    )
    values = dict(bulk_entry_values(users))
    for user_id in leased_ids:
        row = values.get(user_id)
        batch, ttl = (
            (loaded.found, user_cache_settings.TTL)
            if row is not None
            else (loaded.absent, user_cache_settings.NEGATIVE_TTL)
        )
        batch.keys.append(cache.user_cache_key(user_id))
        batch.rows.append(row if row is not None else list(absent_fields.values()))
        batch.ttls_ms.append(cache.jittered_ttl_ms(ttl))
    return loaded


def _fill(loaded: _LoadedBatch) -> WarmReport:
    """Stores a loaded batch under its leases: one round trip per kind of entry."""
    report = dataclasses.replace(loaded.report)
    for batch in (loaded.found, loaded.absent):
        if not batch.keys:
            continue
        stored = sum(cache.fill_many(batch))
        report.refused += len(batch.keys) - stored
        if batch is loaded.found:
            report.filled += stored
        else:
            report.absent += stored
    return report


# Flush.

_FLUSHED_KINDS = frozenset({cache.KeyKind.USER, cache.KeyKind.TOKEN, cache.KeyKind.LEASE})


@dataclasses.dataclass(slots=True)
class FlushReport:
    """Keys a flush matched, by kind; ``removed`` is 0 on a dry run."""

    matched: dict[cache.KeyKind, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(cache.KeyKind, 0)
    )
    removed: int = 0

    @property
    def total(self) -> int:
        return sum(count for kind, count in self.matched.items() if kind in _FLUSHED_KINDS)


def cache_flush(
    *,
    user_ids: Iterable[int] | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
) -> FlushReport:
    """Removes cached entries: those of ``user_ids`` (their users, leases and token
    lookups), or else every entry of this project, of any schema version.

    Never FLUSHDB: all entries are found by SCAN over the project's prefix and
    UNLINKed a page at a time, so other applications' keys in the same Redis, and
    this project's other keys (rate-limit counters), stay. Safe beside live
    traffic: removing an entry also removes its lease, like a write does.
    """
    report = FlushReport()
    pages = (
        _user_key_pages(sorted(set(user_ids)), batch_size)
        if user_ids is not None
        else cache.scan_project_keys(count=batch_size)
    )
    # One page's UNLINK runs in a second thread while the next page is scanned and
    # sorted: Redis and this process each take about half of a key's cost, so
    # overlapping them is most of the speed there is to gain.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flush") as unlinker:
        in_flight = None
        for page in pages:
            targets = []
            for key in page:
                kind = cache.key_kind(key)
                report.matched[kind] += 1
                if kind in _FLUSHED_KINDS:
                    targets.append(key)
            if dry_run:
                continue
            if in_flight is not None:
                report.removed += in_flight.result()
            in_flight = unlinker.submit(
                _retrying, lambda targets=targets: cache.unlink_many(targets)
            )
        if in_flight is not None:
            report.removed += in_flight.result()
    return report


def _user_key_pages(user_ids: Sequence[int], batch_size: int) -> Iterator[list[str]]:
    """The existing keys of these users: entries, leases and token lookups."""
    for batch in _chunks(user_ids, batch_size):
        entry_keys = [cache.user_cache_key(user_id) for user_id in batch]
        token_keys = [
            cache.token_cache_key(token_mac(key))
            for key in Token.objects.filter(user_id__in=batch).values_list("key", flat=True)
        ]
        candidates = [
            *entry_keys,
            *(cache.lease_key(key) for key in entry_keys),
            *token_keys,
            *(cache.lease_key(key) for key in token_keys),
        ]
        yield [info.key for info in cache.inspect_many(candidates, fields=()) if info.exists]


# Check.


class ProblemKind(enum.StrEnum):
    STALE = "stale"
    ORPHANED = "orphaned"
    MALFORMED = "malformed"


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    key: str
    kind: ProblemKind
    detail: str


@dataclasses.dataclass(slots=True)
class CheckReport:
    examined: int = 0
    found: dict[ProblemKind, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(ProblemKind, 0)
    )
    fixed: int = 0

    @property
    def problems(self) -> int:
        return sum(self.found.values())


# The column each one-letter field of a cached user comes from, for messages.
_FIELD_TITLES = {short: column for column, short in USER_FIELD_NAMES.items()} | {
    VERSION_FIELD: "version"
}
_ABSENT_FIELDS = frozenset({ABSENT_FIELD, VERSION_FIELD})
# A write's cache change lands just after its commit; an entry read just before
# the commit and a row read just after look stale for that moment. Suspects are
# looked at again this much later, and only those still wrong are reported.
_RECHECK_AFTER_SECONDS = 0.25


def cache_check(
    *,
    sample: int | None = None,
    fix: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_problem: Callable[[Problem], None] | None = None,
) -> CheckReport:
    """Audits cached users against MySQL: the first ``sample`` entries SCAN finds, or
    every entry when ``sample`` is None.

    Reports stale entries (differ from the row, or cache a user as absent who
    exists), orphaned ones (the user was deleted) and malformed ones (not a hash,
    no TTL, wrong fields, a key that names no id). ``fix`` rewrites each
    problem entry the way a warm of its id would (the row, or the absent marker),
    under a lease, and deletes keys that name no id.
    """
    report = CheckReport()
    pages = cache.scan_project_keys(cache.user_cache_key_pattern(), count=batch_size)
    for page in pages:
        keys = [key for key in page if cache.key_kind(key) is not cache.KeyKind.LEASE]
        if sample is not None:
            keys = keys[: sample - report.examined]
        if not keys:
            continue
        report.examined += len(keys)
        problems = _retrying(lambda keys=keys: _problems(keys))
        if problems:
            time.sleep(_RECHECK_AFTER_SECONDS)
            suspects = [problem.key for problem in problems]
            problems = _retrying(lambda suspects=suspects: _problems(suspects))
        for problem in problems:
            report.found[problem.kind] += 1
            if on_problem is not None:
                on_problem(problem)
        if fix and problems:
            report.fixed += _repair(problems)
        if sample is not None and report.examined >= sample:
            break
    return report


def _problems(keys: list[str]) -> list[Problem]:
    infos = cache.inspect_many(keys)
    user_ids = [cache.user_id_from_key(key) for key in keys]
    rows = {
        row["id"]: row
        for row in User.objects.filter(id__in=[i for i in user_ids if i is not None]).values(
            *CACHE_ROW_COLUMNS
        )
    }
    problems = []
    for info, user_id in zip(infos, user_ids, strict=True):
        detail = _problem(info, user_id, rows.get(user_id) if user_id is not None else None)
        if detail is not None:
            problems.append(Problem(key=info.key, kind=detail[0], detail=detail[1]))
    return problems


def _problem(
    info: cache.EntryInfo, user_id: int | None, row: dict | None
) -> tuple[ProblemKind, str] | None:
    if not info.exists:
        return None  # expired or removed since SCAN saw it
    if user_id is None:
        return ProblemKind.MALFORMED, "the key names no user id"
    if info.fields is None:
        return ProblemKind.MALFORMED, f"a {info.type}, not a hash"
    if info.ttl_ms == -1:
        return ProblemKind.MALFORMED, "no expiry"
    names = set(info.fields)
    if ABSENT_FIELD in names:
        if names != _ABSENT_FIELDS:
            return ProblemKind.MALFORMED, "an absent marker with other fields"
        if row is not None:
            return ProblemKind.STALE, "cached as absent, but the user exists"
        return None
    if names != USER_ENTRY_FIELDS:
        missing, extra = (sorted(USER_ENTRY_FIELDS - names), sorted(names - USER_ENTRY_FIELDS))
        return ProblemKind.MALFORMED, f"fields missing {missing}, unexpected {extra}"
    if row is None:
        return ProblemKind.ORPHANED, "the user no longer exists"
    expected = row_to_cache_fields(row)
    if info.fields != expected:
        differing = sorted(
            _FIELD_TITLES[name] for name in expected if info.fields[name] != expected[name]
        )
        return ProblemKind.STALE, f"differs from MySQL in {', '.join(differing)}"
    return None


def _repair(problems: list[Problem]) -> int:
    user_ids = [cache.user_id_from_key(problem.key) for problem in problems]
    nameless = [p.key for p, user_id in zip(problems, user_ids, strict=True) if user_id is None]
    _retrying(lambda: cache.unlink_many(nameless))
    named = [user_id for user_id in user_ids if user_id is not None]
    _retrying(lambda: _warm_batch(named, missing_only=False))
    return len(problems)


# What the admin shows.


def user_cache_entries(*, user_ids: Sequence[int]) -> dict[int, cache.EntryInfo] | None:
    """Each user's entry (TTL, type, whether it is an absent marker), one round trip
    for all of them; None when Redis is unavailable."""
    keys = [cache.user_cache_key(user_id) for user_id in user_ids]
    try:
        infos = cache.inspect_many(keys, fields=(ABSENT_FIELD,))
    except cache.CacheUnavailable:
        return None
    return dict(zip(user_ids, infos, strict=True))


_LOOKUP_RESULTS = {
    "hit": "Hits",
    "negative_hit": "Hits on a cached absence",
    "miss": "Misses (loaded from MySQL)",
    "bypass": "Bypasses (Redis unavailable)",
}


@dataclasses.dataclass(frozen=True, slots=True)
class CacheOverview:
    reachable: bool
    # Why Redis is unreachable, when it is.
    error: str = ""
    ping_ms: float | None = None
    # Redis INFO: version, memory, and the server-wide keyspace hits and misses.
    info: dict = dataclasses.field(default_factory=dict)
    # This project's keys by kind (a full SCAN of its prefix).
    keys: dict[cache.KeyKind, int] = dataclasses.field(default_factory=dict)
    # This service's user lookups by result, over every worker since it started.
    lookups: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def lookup_counts(self) -> list[tuple[str, float]]:
        return [(label, self.lookups.get(result, 0)) for result, label in _LOOKUP_RESULTS.items()]

    @property
    def service_hit_ratio(self) -> float | None:
        hits = self.lookups.get("hit", 0) + self.lookups.get("negative_hit", 0)
        total = hits + self.lookups.get("miss", 0) + self.lookups.get("bypass", 0)
        return hits / total if total else None

    @property
    def server_hit_ratio(self) -> float | None:
        hits, misses = self.info.get("keyspace_hits", 0), self.info.get("keyspace_misses", 0)
        return hits / (hits + misses) if hits + misses else None


def cache_overview() -> CacheOverview:
    """The state of the cache for the admin's overview page."""
    lookups = metrics.lookup_totals("user")
    try:
        ping_ms = cache.ping() * 1000
        info = cache.server_info()
        keys = dict.fromkeys(cache.KeyKind, 0)
        for page in cache.scan_project_keys():
            for key in page:
                keys[cache.key_kind(key)] += 1
    except cache.CacheUnavailable as exc:
        return CacheOverview(reachable=False, error=str(exc), lookups=lookups)
    return CacheOverview(reachable=True, ping_ms=ping_ms, info=info, keys=keys, lookups=lookups)
