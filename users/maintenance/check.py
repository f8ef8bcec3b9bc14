"""Check: cached entries of every kind audited, and repaired on request.

Every kind's entries are held to the kind's codec (``users.cache.kinds``): the
form the service writes. A user's entry is also compared with its row in MySQL;
the other kinds' keys name a digest of what they stand for (a username, an
e-mail, a token), which the key does not give back, so only their form is checked.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Hashable, Sequence

from .. import entries
from ..cache import cluster, flush, inspection, kinds
from ..cache.bulk import retrying
from ..cache.keys import entry_tag, namespace
from ..cache.kinds import ABSENT, EXPIRES, CachedKind, is_absent
from ..models import User
from ..reads import USERS
from ..tokens import TOKENS, TokenRef
from .warm import DEFAULT_BATCH_SIZE, warm_ids


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
    # Entries examined, by cached kind (every registered kind, in the registry's order).
    examined_by_kind: dict[str, int] = dataclasses.field(
        default_factory=lambda: {kind.name: 0 for kind in kinds.registered()}
    )
    found: dict[ProblemKind, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(ProblemKind, 0)
    )
    fixed: int = 0
    # Whether every entry SCAN found was examined (False: a sample stopped it).
    complete: bool = True

    @property
    def problems(self) -> int:
        return sum(self.found.values())


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
    on_batch: Callable[[int], None] | None = None,
) -> CheckReport:
    """Audits cached entries of every kind: the first ``sample`` entries SCAN finds,
    or every entry when ``sample`` is None.

    Reports stale user entries (differ from the row, or cache a user as absent who
    exists), orphaned ones (the user was deleted) and malformed entries of any
    kind (not a hash, no TTL, not what the kind's codec accepts, a user key that
    names no id). ``fix`` rewrites each problem user entry as a warm of its id
    would (the row, or the absent marker), under a lease, and deletes the other
    problem keys (the next read fills them again). ``on_batch`` gets the number of
    entries each batch examined, for progress.
    """
    report = CheckReport()
    # One SCAN for every kind: the current schema's keys, of which the entries are
    # kept (leases and counters live under the same namespace).
    for page in cluster.scan_project_keys(f"{namespace()}:*", count=batch_size):
        found = [key for key in page if kinds.kind_of_key(key) is not None]
        if sample is not None and len(found) > sample - report.examined:
            found, report.complete = found[: sample - report.examined], False
        if found:
            _check_batch(found, report, fix=fix, on_problem=on_problem)
            if on_batch is not None:
                on_batch(len(found))
        if not report.complete:
            break
    return report


def estimate_entries() -> flush.KeyEstimate:
    """How many entries of each kind there are, without a SCAN of every key
    (``flush.estimate_keys``): the check's "of about M", and its progress bar's end."""
    return flush.estimate_keys(lambda key: _kind_name(kinds.kind_of_key(key)))


def _kind_name(kind: CachedKind | None) -> str:
    return kinds.OTHER if kind is None else kind.name


def _check_batch(
    batch: Sequence[str],
    report: CheckReport,
    *,
    fix: bool,
    on_problem: Callable[[Problem], None] | None,
) -> None:
    report.examined += len(batch)
    for key in batch:
        name = _kind_name(kinds.kind_of_key(key))
        report.examined_by_kind[name] = report.examined_by_kind.get(name, 0) + 1
    problems = retrying(lambda: _problems(batch))
    if problems:
        time.sleep(_RECHECK_AFTER_SECONDS)
        suspects = [problem.key for problem in problems]
        problems = retrying(lambda: _problems(suspects))
    for problem in problems:
        report.found[problem.kind] += 1
        if on_problem is not None:
            on_problem(problem)
    if fix and problems:
        report.fixed += _repair(problems)


def _problems(keys: Sequence[str]) -> list[Problem]:
    infos = inspection.inspect_many(keys)
    user_ids = [_user_id(key) for key in keys]
    expected = entries.load(User.objects.filter(id__in=[i for i in user_ids if i is not None]))
    problems = []
    for info, user_id in zip(infos, user_ids, strict=True):
        kind = kinds.kind_of_key(info.key)
        if kind is USERS:
            detail = _user_problem(info, user_id, expected.get(user_id))
        else:
            detail = _malformation(kind, _ident(kind, info.key), info)
        if detail is not None:
            problems.append(Problem(key=info.key, kind=detail[0], detail=detail[1]))
    return problems


def _user_id(key: str) -> int | None:
    if kinds.kind_of_key(key) is not USERS:
        return None
    tag = entry_tag(key)
    digits = tag is not None and tag.isascii() and tag.isdigit() and len(tag) <= 19
    return int(tag) if digits else None


def _ident(kind: CachedKind, key: str) -> Hashable:
    """What the kind's codec is given for the entry at ``key``. A name's or a token's
    key holds a digest, not the name or the token, and their codecs need no more
    than it: a name's entry is valid under any name, and a token's signature
    covers the MAC its key is named by (``users.tokens``)."""
    tag = entry_tag(key)
    return TokenRef(key="", mac=tag) if kind is TOKENS else tag


def _malformation(
    kind: CachedKind, ident: Hashable, info: inspection.EntryInfo
) -> tuple[ProblemKind, str] | None:
    """Why the entry is not one the kind's codec accepts; None when it is (or when
    the key is gone)."""
    if not info.exists:
        return None  # expired or removed since SCAN saw it
    if info.fields is None:
        return ProblemKind.MALFORMED, f"a {info.type}, not a hash"
    if info.ttl_ms == -1:
        return ProblemKind.MALFORMED, "no expiry"
    if kind.open(ident, info.fields, time.time()) is not None:
        return None
    if EXPIRES not in info.fields:
        return ProblemKind.MALFORMED, "no expiry field"
    names = set(info.fields) - {EXPIRES}
    if ABSENT not in names and names != kind.codec.fields:
        missing, extra = sorted(kind.codec.fields - names), sorted(names - kind.codec.fields)
        return ProblemKind.MALFORMED, f"fields missing {missing}, unexpected {extra}"
    return ProblemKind.MALFORMED, "a value or the expiry is not one this service writes"


def _user_problem(
    info: inspection.EntryInfo, user_id: int | None, expected: dict[str, str] | None
) -> tuple[ProblemKind, str] | None:
    if not info.exists:
        return None
    if user_id is None:
        return ProblemKind.MALFORMED, "the key names no user id"
    malformed = _malformation(USERS, user_id, info)
    if malformed is not None:
        return malformed
    if is_absent(info.fields):
        if expected is not None:
            return ProblemKind.STALE, "cached as absent, but the user exists"
        return None
    if expected is None:
        return ProblemKind.ORPHANED, "the user no longer exists"
    differing = sorted(
        entries.COLUMN_OF[name] for name in expected if info.fields[name] != expected[name]
    )
    if differing:
        return ProblemKind.STALE, f"differs from MySQL in {', '.join(differing)}"
    return None


def _repair(problems: list[Problem]) -> int:
    """User entries with an id are written again from MySQL; every other problem
    key is deleted, which any read then fills as from a miss."""
    user_ids = [_user_id(problem.key) for problem in problems]
    deleted = [p.key for p, user_id in zip(problems, user_ids, strict=True) if user_id is None]
    retrying(lambda: cluster.unlink_many(deleted))
    named = [user_id for user_id in user_ids if user_id is not None]
    if named:
        warm_ids(named)
    return len(problems)
