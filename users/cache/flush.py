"""Flush: cached entries removed, a SCAN page at a time, never FLUSHDB. What a flush
removes is every kind's entries and their leases (``users.cache.kinds``): of some
rows (the keys they own), or of every row. And how many keys there are, estimated
without a SCAN of them all: what ``flush_user_cache --all`` asks to confirm."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence

from django.db.models import Model

from . import cluster, inspection, kinds
from .bulk import retrying
from .keys import lease_key
from .kinds import RowChange


@dataclasses.dataclass(slots=True)
class FlushReport:
    """Keys a flush matched, by label (``kinds.key_label``); ``removed`` is 0 on a
    dry run."""

    matched: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(kinds.key_labels(), 0)
    )
    removed: int = 0

    @property
    def total(self) -> int:
        return sum(count for label, count in self.matched.items() if label != kinds.OTHER)


def cache_flush(
    *,
    model: type[Model] | None = None,
    pks: Iterable | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
) -> FlushReport:
    """Removes cached entries: those the rows of ``model`` with these primary keys
    own (with their leases), or else every entry of this project, of any schema
    version.

    All entries are found by SCAN over the project's prefix and UNLINKed a page at
    a time, so other applications' keys in the same Redis, and this project's
    other keys (rate-limit counters, login limits), stay. Safe beside live
    traffic: removing an entry also removes its lease, like a write does.
    """
    report = FlushReport()
    pages = (
        _owned_key_pages(model, sorted(set(pks)), batch_size)
        if model is not None and pks is not None
        else cluster.scan_project_keys(count=batch_size)
    )
    # One page's UNLINK runs in a second thread while the next page is scanned and
    # sorted: Redis and this process each take about half of a key's cost.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flush") as unlinker:
        in_flight = None
        for page in pages:
            targets = []
            for key in page:
                label = kinds.key_label(key)
                report.matched[label] = report.matched.get(label, 0) + 1
                if label != kinds.OTHER:
                    targets.append(key)
            if dry_run:
                continue
            if in_flight is not None:
                report.removed += in_flight.result()
            in_flight = unlinker.submit(
                retrying, lambda targets=targets: cluster.unlink_many(targets)
            )
        if in_flight is not None:
            report.removed += in_flight.result()
    return report


# SCAN pages of up to a thousand keys each, per server, that an estimate goes over:
# its cost in Redis calls, whatever the size of the database.
ESTIMATE_PAGES = 10


@dataclasses.dataclass(frozen=True, slots=True)
class KeyEstimate:
    """Keys of the project by label: counted when the sample went over the whole
    database (``exact``), else scaled from the share of the sample they make up."""

    counts: dict[str, int]
    exact: bool
    # Keys the sample went over, and keys the databases held.
    sampled: int = 0
    in_database: int = 0

    def total(self, labels: Iterable[str]) -> int:
        return sum(self.counts.get(label, 0) for label in labels)


def estimate_keys(label: Callable[[str], str] = kinds.key_label) -> KeyEstimate:
    """The project's keys by ``label`` (by default ``kinds.key_label``), from
    ``ESTIMATE_PAGES`` SCAN pages and the key count of each server: the same few
    round trips at any size, where counting them all costs a SCAN of the whole
    database (a round trip per thousand keys)."""
    samples = retrying(lambda: cluster.sample_keys(pages=ESTIMATE_PAGES))
    estimated: dict[str, float] = {}
    for sample in samples:
        # Each key of a server's sample stands for this many of its database's.
        weight = 1.0 if sample.complete else sample.in_database / max(sample.examined, 1)
        for key in sample.project_keys:
            name = label(key)
            estimated[name] = estimated.get(name, 0.0) + weight
    return KeyEstimate(
        counts={name: round(count) for name, count in estimated.items()},
        exact=all(sample.complete for sample in samples),
        sampled=sum(sample.examined for sample in samples),
        in_database=sum(sample.in_database for sample in samples),
    )


def _owned_key_pages(model: type[Model], pks: Sequence, batch_size: int) -> Iterator[list[str]]:
    """The existing keys these rows own, leases included, a batch at a time: as if
    each row were deleted (a primary key with no row still owns its own entry,
    which may be a cached absence)."""
    pk = model._meta.pk.attname
    for start in range(0, len(pks), batch_size):
        batch = pks[start : start + batch_size]
        rows = {row[pk]: row for row in model._default_manager.filter(pk__in=batch).values()}
        changes = [RowChange(model, rows.get(key, {pk: key}), None) for key in batch]
        owned = kinds.keys_of(changes)
        candidates = [*owned, *(lease_key(key) for key in owned)]
        yield [info.key for info in inspection.inspect_many(candidates, fields=()) if info.exists]
