"""Flush: cached entries removed, a SCAN page at a time, never FLUSHDB."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Iterable, Iterator, Sequence

from rest_framework.authtoken.models import Token

from ..cache import cluster, store
from ..cache.keys import KeyKind, key_kind, lease_key, token_key, user_key
from ..tokens import token_mac
from . import retrying

_FLUSHED_KINDS = frozenset({KeyKind.USER, KeyKind.TOKEN, KeyKind.NAME, KeyKind.LEASE})


@dataclasses.dataclass(slots=True)
class FlushReport:
    """Keys a flush matched, by kind; ``removed`` is 0 on a dry run."""

    matched: dict[KeyKind, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(KeyKind, 0)
    )
    removed: int = 0

    @property
    def total(self) -> int:
        return sum(count for kind, count in self.matched.items() if kind in _FLUSHED_KINDS)


def cache_flush(
    *, user_ids: Iterable[int] | None = None, dry_run: bool = False, batch_size: int = 1000
) -> FlushReport:
    """Removes cached entries: those of ``user_ids`` (their users, leases and token
    lookups), or else every entry of this project, of any schema version.

    All entries are found by SCAN over the project's prefix and UNLINKed a page at
    a time, so other applications' keys in the same Redis, and this project's
    other keys (rate-limit counters, login limits), stay. Safe beside live
    traffic: removing an entry also removes its lease, like a write does.
    """
    report = FlushReport()
    pages = (
        _user_key_pages(sorted(set(user_ids)), batch_size)
        if user_ids is not None
        else cluster.scan_project_keys(count=batch_size)
    )
    # One page's UNLINK runs in a second thread while the next page is scanned and
    # sorted: Redis and this process each take about half of a key's cost.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flush") as unlinker:
        in_flight = None
        for page in pages:
            targets = []
            for key in page:
                kind = key_kind(key)
                report.matched[kind] += 1
                if kind in _FLUSHED_KINDS:
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


def _user_key_pages(user_ids: Sequence[int], batch_size: int) -> Iterator[list[str]]:
    """The existing keys of these users: entries, leases and token lookups."""
    for start in range(0, len(user_ids), batch_size):
        batch = user_ids[start : start + batch_size]
        entry_keys = [user_key(user_id) for user_id in batch]
        tokens = Token.objects.filter(user_id__in=batch).values_list("key", flat=True)
        token_keys = [token_key(token_mac(key)) for key in tokens]
        candidates = [
            *entry_keys,
            *(lease_key(key) for key in entry_keys),
            *token_keys,
            *(lease_key(key) for key in token_keys),
        ]
        yield [info.key for info in store.inspect_many(candidates, fields=()) if info.exists]
